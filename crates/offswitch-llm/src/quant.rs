//! Dequantisation of ggml block formats, and repacking of any format into the engine's one matmul layout.
//!
//! The engine layout ("Q8 affine") is, per block of 32 weights, an f32 scale `d`, an f32 offset `m` and 32 `i8`
//! values, meaning `w = d * q + m`. Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q5_K map into it exactly (their
//! 32-weight sub-blocks are affine over small integers); the formats with 16-weight sub-blocks (Q2_K, Q3_K, Q6_K)
//! and the float formats are dequantised and requantised symmetrically (error at most `amax / 254` per weight).

use crate::gguf::GgmlType;

pub const BLOCK: usize = 32;
const QK_K: usize = 256;

/// One row of a matrix in the engine layout.
pub struct RowOut<'a> {
    pub q: &'a mut [i8],
    pub d: &'a mut [f32],
    pub m: &'a mut [f32],
}

/// Dequantise `n` values of type `ty` from `src` into `out` (`out.len()` values).
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    let (block_elements, block_bytes) = ty.block_layout();
    for (block, y) in src
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block_elements))
    {
        match ty {
            GgmlType::F32 => y[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
            GgmlType::F16 => y[0] = f16_to_f32(u16::from_le_bytes([block[0], block[1]])),
            GgmlType::BF16 => {
                y[0] = f32::from_bits(u32::from(u16::from_le_bytes([block[0], block[1]])) << 16)
            }
            GgmlType::Q2K => dequantize_q2k(block, y),
            GgmlType::Q3K => dequantize_q3k(block, y),
            GgmlType::Q6K => dequantize_q6k(block, y),
            _ => {
                // Affine formats: expand through the exact repacking so there is one definition of each.
                let n_sub = block_elements / BLOCK;
                let mut q = [0i8; QK_K];
                let mut d = [0f32; QK_K / BLOCK];
                let mut m = [0f32; QK_K / BLOCK];
                affine_block(
                    ty,
                    block,
                    &mut q[..block_elements],
                    &mut d[..n_sub],
                    &mut m[..n_sub],
                );
                for (i, v) in y.iter_mut().enumerate() {
                    *v = d[i / BLOCK] * f32::from(q[i]) + m[i / BLOCK];
                }
            }
        }
    }
}

/// Whether rows of this type repack exactly (no requantisation).
pub fn is_affine(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q4K
            | GgmlType::Q5K
    )
}

/// Repack one row (`src` holds exactly one row of `ty`) into the engine layout. `scratch` is reused for the formats
/// that go through f32.
pub fn repack_row(ty: GgmlType, src: &[u8], out: RowOut<'_>, scratch: &mut Vec<f32>) {
    let n = out.q.len();
    if is_affine(ty) {
        let (block_elements, block_bytes) = ty.block_layout();
        let per = block_elements / BLOCK;
        for (b, block) in src.chunks_exact(block_bytes).enumerate() {
            affine_block(
                ty,
                block,
                &mut out.q[b * block_elements..(b + 1) * block_elements],
                &mut out.d[b * per..(b + 1) * per],
                &mut out.m[b * per..(b + 1) * per],
            );
        }
        return;
    }
    scratch.resize(n, 0.0);
    dequantize(ty, src, scratch);
    quantize_symmetric(scratch, out.q, out.d);
    out.m.fill(0.0);
}

/// Symmetric int8 quantisation per 32 values: `d = amax / 127`, `q = round(x / d)`.
pub fn quantize_symmetric(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((xb, qb), db) in x
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .zip(d.iter_mut())
    {
        let amax = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (qi, &xi) in qb.iter_mut().zip(xb) {
            *qi = (xi * inv).round() as i8;
        }
        *db = scale;
    }
}

pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exponent = u32::from((h >> 10) & 0x1f);
    let mantissa = u32::from(h & 0x3ff);
    let bits = match (exponent, mantissa) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = mantissa * 2^-24, exactly representable in f32.
            let value = mantissa as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -value } else { value };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mantissa << 13),
        _ => sign | ((exponent + 112) << 23) | (mantissa << 13),
    };
    f32::from_bits(bits)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Expand one source block of an affine format into 32-value sub-blocks `d * q + m`.
fn affine_block(ty: GgmlType, b: &[u8], q: &mut [i8], d: &mut [f32], m: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => {
            d[0] = f16_at(b, 0);
            m[0] = 0.0;
            for j in 0..16 {
                q[j] = (b[2 + j] & 0x0f) as i8 - 8;
                q[j + 16] = (b[2 + j] >> 4) as i8 - 8;
            }
        }
        GgmlType::Q4_1 => {
            // w = d * u + min with u in 0..16; centring u keeps q in i8 range: w = d * (u - 8) + (min + 8d).
            let scale = f16_at(b, 0);
            d[0] = scale;
            m[0] = f16_at(b, 2) + 8.0 * scale;
            for j in 0..16 {
                q[j] = (b[4 + j] & 0x0f) as i8 - 8;
                q[j + 16] = (b[4 + j] >> 4) as i8 - 8;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (scale, min, qh_at) = if ty == GgmlType::Q5_0 {
                (f16_at(b, 0), None, 2)
            } else {
                (f16_at(b, 0), Some(f16_at(b, 2)), 4)
            };
            let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
            let qs = &b[qh_at + 4..qh_at + 20];
            for j in 0..16 {
                let high0 = (((qh >> j) << 4) & 0x10) as u8;
                let high1 = ((qh >> (j + 12)) & 0x10) as u8;
                q[j] = ((qs[j] & 0x0f) | high0) as i8 - 16;
                q[j + 16] = ((qs[j] >> 4) | high1) as i8 - 16;
            }
            d[0] = scale;
            m[0] = min.map_or(0.0, |min| min + 16.0 * scale);
        }
        GgmlType::Q8_0 => {
            d[0] = f16_at(b, 0);
            m[0] = 0.0;
            for j in 0..32 {
                q[j] = b[2 + j] as i8;
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let scale = f16_at(b, 0);
            let min = f16_at(b, 2);
            let scales = &b[4..16];
            let five_bit = ty == GgmlType::Q5K;
            let (qh, qs) = if five_bit {
                (&b[16..48], &b[48..176])
            } else {
                (&b[0..0], &b[16..144])
            };
            let centre: i16 = if five_bit { 16 } else { 8 };
            for pair in 0..4 {
                for half in 0..2 {
                    let sub = pair * 2 + half;
                    let (sc, mn) = scale_min_k4(sub, scales);
                    let d_sub = scale * f32::from(sc);
                    d[sub] = d_sub;
                    m[sub] = -min * f32::from(mn) + f32::from(centre) * d_sub;
                    for l in 0..32 {
                        let byte = qs[pair * 32 + l];
                        let mut u = if half == 0 { byte & 0x0f } else { byte >> 4 };
                        if five_bit && qh[l] & (1 << sub) != 0 {
                            u += 16;
                        }
                        q[sub * 32 + l] = (i16::from(u) - centre) as i8;
                    }
                }
            }
        }
        _ => unreachable!("affine_block called for non-affine type {ty:?}"),
    }
}

/// The 6-bit scale and min of sub-block `j` in the 12-byte packed K-quant scales.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn dequantize_q2k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let min = f16_at(b, 82);
    let mut out = 0;
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0x0f);
                let ml = min * f32::from(sc >> 4);
                for l in 0..16 {
                    y[out] = dl * f32::from((q[part * 16 + l] >> shift) & 3) - ml;
                    out += 1;
                }
            }
        }
    }
}

fn dequantize_q3k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let raw = &b[96..108];
    let d_all = f16_at(b, 108);
    let word =
        |i: usize| u32::from_le_bytes([raw[i * 4], raw[i * 4 + 1], raw[i * 4 + 2], raw[i * 4 + 3]]);
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let packed = [
        (a0 & LOW4) | ((tmp & LOW2) << 4),
        (a1 & LOW4) | (((tmp >> 2) & LOW2) << 4),
        ((a0 >> 4) & LOW4) | (((tmp >> 4) & LOW2) << 4),
        ((a1 >> 4) & LOW4) | (((tmp >> 6) & LOW2) << 4),
    ];
    let mut scales = [0i8; 16];
    for (i, w) in packed.iter().enumerate() {
        for (k, byte) in w.to_le_bytes().iter().enumerate() {
            scales[i * 4 + k] = (*byte as i8) - 32;
        }
    }
    let mut out = 0;
    let mut is = 0;
    let mut mask = 1u8;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let dl = d_all * f32::from(scales[is]);
                is += 1;
                for l in 0..16 {
                    let idx = part * 16 + l;
                    let low = ((q[idx] >> shift) & 3) as i8;
                    let high = if hmask[idx] & mask != 0 { 0 } else { 4 };
                    y[out] = dl * f32::from(low - high);
                    out += 1;
                }
            }
            mask <<= 1;
        }
    }
}

fn dequantize_q6k(b: &[u8], y: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &ql_all[half * 64..half * 64 + 64];
        let qh = &qh_all[half * 32..half * 32 + 32];
        let sc = &sc_all[half * 8..half * 8 + 8];
        let y = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            y[l] = d * f32::from(sc[is] as i8) * f32::from(q1);
            y[l + 32] = d * f32::from(sc[is + 2] as i8) * f32::from(q2);
            y[l + 64] = d * f32::from(sc[is + 4] as i8) * f32::from(q3);
            y[l + 96] = d * f32::from(sc[is + 6] as i8) * f32::from(q4);
        }
    }
}
