//! Row/column plumbing: `add_inplace`, `split_last_dim`, `index_rows`.
//! Split and gather are pure copies and accept every dtype; `add_inplace` is f32.

use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::tensor::{CpuStorage, Tensor, TensorParts};

use super::buffer_pool;
use super::check;
use super::parallel::worth_parallel;

/// Runs `$body` with `$v` bound to the typed buffer of `$storage` and `$wrap` to the
/// matching `CpuStorage` constructor, so one generic body serves every dtype.
macro_rules! per_dtype {
    ($storage:expr, |$v:ident, $wrap:ident| $body:expr) => {
        match $storage {
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

/// Column range `offset .. offset + size` of every row of `x`, into `part`.
fn copy_columns<T: Copy>(x: &[T], width: usize, offset: usize, size: usize, part: &mut [T]) {
    if size == 0 {
        return;
    }
    for (row, dst) in x.chunks_exact(width).zip(part.chunks_exact_mut(size)) {
        dst.copy_from_slice(&row[offset..offset + size]);
    }
}

/// [`copy_columns`] into a new vector (dtypes the buffer pool does not serve).
fn columns<T: Copy>(x: &[T], width: usize, offset: usize, size: usize) -> Vec<T> {
    if size == 0 {
        return Vec::new();
    }
    x.chunks_exact(width)
        .flat_map(|row| &row[offset..offset + size])
        .copied()
        .collect()
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
        let storage = match xs {
            // Activations: the parts' buffers come from the pool.
            CpuStorage::F32(v) => {
                let mut part = buffer_pool::take_f32(rows * size);
                copy_columns(v, width, offset, size, &mut part);
                CpuStorage::F32(part)
            }
            other => per_dtype!(other, |v, wrap| wrap(columns(v, width, offset, size))),
        };
        parts.push(Tensor::from_cpu(storage, &[rows, size])?);
        offset += size;
    }
    Ok(parts)
}

fn gather_rows<T: Copy>(x: &[T], width: usize, rows: &[u32], out: &mut Vec<T>) {
    out.clear();
    for &r in rows {
        let start = r as usize * width;
        out.extend_from_slice(&x[start..start + width]);
    }
}

pub(crate) fn index_rows(x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    const OP: &str = "index_rows";
    let (num_rows, width) = check::dims2(OP, "x", x)?;
    let picked = check::dims1(OP, "rows", rows)?;
    let rows = check::u32s(OP, "rows", rows)?;
    check::indices_below(OP, rows, num_rows)?;
    let storage = match x.cpu(OP)? {
        CpuStorage::F32(v) => {
            let mut out = buffer_pool::take_f32(picked * width);
            gather_rows(v, width, rows, &mut out);
            CpuStorage::F32(out)
        }
        other => per_dtype!(other, |v, wrap| {
            let mut out = Vec::with_capacity(picked * width);
            gather_rows(v, width, rows, &mut out);
            wrap(out)
        }),
    };
    Tensor::from_cpu(storage, &[picked, width])
}
