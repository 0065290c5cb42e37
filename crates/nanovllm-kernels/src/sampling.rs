//! Sampling one token per row of logits on the device ([`crate::Backend::sample`]).
//!
//! Only token ids (and, for the rows that ask, logprobs) come back to the host: the
//! logits never leave the device. Every backend implements exactly the definition below;
//! the shared suite (`testing::sampling`) checks it against a plain reference.
//!
//! # Definition
//! Row `r` of `logits: [R, V]` is sampled with `rows[r]` ([`SamplingRow`]). All arithmetic
//! is in f32 unless stated; NaN logits count as −∞ throughout.
//! 1. **Processing**, in this order, on the row's logits `l`:
//!    - `allowed_tokens` (a bitmask, bit `i % 32` of word `i / 32` set = token `i` allowed):
//!      every disallowed token gets −∞;
//!    - `logit_bias`: `l[id] += bias` for each pair (a repeated id adds each bias);
//!    - `penalties` ([`Penalties`], vLLM's definitions): repetition first, for every token in
//!      the prompt or the output, `l > 0 ? l / repetition : l * repetition`; then
//!      `l -= frequency * count + presence` for every output token (`count` its number of
//!      occurrences in the output).
//!
//!    A row whose processed logits have no finite maximum (every value −∞ or NaN, or a +∞
//!    among them, which would make the weights below NaN) gets [`NO_FINITE_LOGIT`] as its
//!    token (the model produced garbage, or the mask allowed nothing finite); the other
//!    rows are unaffected.
//! 2. **Greedy** (`temperature == 0`): the lowest id among the largest processed logits.
//! 3. **Sampled:** weights `w_i = exp((l_i − max) / temperature)` (so the largest is 1), then
//!    the filters, in this order, each keeping a subset of the previous survivors:
//!    - top-k (`top_k ≥ 1` and `< V`): the `top_k` largest logits; among equal logits the
//!      lower ids first;
//!    - top-p (`top_p < 1`): order the survivors by weight, largest first, equal weights by
//!      lower id; keep the shortest prefix whose weight sum is `≥ top_p ×` the survivors'
//!      weight sum (at least one token);
//!    - min-p (`min_p > 0`): keep the survivors with `w ≥ min_p` (`min_p` times the top
//!      weight, which is 1).
//!
//!    Then one uniform number `u = uniform(seed, step)` picks a survivor by inverse CDF in
//!    **ascending id order**: the first survivor whose running weight sum exceeds
//!    `u ×` the survivors' total. The sums (here and in top-p) are f64 on the CPU; a backend
//!    may sum in any order, or in fixed point (CUDA: `round(w · 2^F)` in a u64 with
//!    `F = 63 − ⌈log2 V⌉`, exact and order-free, within `V · 2^−(F+1)` of the f64 sum; a weight
//!    below `2^−(F+1)` then has no mass and is never drawn, about 1e-14 for Qwen's vocabulary).
//!    So a token at a boundary may differ by rounding between backends, never the
//!    distribution.
//! 4. **Logprobs** (`num_logprobs: Some(n)`): from the log-softmax of the processed logits
//!    divided by the temperature (the processed logits themselves when greedy), before the
//!    filters, summed in f64 — the distribution the filters start from, so a filtered-out
//!    token still has a finite logprob. The chosen token's logprob (or, with
//!    `logprob_token: Some(id)`, the logprob of `id` instead: scoring a known token, as
//!    [`crate::Backend::token_logprobs`] does), and the `n` most likely tokens (most likely
//!    first, equal values by lower id; fewer when `V < n`).
//!
//! # Randomness
//! `uniform(seed, step)` is Philox4x32-10 ([`philox4x32_10`]) with key
//! `(seed as u32, seed >> 32)` and counter `(step as u32, step >> 32, 0, 0)`; of its output
//! words `x0, x1`, `u = ((x0 << 21) | (x1 >> 11)) / 2⁵³` (53 random bits). A counter-based
//! generator keeps no state: the engine gives each request a seed and uses the number of
//! tokens it has generated as the step, so a seeded request draws the same numbers in any
//! batch, after a preemption, and on any backend.

use crate::error::{KernelError, Result};

/// The token of a row whose processed logits have no finite maximum (all −∞/NaN, or a +∞).
pub const NO_FINITE_LOGIT: u32 = u32::MAX;

/// The most top logprobs a row may ask for (OpenAI allows 20; vLLM defaults to 20).
pub const MAX_NUM_LOGPROBS: usize = 20;

/// Repetition, frequency and presence penalties of one row (vLLM's definitions; see the
/// module docs). A penalty that is off is `1.0` (repetition) or `0.0` (the others).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Penalties<'a> {
    /// `> 0`; `1.0` is off.
    pub repetition: f32,
    pub frequency: f32,
    pub presence: f32,
    /// Distinct token ids of the prompt (repetition only).
    pub prompt_tokens: &'a [u32],
    /// `(token id, occurrences)` of the output so far, each id once.
    pub output_counts: &'a [(u32, u32)],
}

/// How to sample one row. `Default` is greedy with no processing and no logprobs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingRow<'a> {
    /// `0` is greedy; otherwise finite and `> 0`.
    pub temperature: f32,
    /// `0` disables the filter.
    pub top_k: usize,
    /// In `(0, 1]`; `1` disables the filter.
    pub top_p: f32,
    /// In `[0, 1]`; `0` disables the filter.
    pub min_p: f32,
    /// Key of the row's random numbers.
    pub seed: u64,
    /// Counter of the row's random numbers: the request's number of generated tokens.
    pub step: u64,
    /// `Some(n)`: return the chosen token's logprob and the `n` most likely tokens
    /// (`n ≤` [`MAX_NUM_LOGPROBS`]).
    pub num_logprobs: Option<usize>,
    /// With `num_logprobs`: report the logprob of this token instead of the chosen one's
    /// (the token sampled is unchanged). `None`: the chosen token's.
    pub logprob_token: Option<u32>,
    /// Bitmask over the vocabulary (`ceil(V / 32)` words); `None` allows every token.
    pub allowed_tokens: Option<&'a [u32]>,
    /// `(token id, bias)` added to the logits.
    pub logit_bias: &'a [(u32, f32)],
    pub penalties: Option<Penalties<'a>>,
}

impl Default for SamplingRow<'_> {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
            step: 0,
            num_logprobs: None,
            logprob_token: None,
            allowed_tokens: None,
            logit_bias: &[],
            penalties: None,
        }
    }
}

impl SamplingRow<'_> {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Whether the row edits its logits before sampling (mask, bias or penalties).
    pub fn has_processing(&self) -> bool {
        self.allowed_tokens.is_some() || !self.logit_bias.is_empty() || self.penalties.is_some()
    }
}

/// A row's logprobs (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct RowLogprobs {
    /// Logprob of the chosen token (of [`SamplingRow::logprob_token`] when it is set).
    pub logprob: f32,
    /// `(token id, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What [`crate::Backend::sample`] returns, in row order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleOutput {
    /// One token per row; [`NO_FINITE_LOGIT`] for a row whose processed logits have no
    /// finite maximum.
    pub tokens: Vec<u32>,
    /// `Some` exactly for the rows that asked (and whose token is not [`NO_FINITE_LOGIT`]).
    pub logprobs: Vec<Option<RowLogprobs>>,
}

/// Checks `rows` against a `[num_rows, vocab_size]` logits tensor: the same errors on every
/// backend, before any work.
pub fn validate_rows(
    op: &'static str,
    num_rows: usize,
    vocab_size: usize,
    rows: &[SamplingRow<'_>],
) -> Result<()> {
    let invalid = |msg: String| Err(KernelError::Invalid { op, msg });
    if rows.len() != num_rows {
        return invalid(format!(
            "{} sampling rows for {num_rows} logit rows",
            rows.len()
        ));
    }
    if vocab_size == 0 {
        return invalid("the logits have an empty vocabulary".into());
    }
    if vocab_size > u32::MAX as usize - 1 {
        return invalid(format!("vocabulary of {vocab_size} tokens exceeds u32 ids"));
    }
    let mask_words = vocab_size.div_ceil(32);
    for (r, row) in rows.iter().enumerate() {
        if !(row.temperature.is_finite() && row.temperature >= 0.0) {
            return invalid(format!(
                "row {r}: temperature {} is not finite and >= 0",
                row.temperature
            ));
        }
        if !(row.top_p > 0.0 && row.top_p <= 1.0) {
            return invalid(format!("row {r}: top_p {} is not in (0, 1]", row.top_p));
        }
        if !(0.0..=1.0).contains(&row.min_p) {
            return invalid(format!("row {r}: min_p {} is not in [0, 1]", row.min_p));
        }
        if let Some(n) = row.num_logprobs {
            if n > MAX_NUM_LOGPROBS {
                return invalid(format!(
                    "row {r}: {n} top logprobs asked, at most {MAX_NUM_LOGPROBS}"
                ));
            }
        }
        if let Some(id) = row.logprob_token {
            if row.num_logprobs.is_none() || id as usize >= vocab_size {
                return invalid(format!(
                    "row {r}: logprob_token {id} needs num_logprobs and an id below the vocabulary size ({vocab_size})"
                ));
            }
        }
        if let Some(mask) = row.allowed_tokens {
            if mask.len() != mask_words {
                return invalid(format!(
                    "row {r}: token mask has {} words, expected {mask_words} for {vocab_size} tokens",
                    mask.len()
                ));
            }
        }
        let out_of_range = |id: u32| id as usize >= vocab_size;
        if let Some(&(id, _)) = row
            .logit_bias
            .iter()
            .find(|(id, b)| out_of_range(*id) || !b.is_finite())
        {
            return invalid(format!(
                "row {r}: logit bias for token {id} is out of the vocabulary ({vocab_size}) or not finite"
            ));
        }
        if let Some(p) = &row.penalties {
            if !(p.repetition.is_finite()
                && p.repetition > 0.0
                && p.frequency.is_finite()
                && p.presence.is_finite())
            {
                return invalid(format!(
                    "row {r}: penalties (repetition {}, frequency {}, presence {}) must be finite, repetition > 0",
                    p.repetition, p.frequency, p.presence
                ));
            }
            let bad = p
                .prompt_tokens
                .iter()
                .copied()
                .chain(p.output_counts.iter().map(|&(id, _)| id))
                .find(|&id| out_of_range(id));
            if let Some(id) = bad {
                return invalid(format!(
                    "row {r}: penalised token {id} is out of the vocabulary ({vocab_size})"
                ));
            }
        }
    }
    Ok(())
}

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2,
/// 3", SC'11), the generator cuRAND and PyTorch use; `kernels/sampling.cu` has the same.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let p0 = PHILOX_M0 as u64 * c[0] as u64;
        let p1 = PHILOX_M1 as u64 * c[2] as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The uniform number in `[0, 1)` of `(seed, step)` (see the module docs).
pub fn uniform(seed: u64, step: u64) -> f64 {
    let x = philox4x32_10(
        [step as u32, (step >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    let bits = ((x[0] as u64) << 21) | ((x[1] as u64) >> 11);
    bits as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of Random123 (`kat_vectors`, philox4x32_10).
    #[test]
    fn philox_matches_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn uniform_is_in_unit_interval_and_depends_on_seed_and_step() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..8u64 {
            for step in 0..64u64 {
                let u = uniform(seed, step);
                assert!((0.0..1.0).contains(&u), "{u}");
                assert!(
                    seen.insert(u.to_bits()),
                    "repeat at seed {seed} step {step}"
                );
            }
        }
        assert_eq!(uniform(42, 7), uniform(42, 7));
        // Mean of many draws is close to 1/2 (σ of the mean ≈ 0.0029 for 10⁴ draws).
        let mean = (0..10_000u64).map(|s| uniform(s, 3)).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.015, "{mean}");
    }

    #[test]
    fn validate_rows_rejects_bad_rows() {
        let ok = SamplingRow::default();
        assert!(validate_rows("sample", 1, 10, &[ok]).is_ok());
        assert!(validate_rows("sample", 2, 10, &[ok]).is_err());
        assert!(validate_rows("sample", 1, 0, &[ok]).is_err());
        let bad = [
            SamplingRow {
                temperature: -1.0,
                ..ok
            },
            SamplingRow {
                temperature: f32::NAN,
                ..ok
            },
            SamplingRow { top_p: 0.0, ..ok },
            SamplingRow { min_p: 1.5, ..ok },
            SamplingRow {
                num_logprobs: Some(21),
                ..ok
            },
            SamplingRow {
                allowed_tokens: Some(&[0, 0]),
                ..ok
            },
            SamplingRow {
                logprob_token: Some(1),
                ..ok
            },
            SamplingRow {
                num_logprobs: Some(0),
                logprob_token: Some(10),
                ..ok
            },
            SamplingRow {
                logit_bias: &[(10, 1.0)],
                ..ok
            },
            SamplingRow {
                logit_bias: &[(1, f32::INFINITY)],
                ..ok
            },
            SamplingRow {
                penalties: Some(Penalties {
                    repetition: 0.0,
                    frequency: 0.0,
                    presence: 0.0,
                    prompt_tokens: &[],
                    output_counts: &[],
                }),
                ..ok
            },
            SamplingRow {
                penalties: Some(Penalties {
                    repetition: 1.0,
                    frequency: 0.0,
                    presence: 0.0,
                    prompt_tokens: &[10],
                    output_counts: &[],
                }),
                ..ok
            },
        ];
        for row in bad {
            assert!(validate_rows("sample", 1, 10, &[row]).is_err(), "{row:?}");
        }
        assert!(validate_rows(
            "sample",
            1,
            10,
            &[SamplingRow {
                allowed_tokens: Some(&[1]),
                ..ok
            }]
        )
        .is_ok());
    }
}
