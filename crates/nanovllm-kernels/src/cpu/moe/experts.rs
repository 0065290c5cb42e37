//! `moe_experts`: the grouped expert computation of a sparse MoE block.
//!
//! ```text
//! pairs (t, j) → bucket by e = topk_ids[t, j]      stable counting sort: offsets[E + 1]
//! xs[p]   = x[token(p)]                            gather, [P, H] with P = T·k
//! gu      = grouped xs · w13[e]ᵀ                   [P, 2I]
//! act     = silu(gu[:, ..I]) · gu[:, I..]          [P, I]
//! ys      = grouped act · w2[e]ᵀ                   [P, H]
//! out[t]  = Σ_j topk_weights[t, j] · ys[slot(t, j)] in j order, [T, H]
//! ```
//! Every step is linear in the number of routed pairs; experts without pairs get no work.
//! `w13` and `w2` are each f32, bf16, f16 or block-quantized ([`crate::quant`]; `K` whole
//! blocks, which [`Tensor::from_bytes`] guarantees).

use std::cell::RefCell;

use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::{CpuStorage, Tensor};
use crate::validate::moe::{expert_shapes, ExpertDims};

use super::super::activation::silu_mul;
use super::super::buffer_pool;
use super::super::check::{self, Floats};
use super::super::parallel::{for_each_row, with_taken};
use super::grouped_gemm::{grouped_matmul, GroupedShape};
use super::grouped_quant::grouped_quant_matmul;

const OP: &str = "moe_experts";

/// The (token, slot) pairs bucketed by expert.
#[derive(Default)]
struct Buckets {
    /// `E + 1` offsets: expert `e`'s pairs are `offsets[e] .. offsets[e + 1]`.
    offsets: Vec<usize>,
    /// Per sorted pair, its token.
    tokens: Vec<usize>,
    /// Per pair `t·k + j`, its position in the sorted order.
    position: Vec<usize>,
    /// Each expert's next free position while sorting.
    next: Vec<usize>,
}

thread_local! {
    /// The buckets of a call, reused across calls.
    static BUCKETS: RefCell<Buckets> = RefCell::new(Buckets::default());
}

/// Stable counting sort of the pairs by expert id (ids validated `< experts`), into `b`.
fn bucket_by_expert(ids: &[u32], top_k: usize, experts: usize, b: &mut Buckets) {
    let Buckets {
        offsets,
        next,
        tokens,
        position,
    } = b;
    offsets.clear();
    offsets.resize(experts + 1, 0);
    for &e in ids {
        offsets[e as usize + 1] += 1;
    }
    for e in 0..experts {
        offsets[e + 1] += offsets[e];
    }
    next.clear();
    next.extend_from_slice(offsets);
    tokens.clear();
    tokens.resize(ids.len(), 0);
    position.clear();
    position.resize(ids.len(), 0);
    for (pair, &e) in ids.iter().enumerate() {
        let p = next[e as usize];
        next[e as usize] += 1;
        tokens[p] = pair / top_k;
        position[pair] = p;
    }
}

pub(crate) fn moe_experts(
    x: &Tensor,
    w13: &Tensor,
    w2: &Tensor,
    topk_ids: &Tensor,
    topk_weights: &Tensor,
) -> Result<Tensor> {
    let dims = expert_shapes(OP, x, w13, w2, topk_ids, topk_weights)?;
    let xs = check::f32s(OP, "x", x)?;
    let w13s = expert_weights("w13", w13)?;
    let w2s = expert_weights("w2", w2)?;
    let ids = check::u32s(OP, "topk_ids", topk_ids)?;
    let weights = check::f32s(OP, "topk_weights", topk_weights)?;
    check::indices_below(OP, ids, dims.experts)?;

    // Taken, not borrowed: the buckets outlive parallel loops (see `with_taken`).
    with_taken(&BUCKETS, |buckets| {
        bucket_by_expert(ids, dims.top_k, dims.experts, buckets);
        combine_experts(xs, w13s, w2s, weights, dims, buckets)
    })
}

/// The gather, the two grouped products and the weighted sum, over sorted `buckets`.
fn combine_experts(
    xs: &[f32],
    w13s: ExpertWeights,
    w2s: ExpertWeights,
    weights: &[f32],
    dims: ExpertDims,
    buckets: &Buckets,
) -> Result<Tensor> {
    let ExpertDims {
        tokens,
        hidden,
        intermediate,
        top_k,
        ..
    } = dims;
    let pairs = tokens * top_k;
    let mut gathered = buffer_pool::take_for_overwrite(pairs * hidden);
    for_each_row(&mut gathered, hidden, hidden, |p, row| {
        let t = buckets.tokens[p];
        row.copy_from_slice(&xs[t * hidden..(t + 1) * hidden]);
    });
    let gate_up = grouped(&gathered, w13s, &buckets.offsets, 2 * intermediate, hidden);
    buffer_pool::recycle_f32(gathered);
    let act = silu_mul(&Tensor::from_f32(gate_up, &[pairs, 2 * intermediate])?)?;
    let ys = grouped(
        check::f32s(OP, "act", &act)?,
        w2s,
        &buckets.offsets,
        hidden,
        intermediate,
    );

    let mut out = buffer_pool::take_zeroed(tokens * hidden);
    for_each_row(&mut out, hidden, top_k * hidden, |t, row| {
        for j in 0..top_k {
            let weight = weights[t * top_k + j];
            let p = buckets.position[t * top_k + j];
            for (o, &y) in row.iter_mut().zip(&ys[p * hidden..(p + 1) * hidden]) {
                *o += weight * y;
            }
        }
    });
    buffer_pool::recycle_f32(ys);
    Tensor::from_f32(out, &[tokens, hidden])
}

/// An expert weight operand: float, or block-quantized bytes.
#[derive(Clone, Copy)]
enum ExpertWeights<'a> {
    Floats(Floats<'a>),
    Quant { dtype: DType, bytes: &'a [u8] },
}

/// `t` as an expert weight: a float tensor, or a block-quantized one whose last dim
/// (the product's K) is whole blocks.
fn expert_weights<'a>(arg: &'static str, t: &'a Tensor) -> Result<ExpertWeights<'a>> {
    if let CpuStorage::Bytes { dtype, bytes } = t.cpu(OP)? {
        let k = t.shape().last().copied().unwrap_or(0);
        return match dtype.block() {
            Some(block) if k % block.elems == 0 => Ok(ExpertWeights::Quant {
                dtype: *dtype,
                bytes,
            }),
            _ => Err(KernelError::WrongDType {
                op: OP,
                arg,
                expected: "f32, bf16, f16 or a block-quantized dtype",
                got: *dtype,
            }),
        };
    }
    Ok(ExpertWeights::Floats(check::floats(OP, arg, t)?))
}

/// `[P, n]` = each sorted pair's row of `x: [P, k]` times its expert's `w: [E, n, k]` rowsᵀ.
fn grouped(x: &[f32], w: ExpertWeights, offsets: &[usize], n: usize, k: usize) -> Vec<f32> {
    let pairs = offsets.last().copied().unwrap_or(0);
    let mut out = buffer_pool::take_zeroed(pairs * n);
    let shape = GroupedShape { offsets, n, k };
    match w {
        ExpertWeights::Floats(w) => grouped_matmul(x, w, shape, &mut out),
        ExpertWeights::Quant { dtype, bytes } => {
            grouped_quant_matmul(x, dtype, bytes, shape, &mut out)
        }
    }
    out
}
