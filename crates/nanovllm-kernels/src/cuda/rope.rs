//! Neox rotary embedding in place (`rope_cs*`): one block per token, each thread rotating
//! (i, i + head_dim/2) pairs. The cos/sin table may be f32 or bf16.
//!
//! Positions are checked against the table through their known value range
//! (`CudaBackend::index_range`) unless a graph is being captured; the kernel skips a token
//! whose position is out of range rather than reading past the table.

use cudarc::driver::PushKernelArg;

use super::check::{dims1, dims2, expect_dtype, expect_shape};
use super::device::{device_buf, CudaBackend};
use super::launch::{as_i32, cuda_err, per_row, row_threads};
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

pub(crate) fn rope(
    be: &CudaBackend,
    x: &mut Tensor,
    positions: &Tensor,
    cos_sin: &Tensor,
    head_dim: usize,
) -> Result<()> {
    const OP: &str = "rope";
    let (num_tokens, width) = dims2(OP, "x", x)?;
    expect_dtype(OP, "x", x, DType::BF16)?;
    if head_dim == 0 || head_dim % 2 != 0 || width % head_dim != 0 {
        return Err(KernelError::Invalid {
            op: OP,
            msg: format!(
                "head_dim {head_dim} must be even, non-zero and divide the row width {width}"
            ),
        });
    }
    let (max_positions, _) = dims2(OP, "cos_sin", cos_sin)?;
    expect_shape(OP, cos_sin, &[max_positions, head_dim])?;
    let suffix = match cos_sin.dtype() {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        got => {
            return Err(KernelError::WrongDType {
                op: OP,
                arg: "cos_sin",
                expected: "f32 or bf16",
                got,
            })
        }
    };
    dims1(OP, "positions", positions)?;
    expect_shape(OP, positions, &[num_tokens])?;
    expect_dtype(OP, "positions", positions, DType::U32)?;
    if let Some((_, max)) = be.index_range(positions, OP)? {
        if max as usize >= max_positions {
            return Err(KernelError::IndexOutOfRange {
                op: OP,
                index: max as usize,
                size: max_positions,
            });
        }
    }
    if num_tokens == 0 || width == 0 {
        return Ok(());
    }
    let heads = as_i32(OP, "heads", width / head_dim)?;
    let head_dim_i = as_i32(OP, "head_dim", head_dim)?;
    let max_positions_i = as_i32(OP, "max_positions", max_positions)?;
    let f = be.function(&format!("rope_cs{suffix}"))?;
    let mut launch = be.stream().launch_builder(&f);
    launch
        .arg(device_buf(x, OP)?)
        .arg(device_buf(positions, OP)?)
        .arg(device_buf(cos_sin, OP)?)
        .arg(&heads)
        .arg(&head_dim_i)
        .arg(&max_positions_i);
    // One thread per rotated pair (width / 2 of them): row_threads gives cols / 4.
    let threads = row_threads(2 * width);
    let cfg = per_row(OP, num_tokens, threads)?;
    // SAFETY: matches `rope_cs*` in dense.cu; x is [num_tokens, heads * head_dim].
    unsafe { launch.launch(cfg) }.map_err(cuda_err(OP))?;
    Ok(())
}
