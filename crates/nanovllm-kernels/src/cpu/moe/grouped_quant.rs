//! The grouped expert product with block-quantized weights: `out[r] = x[r] · W_{e(r)}ᵀ`
//! for `w: [E, N, K]` Int8G32 / Int4G32 / Fp8G128 (each expert `N` rows of `K / elems`
//! blocks, experts back to back), one [`quant_matmul::matmul`] per expert that owns rows,
//! on its contiguous rows. Each call parallelises over the expert's W rows and picks its
//! path by the expert's row count (register-tiled kernels up to
//! [`quant_matmul::SMALL_M`] rows, the packed GEMM above), so an expert's result is that
//! of a dense quantized matmul on its rows, bit for bit; experts without rows are not
//! read.

use crate::dtype::DType;

use super::super::quant_matmul;
use super::grouped_gemm::GroupedShape;

/// `out[r] = x[r] · W_{e(r)}ᵀ` (shapes validated by the caller; `dtype` block-quantized,
/// `K` a whole number of its blocks).
pub(super) fn grouped_quant_matmul(
    x: &[f32],
    dtype: DType,
    w: &[u8],
    shape: GroupedShape,
    out: &mut [f32],
) {
    let Some(block) = dtype.block() else {
        unreachable!("grouped_quant_matmul: {dtype} is not block-quantized");
    };
    let GroupedShape { offsets, n, k } = shape;
    let expert_bytes = n * (k / block.elems) * block.bytes;
    for (e, rows) in offsets.windows(2).enumerate() {
        let (r0, r1) = (rows[0], rows[1]);
        if r0 == r1 || n == 0 || k == 0 {
            continue;
        }
        quant_matmul::matmul(
            &x[r0 * k..r1 * k],
            dtype,
            &w[e * expert_bytes..(e + 1) * expert_bytes],
            r1 - r0,
            k,
            n,
            &mut out[r0 * n..r1 * n],
        );
    }
}
