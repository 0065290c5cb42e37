//! [`Backend::sample`] against a plain reference of the definition in [`crate::sampling`]:
//! full sorts, f64 sums, no shortcuts.
//!
//! The logits are rounded to the backend's activation dtype before the reference sees
//! them, so both start from the same values. What may still differ between a backend and
//! the reference is rounding inside the op (the exp of a weight, the order of an f64 sum,
//! `x / t` against `x · (1/t)`), which moves a weight by a few parts in 10⁷. So:
//! - greedy tokens, top-k sets and everything decided by comparing logits are exact (the
//!   processing values in these tests are exact in f32: halving and doubling, multiples of
//!   1/16), as are the ids of the top logprobs;
//! - a sampled token is compared exactly unless the draw is within [`GUARD`] of a decision
//!   boundary: `u` within `GUARD` of a boundary of the normalised CDF of the chosen token,
//!   a top-p prefix sum within `GUARD` (relative to the total) of `top_p ×` the total, two
//!   different logits with weights within `GUARD` (relative) of each other on either side
//!   of the top-p cutoff, or a weight within `GUARD` of `min_p`. Such draws are counted and
//!   skipped, and each test bounds how many it may skip;
//! - the sampled distribution is checked by a χ² goodness-of-fit test against the exact
//!   filtered distribution ([`sampled_distribution_fits_chi_square`]);
//! - logprobs within [`logprob_tol`].

use std::collections::BTreeSet;

use crate::sampling::{uniform, Penalties, SampleOutput, SamplingRow, NO_FINITE_LOGIT};
use crate::Backend;

use super::check::{activation, upload_float, upload_u32, Tol};
use super::rng::Rng;

/// How close to a decision boundary a sampled draw may be and still be compared exactly
/// (see the module docs).
pub const GUARD: f64 = 1e-6;

/// Upper 0.1 % points of the χ² distribution, `CHI2_999[df]` for `df` degrees of freedom
/// (`CHI2_999[0]` unused): a correct sampler fails one fit with probability 0.001.
const CHI2_999: [f64; 21] = [
    f64::NAN,
    10.828,
    13.816,
    16.266,
    18.467,
    20.515,
    22.458,
    24.322,
    26.124,
    27.877,
    29.588,
    31.264,
    32.909,
    34.528,
    36.123,
    37.697,
    39.252,
    40.790,
    42.312,
    43.820,
    45.315,
];

/// Tolerance of a logprob: the reference is an f64 log-softmax rounded once to f32
/// (≤ 6e-8 relative); 1e-5 absolute + 1e-6 relative leaves room for a backend that divides
/// by the temperature and exponentiates in f32 (a few parts in 10⁷ per term, so ~1e-6 in
/// the log-normaliser at the logit magnitudes used here, ≤ 40).
pub fn logprob_tol() -> Tol {
    Tol {
        abs: 1e-5,
        rel: 1e-6,
    }
}

// ---- the reference ---------------------------------------------------------------

/// A row's processed logits by the definition (f32 arithmetic), NaN turned into −∞.
pub fn reference_processed(logits: &[f32], row: &SamplingRow<'_>) -> Vec<f32> {
    let mut l = logits.to_vec();
    if let Some(mask) = row.allowed_tokens {
        for (i, x) in l.iter_mut().enumerate() {
            if (mask[i / 32] >> (i % 32)) & 1 == 0 {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    for &(id, bias) in row.logit_bias {
        l[id as usize] += bias;
    }
    if let Some(p) = &row.penalties {
        let touched: BTreeSet<u32> = p
            .prompt_tokens
            .iter()
            .copied()
            .chain(p.output_counts.iter().map(|&(id, _)| id))
            .collect();
        for id in touched {
            let x = l[id as usize];
            l[id as usize] = if x > 0.0 {
                x / p.repetition
            } else {
                x * p.repetition
            };
        }
        for &(id, count) in p.output_counts {
            l[id as usize] -= p.frequency * count as f32 + p.presence;
        }
    }
    for x in &mut l {
        if x.is_nan() {
            *x = f32::NEG_INFINITY;
        }
    }
    l
}

/// The maximum of processed logits when it is finite.
fn finite_max(l: &[f32]) -> Option<f32> {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max.is_finite().then_some(max)
}

/// Ids sorted most likely first by `key` (IEEE comparison), equal keys by lower id.
fn ranked(ids: impl Iterator<Item = usize>, key: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = ids.collect();
    order.sort_by(|&a, &b| {
        key[b]
            .partial_cmp(&key[a])
            .expect("no NaN after processing")
            .then(a.cmp(&b))
    });
    order
}

/// The filtered distribution of a sampled row by the definition.
#[derive(Clone, Debug)]
pub struct Filtered {
    /// Survivors' weights (f32, as the definition computes them), 0 for the others.
    pub weights: Vec<f32>,
    pub survivors: Vec<bool>,
    /// The survivors' weights normalised (f64).
    pub probs: Vec<f64>,
    /// How far the filters' decisions are from their thresholds (see the module docs).
    pub margin: f64,
}

/// Temperature → top-k → top-p → min-p on processed logits `l`; `None` without a finite
/// maximum.
pub fn reference_filtered(l: &[f32], row: &SamplingRow<'_>) -> Option<Filtered> {
    let max = finite_max(l)?;
    let v = l.len();
    let mut alive = vec![true; v];
    if row.top_k >= 1 && row.top_k < v {
        for &i in &ranked(0..v, l)[row.top_k..] {
            alive[i] = false;
        }
    }
    let w: Vec<f32> = l
        .iter()
        .map(|&x| ((x - max) / row.temperature).exp())
        .collect();
    let mut margin = f64::INFINITY;
    if row.top_p < 1.0 {
        let order = ranked((0..v).filter(|&i| alive[i]), &w);
        let total: f64 = order.iter().map(|&i| w[i] as f64).sum();
        let target = row.top_p as f64 * total;
        let mut sum = 0.0f64;
        let mut cut = order.len() - 1;
        for (j, &i) in order.iter().enumerate() {
            let before = sum;
            sum += w[i] as f64;
            if sum >= target {
                cut = j;
                margin = margin
                    .min((sum - target) / total)
                    .min((target - before) / total);
                break;
            }
        }
        if let Some(&next) = order.get(cut + 1) {
            let at = order[cut];
            // Different logits whose weights are nearly equal could swap order elsewhere.
            if l[at] != l[next] && ((w[at] - w[next]) as f64) <= GUARD * w[at] as f64 {
                margin = 0.0;
            }
        }
        for &i in &order[cut + 1..] {
            alive[i] = false;
        }
    }
    if row.min_p > 0.0 {
        for i in 0..v {
            if !alive[i] {
                continue;
            }
            // A logit equal to the maximum has weight exp(0) = 1 exactly everywhere.
            if l[i] != max {
                margin = margin.min((w[i] - row.min_p).abs() as f64);
            }
            if w[i] < row.min_p {
                alive[i] = false;
            }
        }
    }
    let weights: Vec<f32> = (0..v).map(|i| if alive[i] { w[i] } else { 0.0 }).collect();
    let total: f64 = weights.iter().map(|&x| x as f64).sum();
    Some(Filtered {
        probs: weights.iter().map(|&x| x as f64 / total).collect(),
        weights,
        survivors: alive,
        margin,
    })
}

/// The inverse-CDF draw over `f`'s survivors in ascending id order, and how far `u` is
/// from the boundaries of the chosen token's interval of the normalised CDF.
pub fn reference_draw(f: &Filtered, u: f64) -> (u32, f64) {
    let total: f64 = f.weights.iter().map(|&x| x as f64).sum();
    let target = u * total;
    let mut running = 0.0f64;
    for (id, &w) in f.weights.iter().enumerate() {
        if !f.survivors[id] {
            continue;
        }
        let before = running;
        running += w as f64;
        if running > target {
            let distance = (u - before / total).min(running / total - u);
            return (id as u32, distance);
        }
    }
    panic!("reference draw found no token for u = {u}");
}

/// The reference's result for one row.
#[derive(Clone, Debug)]
pub struct ReferenceRow {
    pub token: u32,
    /// Whether a backend must give exactly `token` (no decision within [`GUARD`]).
    pub certain: bool,
    /// `(chosen token's logprob, top (id, logprob))`, for rows that ask.
    pub logprobs: Option<(f64, Vec<(u32, f64)>)>,
}

/// Log-softmax of `l / t` in f64 (`t = 1` when greedy): the chosen token's and the `n`
/// largest, most likely first (equal logits: lower id first).
pub fn reference_logprobs(
    l: &[f32],
    row: &SamplingRow<'_>,
    token: u32,
    n: usize,
) -> (f64, Vec<(u32, f64)>) {
    let t = if row.is_greedy() {
        1.0
    } else {
        row.temperature as f64
    };
    let scaled: Vec<f64> = l.iter().map(|&x| x as f64 / t).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_z = max + scaled.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
    let top = ranked(0..l.len(), l)
        .into_iter()
        .take(n)
        .map(|i| (i as u32, scaled[i] - log_z))
        .collect();
    (scaled[token as usize] - log_z, top)
}

/// One row by the definition. `logits` are the values the backend holds.
pub fn reference_row(logits: &[f32], row: &SamplingRow<'_>) -> ReferenceRow {
    let l = reference_processed(logits, row);
    let Some(max) = finite_max(&l) else {
        return ReferenceRow {
            token: NO_FINITE_LOGIT,
            certain: true,
            logprobs: None,
        };
    };
    let (token, certain) = if row.is_greedy() {
        (ranked(0..l.len(), &l)[0] as u32, true)
    } else {
        let f = reference_filtered(&l, row).expect("finite maximum");
        let (token, distance) = reference_draw(&f, uniform(row.seed, row.step));
        (token, f.margin > GUARD && distance > GUARD)
    };
    debug_assert!(l[token as usize] <= max);
    ReferenceRow {
        token,
        certain,
        logprobs: row
            .num_logprobs
            .map(|n| reference_logprobs(&l, row, row.logprob_token.unwrap_or(token), n)),
    }
}

// ---- helpers ---------------------------------------------------------------------

/// Uploads `data` (`[rows.len(), vocab]`, rounded to the activation dtype), samples it, and
/// returns the output with the values the backend held.
fn run(backend: &dyn Backend, data: &[f32], rows: &[SamplingRow<'_>]) -> (SampleOutput, Vec<f32>) {
    let vocab = data.len() / rows.len().max(1);
    let (logits, held) = activation(backend, data, &[rows.len(), vocab]);
    let out = backend
        .sample(logits, rows)
        .unwrap_or_else(|e| panic!("sample of {} rows × {vocab}: {e}", rows.len()));
    assert_eq!(out.tokens.len(), rows.len(), "one token per row");
    assert_eq!(out.logprobs.len(), rows.len(), "one logprobs entry per row");
    (out, held)
}

/// Tokens of `rows` over one shared row of logits (`data` is one row, repeated).
fn run_repeated(backend: &dyn Backend, row: &[f32], rows: &[SamplingRow<'_>]) -> Vec<u32> {
    let data: Vec<f32> = (0..rows.len()).flat_map(|_| row.iter().copied()).collect();
    run(backend, &data, rows).0.tokens
}

/// Compares a backend's output with the reference row by row; returns how many sampled
/// rows were skipped as uncertain.
fn check_against_reference(
    what: &str,
    out: &SampleOutput,
    held: &[f32],
    rows: &[SamplingRow<'_>],
) -> usize {
    let vocab = held.len() / rows.len();
    let mut skipped = 0;
    for (r, row) in rows.iter().enumerate() {
        let want = reference_row(&held[r * vocab..(r + 1) * vocab], row);
        let got = out.tokens[r];
        if want.certain {
            assert_eq!(got, want.token, "{what}: row {r} ({row:?})");
        } else {
            skipped += 1;
            assert!(
                (got as usize) < vocab,
                "{what}: row {r} drew {got} out of {vocab}"
            );
        }
        match (&want.logprobs, &out.logprobs[r]) {
            (None, None) => {}
            (Some(_), Some(got_lp)) if got != want.token => {
                // A skipped row drew its neighbour: only the list can be checked.
                let (_, top) = want.logprobs.as_ref().expect("asked");
                check_top(what, r, &got_lp.top, top);
            }
            (Some((chosen, top)), Some(got_lp)) => {
                check_logprob(what, r, "chosen", got_lp.logprob, *chosen);
                check_top(what, r, &got_lp.top, top);
            }
            (want_lp, got_lp) => {
                panic!("{what}: row {r}: logprobs {got_lp:?}, reference {want_lp:?} (token {got})")
            }
        }
    }
    skipped
}

fn check_logprob(what: &str, r: usize, name: &str, got: f32, want: f64) {
    let tol = logprob_tol();
    let ok = if want == f64::NEG_INFINITY {
        got == f32::NEG_INFINITY
    } else {
        (got as f64 - want).abs() <= tol.abs + tol.rel * want.abs()
    };
    assert!(
        ok,
        "{what}: row {r}: {name} logprob {got}, reference {want} (tolerance {tol:?})"
    );
}

fn check_top(what: &str, r: usize, got: &[(u32, f32)], want: &[(u32, f64)]) {
    let got_ids: Vec<u32> = got.iter().map(|&(id, _)| id).collect();
    let want_ids: Vec<u32> = want.iter().map(|&(id, _)| id).collect();
    assert_eq!(got_ids, want_ids, "{what}: row {r}: top logprob ids");
    for (&(id, g), &(_, w)) in got.iter().zip(want) {
        check_logprob(what, r, &format!("top token {id}"), g, w);
    }
}

fn expect_certain_mostly(what: &str, skipped: usize, total: usize) {
    // A draw lands within GUARD of a boundary with probability ~ a few GUARD per row.
    assert!(
        skipped * 50 <= total,
        "{what}: {skipped} of {total} rows too close to a boundary to compare: suspicious data"
    );
}

/// `(seed, step)` pairs spread over both coordinates.
fn seed_step(i: usize) -> (u64, u64) {
    (
        0x5eed_0000 + (i as u64 % 97) * 7919,
        (i as u64 / 97) * 3 + i as u64 % 5,
    )
}

/// A sampled (not greedy) row with these filters and no processing.
pub fn sampled(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingRow<'static> {
    SamplingRow {
        temperature,
        top_k,
        top_p,
        min_p,
        ..SamplingRow::default()
    }
}

fn with_seed(row: SamplingRow<'_>, seed: u64, step: u64) -> SamplingRow<'_> {
    SamplingRow { seed, step, ..row }
}

/// Logits in `[-scale, scale)` with a few exact ties (every 13th value equal).
fn random_logits(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    let mut v = rng.vec(len, scale);
    for i in (5..len).step_by(13) {
        v[i] = scale * 0.5;
    }
    v
}

// ---- greedy ----------------------------------------------------------------------

/// Greedy rows on random logits (with exact ties and NaNs): the reference's tokens exactly.
pub fn greedy_matches_reference_exactly(backend: &dyn Backend) {
    let mut rng = Rng::new(11);
    for (num_rows, vocab) in [(1, 5), (33, 37), (8, 1000), (3, 4099)] {
        let mut data = random_logits(&mut rng, num_rows * vocab, 6.0);
        for _ in 0..num_rows {
            let at = rng.below(data.len());
            data[at] = f32::NAN;
        }
        let rows = vec![SamplingRow::default(); num_rows];
        let (out, held) = run(backend, &data, &rows);
        check_against_reference(&format!("greedy {num_rows}×{vocab}"), &out, &held, &rows);
        assert!(out.logprobs.iter().all(Option::is_none));
    }
}

/// Ties go to the lowest id (−0 and +0 are equal); NaN is never chosen; a row of −∞/NaN,
/// or one holding +∞, gets [`NO_FINITE_LOGIT`] (and no logprobs) while the other rows of
/// the batch, greedy and sampled, are sampled as usual.
pub fn greedy_ties_nan_and_rows_without_a_finite_logit(backend: &dyn Backend) {
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    let data: Vec<f32> = [
        [0.5, 3.0, -1.0, 3.0, nan, 2.75],    // tie at 3 → 1
        [nan, 1.0, nan, 1.0, -inf, 0.0],     // NaN skipped → 1
        [-inf; 6],                           // nothing finite
        [nan; 6],                            // nothing finite
        [-inf, nan, inf, 0.0, 1.0, 2.0],     // +∞: no finite maximum
        [-inf, -inf, -inf, -5.0, -inf, nan], // one finite → 3
        [-0.0, 0.0, -1.0, 0.0, -0.0, -2.0],  // −0 = +0 → 0
        [-inf; 6],                           // sampled, with logprobs: nothing finite
        [-inf, -inf, 2.0, -inf, nan, -inf],  // sampled: the only finite one
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],      // sampled, with logprobs
    ]
    .concat();
    let greedy = SamplingRow::default();
    let drawn = SamplingRow {
        seed: 3,
        step: 9,
        ..sampled(1.0, 0, 1.0, 0.0)
    };
    let asking = SamplingRow {
        num_logprobs: Some(2),
        ..drawn
    };
    let rows = [
        greedy, greedy, greedy, greedy, greedy, greedy, greedy, asking, drawn, asking,
    ];
    let (out, held) = run(backend, &data, &rows);
    assert_eq!(
        &out.tokens[..9],
        &[
            1,
            1,
            NO_FINITE_LOGIT,
            NO_FINITE_LOGIT,
            NO_FINITE_LOGIT,
            3,
            0,
            NO_FINITE_LOGIT,
            2
        ]
    );
    assert!(out.tokens[9] < 6);
    assert_eq!(out.logprobs[7], None, "no logprobs without a token");
    assert!(out.logprobs[9].is_some());
    check_against_reference("greedy edge rows", &out, &held, &rows);
}

// ---- processing ------------------------------------------------------------------

/// Token mask, logit bias and penalties, hand-checked and then on random rows, greedy and
/// sampled. Every value is exact in f32 and bf16 (multiples of 1/16, penalties that halve
/// and double), so the processed logits are the same on every backend.
pub fn processing_matches_reference(backend: &dyn Backend) {
    // Hand-checked, greedy. Vocabulary 70: a mask of three words.
    let vocab: usize = 70;
    let base: Vec<f32> = (0..vocab)
        .map(|i| ((i * 37) % 64) as f32 / 16.0 - 2.0)
        .collect();
    let best = reference_row(&base, &SamplingRow::default()).token as usize;
    // Mask out the best and every token above 60: the next best below 60 wins.
    let mut mask = vec![u32::MAX; 3];
    mask[best / 32] &= !(1 << (best % 32));
    mask[1] &= (1 << (60 - 32)) - 1;
    mask[2] = 0;
    let masked = SamplingRow {
        allowed_tokens: Some(&mask),
        ..SamplingRow::default()
    };
    // Bias: push token 3 to the top (its logit + 8 beats every other ≤ 1.9375).
    let bias = [(3u32, 8.0f32), (5, -1.0), (3, 0.0625)];
    let biased = SamplingRow {
        logit_bias: &bias,
        ..SamplingRow::default()
    };
    // Penalties by hand on 5 tokens: each case's expected token differs from what a
    // likely mistake would give (named in the comment).
    let pen = |repetition, frequency, presence, prompt_tokens, output_counts| Penalties {
        repetition,
        frequency,
        presence,
        prompt_tokens,
        output_counts,
    };
    let cases: [([f32; 5], Penalties<'_>, u32); 4] = [
        // Token 0 in the prompt and the output: 4 / 2 once = 2 > 1.5 (twice: 1 < 1.5).
        (
            [4.0, 1.5, 3.0, -1.0, 1.0],
            pen(2.0, 0.0, 0.0, &[0, 3], &[(0, 2), (2, 1)]),
            0,
        ),
        // The same with token 1 at 2.5: 2 < 2.5 (not applied: 4 stays on top).
        (
            [4.0, 2.5, 3.0, -1.0, 1.0],
            pen(2.0, 0.0, 0.0, &[0, 3], &[(0, 2), (2, 1)]),
            1,
        ),
        // A negative logit is multiplied: −1 · 2 = −2 < −1.5 (divided: −0.5 would win).
        (
            [-1.0, -1.5, -3.0, -4.0, -2.0],
            pen(2.0, 0.0, 0.0, &[0], &[]),
            1,
        ),
        // 4 − (0.5 · 3 + 1) = 1.5 and 3 − (0.5 + 1) = 1.5 < 2 (without presence, or
        // without the count: 2.5).
        (
            [4.0, 2.0, 3.0, -1.0, 1.0],
            pen(1.0, 0.5, 1.0, &[], &[(0, 3), (2, 1)]),
            1,
        ),
    ];
    let rows_small: Vec<SamplingRow<'_>> = cases
        .iter()
        .map(|(_, p, _)| SamplingRow {
            penalties: Some(*p),
            ..SamplingRow::default()
        })
        .collect();
    let data_small: Vec<f32> = cases.iter().flat_map(|(l, _, _)| *l).collect();
    let (out, held) = run(backend, &data_small, &rows_small);
    let want: Vec<u32> = cases.iter().map(|c| c.2).collect();
    assert_eq!(out.tokens, want, "penalties by hand");
    check_against_reference("penalties by hand", &out, &held, &rows_small);

    let rows = [masked, biased];
    let data: Vec<f32> = base.iter().chain(&base).copied().collect();
    let (out, held) = run(backend, &data, &rows);
    assert_eq!(out.tokens[1], 3);
    assert!(out.tokens[0] < 60 && out.tokens[0] as usize != best);
    check_against_reference("mask and bias by hand", &out, &held, &rows);

    // Random rows, every kind of processing, greedy and sampled with logprobs.
    let mut rng = Rng::new(12);
    let vocab: usize = 300;
    let words = vocab.div_ceil(32);
    let num_rows = 96;
    let masks: Vec<Vec<u32>> = (0..num_rows)
        .map(|_| {
            (0..words)
                .map(|_| (rng.next_u64() as u32) | (rng.next_u64() as u32))
                .collect()
        })
        .collect();
    let biases: Vec<Vec<(u32, f32)>> = (0..num_rows)
        .map(|_| {
            (0..rng.below(6))
                .map(|_| {
                    (
                        rng.below(vocab) as u32,
                        (rng.below(65) as f32 - 32.0) / 16.0,
                    )
                })
                .collect()
        })
        .collect();
    let prompts: Vec<Vec<u32>> = (0..num_rows)
        .map(|_| {
            let ids: BTreeSet<u32> = (0..rng.below(20))
                .map(|_| rng.below(vocab) as u32)
                .collect();
            ids.into_iter().collect()
        })
        .collect();
    let outputs: Vec<Vec<(u32, u32)>> = (0..num_rows)
        .map(|_| {
            let ids: BTreeSet<u32> = (0..rng.below(20))
                .map(|_| rng.below(vocab) as u32)
                .collect();
            ids.into_iter()
                .map(|id| (id, 1 + rng.below(4) as u32))
                .collect()
        })
        .collect();
    // Logits: multiples of 1/16 in [-6, 6) (exact in bf16: at most 7 significant bits).
    let data: Vec<f32> = (0..num_rows * vocab)
        .map(|_| (rng.below(192) as f32 - 96.0) / 16.0)
        .collect();
    let rows: Vec<SamplingRow<'_>> = (0..num_rows)
        .map(|r| {
            let (seed, step) = seed_step(r);
            let filters = [
                sampled(0.0, 0, 1.0, 0.0),
                sampled(1.0, 0, 1.0, 0.0),
                sampled(0.75, 20, 0.9, 0.0),
                sampled(1.25, 0, 0.8, 0.05),
            ][r % 4];
            SamplingRow {
                seed,
                step,
                allowed_tokens: (r % 3 == 0).then_some(masks[r].as_slice()),
                logit_bias: &biases[r],
                penalties: (r % 5 != 4).then_some(Penalties {
                    repetition: [1.0, 2.0, 0.5][r % 3],
                    frequency: [0.0, 0.25, 0.5][(r / 3) % 3],
                    presence: [0.0, 0.5][(r / 2) % 2],
                    prompt_tokens: &prompts[r],
                    output_counts: &outputs[r],
                }),
                num_logprobs: (r % 2 == 0).then_some(3),
                ..filters
            }
        })
        .collect();
    let (out, held) = run(backend, &data, &rows);
    let skipped = check_against_reference("random processing", &out, &held, &rows);
    expect_certain_mostly("random processing", skipped, num_rows);
}

// ---- sampled tokens --------------------------------------------------------------

/// Sampled rows under many filter settings and `(seed, step)` pairs: exactly the
/// reference's token whenever the draw is not within [`GUARD`] of a boundary.
pub fn sampled_tokens_match_reference(backend: &dyn Backend) {
    let settings = [
        sampled(1.0, 0, 1.0, 0.0),
        sampled(0.5, 0, 1.0, 0.0),
        sampled(2.0, 0, 1.0, 0.0),
        sampled(1.0, 10, 1.0, 0.0),
        sampled(1.0, 0, 0.6, 0.0),
        sampled(1.0, 0, 1.0, 0.1),
        sampled(0.8, 40, 0.9, 0.02),
        sampled(1.3, 3, 0.5, 0.3),
    ];
    let mut rng = Rng::new(13);
    let mut skipped = 0;
    let mut total = 0;
    for (vocab, num_rows) in [(50, 160), (257, 80), (1000, 24)] {
        let data = random_logits(&mut rng, vocab * num_rows, 5.0);
        let rows: Vec<SamplingRow<'_>> = (0..num_rows)
            .map(|r| {
                let (seed, step) = seed_step(r * 31 + vocab);
                with_seed(settings[r % settings.len()], seed, step)
            })
            .collect();
        let (out, held) = run(backend, &data, &rows);
        skipped += check_against_reference(&format!("sampled V={vocab}"), &out, &held, &rows);
        total += num_rows;
        // Sampling is not greedy: some rows must draw something else than the argmax.
        let not_argmax = (0..num_rows)
            .filter(|&r| {
                let row = &held[r * vocab..(r + 1) * vocab];
                out.tokens[r] != reference_row(row, &SamplingRow::default()).token
            })
            .count();
        assert!(
            not_argmax > num_rows / 10,
            "V={vocab}: only {not_argmax} non-argmax draws"
        );
    }
    expect_certain_mostly("sampled tokens", skipped, total);
}

/// χ² goodness of fit of the drawn tokens against the exact filtered distribution, for
/// several settings on a 12-token vocabulary: 6000 draws each (1500 rows with distinct
/// seeds × 4 steps), all fixed, so the test is deterministic. Fails when χ² exceeds the
/// upper 0.1 % point for `survivors − 1` degrees of freedom, or when a filtered-out token is
/// ever drawn. Every expected count is ≥ 50 (checked), well above χ²'s usual 5.
pub fn sampled_distribution_fits_chi_square(backend: &dyn Backend) {
    let probs = [
        0.20f32, 0.15, 0.12, 0.10, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.01,
    ];
    // Shuffled so the filters' survivors are not a prefix of the ids.
    let order = [7usize, 2, 11, 0, 5, 9, 1, 4, 10, 3, 8, 6];
    let logits: Vec<f32> = order.iter().map(|&i| probs[i].ln()).collect();
    let held: Vec<f32> = {
        let (_, held) = activation(backend, &logits, &[1, logits.len()]);
        held
    };
    let settings = [
        ("plain", sampled(1.0, 0, 1.0, 0.0)),
        ("top-k 5", sampled(1.0, 5, 1.0, 0.0)),
        ("top-p 0.7", sampled(1.0, 0, 0.7, 0.0)),
        ("min-p 0.32", sampled(1.0, 0, 1.0, 0.32)),
        ("T 0.6, k 8, p 0.9, min-p 0.05", sampled(0.6, 8, 0.9, 0.05)),
        ("T 2.5, top-k 10", sampled(2.5, 10, 1.0, 0.0)),
    ];
    let (num_rows, steps) = (1500, 4u64);
    for (name, setting) in settings {
        let f = reference_filtered(&reference_processed(&held, &setting), &setting)
            .expect("finite logits");
        assert!(f.margin > 1e-3, "{name}: test data near a filter threshold");
        let df = f.survivors.iter().filter(|&&s| s).count() - 1;
        let n = num_rows as f64 * steps as f64;
        let mut counts = vec![0usize; logits.len()];
        for step in 0..steps {
            let rows: Vec<SamplingRow<'_>> = (0..num_rows)
                .map(|r| with_seed(setting, 0xC417 + 101 * r as u64, step))
                .collect();
            for t in run_repeated(backend, &logits, &rows) {
                counts[t as usize] += 1;
            }
        }
        let mut chi2 = 0.0;
        for (id, (&c, &p)) in counts.iter().zip(&f.probs).enumerate() {
            if !f.survivors[id] {
                assert_eq!(c, 0, "{name}: filtered-out token {id} drawn {c} times");
                continue;
            }
            let expected = n * p;
            assert!(expected >= 50.0, "{name}: token {id} expected {expected}");
            chi2 += (c as f64 - expected).powi(2) / expected;
        }
        assert!(
            df >= 1 && chi2 < CHI2_999[df],
            "{name}: χ² = {chi2:.2} ≥ {} (df {df}, α = 0.001); counts {counts:?}, probs {:?}",
            CHI2_999[df],
            f.probs
        );
    }
}

/// A seeded row draws the same token for the same `(seed, step)` alone, twice, and inside
/// a batch of other rows (different logits, settings and seeds, greedy and with logprobs);
/// its tokens vary with the step and with the seed.
pub fn seeded_rows_do_not_depend_on_their_batch(backend: &dyn Backend) {
    let vocab = 1000;
    let mut rng = Rng::new(14);
    let setting = sampled(0.9, 50, 0.95, 0.0);
    let others = [
        SamplingRow::default(),
        SamplingRow {
            num_logprobs: Some(5),
            ..sampled(1.0, 0, 1.0, 0.0)
        },
        sampled(0.7, 5, 0.8, 0.1),
        sampled(1.0, 0, 1.0, 0.0),
    ];
    let mut alone_tokens = Vec::new();
    let mut other_seed_tokens = Vec::new();
    for step in 0..24u64 {
        let row = rng.vec(vocab, 4.0);
        let mine = with_seed(setting, 42, step);
        let alone = run(backend, &row, &[mine]).0.tokens[0];
        assert_eq!(
            alone,
            run(backend, &row, &[mine]).0.tokens[0],
            "step {step}: again"
        );
        // In slot 3 of 5, behind rows with their own seeds at other steps.
        let mut data = rng.vec(3 * vocab, 4.0);
        data.extend_from_slice(&row);
        data.extend(rng.vec(vocab, 4.0));
        let batch = [
            with_seed(others[0], 1, step),
            with_seed(others[1], 2, step + 7),
            with_seed(others[2], 42, step + 1),
            mine,
            with_seed(others[3], 43, step),
        ];
        let in_batch = run(backend, &data, &batch).0.tokens[3];
        assert_eq!(alone, in_batch, "step {step}: alone vs in a batch");
        alone_tokens.push(alone);
        other_seed_tokens.push(
            run(backend, &row, &[with_seed(setting, 4242, step)])
                .0
                .tokens[0],
        );
    }
    let distinct: BTreeSet<u32> = alone_tokens.iter().copied().collect();
    assert!(
        distinct.len() > 4,
        "tokens barely vary with the step: {alone_tokens:?}"
    );
    assert_ne!(
        alone_tokens, other_seed_tokens,
        "another seed, the same tokens"
    );
}

// ---- edge cases ------------------------------------------------------------------

/// Draws `n` rows over one row of logits with distinct seeds; returns the set of tokens.
fn drawn_set(
    backend: &dyn Backend,
    logits: &[f32],
    setting: SamplingRow<'_>,
    n: usize,
) -> BTreeSet<u32> {
    let rows: Vec<SamplingRow<'_>> = (0..n)
        .map(|i| with_seed(setting, 0xED6E + i as u64, i as u64 % 7))
        .collect();
    run_repeated(backend, logits, &rows).into_iter().collect()
}

/// Ties at the top-k and top-p cutoffs keep the lower ids; `top_k ≥ V`, `top_p = 1` and
/// `min_p = 0` filter nothing; `top_k = 1` and a tiny `top_p` are greedy; `min_p = 1`
/// keeps the tokens tied for the top; a row that is −∞ everywhere but one token always
/// draws it, whatever the filters, with logprob 0.
pub fn filter_edge_cases(backend: &dyn Backend) {
    let n = 400;
    // Top-k tie at the cutoff: three tokens at 3, k = 2 → ids 1 and 2.
    let tie_k = [1.0f32, 3.0, 3.0, 3.0, 0.0];
    for t in [0.5, 1.0, 4.0] {
        let got = drawn_set(backend, &tie_k, sampled(t, 2, 1.0, 0.0), n);
        assert_eq!(got, BTreeSet::from([1, 2]), "top-k tie, T={t}");
    }
    // Top-p ties: four tokens of weight 1 (ids 1, 3, 4, 5) and two of e⁻² (0, 2):
    // total 4.27; p = 0.5 needs 2.14 → ids 1, 3, 4. Four equal weights, p = 0.5 needs
    // exactly 2 of 4 (the sum reaches the target exactly: ≥ keeps 2) → ids 0, 1.
    let tie_p = [-2.0f32, 0.0, -2.0, 0.0, 0.0, 0.0];
    let got = drawn_set(backend, &tie_p, sampled(1.0, 0, 0.5, 0.0), n);
    assert_eq!(got, BTreeSet::from([1, 3, 4]), "top-p tie");
    let flat = [0.0f32; 4];
    let got = drawn_set(backend, &flat, sampled(1.0, 0, 0.5, 0.0), n);
    assert_eq!(got, BTreeSet::from([0, 1]), "top-p exact target");
    let got = drawn_set(backend, &flat, sampled(1.0, 0, 0.6, 0.0), n);
    assert_eq!(
        got,
        BTreeSet::from([0, 1, 2]),
        "top-p past the exact target"
    );
    // The same on 100 equal weights (past any small-set shortcut): p = 0.5 keeps ids 0..50.
    let flat = [0.0f32; 100];
    let got = drawn_set(backend, &flat, sampled(1.0, 0, 0.5, 0.0), 1000);
    assert_eq!(got, (0..50).collect(), "top-p exact target, 100 tokens");

    // No-op settings: the same tokens as no filter at all, for the same (seed, step).
    let mut rng = Rng::new(15);
    let vocab = 64;
    let row = rng.vec(vocab, 3.0);
    let plain = sampled(1.1, 0, 1.0, 0.0);
    let base_rows: Vec<SamplingRow<'_>> =
        (0..n).map(|i| with_seed(plain, 9 + i as u64, 2)).collect();
    let base = run_repeated(backend, &row, &base_rows);
    for (name, setting) in [
        ("top_k = V", sampled(1.1, vocab, 1.0, 0.0)),
        ("top_k > V", sampled(1.1, vocab + 10, 1.0, 0.0)),
        ("top_p = 1", sampled(1.1, 0, 1.0, 0.0)),
    ] {
        let rows: Vec<SamplingRow<'_>> = (0..n)
            .map(|i| with_seed(setting, 9 + i as u64, 2))
            .collect();
        assert_eq!(run_repeated(backend, &row, &rows), base, "{name}");
    }
    assert!(
        base.iter().collect::<BTreeSet<_>>().len() > 10,
        "plain sampling varies"
    );

    // Greedy in disguise: top_k = 1, and a top_p so small the first token reaches it.
    let argmax = reference_row(
        &activation(backend, &row, &[1, vocab]).1,
        &SamplingRow::default(),
    )
    .token;
    for setting in [
        sampled(3.0, 1, 1.0, 0.0),
        sampled(0.2, 1, 0.9, 0.5),
        sampled(1.0, 0, 1e-6, 0.0),
    ] {
        assert_eq!(
            drawn_set(backend, &row, setting, 100),
            BTreeSet::from([argmax]),
            "{setting:?}"
        );
    }
    // top_k = 1 with the maximum tied: the lowest id.
    assert_eq!(
        drawn_set(backend, &tie_k, sampled(1.0, 1, 1.0, 0.0), 100),
        BTreeSet::from([1])
    );
    // min_p = 1: only the tokens tied for the top weight.
    let got = drawn_set(backend, &tie_k, sampled(1.0, 0, 1.0, 1.0), n);
    assert_eq!(got, BTreeSet::from([1, 2, 3]), "min_p = 1");

    // One finite logit: always that token, with logprob 0, the others −∞.
    let inf = f32::NEG_INFINITY;
    let lonely = [inf, inf, inf, -3.0, inf, f32::NAN, inf];
    for setting in [
        sampled(1.0, 0, 1.0, 0.0),
        sampled(2.0, 3, 0.5, 0.5),
        sampled(0.3, 1, 0.1, 1.0),
        SamplingRow::default(),
    ] {
        let rows: Vec<SamplingRow<'_>> = (0..50)
            .map(|i| SamplingRow {
                num_logprobs: Some(3),
                ..with_seed(setting, i, i)
            })
            .collect();
        let data: Vec<f32> = (0..rows.len()).flat_map(|_| lonely).collect();
        let (out, _) = run(backend, &data, &rows);
        for (t, lp) in out.tokens.iter().zip(&out.logprobs) {
            assert_eq!(*t, 3, "{setting:?}");
            let lp = lp.as_ref().expect("asked for logprobs");
            assert_eq!(lp.logprob, 0.0);
            assert_eq!(
                lp.top,
                vec![(3, 0.0), (0, f32::NEG_INFINITY), (1, f32::NEG_INFINITY)]
            );
        }
    }
}

// ---- logprobs --------------------------------------------------------------------

/// The chosen token's logprob and the top `n` (ids exact, values within [`logprob_tol`])
/// for greedy and sampled rows at several temperatures, with ties, −∞ and NaN logits, a
/// mask, and `n` from 0 to [`crate::sampling::MAX_NUM_LOGPROBS`] (beyond the vocabulary).
pub fn logprobs_match_reference(backend: &dyn Backend) {
    let mut rng = Rng::new(16);
    for vocab in [7, 500] {
        let num_rows = 48;
        let mut data = random_logits(&mut rng, num_rows * vocab, 8.0);
        for r in 0..num_rows {
            if r % 4 == 1 {
                data[r * vocab + rng.below(vocab)] = f32::NEG_INFINITY;
                data[r * vocab + rng.below(vocab)] = f32::NAN;
            }
        }
        let mask: Vec<u32> = (0..vocab.div_ceil(32))
            .map(|_| rng.next_u64() as u32 | 0x11)
            .collect();
        let rows: Vec<SamplingRow<'_>> = (0..num_rows)
            .map(|r| {
                let (seed, step) = seed_step(r + vocab);
                SamplingRow {
                    num_logprobs: Some([0, 1, 5, 20][r % 4]),
                    allowed_tokens: (r % 5 == 2).then_some(mask.as_slice()),
                    ..with_seed(
                        [
                            SamplingRow::default(),
                            sampled(0.5, 0, 1.0, 0.0),
                            sampled(1.0, 10, 0.9, 0.0),
                            sampled(2.0, 0, 1.0, 0.1),
                        ][(r / 4) % 4],
                        seed,
                        step,
                    )
                }
            })
            .collect();
        let (out, held) = run(backend, &data, &rows);
        let skipped = check_against_reference(&format!("logprobs V={vocab}"), &out, &held, &rows);
        expect_certain_mostly("logprobs", skipped, num_rows);
        for (r, row) in rows.iter().enumerate() {
            let lp = out.logprobs[r].as_ref().expect("every row asked");
            let n = row.num_logprobs.unwrap_or(0);
            assert_eq!(lp.top.len(), n.min(vocab), "row {r}");
            if row.is_greedy() && n > 0 {
                assert_eq!(
                    lp.top[0],
                    (out.tokens[r], lp.logprob),
                    "row {r}: greedy is the top"
                );
            }
            // Probabilities of the whole vocabulary sum to 1 (within the tolerance per term).
            if n >= vocab {
                let total: f64 = lp.top.iter().map(|&(_, l)| (l as f64).exp()).sum();
                assert!(
                    (total - 1.0).abs() <= vocab as f64 * 1e-5,
                    "row {r}: {total}"
                );
            }
        }
    }
}

/// [`Backend::token_logprobs`]: each row's target scored from the log-softmax of the raw
/// logits (f64, NaN as −∞, no temperature or processing), against a plain reference
/// written from that definition alone; the top `n` (ids exact, values within
/// [`logprob_tol`]) for `n` of 0, 3 and 20; a target at −∞ scores −∞; a row without a
/// finite maximum (all NaN, or a +∞) gives `None` and leaves the other rows alone.
pub fn token_logprobs_match_reference(backend: &dyn Backend) {
    let mut rng = Rng::new(17);
    for vocab in [5, 700] {
        let num_rows = 12;
        let mut data = random_logits(&mut rng, num_rows * vocab, 10.0);
        let targets: Vec<u32> = (0..num_rows).map(|_| rng.below(vocab) as u32).collect();
        // Row 1: its target at −∞ and a NaN elsewhere; row 4: all NaN; row 7: a +∞.
        data[vocab + targets[1] as usize] = f32::NEG_INFINITY;
        data[vocab + (targets[1] as usize + 1) % vocab] = f32::NAN;
        data[4 * vocab..5 * vocab].fill(f32::NAN);
        data[7 * vocab + rng.below(vocab)] = f32::INFINITY;
        for num_top in [0, 3, 20] {
            let (logits, held) = activation(backend, &data, &[num_rows, vocab]);
            let got = backend
                .token_logprobs(logits, &targets, num_top)
                .unwrap_or_else(|e| panic!("token_logprobs of {num_rows} × {vocab}: {e}"));
            assert_eq!(got.len(), num_rows);
            for (r, &target) in targets.iter().enumerate() {
                let row = &held[r * vocab..(r + 1) * vocab];
                let l: Vec<f64> = row
                    .iter()
                    .map(|&x| {
                        if x.is_nan() {
                            f64::NEG_INFINITY
                        } else {
                            x as f64
                        }
                    })
                    .collect();
                let max = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if !max.is_finite() {
                    assert_eq!(got[r], None, "V={vocab} row {r}: no finite maximum");
                    continue;
                }
                let log_z = max + l.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
                let mut order: Vec<usize> = (0..vocab).collect();
                order.sort_by(|&a, &b| l[b].partial_cmp(&l[a]).unwrap().then(a.cmp(&b)));
                let want_top: Vec<(u32, f64)> = order
                    .iter()
                    .take(num_top)
                    .map(|&i| (i as u32, l[i] - log_z))
                    .collect();
                let lp = got[r]
                    .as_ref()
                    .unwrap_or_else(|| panic!("row {r}: no logprobs"));
                let what = format!("token_logprobs V={vocab} n={num_top}");
                check_logprob(&what, r, "target", lp.logprob, l[target as usize] - log_z);
                check_top(&what, r, &lp.top, &want_top);
            }
            assert_eq!(got[1].as_ref().unwrap().logprob, f32::NEG_INFINITY);
        }
    }
    // No rows: nothing to do, no error.
    let (logits, _) = activation(backend, &[], &[0, 4]);
    assert_eq!(backend.token_logprobs(logits, &[], 2).unwrap(), vec![]);
    // A target outside the vocabulary, too many rows' targets, or too many top logprobs:
    // errors, not panics.
    for (targets, num_top) in [(&[4u32][..], 0), (&[0, 0][..], 0), (&[0][..], 21)] {
        let (logits, _) = activation(backend, &[0.0; 4], &[1, 4]);
        assert!(backend.token_logprobs(logits, targets, num_top).is_err());
    }
}

// ---- errors ----------------------------------------------------------------------

/// Bad rows, shapes and dtypes are errors, never panics; the backend works afterwards.
pub fn invalid_inputs_are_errors(backend: &dyn Backend) {
    let vocab = 10;
    let good = SamplingRow::default();
    let logits = |rows: usize| {
        upload_float(
            backend,
            &vec![0.5; rows * vocab],
            &[rows, vocab],
            backend.activation_dtype(),
        )
    };
    let short_mask = [u32::MAX];
    let penalties = Penalties {
        repetition: 1.0,
        frequency: 0.0,
        presence: 0.0,
        prompt_tokens: &[vocab as u32],
        output_counts: &[],
    };
    let bad_rows = [
        SamplingRow {
            temperature: -1.0,
            ..good
        },
        SamplingRow {
            temperature: f32::INFINITY,
            ..good
        },
        SamplingRow { top_p: 0.0, ..good },
        SamplingRow { top_p: 1.5, ..good },
        SamplingRow {
            min_p: -0.1,
            ..good
        },
        SamplingRow {
            num_logprobs: Some(crate::sampling::MAX_NUM_LOGPROBS + 1),
            ..good
        },
        SamplingRow {
            allowed_tokens: Some(&short_mask[..0]),
            ..good
        },
        SamplingRow {
            logit_bias: &[(vocab as u32, 1.0)],
            ..good
        },
        SamplingRow {
            logit_bias: &[(0, f32::NAN)],
            ..good
        },
        SamplingRow {
            penalties: Some(penalties),
            ..good
        },
        SamplingRow {
            penalties: Some(Penalties {
                repetition: -2.0,
                prompt_tokens: &[],
                ..penalties
            }),
            ..good
        },
    ];
    for bad in bad_rows {
        // The bad row second: the whole call fails, nothing is sampled.
        let result = backend.sample(logits(2), &[good, bad]);
        assert!(result.is_err(), "accepted {bad:?}");
    }
    assert!(
        backend.sample(logits(2), &[good]).is_err(),
        "fewer rows than logits"
    );
    assert!(
        backend.sample(logits(1), &[good, good]).is_err(),
        "more rows than logits"
    );
    let flat = upload_float(backend, &[0.0; 10], &[10], backend.activation_dtype());
    assert!(backend.sample(flat, &[good]).is_err(), "1-d logits");
    let cube = upload_float(backend, &[0.0; 20], &[2, 1, 10], backend.activation_dtype());
    assert!(backend.sample(cube, &[good, good]).is_err(), "3-d logits");
    let ids = upload_u32(backend, &[1; 10], &[1, 10]);
    assert!(backend.sample(ids, &[good]).is_err(), "u32 logits");
    // The backend still samples after all those errors.
    let out = backend
        .sample(logits(1), &[good])
        .unwrap_or_else(|e| panic!("after errors: {e}"));
    assert_eq!(out.tokens, vec![0]);
}
