//! Row/column plumbing: `add_inplace`, `split_last_dim`, `index_rows`.
//! Split and gather are pure copies and accept every dtype; `add_inplace` is f32.

use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::tensor::{CpuStorage, Tensor};

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

fn split_rows<T: Copy>(x: &[T], rows: usize, width: usize, sizes: &[usize]) -> Vec<Vec<T>> {
    let mut offset = 0;
    sizes
        .iter()
        .map(|&size| {
            let mut part = Vec::with_capacity(rows * size);
            for r in 0..rows {
                let start = r * width + offset;
                part.extend_from_slice(&x[start..start + size]);
            }
            offset += size;
            part
        })
        .collect()
}

pub(crate) fn split_last_dim(x: &Tensor, sizes: &[usize]) -> Result<Vec<Tensor>> {
    const OP: &str = "split_last_dim";
    let (rows, width) = check::dims2(OP, "x", x)?;
    let total: usize = sizes.iter().sum();
    if total != width {
        return Err(KernelError::Invalid {
            op: OP,
            msg: format!("sizes {sizes:?} sum to {total}, but x has {width} columns"),
        });
    }
    let parts: Vec<CpuStorage> = per_dtype!(x.cpu(OP)?, |v, wrap| {
        split_rows(v, rows, width, sizes)
            .into_iter()
            .map(wrap)
            .collect()
    });
    parts
        .into_iter()
        .zip(sizes)
        .map(|(storage, &size)| Tensor::from_cpu(storage, &[rows, size]))
        .collect()
}

fn gather_rows<T: Copy>(x: &[T], width: usize, rows: &[u32]) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        let start = r as usize * width;
        out.extend_from_slice(&x[start..start + width]);
    }
    out
}

pub(crate) fn index_rows(x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    const OP: &str = "index_rows";
    let (num_rows, width) = check::dims2(OP, "x", x)?;
    let picked = check::dims1(OP, "rows", rows)?;
    let rows = check::u32s(OP, "rows", rows)?;
    check::indices_below(OP, rows, num_rows)?;
    let storage = per_dtype!(x.cpu(OP)?, |v, wrap| wrap(gather_rows(v, width, rows)));
    Tensor::from_cpu(storage, &[picked, width])
}
