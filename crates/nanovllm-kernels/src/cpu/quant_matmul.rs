//! `x[M, K] · w[N, K]ᵀ → [M, N]` with a block-quantized `w` ([`crate::quant`]):
//! Int8G32, Int4G32 or Fp8G128, `x` f32.
//!
//! Paths, picked per call:
//! - `M ≤` [`SMALL_M`] (decode) on AVX2+FMA+F16C: [`avx2`], parallel over blocks of W
//!   rows sized for L2; every weight is read from memory once per call and dequantized in
//!   registers. Int8G32 and Int4G32 multiply in integers against `x` quantized per
//!   32-block on the fly ([`act`], llama.cpp's Q8_0 way: `vpmaddubsw` + `vpmaddwd`);
//!   Fp8G128 widens e4m3 to f32 and multiplies in f32.
//! - `M >` [`SMALL_M`] (prefill) on AVX2+FMA: the bf16 path's packed GEMM
//!   ([`super::packed_gemm`]) with W panels dequantized instead of widened ([`panels`]).
//! - Otherwise: [`portable`], a dequantized W row at a time dotted with every x row.
//!
//! Numerics: Fp8G128 and the prefill path differ from the f64 product of `x` and the
//! dequantized weights only by f32 rounding. The integer paths add the activation
//! rounding: per x block, `|x − d_x·q_x| ≤ d_x/2`, so an output moves by at most
//! `Σ_blocks d_x/2 · Σ|d_w·q_w|` (the Int4G32 minimum term uses the exact `Σx`) —
//! relative 1/254 of the block's largest |x| per weight magnitude, below the weights'
//! own rounding (1/254 of the block's largest |w| for int8, 1/30 of its range for int4).
//!
//! Why this shape. Measured on the 2-core AMD EPYC (Zen 4) dev host, one thread, thread
//! CPU time per call, two rounds back to back in one process (the host was shared with
//! other builds; these are the steadier of the figures), in GMAC/s:
//!
//! | K × N, M            | bf16 | int8 | int4 | fp8  |
//! |---------------------|------|------|------|------|
//! | 1024 × 512, M = 1 (L2)   | 18.1–18.5 | 21.7–22.1 | 29.4–29.9 | 12.5 |
//! | 1024 × 512, M = 16 (L2)  | 37.5–38.8 | 33.6–36.6 | 36.2–36.5 | 27.6–28.1 |
//! | 1024 × 512, M = 512 (L2) | 48.0–48.2 | 45.1–46.3 | 42.3–45.2 | 44.6–45.5 |
//! | 1024 × 151 936, M = 1 (DRAM) | 6.5–6.7 | 8.9–9.1 | 15.3–15.4 | 8.5 |
//! | 1024 × 6144, M = 1 / 16 / 32 / 512 (L3) | 13.5–17.5 / 25.8–33.5 / 40.4–41.4 / 44.7–50.0 | 19.3–20.5 / 29.1–36.9 / 36.3–37.6 / 44.9–47.0 | 26.3–29.8 / 28.8–37.2 / 37.0–37.3 / 46.9–47.4 | 10.9–12.0 / 25.4–27.8 / 27.2–28.1 / 47.2–47.4 |
//! | 3072 × 1024, M = 1 / 16 / 32 / 512 (L3) | 15.2–15.3 / 32.8–36.6 / 36.7–37.1 / 45.6–46.4 | 25.5 / 37.7–38.1 / 38.0–38.1 / 42.0–47.4 | 30.1–30.5 / 35.6–38.5 / 37.6–38.3 / 43.6–44.5 | 13.3 / 24.5–25.2 / 23.7–25.1 / 42.5–42.9 |
//!
//! The criterion bench (two threads, weights cycled from DRAM) was too noisy on the
//! shared host to rank the 16–32-row cases (bf16 itself moved 2–4× between rounds).
//!
//! - Decode of one stream is bound by weight bytes: the quantized kernels read fewer and
//!   prefetch one tile ahead (the prefetchers stop at 4 KiB pages).
//! - The integer path costs 5–6 vector ops per 32 multiply-adds and (x row, W row):
//!   sign, `vpmaddubsw`, `vpmaddwd`, convert, scale, FMA — no fewer than the f32 FMAs of
//!   the bf16 kernel, so for 16–32 rows, where compute and not bytes bounds the product,
//!   it matches bf16 rather than beating it. Quantizing the activations had to be
//!   vectorised ([`avx2::quantize_blocks`]): the scalar loop took a fifth of an M = 16 call.
//! - Fp8G128 decodes e4m3 → f16 → f32 in registers (about 8 ops per 16 weights, shared by
//!   the tile's x rows), slower than the integer paths in compute, but half bf16's bytes.
//! - Prefill: an int8 GEMM through `vpmaddubsw` would not beat the f32 micro-kernel on
//!   AVX2 (see above), so W is dequantized into the packed GEMM's f32 panels; the packing
//!   costs 2–12 % against bf16's widening.
//! - An AVX512-VNNI `vpdpbusd` path (this host has it; the target does not) would
//!   fold sign + maddubs + madd into one op; not done.

mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod panels;
mod portable;
#[cfg(test)]
mod tests;

use std::cell::RefCell;

use crate::dtype::DType;

use super::packed_gemm::{self, WeightRows};
use super::parallel::{for_each_block, with_taken, OutPtr};

pub(crate) use panels::pack_panels;

/// Up to this many rows of `x`, the register-tiled kernels ([`avx2`]); above, the packed
/// GEMM on dequantized panels.
pub(crate) const SMALL_M: usize = 32;

/// Bytes of quantized W per task of the small-M kernels: the block stays in L2 while every
/// tile of x rows streams it.
const W_BLOCK_BYTES: usize = 128 << 10;

thread_local! {
    /// The quantized activations of the calling thread, reused across calls.
    static ACT: RefCell<act::QuantizedRows> = RefCell::new(act::QuantizedRows::default());
}

/// `out[M, N] = x[M, K] · w[N, K]ᵀ`; `w` holds `N` rows of `K / block.elems` blocks of
/// `dtype` (validated by the caller, all dims non-zero).
pub(crate) fn matmul(
    xs: &[f32],
    dtype: DType,
    w: &[u8],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        if m <= SMALL_M {
            small_m(xs, dtype, w, m, k, n, out);
            return;
        }
        if packed_gemm::available() {
            let ws = WeightRows::Quant { dtype, bytes: w };
            packed_gemm::matmul_packed(xs, ws, m, k, n, out);
            return;
        }
    }
    portable::matmul(xs, dtype, w, m, k, n, out);
}

/// W rows per task of the small-M kernels: their bytes fill [`W_BLOCK_BYTES`] (for
/// `M > 1`: with one x row nothing is reused and only balance counts), but ≥ 4 tasks
/// per thread are left for balance; a multiple of 4 (both tile heights divide it).
#[cfg(target_arch = "x86_64")]
fn w_block_rows(m: usize, row_bytes: usize, n: usize) -> usize {
    let by_balance = n.div_ceil(4 * rayon::current_num_threads());
    let rows = if m > 1 {
        by_balance.min(W_BLOCK_BYTES / row_bytes)
    } else {
        by_balance
    };
    rows.max(1).next_multiple_of(4)
}

/// The register-tiled AVX2 kernels over blocks of W rows, in parallel when worth it.
#[cfg(target_arch = "x86_64")]
fn small_m(xs: &[f32], dtype: DType, w: &[u8], m: usize, k: usize, n: usize, out: &mut [f32]) {
    let Some(block) = dtype.block() else {
        unreachable!("quant_matmul::small_m: {dtype} is not block-quantized");
    };
    let kind = match dtype {
        DType::Int8G32 => avx2::Kind::Int8,
        DType::Int4G32 => avx2::Kind::Int4,
        _ => avx2::Kind::Fp8,
    };
    let row_bytes = k / block.elems * block.bytes;
    // Checked in release too: the unsafe kernel reads x and W and writes `out` through
    // raw pointers (one check per call).
    assert!(xs.len() >= m * k && w.len() >= n * row_bytes && out.len() >= m * n);
    // Held across the parallel loop, so taken, not borrowed (see `with_taken`).
    with_taken(&ACT, |quantized| {
        if kind != avx2::Kind::Fp8 {
            quantized.resize(m, k);
            let act::QuantizedRows {
                codes,
                scales,
                sums,
            } = quantized;
            // SAFETY: `available()` was checked by the caller; the buffers were just sized
            // for [m, k], a whole number of 32-blocks (K is whole weight blocks).
            unsafe { avx2::quantize_blocks(&xs[..m * k], codes, scales, sums) };
        }
        let x = avx2::XRows {
            codes: quantized.codes.as_ptr(),
            scales: quantized.scales.as_ptr(),
            sums: quantized.sums.as_ptr(),
            values: xs.as_ptr(),
        };
        let rows = w_block_rows(m, row_bytes, n);
        let out_ptr = OutPtr(out.as_mut_ptr());
        let block_outputs = |b: usize| {
            let j = b * rows;
            let block_rows = rows.min(n - j);
            // SAFETY: `available()` was checked by the caller; x holds [m, k] (asserted
            // above) and, for the integer kinds, was quantized into `quantized` for the
            // same [m, k]; W rows j .. j + block_rows ≤ n are inside `w` (asserted above);
            // this block alone writes output columns j .. j + block_rows of the m rows
            // (row stride n) of `out`, which holds m·n (asserted above).
            unsafe {
                avx2::block_outputs(
                    kind,
                    x,
                    m,
                    k,
                    w[j * row_bytes..].as_ptr(),
                    block_rows,
                    row_bytes,
                    out_ptr.get().add(j),
                    n,
                )
            };
        };
        for_each_block(n.div_ceil(rows), rows * m * k, n * m * k, block_outputs);
    });
}
