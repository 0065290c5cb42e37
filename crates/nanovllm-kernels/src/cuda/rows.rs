//! Row/column plumbing: `split_last_dim` (`copy_cols_*`) and `index_rows`
//! (`gather_rows_*`). Pure copies, by element size, so any dtype works.
//!
//! Row indices are checked through their known value range (`CudaBackend::index_range`)
//! unless a graph is being captured; the kernel writes zeros for an out-of-range row
//! instead of reading out of bounds.

use cudarc::driver::PushKernelArg;

use super::check::{dims1, dims2, expect_dtype};
use super::device::{device_buf, CudaBackend};
use super::launch::{as_i32, cuda_err, elementwise};
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::{Tensor, TensorParts};

pub(crate) fn split_last_dim(be: &CudaBackend, x: &Tensor, sizes: &[usize]) -> Result<TensorParts> {
    const OP: &str = "split_last_dim";
    let (rows, cols) = dims2(OP, "x", x)?;
    let total: usize = sizes.iter().sum();
    if total != cols {
        return Err(KernelError::Invalid {
            op: OP,
            msg: format!("sizes {sizes:?} sum to {total}, but x has {cols} columns"),
        });
    }
    let cols_i = as_i32(OP, "columns", cols)?;
    let f = be.function(&format!("copy_cols_{}", x.dtype().size_in_bytes()))?;
    let rows_i = rows as i64;
    let mut parts = TensorParts::new();
    let mut offset = 0usize;
    for &size in sizes {
        let part = be.alloc(&[rows, size], x.dtype())?;
        if rows > 0 && size > 0 {
            let offset_i = as_i32(OP, "column offset", offset)?;
            let size_i = as_i32(OP, "part width", size)?;
            let mut launch = be.stream().launch_builder(&f);
            launch
                .arg(device_buf(&part, OP)?)
                .arg(device_buf(x, OP)?)
                .arg(&rows_i)
                .arg(&cols_i)
                .arg(&offset_i)
                .arg(&size_i);
            // SAFETY: matches `copy_cols_*`; offset + size ≤ cols (sizes sum to cols).
            unsafe { launch.launch(elementwise(rows * size)) }.map_err(cuda_err(OP))?;
        }
        parts.push(part);
        offset += size;
    }
    Ok(parts)
}

pub(crate) fn index_rows(be: &CudaBackend, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    const OP: &str = "index_rows";
    let (num_rows, cols) = dims2(OP, "x", x)?;
    let num_out = dims1(OP, "rows", rows)?;
    expect_dtype(OP, "rows", rows, DType::U32)?;
    if let Some((_, max)) = be.index_range(rows, OP)? {
        if max as usize >= num_rows {
            return Err(KernelError::IndexOutOfRange {
                op: OP,
                index: max as usize,
                size: num_rows,
            });
        }
    }
    let out = be.alloc(&[num_out, cols], x.dtype())?;
    if num_out == 0 || cols == 0 {
        return Ok(out);
    }
    let num_out_i = num_out as i64;
    let cols_i = as_i32(OP, "columns", cols)?;
    let src_rows_i = as_i32(OP, "rows of x", num_rows)?;
    let f = be.function(&format!("gather_rows_{}", x.dtype().size_in_bytes()))?;
    let mut launch = be.stream().launch_builder(&f);
    launch
        .arg(device_buf(&out, OP)?)
        .arg(device_buf(x, OP)?)
        .arg(device_buf(rows, OP)?)
        .arg(&num_out_i)
        .arg(&cols_i)
        .arg(&src_rows_i);
    // SAFETY: matches `gather_rows_*`; the kernel bounds-checks every row index.
    unsafe { launch.launch(elementwise(num_out * cols)) }.map_err(cuda_err(OP))?;
    Ok(out)
}
