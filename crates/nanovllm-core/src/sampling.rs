//! The engine's side of sampling: one [`SamplingRow`] per sampled sequence, for
//! [`Backend::sample`](nanovllm_kernels::Backend::sample), which samples on the device
//! (the definition — processing, greedy, temperature → top-k → top-p → min-p, inverse CDF,
//! logprobs — is `nanovllm_kernels::sampling`'s). Only token ids and the logprobs a
//! request asked for come back to the host.
//!
//! # Processing
//! A row carries its request's [`SamplingParams::logit_bias`] (borrowed: the row lives for
//! one step) and, when any penalty is on, [`Penalties`] borrowed from the request's
//! [`PenaltyState`]. A request with every penalty off has no state and its rows
//! `penalties: None`, so the sampler does no penalty work for it. A [`PenaltyState`] holds
//! the prompt's distinct tokens (for the repetition penalty only) and the output's
//! `(token, count)` pairs, updated incrementally from the sequence's own completion tokens
//! before each step ([`PenaltyState::update`] counts only the tokens it has not seen). The
//! completion tokens survive a preemption (the recompute re-reads them from the same
//! sequence), so the counts stay right across one.
//!
//! # Randomness
//! A sampled token draws the uniform number `uniform(seed, step)` (Philox4x32-10, keyed by
//! the seed, counted by the step):
//! - `seed` is the request's [`SamplingParams::seed`] when it has one; otherwise
//!   [`request_seed`]`(EngineConfig::seed, request id)`, the `(id + 1)`-th output of
//!   SplitMix64 seeded with the engine's seed (`mix(engine_seed + (id + 1)·γ)`, with
//!   `γ = 0x9E3779B97F4A7C15` and `mix` SplitMix64's finaliser). So requests get unrelated
//!   streams, and an engine built with the same seed gives the same requests (in the same
//!   arrival order) the same streams.
//! - `step` is the number of tokens the request had generated before this one
//!   ([`ScheduledSeq::num_generated_tokens`](nanovllm_scheduler::ScheduledSeq)).
//!
//! The generator keeps no state: a request draws the same numbers in any batch, after a
//! preemption (its recompute samples at the same step), and on any backend. The logits
//! themselves depend on the batch only through rounding: the forward pass reduces in a
//! batch-dependent order (GEMV tile shapes, attention splits), which moves a logit by about
//! 1e-6 and can flip a near-tie in a filter's cutoff or at a boundary of the draw. So a
//! seeded request is exactly reproducible for the same batch composition, and across
//! compositions identical up to such near-ties
//! (`engine_tests::seeded_output_is_reproducible_and_batch_independent_up_to_rounding`).

use std::collections::HashMap;

use nanovllm_kernels::{Penalties, SamplingRow};
use nanovllm_scheduler::{SamplingParams, SeqId};

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
const SPLITMIX64_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function (Steele, Lea and Flood, "Fast splittable pseudorandom
/// number generators", OOPSLA 2014).
fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of a request without its own: the `(request_id + 1)`-th output of SplitMix64
/// seeded with `engine_seed` (see the module docs).
pub fn request_seed(engine_seed: u64, request_id: SeqId) -> u64 {
    splitmix64_mix(
        engine_seed.wrapping_add(request_id.wrapping_add(1).wrapping_mul(SPLITMIX64_GAMMA)),
    )
}

/// How to sample request `request_id`'s token number `step` (0 for its first generated
/// token), with the `n` top logprobs when `num_logprobs` is `Some(n)`. The row borrows the
/// request's logit bias; its penalties are the caller's to set
/// ([`PenaltyState::penalties`]), `None` here.
pub fn sampling_row(
    params: &SamplingParams,
    engine_seed: u64,
    request_id: SeqId,
    step: u64,
    num_logprobs: Option<usize>,
) -> SamplingRow<'_> {
    SamplingRow {
        temperature: params.temperature,
        top_k: params.top_k,
        top_p: params.top_p,
        min_p: params.min_p,
        seed: params
            .seed
            .unwrap_or_else(|| request_seed(engine_seed, request_id)),
        step,
        num_logprobs,
        logit_bias: &params.logit_bias,
        ..SamplingRow::default()
    }
}

/// Whether `params` turn any penalty on (repetition ≠ 1, frequency or presence ≠ 0).
pub fn has_penalties(params: &SamplingParams) -> bool {
    params.repetition_penalty != 1.0
        || params.frequency_penalty != 0.0
        || params.presence_penalty != 0.0
}

/// One request's penalty inputs (see the module docs), kept up to date step by step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PenaltyState {
    /// Distinct prompt tokens, ascending; empty unless the repetition penalty is on.
    prompt_tokens: Vec<u32>,
    /// `(token, occurrences)` of the output, each token once, in first-occurrence order.
    output_counts: Vec<(u32, u32)>,
    /// Index of each output token's pair in `output_counts`.
    index: HashMap<u32, usize>,
    /// Completion tokens already counted.
    counted: usize,
}

impl PenaltyState {
    /// The state of a request with `params` and `prompt`; `None` when every penalty is off
    /// (its rows then carry no penalties at all).
    pub fn new(params: &SamplingParams, prompt: &[u32]) -> Option<Self> {
        if !has_penalties(params) {
            return None;
        }
        let mut prompt_tokens = Vec::new();
        if params.repetition_penalty != 1.0 {
            prompt_tokens.extend_from_slice(prompt);
            prompt_tokens.sort_unstable();
            prompt_tokens.dedup();
        }
        Some(Self {
            prompt_tokens,
            ..Self::default()
        })
    }

    /// Counts the tokens of `completion` (the request's generated tokens so far, in order)
    /// that earlier calls have not: O(new tokens), not O(output).
    pub fn update(&mut self, completion: &[u32]) {
        for &token in completion.get(self.counted..).unwrap_or_default() {
            match self.index.get(&token) {
                Some(&i) => self.output_counts[i].1 += 1,
                None => {
                    self.index.insert(token, self.output_counts.len());
                    self.output_counts.push((token, 1));
                }
            }
        }
        self.counted = self.counted.max(completion.len());
    }

    /// The penalties of the request's next row (`params` are the request's own).
    pub fn penalties(&self, params: &SamplingParams) -> Penalties<'_> {
        Penalties {
            repetition: params.repetition_penalty,
            frequency: params.frequency_penalty,
            presence: params.presence_penalty,
            prompt_tokens: &self.prompt_tokens,
            output_counts: &self.output_counts,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The host sampler's tests and the logprobs tests, ported to the engine's sampling path:
    //! rows built by [`sampling_row`], sampled by `CpuBackend::sample`. Filter survivor sets
    //! on large vocabularies are checked in `nanovllm_kernels::cpu::sampling`, and every
    //! backend's behaviour in `nanovllm_kernels::testing::sampling`.

    use std::collections::BTreeSet;

    use nanovllm_kernels::testing::rng::Rng;
    use nanovllm_kernels::{Backend, CpuBackend, SampleOutput, Tensor, NO_FINITE_LOGIT};

    use super::*;
    use crate::logprobs::TokenLogprobs;

    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..SamplingParams::default()
        }
    }

    /// Deterministic logits in [-8, 8) with a few exact ties.
    fn test_logits(n: usize, salt: u64) -> Vec<f32> {
        let mut rng = Rng::new(salt);
        (0..n)
            .map(|i| {
                if i % 97 == 3 {
                    2.5 // ties
                } else {
                    8.0 * rng.uniform()
                }
            })
            .collect()
    }

    fn sample(logits: &[f32], rows: &[SamplingRow<'_>]) -> SampleOutput {
        let vocab = logits.len() / rows.len();
        let t = Tensor::from_f32(logits.to_vec(), &[rows.len(), vocab]).unwrap();
        CpuBackend::new().sample(t, rows).unwrap()
    }

    /// Tokens of `n` steps of one request over the same logits, one row per step.
    fn steps(logits: &[f32], p: &SamplingParams, engine_seed: u64, n: u64) -> Vec<u32> {
        let rows: Vec<SamplingRow<'_>> = (0..n)
            .map(|step| sampling_row(p, engine_seed, 0, step, None))
            .collect();
        let repeated: Vec<f32> = (0..n).flat_map(|_| logits.iter().copied()).collect();
        sample(&repeated, &rows).tokens
    }

    fn drawn_set(logits: &[f32], p: &SamplingParams, n: u64) -> BTreeSet<u32> {
        steps(logits, p, 0, n).into_iter().collect()
    }

    #[test]
    fn request_seeds_are_splitmix64_outputs() {
        // SplitMix64 as a generator: state += γ, output mix(state).
        for engine_seed in [0u64, 1, 99, u64::MAX] {
            let mut state = engine_seed;
            for id in 0..50 {
                state = state.wrapping_add(SPLITMIX64_GAMMA);
                assert_eq!(request_seed(engine_seed, id), splitmix64_mix(state));
            }
        }
        // Published first output of SplitMix64 seeded with 0.
        assert_eq!(request_seed(0, 0), 0xE220_A839_7B1D_CDAF);
        let seeded = SamplingParams {
            seed: Some(5),
            ..SamplingParams::default()
        };
        assert_eq!(sampling_row(&seeded, 7, 3, 11, None).seed, 5);
        assert_eq!(
            sampling_row(&SamplingParams::default(), 7, 3, 11, Some(2)),
            SamplingRow {
                temperature: 1.0,
                seed: request_seed(7, 3),
                step: 11,
                num_logprobs: Some(2),
                ..SamplingRow::default()
            }
        );
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_the_lowest_id() {
        let logits = [0.5, 3.0, -1.0, 3.0, f32::NAN, 2.9];
        let p = SamplingParams::greedy(4);
        // Whatever the seed and step.
        assert_eq!(steps(&logits, &p, 0, 8), vec![1; 8]);
        assert_eq!(steps(&logits, &p, 77, 3), vec![1; 3]);
    }

    #[test]
    fn rows_without_a_finite_maximum_get_no_token() {
        let p = SamplingParams::greedy(1);
        let sampled = params(1.0, 0, 1.0, 0.0);
        let rows = [
            sampling_row(&p, 0, 9, 0, None),
            sampling_row(&sampled, 0, 10, 0, Some(2)),
            sampling_row(&p, 0, 11, 0, None),
        ];
        let out = sample(
            &[f32::NAN, f32::NEG_INFINITY, f32::INFINITY, 1.0, 1.0, 0.0],
            &rows[..3],
        );
        assert_eq!(out.tokens, vec![NO_FINITE_LOGIT, NO_FINITE_LOGIT, 0]);
        assert_eq!(out.logprobs, vec![None, None, None]);
        // A row count that does not match the logits is an error, not a guess.
        let t = Tensor::from_f32(vec![0.0; 3], &[1, 3]).unwrap();
        assert!(CpuBackend::new().sample(t, &rows[..2]).is_err());
    }

    #[test]
    fn top_p_on_a_known_distribution() {
        // p = 0.6 of weights [0.1, 0.4, 0.3, 0.2]: 0.4 + 0.3 reaches it.
        let logits: Vec<f32> = [0.1f32, 0.4, 0.3, 0.2].iter().map(|w| w.ln()).collect();
        let got = drawn_set(&logits, &params(1.0, 0, 0.6, 0.0), 200);
        assert_eq!(got, BTreeSet::from([1, 2]));
    }

    #[test]
    fn filters_chain_in_order() {
        // weights ∝ [8, 4, 2, 1, 1]: top_k 4 drops id 4 (tie broken to the lower id),
        // top_p 0.7 of 15 = 10.5 keeps {0, 1}, min_p 0.6 keeps {0}.
        let logits: Vec<f32> = [8.0f32, 4.0, 2.0, 1.0, 1.0]
            .iter()
            .map(|w| w.ln())
            .collect();
        let got = drawn_set(&logits, &params(1.0, 4, 0.7, 0.0), 200);
        assert_eq!(got, BTreeSet::from([0, 1]));
        let got = drawn_set(&logits, &params(1.0, 4, 0.7, 0.6), 200);
        assert_eq!(got, BTreeSet::from([0]));
        // top_k 4 with the tie at weight 1: id 3 survives, id 4 does not (a high
        // temperature makes every survivor likely enough to be seen).
        let got = drawn_set(&logits, &params(50.0, 4, 1.0, 0.0), 400);
        assert_eq!(got, BTreeSet::from([0, 1, 2, 3]));
    }

    #[test]
    fn top_k_one_is_greedy_and_nan_logits_never_win() {
        let mut logits = test_logits(4000, 6);
        logits[17] = f32::NAN;
        let best = steps(&logits, &SamplingParams::greedy(1), 0, 1)[0];
        assert_eq!(
            drawn_set(&logits, &params(2.0, 1, 1.0, 0.0), 20),
            BTreeSet::from([best])
        );
        assert!(!drawn_set(&logits, &params(1.0, 3, 1.0, 0.0), 50).contains(&17));
    }

    #[test]
    fn draws_follow_the_distribution() {
        // 20k steps of one request; each frequency within 0.01 of its probability
        // (binomial σ ≤ 0.0035 at n = 20k, so this is a ~3σ bound).
        let probs = [0.1f32, 0.2, 0.3, 0.4];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let n = 20_000;
        let mut counts = [0usize; 4];
        for t in steps(&logits, &params(1.0, 0, 1.0, 0.0), 1234, n) {
            counts[t as usize] += 1;
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
        let n = 20_000;
        let top = steps(&logits, &params(0.25, 0, 1.0, 0.0), 99, n)
            .into_iter()
            .filter(|&t| t == 3)
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
        let mut solo_tokens = Vec::new();
        let mut crowd_tokens = Vec::new();
        for step in 0..20 {
            // Alone, request 7 of an engine seeded 0.
            let logits = test_logits(vocab, 100 + step);
            let solo = sample(&logits, &[sampling_row(&seeded, 0, 7, step, None)]);
            solo_tokens.push(solo.tokens[0]);
            // In slot 2 behind other requests, as request 3 of an engine seeded 555.
            let mut crowd = test_logits(vocab, 900 + step);
            crowd.extend(test_logits(vocab, 700 + step));
            crowd.extend(&logits);
            let rows = [
                sampling_row(&unseeded, 555, 1, step + 4, None),
                sampling_row(&greedy, 555, 2, step, Some(3)),
                sampling_row(&seeded, 555, 3, step, None),
            ];
            crowd_tokens.push(sample(&crowd, &rows).tokens[2]);
        }
        assert_eq!(solo_tokens, crowd_tokens);
        let distinct: BTreeSet<u32> = solo_tokens.iter().copied().collect();
        assert!(
            distinct.len() > 1,
            "sampling should not be constant: {solo_tokens:?}"
        );
    }

    #[test]
    fn same_engine_seed_same_tokens_and_parallel_equals_serial() {
        let vocab = 151_936 / 8;
        let p = params(1.0, 40, 0.9, 0.05);
        let rows = |engine_seed| -> Vec<SamplingRow<'_>> {
            (0..32)
                .map(|id| sampling_row(&p, engine_seed, id, 0, None))
                .collect()
        };
        let logits: Vec<f32> = (0..32).flat_map(|i| test_logits(vocab, i)).collect();
        let a = sample(&logits, &rows(3)).tokens;
        assert_eq!(a, sample(&logits, &rows(3)).tokens);
        // Each row alone gives the same token.
        let serial: Vec<u32> = rows(3)
            .iter()
            .enumerate()
            .map(|(i, row)| sample(&logits[i * vocab..(i + 1) * vocab], &[*row]).tokens[0])
            .collect();
        assert_eq!(a, serial);
        let c = sample(&logits, &rows(4)).tokens;
        assert_ne!(a, c, "a different engine seed should change some tokens");
    }

    // ---- penalties and logit bias ------------------------------------------------

    #[test]
    fn penalty_state_counts_incrementally_and_only_when_on() {
        assert_eq!(PenaltyState::new(&SamplingParams::default(), &[1, 2]), None);
        let p = SamplingParams {
            frequency_penalty: 0.5,
            ..SamplingParams::default()
        };
        let mut state = PenaltyState::new(&p, &[3, 3, 1]).unwrap();
        // Without the repetition penalty the prompt is not kept.
        assert!(state.penalties(&p).prompt_tokens.is_empty());
        state.update(&[]);
        state.update(&[7, 5]);
        state.update(&[7, 5, 7]); // one new token
        state.update(&[7, 5, 7]); // nothing new
        state.update(&[7, 5, 7, 9, 5]);
        assert_eq!(state.penalties(&p).output_counts, &[(7, 2), (5, 2), (9, 1)]);
        // A fresh state over the whole output agrees with the incremental one.
        let mut whole = PenaltyState::new(&p, &[3, 3, 1]).unwrap();
        whole.update(&[7, 5, 7, 9, 5]);
        assert_eq!(whole, state);

        let r = SamplingParams {
            repetition_penalty: 1.5,
            ..SamplingParams::default()
        };
        let state = PenaltyState::new(&r, &[3, 3, 1, 9]).unwrap();
        let pen = state.penalties(&r);
        assert_eq!(pen.prompt_tokens, &[1, 3, 9]);
        assert_eq!(
            (pen.repetition, pen.frequency, pen.presence),
            (1.5, 0.0, 0.0)
        );
    }

    #[test]
    fn rows_carry_the_logit_bias_and_the_penalties() {
        // Greedy over [2, 1, 0.5, 0]: token 0 wins untouched.
        let logits = [2.0f32, 1.0, 0.5, 0.0];
        let biased = SamplingParams {
            logit_bias: vec![(3, 100.0)],
            ..SamplingParams::greedy(1)
        };
        let row = sampling_row(&biased, 0, 0, 0, None);
        assert_eq!(row.logit_bias, &[(3, 100.0)]);
        assert_eq!(row.penalties, None);
        assert_eq!(sample(&logits, &[row]).tokens, vec![3]);
        // Repetition 4 on the output token 0: 2 / 4 = 0.5 < 1, token 1 wins.
        let penalised = SamplingParams {
            repetition_penalty: 4.0,
            ..SamplingParams::greedy(1)
        };
        let mut state = PenaltyState::new(&penalised, &[2]).unwrap();
        state.update(&[0]);
        let row = SamplingRow {
            penalties: Some(state.penalties(&penalised)),
            ..sampling_row(&penalised, 0, 0, 1, None)
        };
        assert_eq!(sample(&logits, &[row]).tokens, vec![1]);
    }

    // ---- logprobs (ported from `logprobs.rs`) ------------------------------------

    /// Naive reference: softmax in f64 by definition, then ln.
    fn reference(logits: &[f32], temperature: f32) -> Vec<f64> {
        let t = if temperature > 0.0 {
            temperature as f64
        } else {
            1.0
        };
        let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 / t).exp()).collect();
        let total: f64 = exps.iter().sum();
        exps.iter().map(|e| (e / total).ln()).collect()
    }

    fn lp_logits() -> Vec<f32> {
        // Deterministic, spread over [-6, 6), with an exact tie at 2.5 (ids 7 and 19).
        let mut v: Vec<f32> = (0..50)
            .map(|i| ((i * 37 % 50) as f32 / 50.0) * 12.0 - 6.0)
            .collect();
        v[7] = 2.5;
        v[19] = 2.5;
        v
    }

    /// One row's logprobs as the engine reports them.
    fn logprobs_of(logits: &[f32], p: &SamplingParams, step: u64, n: usize) -> TokenLogprobs {
        let out = sample(logits, &[sampling_row(p, 0, 0, step, Some(n))]);
        let row = out.logprobs[0].clone().expect("asked for logprobs");
        TokenLogprobs::from_row(out.tokens[0], row)
    }

    #[test]
    fn logprobs_match_the_naive_log_softmax() {
        let logits = lp_logits();
        for temperature in [0.0f32, 0.7, 1.0, 2.0] {
            let expected = reference(&logits, temperature);
            for step in 0..8 {
                let got = logprobs_of(&logits, &params(temperature, 0, 1.0, 0.0), step, 0);
                // f32 rounding of a value of magnitude < 20.
                assert!(
                    (got.logprob as f64 - expected[got.token_id as usize]).abs() < 1e-5,
                    "t={temperature} id={}: {} vs {}",
                    got.token_id,
                    got.logprob,
                    expected[got.token_id as usize]
                );
                assert!(got.top.is_empty());
            }
        }
    }

    #[test]
    fn top_logprobs_list_the_most_likely_with_ties_by_lower_id() {
        let logits = lp_logits();
        let expected = reference(&logits, 1.0);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| {
            expected[b]
                .partial_cmp(&expected[a])
                .unwrap()
                .then(a.cmp(&b))
        });
        let got = logprobs_of(&logits, &params(1.0, 0, 1.0, 0.0), 0, 5);
        let ids: Vec<u32> = got.top.iter().map(|t| t.token_id).collect();
        let want: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
        assert_eq!(ids, want);
        for t in &got.top {
            assert!((t.logprob as f64 - expected[t.token_id as usize]).abs() < 1e-5);
        }
        // The tie at 2.5: id 7 right before id 19 (both among the top 20).
        let got = logprobs_of(&logits, &params(1.0, 0, 1.0, 0.0), 0, 20);
        let pos = |id| got.top.iter().position(|t| t.token_id == id).unwrap();
        assert_eq!(pos(7) + 1, pos(19));
        // The whole vocabulary of a small row sums to 1.
        let got = logprobs_of(&logits[..20], &params(1.0, 0, 1.0, 0.0), 0, 20);
        let total: f64 = got.top.iter().map(|t| (t.logprob as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
    }

    #[test]
    fn num_top_beyond_the_vocabulary_lists_everything() {
        let got = logprobs_of(&[0.0, 1.0], &params(1.0, 0, 1.0, 0.0), 0, 20);
        assert_eq!(got.top.len(), 2);
        assert_eq!(got.top[0].token_id, 1);
    }

    #[test]
    fn masked_and_nan_logits_have_no_probability() {
        let logits = [1.0, f32::NEG_INFINITY, f32::NAN, 1.0];
        let got = logprobs_of(&logits, &SamplingParams::greedy(1), 0, 4);
        assert_eq!(got.token_id, 0);
        assert!((got.top[0].logprob - (0.5f32).ln()).abs() < 1e-6);
        assert_eq!(got.top[0].token_id, 0);
        assert_eq!(got.top[1].token_id, 3);
        assert_eq!(got.top[2].logprob, f32::NEG_INFINITY);
        assert_eq!(got.top[3].logprob, f32::NEG_INFINITY);
    }
}
