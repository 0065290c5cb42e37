//! Token embedding (`embedding_*` kernels): one block per token copies its table row,
//! converted to bf16.
//!
//! Id validation: an id ≥ V is an error (reporting the largest id). The check uses the
//! ids' value range recorded when they were copied from the host, or else one small
//! device-to-host copy (the GPU is idle at the start of a step). While a graph is being
//! captured the check is skipped (replay data is unknown; the engine validates ids on
//! admission) and the kernel writes zeros for an out-of-range id instead of reading out
//! of bounds.

use cudarc::driver::PushKernelArg;

use super::check::{dims1, dims2, expect_dtype, expect_float, float_suffix};
use super::device::{device_buf, CudaBackend};
use super::launch::{as_i32, cuda_err, per_row, row_threads};
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

pub(crate) fn embedding(be: &CudaBackend, ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    let (vocab, _) = dims2(OP, "table", table)?;
    expect_dtype(OP, "ids", ids, DType::U32)?;
    if let Some((_, max)) = be.index_range(ids, OP)? {
        if max as usize >= vocab {
            return Err(KernelError::IndexOutOfRange {
                op: OP,
                index: max as usize,
                size: vocab,
            });
        }
    }
    lookup(be, OP, ids, table, 0)
}

pub(crate) fn embedding_shard(
    be: &CudaBackend,
    ids: &Tensor,
    table: &Tensor,
    vocab_start: usize,
) -> Result<Tensor> {
    lookup(be, "embedding_shard", ids, table, vocab_start)
}

/// `out[t] = table[ids[t] - vocab_start]`, zeros where that row is outside the table.
fn lookup(
    be: &CudaBackend,
    op: &'static str,
    ids: &Tensor,
    table: &Tensor,
    vocab_start: usize,
) -> Result<Tensor> {
    let num_tokens = dims1(op, "ids", ids)?;
    expect_dtype(op, "ids", ids, DType::U32)?;
    let (rows, hidden) = dims2(op, "table", table)?;
    expect_float(op, "table", table)?;
    let out = be.alloc(&[num_tokens, hidden], DType::BF16)?;
    if num_tokens == 0 || hidden == 0 {
        return Ok(out);
    }
    let hidden_i = as_i32(op, "hidden size", hidden)?;
    let rows_i = as_i32(op, "table rows", rows)?;
    let vocab_start = i64::try_from(vocab_start).map_err(|_| KernelError::Invalid {
        op,
        msg: format!("vocab_start {vocab_start} is too large"),
    })?;
    let f = be.function(&format!("embedding_{}", float_suffix(table.dtype())))?;
    let mut launch = be.stream().launch_builder(&f);
    launch
        .arg(device_buf(&out, op)?)
        .arg(device_buf(table, op)?)
        .arg(device_buf(ids, op)?)
        .arg(&hidden_i)
        .arg(&vocab_start)
        .arg(&rows_i);
    let cfg = per_row(op, num_tokens, row_threads(hidden))?;
    // SAFETY: argument types match `embedding_*` in dense.cu; out is [num_tokens, hidden],
    // the table [rows, hidden]; the kernel bounds-checks every id.
    unsafe { launch.launch(cfg) }.map_err(cuda_err(op))?;
    Ok(out)
}
