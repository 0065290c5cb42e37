//! Row/column plumbing: `add_inplace`, `split_last_dim`, `index_rows`.
//! Split and gather are pure copies and accept every dtype; `add_inplace` is f32.

use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::tensor::{CpuStorage, Tensor, TensorParts};

use super::buffer_pool::{self, PoolElem};
use super::check;
use super::parallel::worth_parallel;

/// Runs `$body` with `$v` bound to the typed buffer of `$storage` and `$wrap` to the
/// matching `CpuStorage` constructor, so one generic body serves every dtype.
/// Byte-backed dtypes (FP8, quantized blocks) are refused with an error naming `$op`:
/// no model splits or gathers them.
macro_rules! per_dtype {
    ($op:expr, $storage:expr, |$v:ident, $wrap:ident| $body:expr) => {
        match $storage {
            CpuStorage::Bytes { dtype, .. } => {
                return Err(KernelError::UnsupportedDType {
                    op: $op,
                    dtype: *dtype,
                })
            }
            CpuStorage::F32($v) => {
                let $wrap = CpuStorage::F32;
                $body
            }
            CpuStorage::BF16($v) => {
                let $wrap = CpuStorage::BF16;
                $body
            }
            CpuStorage::F16($v) => {
                let $wrap = CpuStorage::F16;
                $body
            }
            CpuStorage::U32($v) => {
                let $wrap = CpuStorage::U32;
                $body
            }
            CpuStorage::I64($v) => {
                let $wrap = CpuStorage::I64;
                $body
            }
        }
    };
}

pub(crate) fn add_inplace(x: &mut Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "add_inplace";
    if x.shape() != y.shape() {
        return Err(KernelError::ShapeMismatch {
            op: OP,
            lhs: x.shape().to_vec(),
            rhs: y.shape().to_vec(),
        });
    }
    let ys = check::f32s(OP, "y", y)?;
    let xs = check::f32s_mut(OP, "x", x)?;
    let add = |(a, b): (&mut [f32], &[f32])| {
        for (x, &y) in a.iter_mut().zip(b) {
            *x += y;
        }
    };
    if worth_parallel(xs.len()) {
        const CHUNK: usize = 1 << 14;
        xs.par_chunks_mut(CHUNK)
            .zip(ys.par_chunks(CHUNK))
            .for_each(add);
    } else {
        add((xs, ys));
    }
    Ok(())
}

/// Column range `offset .. offset + size` of every row of `x`, in a pooled buffer.
fn columns<T: PoolElem>(x: &[T], rows: usize, width: usize, offset: usize, size: usize) -> Vec<T> {
    let mut part = buffer_pool::take_for_overwrite(rows * size);
    if size > 0 {
        for (row, dst) in x.chunks_exact(width).zip(part.chunks_exact_mut(size)) {
            dst.copy_from_slice(&row[offset..offset + size]);
        }
    }
    part
}

pub(crate) fn split_last_dim(x: &Tensor, sizes: &[usize]) -> Result<TensorParts> {
    const OP: &str = "split_last_dim";
    let (rows, width) = check::dims2(OP, "x", x)?;
    let total: usize = sizes.iter().sum();
    if total != width {
        return Err(KernelError::Invalid {
            op: OP,
            msg: format!("sizes {sizes:?} sum to {total}, but x has {width} columns"),
        });
    }
    let xs = x.cpu(OP)?;
    let mut parts = TensorParts::new();
    let mut offset = 0;
    for &size in sizes {
        let storage = per_dtype!(OP, xs, |v, wrap| wrap(columns(
            v, rows, width, offset, size
        )));
        parts.push(Tensor::from_cpu(storage, &[rows, size])?);
        offset += size;
    }
    Ok(parts)
}

/// Rows `rows` of `x` (row length `width`), in a pooled buffer.
fn gather_rows<T: PoolElem>(x: &[T], width: usize, rows: &[u32]) -> Vec<T> {
    let mut out = buffer_pool::take_for_overwrite(rows.len() * width);
    if width > 0 {
        for (dst, &r) in out.chunks_exact_mut(width).zip(rows) {
            let start = r as usize * width;
            dst.copy_from_slice(&x[start..start + width]);
        }
    }
    out
}

pub(crate) fn index_rows(x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    const OP: &str = "index_rows";
    let (num_rows, width) = check::dims2(OP, "x", x)?;
    let picked = check::dims1(OP, "rows", rows)?;
    let rows = check::u32s(OP, "rows", rows)?;
    check::indices_below(OP, rows, num_rows)?;
    let storage = per_dtype!(OP, x.cpu(OP)?, |v, wrap| wrap(gather_rows(v, width, rows)));
    Tensor::from_cpu(storage, &[picked, width])
}
