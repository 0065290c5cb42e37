//! RMSNorm as in Hugging Face: `x · 1/sqrt(mean(x²) + eps) · weight`, all in f32.
//! `x: f32 [M, N]`, `weight: [N]` in any float dtype (widened once per call: N values).

use rayon::prelude::*;

use crate::error::Result;
use crate::tensor::Tensor;

use super::buffer_pool;
use super::check::{self, Floats};
use super::parallel::{for_each_row, min_items, worth_parallel};
use super::simd::sum_squares;

/// The norm weight as f32 (a vector of `N`, not a matrix, so widening it is cheap), in a
/// pooled buffer that the caller hands back with [`buffer_pool::recycle_f32`].
fn weight_f32(op: &'static str, weight: &Tensor, n: usize) -> Result<Vec<f32>> {
    check::dims1(op, "weight", weight)?;
    check::expect_shape(op, weight, &[n])?;
    let w: Floats = check::floats(op, "weight", weight)?;
    let mut out = buffer_pool::take_for_overwrite(n);
    w.convert_range(0, &mut out);
    Ok(out)
}

/// Normalises one row: `out = x / rms(x) * weight`.
#[inline]
fn norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean_square = sum_squares(x) / x.len() as f32;
    let inv_rms = 1.0 / (mean_square + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(weight) {
        *o = xi * inv_rms * wi;
    }
}

pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    let (m, n) = check::dims2(OP, "x", x)?;
    let xs = check::f32s(OP, "x", x)?;
    let w = weight_f32(OP, weight, n)?;
    let mut out = buffer_pool::take_for_overwrite(m * n);
    for_each_row(&mut out, n, 3 * n, |i, row| {
        norm_row(&xs[i * n..(i + 1) * n], &w, eps, row)
    });
    buffer_pool::recycle_f32(w);
    Tensor::from_f32(out, &[m, n])
}

/// `residual += x`, then returns `rms_norm(residual)`.
pub(crate) fn add_rms_norm(
    x: &Tensor,
    residual: &mut Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    const OP: &str = "add_rms_norm";
    let (m, n) = crate::validate::add_rms_norm_shapes(OP, x, residual, weight)?;
    let xs = check::f32s(OP, "x", x)?;
    let w = weight_f32(OP, weight, n)?;
    let res = check::f32s_mut(OP, "residual", residual)?;

    let mut out = buffer_pool::take_for_overwrite(m * n);
    if n == 0 {
        return Tensor::from_f32(out, &[m, n]);
    }
    let body = |(i, (res_row, out_row)): (usize, (&mut [f32], &mut [f32]))| {
        for (r, &xi) in res_row.iter_mut().zip(&xs[i * n..(i + 1) * n]) {
            *r += xi;
        }
        norm_row(res_row, &w, eps, out_row);
    };
    let cost_per_row = 4 * n;
    if worth_parallel(m * cost_per_row) {
        res.par_chunks_exact_mut(n)
            .zip(out.par_chunks_exact_mut(n))
            .enumerate()
            .with_min_len(min_items(cost_per_row))
            .for_each(body);
    } else {
        res.chunks_exact_mut(n)
            .zip(out.chunks_exact_mut(n))
            .enumerate()
            .for_each(body);
    }
    buffer_pool::recycle_f32(w);
    Tensor::from_f32(out, &[m, n])
}
