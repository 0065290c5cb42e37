//! A literal, slow implementation of the definition in [`crate::sampling`] (sorts, f64
//! sums) for the tests of the CUDA kernel, in two flavours: [`sample_fixed`] with the
//! kernel's fixed-point masses (it must agree with the kernel exactly), and
//! [`sample_f64`] with the definition's f64 sums, which also says how far its decisions
//! were from a boundary (where the two may differ).

use crate::sampling::{uniform, RowLogprobs, SamplingRow, NO_FINITE_LOGIT};

/// Step 1 of the definition, in f32: mask, bias, penalties; NaN → −∞.
pub(crate) fn processed(logits: &[f32], row: &SamplingRow<'_>) -> Vec<f32> {
    let sanitize = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let mut l: Vec<f32> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let allowed = row
                .allowed_tokens
                .is_none_or(|m| (m[i / 32] >> (i % 32)) & 1 == 1);
            if allowed {
                sanitize(x)
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    for &(id, bias) in row.logit_bias {
        l[id as usize] += bias;
    }
    if let Some(p) = &row.penalties {
        let mut seen = vec![false; l.len()];
        for &id in p.prompt_tokens {
            seen[id as usize] = true;
        }
        for &(id, _) in p.output_counts {
            seen[id as usize] = true;
        }
        for (x, _) in l.iter_mut().zip(&seen).filter(|(_, &s)| s) {
            *x = if *x > 0.0 {
                *x / p.repetition
            } else {
                *x * p.repetition
            };
        }
        for &(id, count) in p.output_counts {
            l[id as usize] -= p.frequency * count as f32 + p.presence;
        }
    }
    l.into_iter().map(sanitize).collect()
}

/// Order-preserving key of a non-NaN f32 (−0 = +0).
pub(crate) fn key(x: f32) -> u32 {
    let b = if x == 0.0 { 0 } else { x.to_bits() };
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Lowest id among the largest processed logits, or `None` when the largest is not finite
/// (all −∞, or a +∞).
pub(crate) fn argmax(l: &[f32]) -> Option<u32> {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if key(x) > key(l[best]) {
            best = i;
        }
    }
    l.get(best).filter(|x| x.is_finite()).map(|_| best as u32)
}

/// `s = (l − max) / T` (0 at the maximum, also when it is +∞) and `w = exp(s)` in f32.
fn shift(x: f32, max: f32, t: f32) -> f32 {
    if x == max {
        0.0
    } else {
        (x - max) / t
    }
}

fn weight(x: f32, max: f32, t: f32) -> f32 {
    (shift(x, max, t) as f64).exp() as f32
}

fn mass(w: f32, fx_bits: i32) -> u64 {
    (w as f64 * 2f64.powi(fx_bits)).round_ties_even() as u64
}

/// The ids that survive top-k, ascending.
fn top_k(l: &[f32], k: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..l.len()).collect();
    if k >= 1 && k < l.len() {
        ids.sort_by(|&a, &b| key(l[b]).cmp(&key(l[a])).then(a.cmp(&b)));
        ids.truncate(k);
        ids.sort_unstable();
    }
    ids
}

/// Survivors ordered for top-p: weight descending, then id.
fn by_weight(ids: &[usize], w: &[f32]) -> Vec<usize> {
    let mut order = ids.to_vec();
    order.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
    order
}

/// The token with the kernel's fixed-point masses (`F = fx_bits`).
pub(crate) fn sample_fixed(l: &[f32], row: &SamplingRow<'_>, fx_bits: i32) -> u32 {
    let Some(best) = argmax(l) else {
        return NO_FINITE_LOGIT;
    };
    if row.is_greedy() {
        return best;
    }
    let max = l[best as usize];
    let w: Vec<f32> = l.iter().map(|&x| weight(x, max, row.temperature)).collect();
    let m: Vec<u64> = w.iter().map(|&x| mass(x, fx_bits)).collect();
    let mut surv = top_k(l, row.top_k);
    if row.top_p < 1.0 {
        let order = by_weight(&surv, &w);
        let total: u64 = order.iter().map(|&i| m[i]).sum();
        let p = (row.top_p as f64 * total as f64).ceil();
        let need = if p >= 1.0 { p as u64 } else { 1 }.min(total);
        let mut acc = 0;
        let mut keep = Vec::new();
        for &i in &order {
            if acc >= need {
                break;
            }
            acc += m[i];
            keep.push(i);
        }
        keep.sort_unstable();
        surv = keep;
    }
    if row.min_p > 0.0 {
        surv.retain(|&i| w[i] >= row.min_p);
    }
    let total: u64 = surv.iter().map(|&i| m[i]).sum();
    let bits = (uniform(row.seed, row.step) * (1u64 << 53) as f64) as u64;
    let target = ((bits as u128 * total as u128) >> 53) as u64;
    let mut run = 0;
    for &i in &surv {
        run += m[i];
        if run > target {
            return i as u32;
        }
    }
    best
}

/// The token with the definition's f64 sums, and the smallest relative distance of a
/// decision from its boundary (top-p prefix mass against `top_p × S`, a weight against
/// `min_p`, the uniform against the CDF's steps): another correct implementation may pick
/// another token only when that distance is about its rounding.
pub(crate) fn sample_f64(l: &[f32], row: &SamplingRow<'_>) -> (u32, f64) {
    let Some(best) = argmax(l) else {
        return (NO_FINITE_LOGIT, f64::INFINITY);
    };
    if row.is_greedy() {
        return (best, f64::INFINITY);
    }
    let max = l[best as usize];
    let w: Vec<f32> = l.iter().map(|&x| weight(x, max, row.temperature)).collect();
    let mut margin = f64::INFINITY;
    let mut surv = top_k(l, row.top_k);
    if row.top_p < 1.0 {
        let order = by_weight(&surv, &w);
        let total: f64 = order.iter().map(|&i| w[i] as f64).sum();
        let need = row.top_p as f64 * total;
        let mut acc = 0.0;
        let mut keep = Vec::new();
        for &i in &order {
            if acc >= need {
                break;
            }
            margin = margin.min((need - acc) / total);
            acc += w[i] as f64;
            keep.push(i);
        }
        margin = margin.min((acc - need) / total);
        keep.sort_unstable();
        surv = keep;
    }
    if row.min_p > 0.0 {
        for &i in &surv {
            margin = margin.min(((w[i] - row.min_p) as f64 / row.min_p as f64).abs());
        }
        surv.retain(|&i| w[i] >= row.min_p);
    }
    let total: f64 = surv.iter().map(|&i| w[i] as f64).sum();
    let target = uniform(row.seed, row.step) * total;
    let mut run = 0.0;
    for &i in &surv {
        let before = run;
        run += w[i] as f64;
        if run > target {
            margin = margin
                .min((run - target) / total)
                .min((target - before) / total);
            return (i as u32, margin);
        }
    }
    (best, 0.0)
}

/// The logprobs of a row whose token is `token` (see the definition): the logprob of the
/// row's `logprob_token` when it has one, else `token`'s.
pub(crate) fn logprobs(l: &[f32], row: &SamplingRow<'_>, token: u32) -> Option<RowLogprobs> {
    let n = row.num_logprobs?;
    let best = argmax(l)?;
    let max = l[best as usize];
    let t = if row.is_greedy() {
        1.0
    } else {
        row.temperature
    };
    let lse = l
        .iter()
        .map(|&x| (shift(x, max, t) as f64).exp())
        .sum::<f64>()
        .ln();
    let lp: Vec<f32> = l
        .iter()
        .map(|&x| (shift(x, max, t) as f64 - lse) as f32)
        .collect();
    let mut ids: Vec<usize> = (0..l.len()).collect();
    ids.sort_by(|&a, &b| key(lp[b]).cmp(&key(lp[a])).then(a.cmp(&b)));
    Some(RowLogprobs {
        logprob: lp[row.logprob_token.unwrap_or(token) as usize],
        top: ids.into_iter().take(n).map(|i| (i as u32, lp[i])).collect(),
    })
}
