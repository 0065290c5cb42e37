//! Elementwise kernels: SiLU·mul, in-place add, bias add, and the dtype casts matmul's f32 path uses.
//! Each grid-strides over all elements, one thread per element.

use cudarc::driver::PushKernelArg;

use super::check::{dims2, expect_dtype, expect_shape, float_suffix};
use super::device::{device_buf, device_buf_mut, CudaBackend};
use super::launch::{as_i32, cuda_err, elementwise};
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;
use crate::validate;

pub(crate) fn silu_mul(be: &CudaBackend, gate_up: &Tensor) -> Result<Tensor> {
    const OP: &str = "silu_mul";
    let (rows, width) = dims2(OP, "gate_up", gate_up)?;
    expect_dtype(OP, "gate_up", gate_up, DType::BF16)?;
    if width % 2 != 0 {
        return Err(KernelError::Invalid {
            op: OP,
            msg: format!("gate_up width {width} must be even (gate ‖ up)"),
        });
    }
    let n = width / 2;
    let out = be.alloc(&[rows, n], DType::BF16)?;
    if rows == 0 || n == 0 {
        return Ok(out);
    }
    let rows_i = rows as i64;
    let n_i = as_i32(OP, "half width", n)?;
    let f = be.function("silu_mul_bf16")?;
    let mut launch = be.stream().launch_builder(&f);
    launch
        .arg(device_buf(&out, OP)?)
        .arg(device_buf(gate_up, OP)?)
        .arg(&rows_i)
        .arg(&n_i);
    // SAFETY: matches `silu_mul_bf16`; out is [rows, n], gate_up [rows, 2n].
    unsafe { launch.launch(elementwise(rows * n)) }.map_err(cuda_err(OP))?;
    Ok(out)
}

pub(crate) fn add_inplace(be: &CudaBackend, x: &mut Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "add_inplace";
    expect_shape(OP, y, x.shape())?;
    expect_dtype(OP, "x", x, DType::BF16)?;
    expect_dtype(OP, "y", y, DType::BF16)?;
    let n = x.numel();
    if n == 0 {
        return Ok(());
    }
    let n_i = n as i64;
    let f = be.function("add_inplace_bf16")?;
    let mut launch = be.stream().launch_builder(&f);
    launch
        .arg(device_buf(x, OP)?)
        .arg(device_buf(y, OP)?)
        .arg(&n_i);
    // SAFETY: matches `add_inplace_bf16`; same element count.
    unsafe { launch.launch(elementwise(n)) }.map_err(cuda_err(OP))?;
    Ok(())
}

/// `x[t, n] += bias[n]` in place (see [`crate::Backend::add_bias`]): one elementwise
/// launch, any float dtype for `x` and for `bias`.
pub(crate) fn add_bias(be: &CudaBackend, x: &mut Tensor, bias: &Tensor) -> Result<()> {
    const OP: &str = "add_bias";
    let (rows, cols) = validate::add_bias_shapes(OP, x, bias)?;
    let total = rows * cols;
    if total == 0 {
        return Ok(());
    }
    let cols_i = as_i32(OP, "bias length", cols)?;
    let total_i = total as i64;
    let f = be.function(add_bias_kernel(x.dtype(), bias.dtype()))?;
    let mut launch = be.stream().launch_builder(&f);
    launch
        .arg(device_buf_mut(x, OP)?)
        .arg(device_buf(bias, OP)?)
        .arg(&total_i)
        .arg(&cols_i);
    // SAFETY: matches `add_bias_<x>_<bias>` for these dtypes; x holds `total` elements
    // and bias `cols` (validated above), and the kernel reads bias[i % cols] only.
    unsafe { launch.launch(elementwise(total)) }.map_err(cuda_err(OP))?;
    Ok(())
}

/// The `add_bias` kernel for float dtypes of x and the bias (checked by the caller).
fn add_bias_kernel(x: DType, bias: DType) -> &'static str {
    match (float_suffix(x), float_suffix(bias)) {
        ("f32", "f32") => "add_bias_f32_f32",
        ("f32", "bf16") => "add_bias_f32_bf16",
        ("f32", _) => "add_bias_f32_f16",
        ("bf16", "f32") => "add_bias_bf16_f32",
        ("bf16", "bf16") => "add_bias_bf16_bf16",
        ("bf16", _) => "add_bias_bf16_f16",
        (_, "f32") => "add_bias_f16_f32",
        (_, "bf16") => "add_bias_f16_bf16",
        _ => "add_bias_f16_f16",
    }
}

/// A copy of a float tensor converted to `to` on the device. Supported: bf16 → f32,
/// f16 → f32 (both exact) and f32 → bf16 (round to nearest even).
pub(crate) fn cast(be: &CudaBackend, x: &Tensor, to: DType) -> Result<Tensor> {
    const OP: &str = "cast";
    let name = match (x.dtype(), to) {
        (DType::BF16, DType::F32) => "cast_bf16_f32",
        (DType::F16, DType::F32) => "cast_f16_f32",
        (DType::F32, DType::BF16) => "cast_f32_bf16",
        (from, _) => {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!("no device cast from {from} to {to}"),
            })
        }
    };
    let out = be.alloc(x.shape(), to)?;
    let n = x.numel();
    if n == 0 {
        return Ok(out);
    }
    let n_i = n as i64;
    let f = be.function(name)?;
    let mut launch = be.stream().launch_builder(&f);
    launch
        .arg(device_buf(&out, OP)?)
        .arg(device_buf(x, OP)?)
        .arg(&n_i);
    // SAFETY: matches `cast_*`; same element count.
    unsafe { launch.launch(elementwise(n)) }.map_err(cuda_err(OP))?;
    Ok(out)
}
