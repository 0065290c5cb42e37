//! `moe_route`: router logits `f32 [T, E]` → top-k expert ids `U32 [T, k]` and their
//! weights `f32 [T, k]`.
//!
//! Per row, transformers' arithmetic: `p = exp(l − max) / Σ exp(l − max)` in f32, the
//! `k` largest `p` by descending value (a tie goes to the lower expert id: the scan keeps
//! the first maximum), then `w_j = p_j / Σ_j p_j` with the sum taken in that order
//! ([`TopKWeights::Renormalized`]) or `w_j = p_j` ([`TopKWeights::Probabilities`]).
//! Sequential: `T · E` exponentials are noise next to the expert GEMMs that follow.

use crate::backend::TopKWeights;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::validate;

use super::super::buffer_pool;
use super::super::check;

const OP: &str = "moe_route";

pub(crate) fn moe_route(
    router_logits: &Tensor,
    top_k: usize,
    weighting: TopKWeights,
) -> Result<(Tensor, Tensor)> {
    let (tokens, experts) = validate::moe::route_shapes(OP, router_logits, top_k)?;
    let logits = check::f32s(OP, "router_logits", router_logits)?;
    let mut topk_ids = buffer_pool::take_zeroed(tokens * top_k);
    let mut topk_weights = buffer_pool::take_zeroed(tokens * top_k);
    let mut probs = buffer_pool::take_for_overwrite(experts);
    for ((row, ids), weights) in logits
        .chunks_exact(experts)
        .zip(topk_ids.chunks_exact_mut(top_k))
        .zip(topk_weights.chunks_exact_mut(top_k))
    {
        softmax(row, &mut probs);
        pick_top_k(&mut probs, ids, weights, weighting);
    }
    buffer_pool::recycle_f32(probs);
    Ok((
        Tensor::from_u32(topk_ids, &[tokens, top_k])?,
        Tensor::from_f32(topk_weights, &[tokens, top_k])?,
    ))
}

/// `probs = softmax(logits)` in f32, max-subtracted like torch.
fn softmax(logits: &[f32], probs: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (p, &l) in probs.iter_mut().zip(logits) {
        *p = (l - max).exp();
    }
    let sum: f32 = probs.iter().sum();
    for p in probs.iter_mut() {
        *p /= sum;
    }
}

/// Picks the `ids.len()` largest of `probs` (consuming them) and writes their weights
/// as `weighting` says.
fn pick_top_k(probs: &mut [f32], ids: &mut [u32], weights: &mut [f32], weighting: TopKWeights) {
    for (id, weight) in ids.iter_mut().zip(weights.iter_mut()) {
        // The first strict maximum wins, so equal probabilities go to the lower expert id.
        let mut best = 0;
        for (e, &p) in probs.iter().enumerate() {
            if p > probs[best] {
                best = e;
            }
        }
        *id = best as u32;
        *weight = probs[best];
        // Taken: below every probability, so it is never picked again.
        probs[best] = f32::NEG_INFINITY;
    }
    if weighting == TopKWeights::Probabilities {
        return;
    }
    let chosen_sum: f32 = weights.iter().sum();
    for w in weights.iter_mut() {
        *w /= chosen_sum;
    }
}
