//! The CPU implementation of [`Backend::sample`](crate::Backend::sample): exactly the
//! definition in [`crate::sampling`], rows in parallel on rayon's pool.
//!
//! Per row:
//! - a greedy row with no processing and no logprobs is one argmax pass over the logits as
//!   they are (f32, bf16 or f16), NaN skipped;
//! - any other row is processed in place (f32 logits are edited inside the consumed tensor;
//!   a bf16/f16 row is widened into a per-thread buffer first): mask, bias, penalties; then
//!   one pass turns NaN into −∞ and finds the maximum and the argmax;
//! - logprobs: one f64 pass for the log-normaliser, the `n` best kept in a small sorted list;
//! - sampled: the candidates are the row's tokens in id order. A filter finds its cutoff
//!   token among the candidates' rank keys (one `u64` per token: value, then id) — top-k with
//!   one `select_nth`, top-p with a quickselect for the shortest prefix (expected linear
//!   time) — and keeps the candidates that rank up to the cutoff with one `retain`, so they
//!   stay in ascending id order for the draw. A small top-k (at most 1/8 of the row) takes
//!   its survivors from the selection instead and sorts what is left of them by id before
//!   the draw. The vocabulary is never sorted.
//!
//! Rows are independent and each one's random number is a function of its own
//! `(seed, step)`, so the result never depends on threads or on the other rows.

use std::cell::RefCell;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::sampling::{
    uniform, validate_rows, Penalties, RowLogprobs, SampleOutput, SamplingRow, NO_FINITE_LOGIT,
};
use crate::tensor::{CpuStorage, Tensor};

use super::check;
use super::convert::bf16_bits_to_f32;
use super::parallel::{min_items, worth_parallel};

const OP: &str = "sample";

/// Below this many candidates, [`nucleus_cutoff`] sorts instead of partitioning further.
const NUCLEUS_SORT_LEN: usize = 32;
/// Top-k keeping at most `1 / TOP_K_SORT_FRACTION` of the candidates takes them from the
/// selection and sorts the final survivors by id (`k log k`, less than the `retain` over the
/// whole row that a larger `k` uses to keep the id order without sorting).
const TOP_K_SORT_FRACTION: usize = 8;

/// A token and its value: the processed logit until the weights are computed, the weight
/// `exp((l − max) / temperature)` after.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cand {
    id: u32,
    value: f32,
}

/// Per-thread buffers, reused across rows and calls.
#[derive(Default)]
struct Scratch {
    /// A bf16/f16 row widened to f32.
    wide: Vec<f32>,
    work: Work,
}

#[derive(Default)]
struct Work {
    /// The row's candidates, in ascending id order (but for a small top-k's survivors,
    /// until `filter` sorts them).
    cands: Vec<Cand>,
    /// Rank keys of the candidates, for a filter's selection to reorder.
    keys: Vec<u64>,
    /// One bit per token: already given the repetition penalty (it applies once per token).
    seen: Vec<u64>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A logit element type the op accepts.
trait Logit: Copy + Send + Sync {
    fn get(self) -> f32;
    /// The row as f32 to edit in place: itself for f32, else widened into `wide`.
    fn widen<'a>(row: &'a mut [Self], wide: &'a mut Vec<f32>) -> &'a mut [f32];
}

impl Logit for f32 {
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }
    fn widen<'a>(row: &'a mut [f32], _: &'a mut Vec<f32>) -> &'a mut [f32] {
        row
    }
}

impl Logit for bf16 {
    #[inline(always)]
    fn get(self) -> f32 {
        bf16_bits_to_f32(self.to_bits())
    }
    fn widen<'a>(row: &'a mut [bf16], wide: &'a mut Vec<f32>) -> &'a mut [f32] {
        wide.clear();
        wide.extend(row.iter().map(|x| x.get()));
        wide
    }
}

impl Logit for f16 {
    #[inline(always)]
    fn get(self) -> f32 {
        self.to_f32()
    }
    fn widen<'a>(row: &'a mut [f16], wide: &'a mut Vec<f32>) -> &'a mut [f32] {
        wide.clear();
        wide.extend(row.iter().map(|x| x.get()));
        wide
    }
}

/// One row's token and, when asked, logprobs.
type RowOut = (u32, Option<RowLogprobs>);

pub(super) fn sample(mut logits: Tensor, rows: &[SamplingRow<'_>]) -> Result<SampleOutput> {
    let (num_rows, vocab) = check::dims2(OP, "logits", &logits)?;
    validate_rows(OP, num_rows, vocab, rows)?;
    let outs = match logits.cpu_mut(OP)? {
        CpuStorage::F32(v) => by_row(v, vocab, rows),
        CpuStorage::BF16(v) => by_row(v, vocab, rows),
        CpuStorage::F16(v) => by_row(v, vocab, rows),
        s => {
            return Err(KernelError::WrongDType {
                op: OP,
                arg: "logits",
                expected: "f32, bf16 or f16",
                got: s.dtype(),
            })
        }
    };
    let (tokens, logprobs) = outs.into_iter().unzip();
    Ok(SampleOutput { tokens, logprobs })
}

/// Rough scalar operations of one row, to decide whether to go parallel.
fn row_cost(row: &SamplingRow<'_>, vocab: usize) -> usize {
    let mut passes = if row.is_greedy() { 1 } else { 24 };
    if row.has_processing() || row.num_logprobs.is_some() {
        passes += 2;
    }
    if row.num_logprobs.is_some() {
        passes += 16;
    }
    passes * vocab
}

fn by_row<T: Logit>(data: &mut [T], vocab: usize, rows: &[SamplingRow<'_>]) -> Vec<RowOut> {
    let cost: usize = rows.iter().map(|r| row_cost(r, vocab)).sum();
    if worth_parallel(cost) {
        let per_row = cost / rows.len().max(1);
        data.par_chunks_exact_mut(vocab)
            .zip(rows.par_iter())
            .with_min_len(min_items(per_row))
            .map(|(row, spec)| sample_row(row, spec))
            .collect()
    } else {
        data.chunks_exact_mut(vocab)
            .zip(rows)
            .map(|(row, spec)| sample_row(row, spec))
            .collect()
    }
}

fn sample_row<T: Logit>(row: &mut [T], spec: &SamplingRow<'_>) -> RowOut {
    if spec.is_greedy() && !spec.has_processing() && spec.num_logprobs.is_none() {
        return (greedy_token(row), None);
    }
    // No rayon call happens while the scratch is borrowed, so the borrow cannot re-enter.
    SCRATCH.with_borrow_mut(|scratch| {
        let Scratch { wide, work } = scratch;
        full_row(T::widen(row, wide), spec, work)
    })
}

/// The lowest id among the largest logits in one pass (NaN compares false, so it is
/// skipped); [`NO_FINITE_LOGIT`] unless that maximum is finite.
fn greedy_token<T: Logit>(row: &[T]) -> u32 {
    let mut best = f32::NEG_INFINITY;
    let mut arg = 0;
    for (i, &x) in row.iter().enumerate() {
        let x = x.get();
        if x > best {
            best = x;
            arg = i;
        }
    }
    if best.is_finite() {
        arg as u32
    } else {
        NO_FINITE_LOGIT
    }
}

/// Processing, then greedy or sampled, then logprobs, on a row editable in place.
fn full_row(l: &mut [f32], spec: &SamplingRow<'_>, work: &mut Work) -> RowOut {
    process(l, spec, &mut work.seen);
    // NaN counts as −∞ from here on (the weights and logprobs passes rely on it).
    let mut max = f32::NEG_INFINITY;
    let mut arg = 0;
    for (i, x) in l.iter_mut().enumerate() {
        if x.is_nan() {
            *x = f32::NEG_INFINITY;
        } else if *x > max {
            max = *x;
            arg = i;
        }
    }
    if !max.is_finite() {
        return (NO_FINITE_LOGIT, None);
    }
    let token = if spec.is_greedy() {
        arg as u32
    } else {
        draw(l, max, spec, work)
    };
    let scored = spec.logprob_token.unwrap_or(token);
    let logprobs = spec
        .num_logprobs
        .map(|n| row_logprobs(l, max, spec, scored, n));
    (token, logprobs)
}

/// Token mask, then logit bias, then penalties (the module docs of [`crate::sampling`]).
fn process(l: &mut [f32], spec: &SamplingRow<'_>, seen: &mut Vec<u64>) {
    if let Some(mask) = spec.allowed_tokens {
        // `validate_rows` checked that the mask has `ceil(V / 32)` words.
        for (chunk, &word) in l.chunks_mut(32).zip(mask) {
            if word == u32::MAX {
                continue;
            }
            for (bit, x) in chunk.iter_mut().enumerate() {
                if (word >> bit) & 1 == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }
    // Ids were checked against the vocabulary by `validate_rows`.
    for &(id, bias) in spec.logit_bias {
        l[id as usize] += bias;
    }
    if let Some(p) = &spec.penalties {
        penalise(l, p, seen);
    }
}

fn penalise(l: &mut [f32], p: &Penalties<'_>, seen: &mut Vec<u64>) {
    // A factor of 1 and zero offsets change no value (x / 1 = x · 1 = x, x − 0 = x): skipped.
    if p.repetition != 1.0 {
        seen.clear();
        seen.resize(l.len().div_ceil(64), 0);
        let ids = p
            .prompt_tokens
            .iter()
            .copied()
            .chain(p.output_counts.iter().map(|&(id, _)| id));
        for id in ids {
            let (word, bit) = (id as usize / 64, id % 64);
            if (seen[word] >> bit) & 1 == 1 {
                continue; // in the prompt and the output: penalised once
            }
            seen[word] |= 1 << bit;
            let x = &mut l[id as usize];
            *x = if *x > 0.0 {
                *x / p.repetition
            } else {
                *x * p.repetition
            };
        }
    }
    if p.frequency != 0.0 || p.presence != 0.0 {
        for &(id, count) in p.output_counts {
            l[id as usize] -= p.frequency * count as f32 + p.presence;
        }
    }
}

/// A token's rank as one integer: ascending keys are more likely first — the larger value,
/// then the lower id — so selections compare plain `u64`s. Values are never NaN here; −0
/// ranks as +0 (IEEE equal values tie and go by id).
#[inline(always)]
fn rank_key(value: f32, id: u32) -> u64 {
    let bits = if value == 0.0 { 0 } else { value.to_bits() };
    // IEEE order as unsigned order: flip every bit of a negative, the sign bit of the rest.
    let ascending = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    };
    ((!ascending as u64) << 32) | id as u64
}

/// The value a [`rank_key`] was made from (+0 for −0).
#[inline(always)]
fn key_value(key: u64) -> f32 {
    let ascending = !((key >> 32) as u32);
    let bits = if ascending >> 31 == 1 {
        ascending & !(1 << 31)
    } else {
        !ascending
    };
    f32::from_bits(bits)
}

#[inline(always)]
fn key_id(key: u64) -> u32 {
    key as u32
}

/// Temperature, top-k, top-p, min-p, then the inverse-CDF draw. `l` has no NaN and its
/// finite maximum is `max`; it is left as it is (the logprobs read it afterwards).
fn draw(l: &[f32], max: f32, spec: &SamplingRow<'_>, work: &mut Work) -> u32 {
    filter(l, max, spec, work);
    inverse_cdf(&work.cands, uniform(spec.seed, spec.step))
}

/// Leaves in `work.cands` the survivors of the filters, in ascending id order, with their
/// weights.
fn filter(l: &[f32], max: f32, spec: &SamplingRow<'_>, work: &mut Work) {
    let Work { cands, keys, .. } = work;
    cands.clear();
    // Every token, −∞ ones included: they rank last in every order and weigh 0, so they
    // change no filter's outcome and are never drawn (keeping them makes this a plain copy).
    cands.extend(l.iter().enumerate().map(|(id, &value)| Cand {
        id: id as u32,
        value,
    }));
    let mut in_id_order = true;
    let k = spec.top_k;
    if k > 0 && k < cands.len() {
        keys.clear();
        keys.extend(cands.iter().map(|c| rank_key(c.value, c.id)));
        let (_, &mut cut, _) = keys.select_nth_unstable(k - 1);
        if k <= cands.len() / TOP_K_SORT_FRACTION {
            // A few survivors: take them from the selection, sort them by id at the end.
            cands.clear();
            cands.extend(keys[..k].iter().map(|&key| Cand {
                id: key_id(key),
                value: key_value(key),
            }));
            in_id_order = false;
        } else {
            // Many: keep the candidates that rank up to the cutoff, in id order.
            cands.retain(|c| rank_key(c.value, c.id) <= cut);
        }
    }
    let t = spec.temperature;
    for c in cands.iter_mut() {
        c.value = ((c.value - max) / t).exp();
    }
    if spec.top_p < 1.0 && cands.len() > 1 {
        let total: f64 = cands.iter().map(|c| c.value as f64).sum();
        keys.clear();
        keys.extend(cands.iter().map(|c| rank_key(c.value, c.id)));
        if let Some(cut) = nucleus_cutoff(keys, spec.top_p as f64 * total) {
            cands.retain(|c| rank_key(c.value, c.id) <= cut);
        }
    }
    if spec.min_p > 0.0 {
        // The top weight is exactly 1 (`exp(0)`) and survives every filter.
        cands.retain(|c| c.value >= spec.min_p);
    }
    if !in_id_order {
        cands.sort_unstable_by_key(|c| c.id);
    }
}

/// The [`rank_key`] of the last candidate of the shortest prefix, most likely first, whose
/// weight sum is `≥ target`; `None` when even the whole set falls short (only by rounding:
/// then every candidate is kept). `keys` are rank keys of weights; reorders them.
///
/// A quickselect: partition around the median, sum the more likely half, and continue in
/// the half that holds the cutoff, so the work halves each round (expected linear time;
/// sums in f64, in an order of their own, as the definition allows).
fn nucleus_cutoff(keys: &mut [u64], target: f64) -> Option<u64> {
    let weight = |key: &u64| key_value(*key) as f64;
    // `keys[..lo]` rank before `keys[lo..hi]` and sum to `before < target`; the cutoff, if
    // any, is in `keys[lo..hi]`.
    let (mut lo, mut hi) = (0, keys.len());
    let mut before = 0.0f64;
    let mut narrowed = false;
    while hi - lo > NUCLEUS_SORT_LEN {
        let part = &mut keys[lo..hi];
        let m = part.len() / 2;
        let (upper, &mut pivot, _) = part.select_nth_unstable(m);
        let upper_sum: f64 = upper.iter().map(weight).sum();
        if before + upper_sum >= target {
            hi = lo + m;
            narrowed = true;
        } else {
            before += upper_sum + weight(&pivot);
            if before >= target {
                return Some(pivot);
            }
            lo += m + 1;
        }
    }
    let part = &mut keys[lo..hi];
    part.sort_unstable();
    let mut sum = before;
    for key in part.iter() {
        sum += weight(key);
        if sum >= target {
            return Some(*key);
        }
    }
    // Summed in another order, the prefix through `hi` reached the target: it is the cutoff.
    if narrowed {
        part.last().copied()
    } else {
        None
    }
}

/// The first candidate (ascending id) whose running weight sum exceeds `u ×` the total.
fn inverse_cdf(cands: &[Cand], u: f64) -> u32 {
    let total: f64 = cands.iter().map(|c| c.value as f64).sum();
    let target = u * total;
    let mut running = 0.0f64;
    for c in cands {
        running += c.value as f64;
        if running > target {
            return c.id;
        }
    }
    // Only by rounding, with `u` within ~2⁻⁵³ of 1: the last candidate with any weight.
    // There is one: the top token (weight 1) survives every filter.
    cands
        .iter()
        .rev()
        .find(|c| c.value > 0.0)
        .map_or(NO_FINITE_LOGIT, |c| c.id)
}

/// Logprobs from the log-softmax of `l / temperature` (`l` itself when greedy) in f64: the
/// chosen token's and the `n` most likely (equal values: the lower id first).
fn row_logprobs(l: &[f32], max: f32, spec: &SamplingRow<'_>, token: u32, n: usize) -> RowLogprobs {
    let t = if spec.is_greedy() {
        1.0
    } else {
        spec.temperature as f64
    };
    let scaled_max = max as f64 / t;
    let sum: f64 = l.iter().map(|&x| (x as f64 / t - scaled_max).exp()).sum();
    let log_z = scaled_max + sum.ln();
    let logprob = |id: u32| (l[id as usize] as f64 / t - log_z) as f32;
    // The n best so far, most likely first. Ids arrive in ascending order, so a value equal
    // to one already listed goes after it, and one equal to the last of a full list loses.
    let mut top: Vec<Cand> = Vec::with_capacity(n + 1);
    if n > 0 {
        for (id, &value) in l.iter().enumerate() {
            if top.len() == n && top.last().is_some_and(|last| value <= last.value) {
                continue;
            }
            let at = top.partition_point(|c| c.value >= value);
            top.insert(
                at,
                Cand {
                    id: id as u32,
                    value,
                },
            );
            top.truncate(n);
        }
    }
    RowLogprobs {
        logprob: logprob(token),
        top: top.iter().map(|c| (c.id, logprob(c.id))).collect(),
    }
}

#[cfg(test)]
mod tests {
    //! What only the CPU implementation promises (bf16/f16 logits, parallel = serial, the
    //! greedy shortcut), and its filters' survivor sets against the plain reference of
    //! `testing::sampling` on large vocabularies — the host sampler's filter tests, ported.
    //! The behaviour every backend shares is the suite's (`testing::sampling`).

    use std::collections::BTreeSet;

    use super::*;
    use crate::testing::rng::Rng;
    use crate::testing::sampling::{reference_filtered, reference_processed, sampled};
    use crate::{Backend, CpuBackend, DType, Penalties};

    /// Deterministic logits in `[-8, 8)` with exact ties (every 97th value is 2.5).
    fn test_logits(n: usize, salt: u64) -> Vec<f32> {
        let mut rng = Rng::new(salt);
        (0..n)
            .map(|i| {
                if i % 97 == 3 {
                    2.5
                } else {
                    8.0 * rng.uniform()
                }
            })
            .collect()
    }

    /// The ids `filter` keeps, checking that they come in ascending order.
    fn survivor_ids(l: &[f32], spec: &SamplingRow<'_>) -> BTreeSet<u32> {
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut work = Work::default();
        filter(l, max, spec, &mut work);
        assert!(
            work.cands.windows(2).all(|w| w[0].id < w[1].id),
            "survivors out of id order"
        );
        work.cands.iter().map(|c| c.id).collect()
    }

    /// The reference's survivors and its margin (how far a decision is from its threshold).
    fn reference_ids(l: &[f32], spec: &SamplingRow<'_>) -> (BTreeSet<u32>, f64) {
        let f = reference_filtered(&reference_processed(l, spec), spec).expect("finite");
        let ids = (0..l.len() as u32)
            .filter(|&i| f.survivors[i as usize])
            .collect();
        (ids, f.margin)
    }

    #[test]
    fn top_k_keeps_the_k_most_likely() {
        let logits = test_logits(5000, 1);
        // Tokens above the tied value 2.5: k just past them cuts the 52 ties.
        let above = logits.iter().filter(|&&l| l > 2.5).count();
        for k in [1, 2, 7, 52, 53, 54, above + 1, above + 26, 4999, 5000, 9000] {
            let spec = sampled(0.7, k, 1.0, 0.0);
            let (want, _) = reference_ids(&logits, &spec);
            assert_eq!(survivor_ids(&logits, &spec), want, "k = {k}");
            assert_eq!(want.len(), k.min(5000));
        }
        assert_eq!(
            survivor_ids(&logits, &sampled(1.0, 0, 1.0, 0.0)).len(),
            5000
        );
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        for (salt, temperature) in [(2, 1.0), (3, 0.3), (4, 3.0)] {
            let logits = test_logits(20_000, salt);
            for top_p in [1e-6, 0.1, 0.5, 0.9, 0.95, 0.999, 1.0] {
                let spec = sampled(temperature, 0, top_p, 0.0);
                let (want, margin) = reference_ids(&logits, &spec);
                // f64 sums of 20k terms in different orders agree to ~1e-12 of the total.
                assert!(margin > 1e-9, "test data at a boundary: {margin}");
                let got = survivor_ids(&logits, &spec);
                assert_eq!(got, want, "top_p = {top_p}, T = {temperature}");
                assert!(!got.is_empty());
            }
        }
    }

    #[test]
    fn rank_keys_order_by_value_then_id_and_keep_the_value() {
        let values = [
            f32::NEG_INFINITY,
            -3.4e38,
            -1.0,
            -1e-40,
            -0.0,
            0.0,
            1e-40,
            0.5,
            1.0,
            3.4e38,
        ];
        let mut items: Vec<(f32, u32)> = Vec::new();
        for (i, &v) in values.iter().enumerate() {
            items.push((v, 2 * i as u32 + 1));
            items.push((v, 2 * i as u32));
        }
        let mut by_key = items.clone();
        by_key.sort_by_key(|&(v, id)| rank_key(v, id));
        let mut by_definition = items.clone();
        by_definition.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        // −0 and +0 are one value: compare as values, ids exactly.
        let ids = |v: &[(f32, u32)]| v.iter().map(|&(x, id)| (x == 0.0, id)).collect::<Vec<_>>();
        assert_eq!(ids(&by_key), ids(&by_definition));
        for &(v, id) in &items {
            let key = rank_key(v, id);
            assert_eq!(key_id(key), id);
            assert_eq!(key_value(key), if v == 0.0 { 0.0 } else { v });
        }
    }

    #[test]
    fn nucleus_cutoff_matches_a_full_sort() {
        let mut rng = Rng::new(7);
        for case in 0..300 {
            let n = 1 + rng.below(if case % 3 == 0 { 2000 } else { 100 });
            // Few distinct weights (many exact ties) and some zeros.
            let levels = 1 + rng.below(12);
            let keys: Vec<u64> = (0..n)
                .map(|id| rank_key(rng.below(levels) as f32 / 4.0, id as u32))
                .collect();
            let total: f64 = keys.iter().map(|&k| key_value(k) as f64).sum();
            let target = (0.05 + 0.9 * (rng.uniform() as f64 + 1.0) / 2.0) * total;
            // The definition: most likely first (larger weight, then lower id), the first
            // prefix reaching the target. Multiples of 1/4 sum exactly: no rounding anywhere.
            let mut sorted: Vec<(f32, u32)> =
                keys.iter().map(|&k| (key_value(k), key_id(k))).collect();
            sorted.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
            let mut sum = 0.0;
            let want = sorted.iter().find(|&&(w, _)| {
                sum += w as f64;
                sum >= target
            });
            let mut scratch = keys.clone();
            let got = nucleus_cutoff(&mut scratch, target).map(|k| (key_value(k), key_id(k)));
            assert_eq!(got, want.copied(), "case {case}, n {n}");
        }
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_top() {
        let logits = test_logits(3000, 5);
        for min_p in [0.0, 0.01, 0.2, 0.5, 1.0] {
            let spec = sampled(1.3, 0, 1.0, min_p);
            let (want, margin) = reference_ids(&logits, &spec);
            assert!(margin > 1e-6, "test data at a boundary: {margin}");
            let got = survivor_ids(&logits, &spec);
            assert_eq!(got, want, "min_p = {min_p}");
            assert!(!got.is_empty());
        }
    }

    #[test]
    fn inverse_cdf_falls_back_to_the_last_weighted_token() {
        let cands = [
            Cand { id: 2, value: 1.0 },
            Cand { id: 5, value: 0.5 },
            Cand { id: 9, value: 0.0 },
        ];
        assert_eq!(inverse_cdf(&cands, 0.0), 2);
        assert_eq!(inverse_cdf(&cands, 0.7), 5);
        // u = 1 cannot come from `uniform`; it is what rounding at u ≈ 1 amounts to.
        assert_eq!(inverse_cdf(&cands, 1.0), 5);
    }

    /// A mixed batch: greedy, processed, sampled with filters, logprobs.
    fn mixed_rows<'a>(num_rows: usize, mask: &'a [u32], prompt: &'a [u32]) -> Vec<SamplingRow<'a>> {
        (0..num_rows)
            .map(|r| {
                let base = [
                    SamplingRow::default(),
                    sampled(1.0, 0, 1.0, 0.0),
                    sampled(0.7, 40, 0.9, 0.05),
                    sampled(1.5, 0, 0.95, 0.0),
                ][r % 4];
                SamplingRow {
                    seed: 1000 + r as u64,
                    step: r as u64 / 3,
                    num_logprobs: (r % 3 == 0).then_some(4),
                    allowed_tokens: (r % 5 == 1).then_some(mask),
                    penalties: (r % 7 == 2).then_some(Penalties {
                        repetition: 1.3,
                        frequency: 0.2,
                        presence: 0.1,
                        prompt_tokens: prompt,
                        output_counts: &[(1, 2), (7, 1)],
                    }),
                    ..base
                }
            })
            .collect()
    }

    fn sample_f32(data: &[f32], rows: &[SamplingRow<'_>]) -> SampleOutput {
        let vocab = data.len() / rows.len();
        let t = Tensor::from_f32(data.to_vec(), &[rows.len(), vocab]).unwrap();
        CpuBackend::new().sample(t, rows).unwrap()
    }

    #[test]
    fn bf16_and_f16_logits_sample_as_their_f32_values() {
        let (num_rows, vocab): (usize, usize) = (24, 777);
        let mask: Vec<u32> = (0..vocab.div_ceil(32)).map(|w| !(1 << (w % 32))).collect();
        let rows = mixed_rows(num_rows, &mask, &[3, 4, 5]);
        let mut data = test_logits(num_rows * vocab, 8);
        data[5] = f32::NAN;
        for dtype in [DType::BF16, DType::F16] {
            let narrow = Tensor::from_f32(data.clone(), &[num_rows, vocab])
                .and_then(|t| t.to_dtype_cpu(dtype))
                .unwrap();
            let widened = narrow.to_vec_f32().unwrap();
            let want = sample_f32(&widened, &rows);
            assert_eq!(
                CpuBackend::new().sample(narrow, &rows).unwrap(),
                want,
                "{dtype}"
            );
        }
    }

    #[test]
    fn parallel_rows_equal_rows_sampled_alone() {
        let (num_rows, vocab) = (32, 4096);
        let rows = mixed_rows(num_rows, &[], &[0, 9]);
        let rows: Vec<SamplingRow<'_>> = rows
            .into_iter()
            .map(|r| SamplingRow {
                allowed_tokens: None,
                ..r
            })
            .collect();
        let cost: usize = rows.iter().map(|r| row_cost(r, vocab)).sum();
        assert!(worth_parallel(cost) || rayon::current_num_threads() == 1);
        let data = test_logits(num_rows * vocab, 9);
        let together = sample_f32(&data, &rows);
        for (r, row) in rows.iter().enumerate() {
            let alone = sample_f32(&data[r * vocab..(r + 1) * vocab], &[*row]);
            assert_eq!(alone.tokens[0], together.tokens[r], "row {r}");
            assert_eq!(alone.logprobs[0], together.logprobs[r], "row {r}");
        }
    }

    #[test]
    fn greedy_shortcut_equals_the_full_path() {
        let inf = f32::INFINITY;
        let rows_data: [&[f32]; 6] = [
            &[1.0, 3.0, f32::NAN, 3.0, -inf],
            &[f32::NAN; 5],
            &[-inf, 0.0, inf, 1.0, 2.0],
            &[-0.0, 0.0, -1.0, 0.0, -3.0],
            &[-inf, -inf, -inf, -inf, -7.0],
            &[0.5, 0.25, 0.125, 1.0, 0.75],
        ];
        let all = [u32::MAX];
        for data in rows_data {
            // Allowing every token changes nothing but takes the full path.
            let full = SamplingRow {
                allowed_tokens: Some(&all),
                ..SamplingRow::default()
            };
            let shortcut = sample_f32(data, &[SamplingRow::default()]);
            assert_eq!(shortcut, sample_f32(data, &[full]), "{data:?}");
        }
    }

    #[test]
    fn zero_rows_and_bad_tensors() {
        let be = CpuBackend::new();
        let none = Tensor::from_f32(vec![], &[0, 5]).unwrap();
        assert_eq!(be.sample(none, &[]).unwrap(), SampleOutput::default());
        let empty = Tensor::from_f32(vec![], &[1, 0]).unwrap();
        assert!(be.sample(empty, &[SamplingRow::default()]).is_err());
        let ids = Tensor::from_u32(vec![0; 4], &[1, 4]).unwrap();
        assert!(matches!(
            be.sample(ids, &[SamplingRow::default()]),
            Err(KernelError::WrongDType { .. })
        ));
    }
}
