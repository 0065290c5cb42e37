//! RMSNorm and the fused residual-add + RMSNorm (`rms_norm_w*`, `add_rms_norm_w*`):
//! one block per row, sum of squares reduced in f32. The weight may be f32, bf16 or f16.

use cudarc::driver::PushKernelArg;

use super::check::{dims2, expect_dtype, expect_float, expect_shape, float_suffix};
use super::device::{device_buf, CudaBackend};
use super::launch::{as_i32, cuda_err, per_row, row_threads};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

/// Validates `x: bf16 [M, N]` and `weight: [N]`; returns `(M, N)`.
fn check(op: &'static str, x: &Tensor, weight: &Tensor) -> Result<(usize, usize)> {
    let (rows, cols) = dims2(op, "x", x)?;
    expect_dtype(op, "x", x, DType::BF16)?;
    expect_float(op, "weight", weight)?;
    expect_shape(op, weight, &[cols])?;
    Ok((rows, cols))
}

pub(crate) fn rms_norm(be: &CudaBackend, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    let (rows, cols) = check(OP, x, weight)?;
    let out = be.alloc(x.shape(), DType::BF16)?;
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    let cols_i = as_i32(OP, "columns", cols)?;
    let f = be.function(&format!("rms_norm_w{}", float_suffix(weight.dtype())))?;
    let mut launch = be.stream().launch_builder(&f);
    launch
        .arg(device_buf(&out, OP)?)
        .arg(device_buf(x, OP)?)
        .arg(device_buf(weight, OP)?)
        .arg(&cols_i)
        .arg(&eps);
    let cfg = per_row(OP, rows, row_threads(cols))?;
    // SAFETY: matches `rms_norm_w*` in dense.cu; shapes validated above.
    unsafe { launch.launch(cfg) }.map_err(cuda_err(OP))?;
    Ok(out)
}

pub(crate) fn add_rms_norm(
    be: &CudaBackend,
    x: &Tensor,
    residual: &mut Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    const OP: &str = "add_rms_norm";
    let (rows, cols) = check(OP, x, weight)?;
    expect_dtype(OP, "residual", residual, DType::BF16)?;
    expect_shape(OP, residual, x.shape())?;
    let out = be.alloc(x.shape(), DType::BF16)?;
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    let cols_i = as_i32(OP, "columns", cols)?;
    let f = be.function(&format!("add_rms_norm_w{}", float_suffix(weight.dtype())))?;
    let mut launch = be.stream().launch_builder(&f);
    launch
        .arg(device_buf(&out, OP)?)
        .arg(device_buf(residual, OP)?)
        .arg(device_buf(x, OP)?)
        .arg(device_buf(weight, OP)?)
        .arg(&cols_i)
        .arg(&eps);
    let cfg = per_row(OP, rows, row_threads(cols))?;
    // SAFETY: matches `add_rms_norm_w*` in dense.cu; the kernel writes `residual` in place.
    unsafe { launch.launch(cfg) }.map_err(cuda_err(OP))?;
    Ok(out)
}
