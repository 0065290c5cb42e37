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
    launch_norm(be, "rms_norm", "rms_norm_w", x, None, weight, eps)
}

pub(crate) fn add_rms_norm(
    be: &CudaBackend,
    x: &Tensor,
    residual: &mut Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    // The kernel writes `residual` in place through its device pointer.
    launch_norm(
        be,
        "add_rms_norm",
        "add_rms_norm_w",
        x,
        Some(&*residual),
        weight,
        eps,
    )
}

/// Validates and launches `{kernel}{weight dtype}`. With a `residual` (the fused
/// variant, which must be bf16 shaped like `x`) the kernel takes it between the output
/// and `x`, as in dense.cu.
fn launch_norm(
    be: &CudaBackend,
    op: &'static str,
    kernel: &str,
    x: &Tensor,
    residual: Option<&Tensor>,
    weight: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let (rows, cols) = check(op, x, weight)?;
    if let Some(residual) = residual {
        expect_dtype(op, "residual", residual, DType::BF16)?;
        expect_shape(op, residual, x.shape())?;
    }
    let out = be.alloc(x.shape(), DType::BF16)?;
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    let cols_i = as_i32(op, "columns", cols)?;
    let f = be.function(&format!("{kernel}{}", float_suffix(weight.dtype())))?;
    let mut launch = be.stream().launch_builder(&f);
    launch.arg(device_buf(&out, op)?);
    if let Some(residual) = residual {
        launch.arg(device_buf(residual, op)?);
    }
    launch
        .arg(device_buf(x, op)?)
        .arg(device_buf(weight, op)?)
        .arg(&cols_i)
        .arg(&eps);
    let cfg = per_row(op, rows, row_threads(cols))?;
    // SAFETY: matches `rms_norm_w*` / `add_rms_norm_w*` in dense.cu (the latter takes the
    // residual second and updates it in place); shapes validated above.
    unsafe { launch.launch(cfg) }.map_err(cuda_err(op))?;
    Ok(out)
}
