//! Int8 matrix products: weights in the engine's Q8-affine layout times activations quantised to int8 per block.
//!
//! `out[t][r] = sum_b d_w[r,b] * d_a[t,b] * (q_w[r,b] . q_a[t,b]) + m_w[r,b] * s_a[t,b]` where `s_a` is the exact
//! float sum of the activation block (so the offset term adds no quantisation error). Rows are split across the
//! pool's threads; each thread walks its rows for a tile of tokens so a weight row is read from memory once per tile.

use rayon::prelude::*;

use crate::gguf::GgmlType;
use crate::quant::{BLOCK, RowOut, quantize_symmetric, repack_row};

/// A weight matrix of `rows` x `cols` in the engine layout.
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    /// `None` when every offset is zero (symmetric formats), so the kernel can skip the offset term.
    m: Option<Vec<f32>>,
}

impl QMatrix {
    pub fn zeroed(rows: usize, cols: usize) -> QMatrix {
        let nb = cols / BLOCK;
        QMatrix {
            rows,
            cols,
            q: vec![0; rows * cols],
            d: vec![0.0; rows * nb],
            m: Some(vec![0.0; rows * nb]),
        }
    }

    /// Repack source rows into rows `first..` of this matrix (used to fuse Q, K and V into one matrix).
    pub fn fill_rows(&mut self, first: usize, ty: GgmlType, src: &[u8]) {
        let (block_elements, block_bytes) = ty.block_layout();
        let row_bytes = self.cols / block_elements * block_bytes;
        let nb = self.cols / BLOCK;
        let m = self.m.get_or_insert_with(|| vec![0.0; self.rows * nb]);
        let mut scratch = Vec::new();
        for (i, row) in src.chunks_exact(row_bytes).enumerate() {
            let r = first + i;
            repack_row(
                ty,
                row,
                RowOut {
                    q: &mut self.q[r * self.cols..(r + 1) * self.cols],
                    d: &mut self.d[r * nb..(r + 1) * nb],
                    m: &mut m[r * nb..(r + 1) * nb],
                },
                &mut scratch,
            );
        }
    }

    pub fn drop_zero_offsets(&mut self) {
        if self.m.as_ref().is_some_and(|m| m.iter().all(|&v| v == 0.0)) {
            self.m = None;
        }
    }

    /// Dequantise row `r` into `out` (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / BLOCK;
        let q = &self.q[r * self.cols..(r + 1) * self.cols];
        for b in 0..nb {
            let d = self.d[r * nb + b];
            let m = self.m.as_ref().map_or(0.0, |m| m[r * nb + b]);
            for i in 0..BLOCK {
                out[b * BLOCK + i] = d * f32::from(q[b * BLOCK + i]) + m;
            }
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.q.len() + 4 * self.d.len() + self.m.as_ref().map_or(0, |m| 4 * m.len())
    }
}

/// Activations of `n` tokens quantised per block; buffers are reused across calls.
#[derive(Default)]
pub struct QActs {
    pub n: usize,
    pub cols: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    q4: Vec<i8>,
    d4: Vec<f32>,
}

impl QActs {
    /// Quantise `x` (`n` rows of `cols`) into this buffer.
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        let n = x.len() / cols;
        let nb = cols / BLOCK;
        self.n = n;
        self.cols = cols;
        self.q.resize(n * cols, 0);
        self.d.resize(n * nb, 0.0);
        self.s.resize(n * nb, 0.0);
        quantize_symmetric(x, &mut self.q, &mut self.d);
        for (s, xb) in self.s.iter_mut().zip(x.chunks_exact(BLOCK)) {
            *s = xb.iter().sum();
        }
        // Groups of four tokens are also stored interleaved by block ([block][token][32]) so the four-token
        // kernel streams one contiguous slice instead of juggling four.
        let groups = n / 4;
        self.q4.resize(groups * 4 * cols, 0);
        self.d4.resize(groups * 4 * nb, 0.0);
        for g in 0..groups {
            for t in 0..4 {
                let token = g * 4 + t;
                for b in 0..nb {
                    let src = token * cols + b * BLOCK;
                    let dst = g * 4 * cols + (b * 4 + t) * BLOCK;
                    self.q4[dst..dst + BLOCK].copy_from_slice(&self.q[src..src + BLOCK]);
                    self.d4[g * 4 * nb + b * 4 + t] = self.d[token * nb + b];
                }
            }
        }
    }
}

/// Tokens per tile: 16 rows of int8 activations of the widest input (1536) stay in L1 with a weight row.
const TOKEN_TILE: usize = 16;

/// `out` (n x rows, row-major by token) = acts x W^T. `scratch` holds the row-major-by-weight-row result before the
/// transpose; it is reused across calls.
pub fn matmul(w: &QMatrix, a: &QActs, out: &mut [f32], scratch: &mut Vec<f32>) {
    assert_eq!(w.cols, a.cols, "matmul inner dimensions differ");
    let n = a.n;
    scratch.resize(w.rows * n, 0.0);
    let nb = w.cols / BLOCK;
    let threads = rayon::current_num_threads().max(1);
    // Enough chunks for load balance, few enough that the per-chunk overhead stays small.
    let rows_per_chunk = w.rows.div_ceil(threads * 4).max(8);
    scratch
        .par_chunks_mut(rows_per_chunk * n)
        .enumerate()
        .for_each(|(chunk, result)| {
            let first = chunk * rows_per_chunk;
            let chunk_rows = result.len() / n;
            for t0 in (0..n).step_by(TOKEN_TILE) {
                let t1 = (t0 + TOKEN_TILE).min(n);
                for rr in 0..chunk_rows {
                    let r = first + rr;
                    let wq = &w.q[r * w.cols..(r + 1) * w.cols];
                    let wd = &w.d[r * nb..(r + 1) * nb];
                    let out = &mut result[rr * n..(rr + 1) * n];
                    let mut t = t0;
                    // Four tokens per pass over the weight row: each weight block is widened once and used four times.
                    while t + 4 <= t1 {
                        let g = t / 4;
                        let sums = dot_row_x4(
                            wq,
                            wd,
                            &a.q4[g * 4 * w.cols..(g + 1) * 4 * w.cols],
                            &a.d4[g * 4 * nb..(g + 1) * 4 * nb],
                        );
                        out[t..t + 4].copy_from_slice(&sums);
                        t += 4;
                    }
                    while t < t1 {
                        let aq = &a.q[t * w.cols..(t + 1) * w.cols];
                        let ad = &a.d[t * nb..(t + 1) * nb];
                        out[t] = dot_row(wq, wd, aq, ad);
                        t += 1;
                    }
                    if let Some(m) = w.m.as_ref() {
                        let wm = &m[r * nb..(r + 1) * nb];
                        for (t, o) in out.iter_mut().enumerate().take(t1).skip(t0) {
                            *o += dot_f32(wm, &a.s[t * nb..(t + 1) * nb]);
                        }
                    }
                }
            }
        });
    if n == 1 {
        out[..w.rows].copy_from_slice(&scratch[..w.rows]);
        return;
    }
    let scratch = &scratch[..];
    out[..n * w.rows]
        .par_chunks_mut(w.rows)
        .enumerate()
        .for_each(|(t, row)| {
            for (r, o) in row.iter_mut().enumerate() {
                *o = scratch[r * n + t];
            }
        });
}

/// f32 dot product in eight lanes (a single accumulator would serialise the adds).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] = ca[l].mul_add(cb[l], acc[l]);
        }
    }
    let tail: f32 = a
        .chunks_exact(8)
        .remainder()
        .iter()
        .zip(b.chunks_exact(8).remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// One weight row against one activation row: per-block int8 dot products scaled by both block scales, kept in
/// eight lanes (i32 per block, then f32) so both levels vectorise.
#[inline(never)]
fn dot_row(wq: &[i8], wd: &[f32], aq: &[i8], ad: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for ((wb, ab), (dw, da)) in wq
        .chunks_exact(BLOCK)
        .zip(aq.chunks_exact(BLOCK))
        .zip(wd.iter().zip(ad))
    {
        let lanes = block_lanes(wb, ab);
        let scale = dw * da;
        for l in 0..8 {
            acc[l] = (lanes[l] as f32).mul_add(scale, acc[l]);
        }
    }
    acc.iter().sum()
}

/// One weight row against four activation rows stored interleaved by block (see `QActs::quantize`).
#[inline(never)]
fn dot_row_x4(wq: &[i8], wd: &[f32], aq4: &[i8], ad4: &[f32]) -> [f32; 4] {
    let mut acc = [[0f32; 8]; 4];
    for ((wb, dw), (ab4, da4)) in wq
        .chunks_exact(BLOCK)
        .zip(wd)
        .zip(aq4.chunks_exact(4 * BLOCK).zip(ad4.chunks_exact(4)))
    {
        let mut wide = [0i16; BLOCK];
        for (x, &v) in wide.iter_mut().zip(wb) {
            *x = i16::from(v);
        }
        for t in 0..4 {
            let lanes = block_lanes(&wide, &ab4[t * BLOCK..(t + 1) * BLOCK]);
            let scale = dw * da4[t];
            for l in 0..8 {
                acc[t][l] = (lanes[l] as f32).mul_add(scale, acc[t][l]);
            }
        }
    }
    acc.map(|lanes| lanes.iter().sum())
}

/// 32 products of a weight block (i8 or pre-widened i16) and an int8 activation block, summed into eight i32 lanes.
/// Products of int8 values fit i16 and 4 of them fit i32, so the wrapping ops never wrap; they only tell the
/// compiler (and debug builds' overflow checks) that no check is needed.
#[inline(always)]
fn block_lanes<W: Copy + Into<i32>>(w: &[W], a: &[i8]) -> [i32; 8] {
    let w: &[W; BLOCK] = w.try_into().expect("block of 32");
    let a: &[i8; BLOCK] = a.try_into().expect("block of 32");
    let mut lanes = [0i32; 8];
    for j in 0..4 {
        for l in 0..8 {
            let product = w[j * 8 + l].into().wrapping_mul(i32::from(a[j * 8 + l]));
            lanes[l] = lanes[l].wrapping_add(product);
        }
    }
    lanes
}
