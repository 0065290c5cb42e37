//! The host-side math of the CPU communicators, shared so that threads and
//! processes give bit-identical results: sums accumulate in f32 in rank order
//! starting from zero, and are stored back in the inputs' dtype.

use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

/// `parts[0] + parts[1] + ...` elementwise (f32, rank order), in `parts[0]`'s dtype and shape.
pub(crate) fn sum_in_rank_order(parts: &[Tensor]) -> Result<Tensor> {
    let Some(first) = parts.first() else {
        return Err(KernelError::Comm("all_reduce_sum over no ranks".into()));
    };
    let mut sum = vec![0f32; first.numel()];
    for (rank, part) in parts.iter().enumerate() {
        if part.shape() != first.shape() || part.dtype() != first.dtype() {
            return Err(mismatch("all_reduce_sum", rank, first, part));
        }
        for (s, v) in sum.iter_mut().zip(part.to_vec_f32()?) {
            *s += v;
        }
    }
    in_dtype(Tensor::from_f32(sum, first.shape())?, first)
}

/// Concatenates `parts[r]: [M, N_r]` along the last dim in rank order → `[M, sum N_r]`,
/// in `parts[0]`'s dtype.
pub(crate) fn concat_last_dim(parts: &[Tensor]) -> Result<Tensor> {
    let Some(first) = parts.first() else {
        return Err(KernelError::Comm(
            "all_gather_last_dim over no ranks".into(),
        ));
    };
    let (rows, _) = first.dims2()?;
    let mut widths = Vec::with_capacity(parts.len());
    let mut data = Vec::with_capacity(parts.len());
    for (rank, part) in parts.iter().enumerate() {
        let (r, w) = part.dims2()?;
        if r != rows || part.dtype() != first.dtype() {
            return Err(mismatch("all_gather_last_dim", rank, first, part));
        }
        widths.push(w);
        data.push(part.to_vec_f32()?);
    }
    let total: usize = widths.iter().sum();
    let mut out = Vec::with_capacity(rows * total);
    for r in 0..rows {
        for (d, &w) in data.iter().zip(&widths) {
            out.extend_from_slice(&d[r * w..(r + 1) * w]);
        }
    }
    in_dtype(Tensor::from_f32(out, &[rows, total])?, first)
}

/// Row order that turns a rank-major gather `[W·M, N]` (rank `r`'s rows at `r·M..`) into
/// `[M·W, N]` = `[M, W·N]`, the last-dim concatenation: row `m·W + r` takes row `r·M + m`.
/// Lets a device communicator finish `all_gather_last_dim` with one `index_rows`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn interleave_ranks_order(rows: usize, world: usize) -> Vec<u32> {
    (0..rows)
        .flat_map(|m| (0..world).map(move |r| (r * rows + m) as u32))
        .collect()
}

/// `t` (f32) converted to `like`'s dtype, without a copy when that is f32.
fn in_dtype(t: Tensor, like: &Tensor) -> Result<Tensor> {
    if like.dtype() == DType::F32 {
        return Ok(t);
    }
    t.to_dtype_cpu(like.dtype())
}

fn mismatch(op: &str, rank: usize, first: &Tensor, part: &Tensor) -> KernelError {
    KernelError::Comm(format!(
        "{op}: rank {rank} contributed a {} tensor of shape {:?}, rank 0 a {} tensor of \
         shape {:?}; every rank must call the same collective on matching tensors",
        part.dtype(),
        part.shape(),
        first.dtype(),
        first.shape()
    ))
}
