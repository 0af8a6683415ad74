//! Dequantisation of each ggml block format against hand-built blocks whose values are worked out by hand.

use offswitch_llm::gguf::GgmlType;
use offswitch_llm::quant::dequantize;

const F16_ONE: [u8; 2] = 0x3C00u16.to_le_bytes();
const F16_HALF: [u8; 2] = 0x3800u16.to_le_bytes();
const F16_TWO: [u8; 2] = 0x4000u16.to_le_bytes();
const F16_QUARTER: [u8; 2] = 0x3400u16.to_le_bytes();
const F16_MINUS_ONE: [u8; 2] = 0xBC00u16.to_le_bytes();

fn check(ty: GgmlType, block: &[u8], expected: &[(usize, f32)]) {
    let (n, bytes) = ty.block_layout();
    assert_eq!(block.len(), bytes, "{ty:?} block size");
    let mut out = vec![f32::NAN; n];
    dequantize(ty, block, &mut out);
    for &(i, want) in expected {
        assert_eq!(out[i], want, "{ty:?} element {i}");
    }
    assert!(out.iter().all(|v| v.is_finite()), "{ty:?} left NaN");
}

#[test]
fn q4_0() {
    let mut b = [0x88u8; 18];
    b[..2].copy_from_slice(&F16_TWO);
    b[2] = 0x0F; // element 0 = (15 - 8) * 2, element 16 = (0 - 8) * 2
    check(
        GgmlType::Q4_0,
        &b,
        &[(0, 14.0), (16, -16.0), (1, 0.0), (31, 0.0)],
    );
}

#[test]
fn q4_1() {
    let mut b = [0u8; 20];
    b[..2].copy_from_slice(&F16_HALF);
    b[2..4].copy_from_slice(&F16_MINUS_ONE);
    b[4 + 3] = 0xF2; // element 3 = 2 * 0.5 - 1, element 19 = 15 * 0.5 - 1
    check(
        GgmlType::Q4_1,
        &b,
        &[(3, 0.0), (19, 6.5), (0, -1.0), (31, -1.0)],
    );
}

#[test]
fn q5_0_and_q5_1() {
    let mut b = [0u8; 22];
    b[..2].copy_from_slice(&F16_ONE);
    b[2..6].copy_from_slice(&((1u32 << 0) | (1u32 << 17)).to_le_bytes());
    b[6 + 1] = 0xFF;
    // element 0: high bit set, 16 - 16; element 16: 0 - 16; element 1: 15 - 16; element 17: 31 - 16.
    check(
        GgmlType::Q5_0,
        &b,
        &[(0, 0.0), (16, -16.0), (1, -1.0), (17, 15.0)],
    );

    let mut b = [0u8; 24];
    b[..2].copy_from_slice(&F16_HALF);
    b[2..4].copy_from_slice(&F16_ONE);
    b[4..8].copy_from_slice(&((1u32 << 0) | (1u32 << 17)).to_le_bytes());
    b[8 + 1] = 0xFF;
    check(
        GgmlType::Q5_1,
        &b,
        &[(0, 9.0), (16, 1.0), (1, 8.5), (17, 16.5)],
    );
}

#[test]
fn q8_0() {
    let mut b = [0u8; 34];
    b[..2].copy_from_slice(&F16_QUARTER);
    for i in 0..32 {
        b[2 + i] = (i as i8 - 16) as u8;
    }
    check(GgmlType::Q8_0, &b, &[(0, -4.0), (16, 0.0), (31, 3.75)]);
}

#[test]
fn q4_k() {
    let mut b = [0u8; 144];
    b[..2].copy_from_slice(&F16_ONE);
    b[2..4].copy_from_slice(&F16_HALF);
    let scales = &mut b[4..16];
    scales[0] = 2 | (1 << 6); // sub-block 0 scale 2; the top bits feed sub-block 4's scale
    scales[4] = 3; // sub-block 0 min 3
    scales[1] = 1; // sub-block 1 scale 1, min 0
    scales[8] = 0x03; // sub-block 4 scale = 3 | (1 << 4) = 19, min 0
    let qs = &mut b[16..];
    qs[0] = 0x51; // element 0 (sub 0): 1 * 2 - 3 * 0.5; element 32 (sub 1): 5 * 1
    qs[64] = 0x02; // element 128 (sub 4): 2 * 19
    check(
        GgmlType::Q4K,
        &b,
        &[(0, 0.5), (32, 5.0), (128, 38.0), (1, -1.5)],
    );
}

#[test]
fn q5_k() {
    let mut b = [0u8; 176];
    b[..2].copy_from_slice(&F16_ONE);
    b[2..4].copy_from_slice(&F16_ONE);
    b[4] = 1; // sub 0 scale 1
    b[8] = 1; // sub 0 min 1
    b[5] = 2; // sub 1 scale 2, min 0
    b[16] = 0x03; // qh[0]: high bit for sub 0 and sub 1 at position 0
    b[48] = 0x30; // qs[0]: low nibble 0 (sub 0), high nibble 3 (sub 1)
    // element 0 = (0 + 16) * 1 - 1; element 32 = (3 + 16) * 2; element 1 = 0 - 1.
    check(GgmlType::Q5K, &b, &[(0, 15.0), (32, 38.0), (1, -1.0)]);
}

#[test]
fn q6_k() {
    let mut b = [0u8; 210];
    b[0] = 0x21; // ql[0]
    b[128] = 0b0000_0110; // qh[0]: bits 0-1 = 2 (element 0), bits 2-3 = 1 (element 32)
    b[192] = 2; // scale of elements 0..16
    b[192 + 2] = (-1i8) as u8; // scale of elements 32..48
    b[192 + 4] = 1; // scale of elements 64..80
    b[208..210].copy_from_slice(&F16_HALF);
    // element 0: (1 | 2 << 4) - 32 = 1 -> 0.5 * 2 * 1; element 32: (0 | 1 << 4) - 32 = -16 -> 0.5 * -1 * -16;
    // element 64: (2 | 0) - 32 = -30 -> 0.5 * 1 * -30; element 1: all bits zero, 0 - 32 -> 0.5 * 2 * -32.
    check(
        GgmlType::Q6K,
        &b,
        &[(0, 1.0), (32, 8.0), (64, -15.0), (1, -32.0)],
    );
}

#[test]
fn q2_k() {
    let mut b = [0u8; 84];
    b[0] = 0x12; // sub 0: scale 2, min 1
    b[16] = 0b11; // element 0: 3
    b[80..82].copy_from_slice(&F16_ONE);
    b[82..84].copy_from_slice(&F16_HALF);
    // element 0 = 2 * 3 - 1 * 0.5; element 1 = 2 * 0 - 0.5; sub 1 has scale 0 and min 0.
    check(GgmlType::Q2K, &b, &[(0, 5.5), (1, -0.5), (16, 0.0)]);
}

#[test]
fn q3_k() {
    let mut b = [0u8; 110];
    b[..32].fill(0xFF); // hmask: every high bit set, so nothing subtracts 4
    b[1] = 0xFE; // except element 1 in the first pass
    b[32] = 0b01; // qs[0]: element 0 = 1
    b[96] = 0x05; // scale 0 low bits
    b[96 + 8] = 0x02; // scale 0 high bits: 5 | 2 << 4 = 37 -> 37 - 32 = 5
    b[108..110].copy_from_slice(&F16_ONE);
    // element 0 = 5 * 1; element 1 = 5 * (0 - 4); scale 1 = 0 - 32 for elements 16..32.
    check(GgmlType::Q3K, &b, &[(0, 5.0), (1, -20.0), (16, -0.0)]);
}

#[test]
fn float_formats() {
    check(GgmlType::F32, &1.5f32.to_le_bytes(), &[(0, 1.5)]);
    check(GgmlType::F16, &0xC500u16.to_le_bytes(), &[(0, -5.0)]);
    check(
        GgmlType::F16,
        &0x0001u16.to_le_bytes(),
        &[(0, 5.960_464_5e-8)],
    );
    check(GgmlType::BF16, &0x3FC0u16.to_le_bytes(), &[(0, 1.5)]);
}
