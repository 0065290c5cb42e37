//! The portable path of the quantized matmul (no AVX2+FMA+F16C): parallel over W rows; each task dequantizes its row once into a
//! reused thread-local f32 scratch (one row, never the matrix) and dots it with every row
//! of `x`, into a transposed `[N, M]` buffer so tasks own contiguous memory.

use std::cell::RefCell;

use crate::dtype::DType;
use crate::quant::dequantize_block;

use super::super::buffer_pool;
use super::super::parallel::for_each_row;
use super::super::simd::dot_f32;

thread_local! {
    /// One dequantized W row per thread, reused across rows and calls.
    static ROW_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[M, N] = x[M, K] · w[N, K]ᵀ`; `w` holds `N` rows of `K / block.elems` blocks of
/// `dtype` (validated by the caller, all dims non-zero).
pub(super) fn matmul(
    xs: &[f32],
    dtype: DType,
    w: &[u8],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    let Some(block) = dtype.block() else {
        unreachable!("quant_matmul::portable::matmul: {dtype} is not block-quantized");
    };
    let row_bytes = k / block.elems * block.bytes;
    let row_outputs = |j: usize, dst: &mut [f32]| {
        // No rayon call happens inside, so the scratch borrow cannot re-enter.
        ROW_SCRATCH.with_borrow_mut(|scratch| {
            scratch.resize(k, 0.0);
            let row = &w[j * row_bytes..(j + 1) * row_bytes];
            for (src, dst) in row
                .chunks_exact(block.bytes)
                .zip(scratch.chunks_exact_mut(block.elems))
            {
                dequantize_block(dtype, src, dst);
            }
            for (i, d) in dst.iter_mut().enumerate() {
                *d = dot_f32(&xs[i * k..(i + 1) * k], scratch);
            }
        })
    };
    let mut out_t = buffer_pool::take_for_overwrite(n * m);
    for_each_row(&mut out_t, m, m * k, row_outputs);
    super::super::gemv::transpose_into(&out_t, m, out);
    buffer_pool::recycle_f32(out_t);
}
