//! Host-side sampling, one row of logits per sequence.
//!
//! Greedy (temperature 0): argmax, ties → lowest id. Otherwise the row goes
//! through `logits / temperature` → top-k → top-p → min-p, and one token is
//! drawn from what survives by inverse CDF with a single uniform number.
//!
//! Reproducibility: a request with `seed: Some(s)` owns a `ChaCha8Rng` seeded
//! from `s` that persists across its steps, so its random stream does not depend on
//! which other requests share its batches: given the same logits, it draws the same
//! tokens in any batch. The logits themselves depend on the batch only through rounding:
//! the forward pass reduces in a batch-dependent order (GEMV tile shapes, attention
//! splits), which moves a logit by about 1e-6 and can flip a near-tie in a filter's cutoff
//! or at a boundary of the draw. So a seeded request is exactly reproducible for the same
//! batch composition, and across compositions identical up to such near-ties
//! (`engine_tests::seeded_output_is_reproducible_and_batch_independent_up_to_rounding`).
//! Requests without a seed draw from
//! the engine's stream (seeded by `EngineConfig::seed`), in batch order. The
//! uniform numbers are drawn sequentially before the rows are processed in
//! parallel, so the result never depends on thread scheduling. Greedy rows
//! draw nothing.
//!
//! Filters keep "the k most likely" and "the smallest nucleus" with ties
//! broken towards lower ids, so the surviving set is a deterministic function
//! of the row.

use std::cmp::Ordering;
use std::collections::HashMap;

use nanovllm_scheduler::{SamplingParams, SeqId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{EngineError, Result};

/// Rows × vocab below which sampling stays on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 18;
/// First nucleus size tried by top-p; it grows ×4 until the mass reaches top_p.
const TOP_P_FIRST_WINDOW: usize = 64;

/// A token id with its unnormalised probability `exp((logit - max) / temperature)`
/// (before top-k, `weight` holds the logit itself: top-k only needs the order).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub weight: f32,
}

/// More likely first; equal weights → lower id first.
fn by_likelihood(a: &Candidate, b: &Candidate) -> Ordering {
    b.weight.total_cmp(&a.weight).then(a.id.cmp(&b.id))
}

/// One sequence's row to sample.
#[derive(Clone, Copy, Debug)]
pub struct SampleRow<'a> {
    pub seq_id: SeqId,
    pub params: &'a SamplingParams,
}

/// Owns the random streams: the engine's and one per seeded request.
#[derive(Debug)]
pub struct Sampler {
    engine_rng: ChaCha8Rng,
    request_rngs: HashMap<SeqId, ChaCha8Rng>,
}

impl Sampler {
    pub fn new(seed: u64) -> Self {
        Self {
            engine_rng: ChaCha8Rng::seed_from_u64(seed),
            request_rngs: HashMap::new(),
        }
    }

    /// Samples one token per row of `logits` (`rows.len() × vocab_size`, row-major).
    pub fn sample(
        &mut self,
        logits: &[f32],
        vocab_size: usize,
        rows: &[SampleRow<'_>],
    ) -> Result<Vec<u32>> {
        if vocab_size == 0 || logits.len() != rows.len() * vocab_size {
            return Err(EngineError::Internal(format!(
                "sampler got {} logits for {} rows of vocab {vocab_size}",
                logits.len(),
                rows.len()
            )));
        }
        let uniforms: Vec<f64> = rows
            .iter()
            .map(|row| {
                if row.params.is_greedy() {
                    return 0.0;
                }
                let rng = match row.params.seed {
                    Some(seed) => self
                        .request_rngs
                        .entry(row.seq_id)
                        .or_insert_with(|| ChaCha8Rng::seed_from_u64(seed)),
                    None => &mut self.engine_rng,
                };
                rng.random::<f64>()
            })
            .collect();
        let one = |(i, row): (usize, &SampleRow<'_>), scratch: &mut Vec<Candidate>| {
            let row_logits = &logits[i * vocab_size..(i + 1) * vocab_size];
            sample_row(row_logits, row.params, uniforms[i], scratch)
                .ok_or(EngineError::NonFiniteLogits { seq_id: row.seq_id })
        };
        if rows.len() > 1 && logits.len() >= PARALLEL_MIN_ELEMENTS {
            rows.par_iter()
                .enumerate()
                .map_init(Vec::new, |scratch, item| one(item, scratch))
                .collect()
        } else {
            let mut scratch = Vec::new();
            rows.iter()
                .enumerate()
                .map(|item| one(item, &mut scratch))
                .collect()
        }
    }

    /// Drops a finished request's random stream.
    pub fn forget(&mut self, seq_id: SeqId) {
        self.request_rngs.remove(&seq_id);
    }

    /// Seeded requests whose stream is held (for tests and leak checks).
    pub fn num_request_rngs(&self) -> usize {
        self.request_rngs.len()
    }
}

/// Samples one token; `None` when the row has no finite maximum.
/// `uniform` in [0, 1) picks the token by inverse CDF (ignored when greedy).
pub fn sample_row(
    logits: &[f32],
    params: &SamplingParams,
    uniform: f64,
    scratch: &mut Vec<Candidate>,
) -> Option<u32> {
    let (argmax, max) = argmax(logits)?;
    if params.is_greedy() {
        return Some(argmax);
    }
    // Top-k only needs the order, which exp preserves: select on the logits and
    // exponentiate the k survivors instead of the whole vocabulary.
    scratch.clear();
    scratch.extend(logits.iter().enumerate().map(|(id, &l)| Candidate {
        id: id as u32,
        weight: if l.is_nan() { f32::NEG_INFINITY } else { l },
    }));
    top_k_filter(scratch, params.top_k);
    let inv_t = 1.0 / params.temperature;
    for c in scratch.iter_mut() {
        c.weight = ((c.weight - max) * inv_t).exp();
    }
    top_p_filter(scratch, params.top_p);
    min_p_filter(scratch, params.min_p);
    Some(draw(scratch, uniform))
}

/// Index and value of the largest finite logit (lowest id among ties); `None` if there is none.
/// NaN logits are skipped (and so never chosen).
pub fn argmax(logits: &[f32]) -> Option<(u32, f32)> {
    let mut best: Option<(u32, f32)> = None;
    for (id, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((id as u32, l));
        }
    }
    best.filter(|(_, b)| b.is_finite())
}

/// Keeps the `top_k` most likely candidates (all when `top_k` is 0 or ≥ their number).
pub fn top_k_filter(cands: &mut Vec<Candidate>, top_k: usize) {
    if top_k == 0 || top_k >= cands.len() {
        return;
    }
    cands.select_nth_unstable_by(top_k - 1, by_likelihood);
    cands.truncate(top_k);
}

/// Keeps the smallest most-likely set whose mass reaches `top_p` of the total (at least one).
/// Leaves the survivors sorted most likely first.
pub fn top_p_filter(cands: &mut Vec<Candidate>, top_p: f32) {
    if top_p >= 1.0 || cands.is_empty() {
        return;
    }
    let total: f64 = cands.iter().map(|c| c.weight as f64).sum();
    let target = top_p as f64 * total;
    // Sorting all ~150k candidates is the slow part; the nucleus is usually
    // small, so sort a growing window of the most likely ones until it holds it.
    let mut window = TOP_P_FIRST_WINDOW.min(cands.len());
    loop {
        if window < cands.len() {
            cands.select_nth_unstable_by(window - 1, by_likelihood);
        }
        cands[..window].sort_unstable_by(by_likelihood);
        let mut mass = 0.0f64;
        for i in 0..window {
            mass += cands[i].weight as f64;
            if mass >= target {
                cands.truncate(i + 1);
                return;
            }
        }
        if window == cands.len() {
            return; // rounding left the target just out of reach: keep everything
        }
        window = (window * 4).min(cands.len());
    }
}

/// Drops candidates whose probability is below `min_p` times the largest one.
pub fn min_p_filter(cands: &mut Vec<Candidate>, min_p: f32) {
    if min_p <= 0.0 || cands.is_empty() {
        return;
    }
    let max = cands.iter().map(|c| c.weight).fold(f32::MIN, f32::max);
    let threshold = min_p * max;
    cands.retain(|c| c.weight >= threshold);
}

/// Inverse CDF over the candidates' weights in their current order.
fn draw(cands: &[Candidate], uniform: f64) -> u32 {
    let total: f64 = cands.iter().map(|c| c.weight as f64).sum();
    let target = uniform * total;
    let mut mass = 0.0f64;
    for c in cands {
        mass += c.weight as f64;
        if mass > target {
            return c.id;
        }
    }
    // Only reachable through rounding at uniform ≈ 1: the last candidate with any weight.
    cands
        .iter()
        .rev()
        .find(|c| c.weight > 0.0)
        .or(cands.last())
        .map_or(0, |c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..SamplingParams::default()
        }
    }

    /// Deterministic pseudo-random logits in [-8, 8) with a few exact ties.
    fn test_logits(n: usize, salt: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(salt);
        (0..n)
            .map(|i| {
                if i % 97 == 3 {
                    2.5 // ties
                } else {
                    rng.random::<f32>() * 16.0 - 8.0
                }
            })
            .collect()
    }

    fn candidates(logits: &[f32], temperature: f32) -> Vec<Candidate> {
        let max = logits.iter().cloned().fold(f32::MIN, f32::max);
        logits
            .iter()
            .enumerate()
            .map(|(id, &l)| Candidate {
                id: id as u32,
                weight: ((l - max) * (1.0 / temperature)).exp(),
            })
            .collect()
    }

    /// The naive reference: fully sorted, most likely first, ties by lower id.
    fn sorted(c: &[Candidate]) -> Vec<Candidate> {
        let mut s = c.to_vec();
        s.sort_by(|a, b| {
            b.weight
                .partial_cmp(&a.weight)
                .unwrap()
                .then(a.id.cmp(&b.id))
        });
        s
    }

    fn ids(c: &[Candidate]) -> BTreeSet<u32> {
        c.iter().map(|c| c.id).collect()
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_the_lowest_id() {
        let logits = [0.5, 3.0, -1.0, 3.0, f32::NAN, 2.9];
        let p = SamplingParams::greedy(4);
        assert_eq!(sample_row(&logits, &p, 0.99, &mut Vec::new()), Some(1));
        let rows = [SampleRow {
            seq_id: 0,
            params: &p,
        }];
        let mut sampler = Sampler::new(0);
        assert_eq!(sampler.sample(&logits, 6, &rows).unwrap(), vec![1]);
        // Greedy rows draw nothing from the engine stream.
        let mut fresh = Sampler::new(0);
        assert_eq!(
            sampler.engine_rng.random::<u64>(),
            fresh.engine_rng.random::<u64>()
        );
    }

    #[test]
    fn non_finite_rows_are_errors() {
        let p = SamplingParams::greedy(1);
        let rows = [SampleRow {
            seq_id: 9,
            params: &p,
        }];
        let err = Sampler::new(0)
            .sample(&[f32::NAN, f32::NEG_INFINITY], 2, &rows)
            .unwrap_err();
        assert!(matches!(err, EngineError::NonFiniteLogits { seq_id: 9 }));
        assert!(argmax(&[f32::INFINITY, 1.0]).is_none());
        let err = Sampler::new(0).sample(&[0.0; 3], 2, &rows).unwrap_err();
        assert!(matches!(err, EngineError::Internal(_)));
    }

    #[test]
    fn top_k_keeps_the_k_most_likely() {
        let logits = test_logits(5000, 1);
        for k in [1, 2, 7, 52, 53, 54, 4999, 5000, 9000] {
            let mut c = candidates(&logits, 0.7);
            top_k_filter(&mut c, k);
            let want: Vec<Candidate> = sorted(&candidates(&logits, 0.7))
                .into_iter()
                .take(k)
                .collect();
            assert_eq!(ids(&c), ids(&want), "k = {k}");
        }
        let mut c = candidates(&logits, 1.0);
        top_k_filter(&mut c, 0);
        assert_eq!(c.len(), 5000);
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        for (salt, temperature) in [(2, 1.0), (3, 0.3), (4, 3.0)] {
            let logits = test_logits(20_000, salt);
            for top_p in [1e-6, 0.1, 0.5, 0.9, 0.95, 0.999, 1.0] {
                let mut c = candidates(&logits, temperature);
                top_p_filter(&mut c, top_p);
                // Naive: sort everything, take until the cumulative mass reaches top_p.
                let all = sorted(&candidates(&logits, temperature));
                let total: f64 = all.iter().map(|c| c.weight as f64).sum();
                let mut want = Vec::new();
                let mut mass = 0.0;
                for cand in &all {
                    want.push(*cand);
                    mass += cand.weight as f64;
                    if top_p < 1.0 && mass >= top_p as f64 * total {
                        break;
                    }
                }
                assert_eq!(ids(&c), ids(&want), "top_p = {top_p}, T = {temperature}");
                assert!(!c.is_empty());
            }
        }
    }

    #[test]
    fn top_p_on_a_known_distribution() {
        let mut c: Vec<Candidate> = [0.1f32, 0.4, 0.3, 0.2]
            .iter()
            .enumerate()
            .map(|(i, &w)| Candidate {
                id: i as u32,
                weight: w,
            })
            .collect();
        top_p_filter(&mut c, 0.6);
        assert_eq!(ids(&c), BTreeSet::from([1, 2]));
        assert_eq!(c[0].id, 1, "survivors are sorted most likely first");
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_top() {
        let logits = test_logits(3000, 5);
        for min_p in [0.0, 0.01, 0.2, 0.5, 1.0] {
            let mut c = candidates(&logits, 1.3);
            min_p_filter(&mut c, min_p);
            let all = candidates(&logits, 1.3);
            let max = all.iter().map(|c| c.weight).fold(0.0, f32::max);
            let want: Vec<Candidate> = all
                .into_iter()
                .filter(|c| c.weight >= min_p * max)
                .collect();
            assert_eq!(ids(&c), ids(&want), "min_p = {min_p}");
            assert!(!c.is_empty());
        }
    }

    #[test]
    fn filters_chain_in_order() {
        // weights ∝ [8, 4, 2, 1, 1]: top_k 4 drops id 4 (tie broken to the lower id),
        // top_p 0.7 of 15 = 10.5 keeps {0, 1}, min_p 0.6 keeps {0}.
        let logits: Vec<f32> = [8.0f32, 4.0, 2.0, 1.0, 1.0]
            .iter()
            .map(|w| w.ln())
            .collect();
        let mut scratch = Vec::new();
        for u in [0.0, 0.3, 0.6, 0.99] {
            let tok = sample_row(&logits, &params(1.0, 4, 0.7, 0.0), u, &mut scratch).unwrap();
            assert!(tok <= 1, "{tok}");
            let tok = sample_row(&logits, &params(1.0, 4, 0.7, 0.6), u, &mut scratch).unwrap();
            assert_eq!(tok, 0);
        }
        // top_k 4 with the tie at weight 1: id 3 survives, id 4 does not.
        let mut c = candidates(&logits, 1.0);
        top_k_filter(&mut c, 4);
        assert_eq!(ids(&c), BTreeSet::from([0, 1, 2, 3]));
    }

    #[test]
    fn top_k_one_is_greedy_and_nan_logits_never_win() {
        let mut logits = test_logits(4000, 6);
        logits[17] = f32::NAN;
        let (best, _) = argmax(&logits).unwrap();
        let mut scratch = Vec::new();
        for u in [0.0, 0.25, 0.5, 0.999_999] {
            let tok = sample_row(&logits, &params(2.0, 1, 1.0, 0.0), u, &mut scratch);
            assert_eq!(tok, Some(best));
            let tok = sample_row(&logits, &params(1.0, 3, 1.0, 0.0), u, &mut scratch).unwrap();
            assert_ne!(tok, 17);
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        // 20k draws with a fixed seed; each frequency within 0.01 of its probability
        // (binomial σ ≤ 0.0035 at n = 20k, so this is a ~3σ bound).
        let probs = [0.1f32, 0.2, 0.3, 0.4];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let p = params(1.0, 0, 1.0, 0.0);
        let rows = [SampleRow {
            seq_id: 0,
            params: &p,
        }];
        let mut sampler = Sampler::new(1234);
        let mut counts = [0usize; 4];
        let n = 20_000;
        for _ in 0..n {
            counts[sampler.sample(&logits, 4, &rows).unwrap()[0] as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let freq = c as f64 / n as f64;
            assert!(
                (freq - probs[i] as f64).abs() < 0.01,
                "token {i}: {freq} vs {}",
                probs[i]
            );
        }
    }

    #[test]
    fn temperature_sharpens_the_distribution() {
        // At T = 0.25 the weights become ∝ p⁴: [1, 16, 81, 256] / 354.
        let probs = [0.1f32, 0.2, 0.3, 0.4];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let p = params(0.25, 0, 1.0, 0.0);
        let rows = [SampleRow {
            seq_id: 0,
            params: &p,
        }];
        let mut sampler = Sampler::new(99);
        let n = 20_000;
        let top = (0..n)
            .filter(|_| sampler.sample(&logits, 4, &rows).unwrap()[0] == 3)
            .count();
        let want = 256.0 / 354.0;
        assert!(((top as f64 / n as f64) - want).abs() < 0.01, "{top}");
    }

    #[test]
    fn seeded_requests_do_not_depend_on_their_batch() {
        let vocab = 1000;
        let seeded = SamplingParams {
            seed: Some(42),
            ..params(0.9, 50, 0.95, 0.0)
        };
        let unseeded = params(1.0, 0, 1.0, 0.0);
        let greedy = SamplingParams::greedy(8);
        let steps = 20;
        // Alone, in slot 0.
        let mut alone = Sampler::new(0);
        let mut solo_tokens = Vec::new();
        for step in 0..steps {
            let logits = test_logits(vocab, 100 + step);
            let rows = [SampleRow {
                seq_id: 7,
                params: &seeded,
            }];
            solo_tokens.push(alone.sample(&logits, vocab, &rows).unwrap()[0]);
        }
        // In slot 2 behind other requests, with a different engine seed.
        let mut crowded = Sampler::new(555);
        let mut crowd_tokens = Vec::new();
        for step in 0..steps {
            let mut logits = test_logits(vocab, 900 + step);
            logits.extend(test_logits(vocab, 700 + step));
            logits.extend(test_logits(vocab, 100 + step));
            let rows = [
                SampleRow {
                    seq_id: 1,
                    params: &unseeded,
                },
                SampleRow {
                    seq_id: 2,
                    params: &greedy,
                },
                SampleRow {
                    seq_id: 7,
                    params: &seeded,
                },
            ];
            crowd_tokens.push(crowded.sample(&logits, vocab, &rows).unwrap()[2]);
        }
        assert_eq!(solo_tokens, crowd_tokens);
        let distinct: BTreeSet<u32> = solo_tokens.iter().copied().collect();
        assert!(
            distinct.len() > 1,
            "sampling should not be constant: {solo_tokens:?}"
        );
        assert_eq!(crowded.num_request_rngs(), 1);
        crowded.forget(7);
        assert_eq!(crowded.num_request_rngs(), 0);
    }

    #[test]
    fn same_engine_seed_same_tokens_and_parallel_equals_serial() {
        let vocab = 151_936 / 8;
        let p = params(1.0, 40, 0.9, 0.05);
        let rows: Vec<SampleRow<'_>> = (0..32)
            .map(|i| SampleRow {
                seq_id: i,
                params: &p,
            })
            .collect();
        let logits: Vec<f32> = (0..32).flat_map(|i| test_logits(vocab, i)).collect();
        assert!(logits.len() >= PARALLEL_MIN_ELEMENTS);
        let a = Sampler::new(3).sample(&logits, vocab, &rows).unwrap();
        let b = Sampler::new(3).sample(&logits, vocab, &rows).unwrap();
        assert_eq!(a, b);
        // The serial path on the same uniforms gives the same tokens.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut scratch = Vec::new();
        let serial: Vec<u32> = (0..32)
            .map(|i| {
                let u = rng.random::<f64>();
                sample_row(&logits[i * vocab..(i + 1) * vocab], &p, u, &mut scratch).unwrap()
            })
            .collect();
        assert_eq!(a, serial);
        let c = Sampler::new(4).sample(&logits, vocab, &rows).unwrap();
        assert_ne!(a, c, "a different engine seed should change some tokens");
    }
}
