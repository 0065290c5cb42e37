//! Small-M matmul with narrow (bf16/f16) weights: the decode hot path.
//!
//! Parallel over W rows (output features). Each task computes the `M` outputs of one W
//! row into a transposed `[N, M]` buffer, so tasks own contiguous memory. bf16 with
//! `M = 1` is a fused widen-and-dot; otherwise the row is widened once into a reused
//! thread-local scratch and dotted with each row of `x`.

use std::cell::RefCell;

use super::check::Floats;
use super::parallel::for_each_row;
use super::simd::{dot_bf16, dot_f32};

thread_local! {
    /// One widened W row per thread, reused across rows and calls.
    static ROW_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[M, N] = x[M, K] · w[N, K]ᵀ` (shapes validated by the caller, all non-zero).
pub(crate) fn matmul_small_m(xs: &[f32], w: Floats, m: usize, k: usize, n: usize, out: &mut [f32]) {
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
        let mut out_t = vec![0.0f32; n * m];
        for_each_row(&mut out_t, m, m * k, row_outputs);
        for (j, col) in out_t.chunks_exact(m).enumerate() {
            for (i, &value) in col.iter().enumerate() {
                out[i * n + j] = value;
            }
        }
    }
}
