//! The attention math for one work item: all heads of one query row over a contiguous
//! range of that sequence's keys, read through its block table.
//!
//! Two passes over the keys: scores `q·k·scale` for every (head, key) into a
//! thread-local buffer, a max-subtracted exponent per head, then `Σ exp(s − max)·v`.
//! The result is *partial*: unnormalised outputs plus each head's running max and
//! exponent sum ([`HeadStats`]), so ranges of one row can be merged exactly
//! ([`merge_partials`]) or normalised directly ([`normalise`]). Everything accumulates
//! in f32.
//!
//! Each K/V slot row (all KV heads, contiguous in the cache) is loaded once — widened
//! once for a bf16 cache — and serves every query head of every GQA group, so the cache
//! is streamed sequentially.

use std::cell::RefCell;
use std::ops::Range;

use super::super::kv::{CacheGeometry, KvElem};
use super::super::simd::{axpy4_body, axpy_body, dot4_body, dot_f32_body, ROWS4};
use super::meta::Heads;

/// One layer's paged K and V buffers.
pub(super) struct PagedKv<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub geometry: CacheGeometry,
}

/// Softmax statistics of one head over a key range.
#[derive(Clone, Copy, Debug)]
pub(super) struct HeadStats {
    /// Max scaled score (−∞ for an empty range).
    pub max: f32,
    /// `Σ exp(score − max)` (0 for an empty range).
    pub sum: f32,
}

impl HeadStats {
    pub(super) const EMPTY: HeadStats = HeadStats {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };
}

/// One work item: a query row of one sequence and the range of its keys to attend.
#[derive(Clone, Debug)]
pub(super) struct Task<'a> {
    /// The sequence's block table; the entries covering `keys` are valid block ids.
    pub block_table: &'a [u32],
    pub keys: Range<usize>,
    /// `heads * head_dim` query values.
    pub q_row: &'a [f32],
    pub scale: f32,
}

/// Per-thread buffers of the kernel body.
#[derive(Default)]
struct Buffers {
    /// `[heads, keys]` scores, then exponents.
    scores: Vec<f32>,
    /// Up to [`ROWS4`] K or V slot rows widened to f32 (bf16 caches only).
    rows: Vec<f32>,
}

#[derive(Default)]
struct Scratch {
    buffers: Buffers,
    /// Head statistics for [`attend_full`].
    stats: Vec<HeadStats>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Attention output of one query row over all of `task.keys` (normalised), into `out`.
pub(super) fn attend_full<T: KvElem>(
    kv: &PagedKv<'_, T>,
    heads: Heads,
    task: Task<'_>,
    out: &mut [f32],
) {
    // No rayon call happens while the scratch is borrowed, so the borrow cannot re-enter.
    SCRATCH.with_borrow_mut(|scratch| {
        let Scratch { buffers, stats } = scratch;
        stats.resize(heads.heads, HeadStats::EMPTY);
        attend_dispatch(kv, heads, task, out, stats, buffers);
        normalise(out, stats, heads.head_dim);
    })
}

/// Partial attention of one query row over `task.keys`: writes `Σ exp(s − max)·v` per
/// head into `out` and the per-head statistics into `stats`.
pub(super) fn attend_range<T: KvElem>(
    kv: &PagedKv<'_, T>,
    heads: Heads,
    task: Task<'_>,
    out: &mut [f32],
    stats: &mut [HeadStats],
) {
    // No rayon call happens while the scratch is borrowed, so the borrow cannot re-enter.
    SCRATCH.with_borrow_mut(|scratch| {
        attend_dispatch(kv, heads, task, out, stats, &mut scratch.buffers)
    })
}

/// Runs the `avx2,fma` instantiation of the body when the CPU has those features.
fn attend_dispatch<T: KvElem>(
    kv: &PagedKv<'_, T>,
    heads: Heads,
    task: Task<'_>,
    out: &mut [f32],
    stats: &mut [HeadStats],
    buffers: &mut Buffers,
) {
    #[cfg(target_arch = "x86_64")]
    if super::super::simd::has_avx2_fma() {
        // SAFETY: the CPU supports avx2 and fma (checked just above).
        unsafe { attend_avx2(kv, heads, task, out, stats, buffers) };
        return;
    }
    attend_body::<T, false>(kv, heads, task, out, stats, buffers)
}

/// [`attend_body`] compiled with `avx2,fma`.
///
/// # Safety
/// The CPU supports AVX2 and FMA ([`has_avx2_fma`](super::super::simd::has_avx2_fma)).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2<T: KvElem>(
    kv: &PagedKv<'_, T>,
    heads: Heads,
    task: Task<'_>,
    out: &mut [f32],
    stats: &mut [HeadStats],
    buffers: &mut Buffers,
) {
    attend_body::<T, true>(kv, heads, task, out, stats, buffers)
}

/// Element offsets of the cache slot rows of `keys`, in key order.
#[inline(always)]
fn slot_rows<'a>(
    geometry: &CacheGeometry,
    block_table: &'a [u32],
    keys: Range<usize>,
) -> impl Iterator<Item = usize> + 'a {
    let block_size = geometry.block_size;
    let row_width = geometry.row_width();
    let blocks = if keys.is_empty() {
        0..0
    } else {
        keys.start / block_size..(keys.end - 1) / block_size + 1
    };
    blocks.flat_map(move |b| {
        let first = keys.start.max(b * block_size);
        let last = keys.end.min((b + 1) * block_size);
        let block_start = block_table[b] as usize * block_size;
        (first..last).map(move |key| (block_start + key % block_size) * row_width)
    })
}

#[inline(always)]
fn attend_body<T: KvElem, const FMA: bool>(
    kv: &PagedKv<'_, T>,
    heads: Heads,
    task: Task<'_>,
    out: &mut [f32],
    stats: &mut [HeadStats],
    buffers: &mut Buffers,
) {
    let Task {
        block_table,
        keys,
        q_row,
        scale,
    } = task;
    let Heads {
        heads: num_heads,
        head_dim,
        group,
    } = heads;
    let row_width = kv.geometry.row_width();
    let num_keys = keys.len();
    out.fill(0.0);
    stats.fill(HeadStats::EMPTY);
    if num_keys == 0 {
        return;
    }
    let Buffers { scores, rows } = buffers;
    scores.resize(num_heads * num_keys, 0.0);
    rows.resize(ROWS4 * row_width, 0.0);
    // Elements of query head h's KV head within a slot row.
    let head = |h: usize| -> Range<usize> {
        let g = h / group;
        g * head_dim..(g + 1) * head_dim
    };

    // Pass 1: scaled scores, laid out [head][key]; four keys at a time share q loads.
    // (No closures around the arithmetic: a closure would not inherit the caller's
    // target features, and its FMAs would become libm calls.)
    let mut p = 0;
    for (offsets, len) in key_batches(&kv.geometry, block_table, keys.clone()) {
        let (loaded, len) = load_slots(kv.k, &offsets[..len], row_width, rows);
        let slots = &loaded[..len];
        if let &[s0, s1, s2, s3] = slots {
            for (h, q_head) in q_row.chunks_exact(head_dim).enumerate() {
                let r = head(h);
                let k = [&s0[r.clone()], &s1[r.clone()], &s2[r.clone()], &s3[r]];
                let dots = dot4_body::<FMA>(q_head, k);
                for (i, d) in dots.iter().enumerate() {
                    scores[h * num_keys + p + i] = d * scale;
                }
            }
        } else {
            for (i, slot) in slots.iter().enumerate() {
                for (h, q_head) in q_row.chunks_exact(head_dim).enumerate() {
                    let k = &slot[head(h)];
                    scores[h * num_keys + p + i] = dot_f32_body::<FMA>(q_head, k) * scale;
                }
            }
        }
        p += slots.len();
    }

    // Max-subtracted exponents and their sum, per head.
    for (head_scores, head_stats) in scores.chunks_exact_mut(num_keys).zip(stats.iter_mut()) {
        let max = head_scores
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for s in head_scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        *head_stats = HeadStats { max, sum };
    }

    // Pass 2: out[h] = Σ_p exp(s[h][p] − max[h]) · v_p; four keys per load/store of out.
    let mut p = 0;
    for (offsets, len) in key_batches(&kv.geometry, block_table, keys) {
        let (loaded, len) = load_slots(kv.v, &offsets[..len], row_width, rows);
        let slots = &loaded[..len];
        for (h, out_head) in out.chunks_exact_mut(head_dim).enumerate() {
            let probs = &scores[h * num_keys + p..h * num_keys + p + slots.len()];
            if let (&[s0, s1, s2, s3], &[w0, w1, w2, w3]) = (slots, probs) {
                let r = head(h);
                let v = [&s0[r.clone()], &s1[r.clone()], &s2[r.clone()], &s3[r]];
                axpy4_body::<FMA>([w0, w1, w2, w3], v, out_head);
            } else {
                for (slot, &w) in slots.iter().zip(probs) {
                    axpy_body::<FMA>(w, &slot[head(h)], out_head);
                }
            }
        }
        p += slots.len();
    }
}

/// The cache row offsets of `keys` in order, in batches of [`ROWS4`] (the last batch
/// may be shorter): `(offsets, len)`.
#[inline(always)]
fn key_batches<'a>(
    geometry: &CacheGeometry,
    block_table: &'a [u32],
    keys: Range<usize>,
) -> impl Iterator<Item = ([usize; ROWS4], usize)> + 'a {
    let mut offsets = slot_rows(geometry, block_table, keys);
    std::iter::from_fn(move || {
        let mut batch = [0usize; ROWS4];
        let mut len = 0;
        for (slot, offset) in batch.iter_mut().zip(offsets.by_ref()) {
            *slot = offset;
            len += 1;
        }
        (len > 0).then_some((batch, len))
    })
}

/// The slot rows at `offsets` (at most [`ROWS4`]) as f32 slices, and how many there
/// are: borrowed from an f32 cache, widened into `scratch` (one `row_width` part per
/// row) otherwise.
#[inline(always)]
fn load_slots<'a, T: KvElem>(
    cache: &'a [T],
    offsets: &[usize],
    row_width: usize,
    scratch: &'a mut [f32],
) -> ([&'a [f32]; ROWS4], usize) {
    let mut out: [&[f32]; ROWS4] = [&[]; ROWS4];
    let mut len = 0;
    for ((&offset, part), dst) in offsets
        .iter()
        .zip(scratch.chunks_exact_mut(row_width))
        .zip(out.iter_mut())
    {
        *dst = T::row_f32(&cache[offset..offset + row_width], part);
        len += 1;
    }
    (out, len)
}

/// Turns a partial over a row's whole key range into its output: `out[h] /= sum[h]`.
/// A head with no keys stays zero.
fn normalise(out: &mut [f32], stats: &[HeadStats], head_dim: usize) {
    for (out_head, s) in out.chunks_exact_mut(head_dim).zip(stats) {
        if s.sum > 0.0 {
            let inv = 1.0 / s.sum;
            out_head.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// Merges the partials of one row's key ranges (`partials[c]`, `stats[c]` for range
/// `c`) into `out`: rescales each to the global max, sums, divides by the global sum.
pub(super) fn merge_partials(
    partials: &[f32],
    stats: &[HeadStats],
    head_dim: usize,
    out: &mut [f32],
) {
    let width = out.len();
    let num_heads = width / head_dim;
    out.fill(0.0);
    for h in 0..num_heads {
        let head_stats = stats.iter().skip(h).step_by(num_heads);
        let max = head_stats
            .clone()
            .map(|s| s.max)
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            continue; // no keys at all
        }
        let mut sum = 0.0f32;
        let out_head = &mut out[h * head_dim..(h + 1) * head_dim];
        for (c, s) in head_stats.enumerate() {
            if s.sum == 0.0 {
                continue;
            }
            let weight = (s.max - max).exp();
            sum += weight * s.sum;
            let part = &partials[c * width + h * head_dim..c * width + (h + 1) * head_dim];
            for (o, &x) in out_head.iter_mut().zip(part) {
                *o += weight * x;
            }
        }
        let inv = 1.0 / sum;
        out_head.iter_mut().for_each(|x| *x *= inv);
    }
}
