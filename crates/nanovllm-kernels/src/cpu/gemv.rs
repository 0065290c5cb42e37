//! Small-M matmul with narrow (bf16/f16) weights: the decode hot path.
//!
//! Parallel over W rows (output features): each task owns a block of output columns.
//!
//! - bf16 on CPUs with AVX2+FMA: [`avx2`], a register-blocked kernel over L2-sized
//!   blocks of W rows (one block per task) that widens each 16-element bf16 chunk of two
//!   or three W rows once per block of up to four x rows (every weight is read from
//!   memory once per call; exact f32 accumulation), writing its columns of `[M, N]`
//!   in place.
//! - Otherwise: bf16 with `M = 1` is a fused widen-and-dot; larger `M` widens the row
//!   once into a reused thread-local scratch and dots it with each row of `x`, into a
//!   transposed `[N, M]` buffer so tasks own contiguous memory.

#[cfg(target_arch = "x86_64")]
mod avx2;

use std::cell::RefCell;

use super::check::Floats;
use super::parallel::{for_each_block, for_each_row, with_taken, OutPtr};
use super::simd::{dot_bf16, dot_f32};

thread_local! {
    /// One widened W row per thread, reused across rows and calls.
    static ROW_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// `x` split into even/odd halves for the AVX2 kernel, reused across calls.
    static X_SPLIT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[M, N] = x[M, K] · w[N, K]ᵀ` (shapes validated by the caller, all non-zero).
pub(crate) fn matmul_small_m(xs: &[f32], w: Floats, m: usize, k: usize, n: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Floats::BF16(ws) = w {
        if avx2::available() {
            blocked_bf16(xs, bytemuck::cast_slice(ws), m, k, n, out);
            return;
        }
    }
    let row_outputs = |j: usize, dst: &mut [f32]| match w {
        Floats::BF16(ws) if m == 1 => {
            dst[0] = dot_bf16(xs, bytemuck::cast_slice(&ws[j * k..(j + 1) * k]));
        }
        // No rayon call happens inside, so the scratch borrow cannot re-enter.
        _ => ROW_SCRATCH.with_borrow_mut(|scratch| {
            scratch.resize(k, 0.0);
            w.convert_range(j * k, scratch);
            for (i, d) in dst.iter_mut().enumerate() {
                *d = dot_f32(&xs[i * k..(i + 1) * k], scratch);
            }
        }),
    };
    if m == 1 {
        for_each_row(out, 1, k, row_outputs);
    } else {
        let mut out_t = super::buffer_pool::take_for_overwrite(n * m);
        for_each_row(&mut out_t, m, m * k, row_outputs);
        transpose_into(&out_t, m, out);
        super::buffer_pool::recycle_f32(out_t);
    }
}

/// `out[i, j] = out_t[j, i]` for an `[N, M]` `out_t`.
pub(super) fn transpose_into(out_t: &[f32], m: usize, out: &mut [f32]) {
    let n = out_t.len() / m;
    for (j, col) in out_t.chunks_exact(m).enumerate() {
        for (i, &value) in col.iter().enumerate() {
            out[i * n + j] = value;
        }
    }
}

/// Bytes of bf16 W per task of the blocked kernel: the block stays in L2 (512 KiB per
/// core here) while every block of x rows streams it, with room left for x itself.
#[cfg(target_arch = "x86_64")]
const W_BLOCK_BYTES: usize = 96 << 10;

/// W rows per task: their span of one pass over K fills [`W_BLOCK_BYTES`], but ≥ 4
/// tasks per thread are left for balance; a multiple of both kernel tile heights so only
/// the last block has a ragged tile.
#[cfg(target_arch = "x86_64")]
fn w_block_rows(m: usize, k: usize, n: usize) -> usize {
    let span = if m > avx2::X_ROWS {
        k.min(avx2::K_CHUNK)
    } else {
        k
    };
    let by_cache = W_BLOCK_BYTES / (2 * span);
    let by_balance = n.div_ceil(4 * rayon::current_num_threads());
    by_cache
        .min(by_balance)
        .max(1)
        .next_multiple_of(avx2::W_ROWS_MULTIPLE)
}

/// The AVX2 blocked kernel over blocks of W rows, in parallel when worth it.
#[cfg(target_arch = "x86_64")]
fn blocked_bf16(xs: &[f32], ws: &[u16], m: usize, k: usize, n: usize, out: &mut [f32]) {
    // Checked in release too: the unsafe kernel below reads x and writes `out` through
    // raw pointers (one check per call).
    assert!(xs.len() >= m * k && out.len() >= m * n);
    with_taken(&X_SPLIT, |x_split| {
        avx2::split_even_odd(xs, m, k, x_split);
        let rows = w_block_rows(m, k, n);
        let out_ptr = OutPtr(out.as_mut_ptr());
        let block_outputs = |block: usize| {
            let j = block * rows;
            let block_rows = rows.min(n - j);
            // SAFETY: `available()` was checked by the caller (`matmul_small_m`); x holds
            // [m, k] (asserted above) and `x_split` is its split copy; the W rows j..j +
            // block_rows are a bounds-checked slice; this block alone writes output
            // columns j..j + block_rows of the m rows (row stride n) of `out`, which holds
            // m·n (asserted above).
            unsafe {
                avx2::block_outputs(
                    xs,
                    x_split,
                    &ws[j * k..(j + block_rows) * k],
                    m,
                    k,
                    out_ptr.get().add(j),
                    n,
                )
            };
        };
        for_each_block(n.div_ceil(rows), rows * m * k, n * m * k, block_outputs);
    });
}

#[cfg(test)]
mod tests {
    use super::super::matmul_check::{assert_matches_f64, bf16_bits, values};
    use super::*;

    /// Every M from 1 to 40 (x-row blocks of 4 plus remainders), odd N (a lone last W
    /// row, several W blocks per call), K with and without a scalar tail, with and
    /// without a lone 16-element pair after the cache-line steps, in one, two and three
    /// passes over K (2069 = 1024 + 1045, 3100); against f64 accumulation with the
    /// tolerance `1e-5 · Σ|x·w|` (bounds the rounding of any f32 summation order).
    #[test]
    fn small_m_bf16_matches_f64_reference() {
        for (k, n) in [
            (1, 1),
            (7, 3),
            (8, 2),
            (16, 5),
            (53, 7),
            (67, 45),
            (1031, 13),
            (2069, 5),
            (3100, 7),
        ] {
            for m in 1..=40 {
                let x = values(m as u64 * 31 + k as u64, m * k);
                let w_bits = bf16_bits(&values(n as u64 * 17 + k as u64, n * k));
                let w_bf16: &[half::bf16] = bytemuck::cast_slice(&w_bits);
                let mut got = vec![f32::NAN; m * n];
                matmul_small_m(&x, Floats::BF16(w_bf16), m, k, n, &mut got);
                assert_matches_f64(&x, &w_bits, m, k, &got);
            }
        }
    }
}
