//! Paged causal attention with GQA, for prefill (many queries per sequence) and decode
//! (one query per sequence).
//!
//! Both read every key — cached prefix and new tokens alike — from the paged cache
//! through the block tables, so `store_kv` must run first. Query row `t` of sequence
//! `s` sits at position `context_len_s − q_len_s + i` and sees keys `0..=pos`; in decode
//! that is all `context_len_s` keys.
//!
//! On AVX2+FMA CPUs (head dims that are multiples of 8) [`flash`] does the work: blocks
//! of query rows per KV head, each K/V chunk read once per block, online softmax.
//! Otherwise (other CPUs, or a decode too small to fill the threads that way) work is
//! split by query row, all heads at once: each K/V slot row (every KV head,
//! contiguous in the cache) is streamed once per row and serves all GQA groups. When
//! there are too few rows to keep every thread busy (decode, short batches), each row's
//! keys are also split into ranges computed in parallel and merged exactly through
//! their softmax statistics (flash-decoding).
//!
//! An FP8 (e4m3) cache is read as its e4m3 values times 2⁻⁸ (widened exactly, see
//! `E4m3::READ_UNIT`) and its scales, with the 2⁸, are applied outside the loops:
//! `q·(e·k_scale)·scale = (q·e·2⁻⁸)·(scale·k_scale·2⁸)` and
//! `Σ p·(e·v_scale) = (v_scale·2⁸)·Σ p·e·2⁻⁸`.

#[cfg(target_arch = "x86_64")]
mod flash;
mod kernel;
mod meta;

use std::cell::RefCell;
use std::ops::Range;

use half::bf16;
use rayon::prelude::*;

use crate::attention::AttentionMetadata;
use crate::error::Result;
use crate::kv_cache::LayerKvCache;
use crate::tensor::Tensor;
use crate::validate;

use super::check;
use super::kv::{CacheGeometry, E4m3, KvBuffers, KvElem};
use super::parallel::{for_each_row, min_items, with_taken, worth_parallel};
use kernel::{attend_full, attend_range, merge_partials, HeadStats, PagedKv, Task};
use meta::{Batch, Heads};

/// Keys per range when rows are split: long enough to amortise the merge.
const MIN_KEYS_PER_RANGE: usize = 256;

pub(crate) fn prefill_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    scale: f32,
) -> Result<Tensor> {
    const OP: &str = "prefill_attention";
    let geometry = CacheGeometry::of(OP, cache)?;
    let (rows, heads) = meta::heads(OP, q, &geometry)?;
    // The new keys/values are read back from the cache; check they match it anyway.
    validate::attention::new_kv_shapes(OP, k, v, rows, geometry.row_width())?;
    let batch = meta::batch(OP, meta, &geometry, rows, true)?;
    run(OP, q, cache, geometry, heads, &batch, scale)
}

pub(crate) fn decode_attention(
    q: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    scale: f32,
) -> Result<Tensor> {
    const OP: &str = "decode_attention";
    let geometry = CacheGeometry::of(OP, cache)?;
    let (rows, heads) = meta::heads(OP, q, &geometry)?;
    let batch = meta::batch(OP, meta, &geometry, rows, false)?;
    run(OP, q, cache, geometry, heads, &batch, scale)
}

fn run(
    op: &'static str,
    q: &Tensor,
    cache: &LayerKvCache,
    geometry: CacheGeometry,
    heads: Heads,
    batch: &Batch<'_>,
    scale: f32,
) -> Result<Tensor> {
    let qs = check::f32s(op, "q", q)?;
    let width = heads.heads * heads.head_dim;
    let rows = qs.len() / width;
    // Zeroed: a row with no keys (graph padding) is left at zero.
    let mut out = super::buffer_pool::take_zeroed(rows * width);
    match KvBuffers::of(op, cache)? {
        KvBuffers::F32(k, v) => {
            let kv = PagedKv { k, v, geometry };
            attend(&kv, heads, batch, qs, scale, &mut out)
        }
        KvBuffers::BF16(k, v) => {
            let kv = PagedKv::<bf16> { k, v, geometry };
            attend(&kv, heads, batch, qs, scale, &mut out)
        }
        KvBuffers::E4M3(k, v) => {
            let kv = PagedKv::<E4m3> { k, v, geometry };
            // The elements read as value · READ_UNIT: its inverse joins each scale.
            let scales = cache.effective_scales();
            let k_factor = scales.k / E4m3::READ_UNIT;
            attend(&kv, heads, batch, qs, scale * k_factor, &mut out);
            let v_factor = scales.v / E4m3::READ_UNIT;
            out.iter_mut().for_each(|x| *x *= v_factor);
        }
    }
    Tensor::from_f32(out, &[rows, width])
}

/// The query-block kernel where the CPU and head shape allow it and its items can keep
/// the threads busy; [`attend_rows`] otherwise (it also splits one row's keys across
/// threads, for a few long decodes).
fn attend<T: KvElem>(
    kv: &PagedKv<'_, T>,
    heads: Heads,
    batch: &Batch<'_>,
    qs: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if flash::available(heads.head_dim) {
        // Decode items are whole rows (all KV heads); prefill blocks always make enough.
        let rows = out.len() / (heads.heads * heads.head_dim);
        if batch.cu_seqlens_q.is_some() || rows >= 2 * rayon::current_num_threads() {
            flash::attend(kv, heads, batch, qs, scale, out);
            return;
        }
    }
    attend_rows(kv, heads, batch, qs, scale, out)
}

/// Computes every query row, splitting rows' keys into ranges when rows alone cannot
/// keep the thread pool busy.
fn attend_rows<T: KvElem>(
    kv: &PagedKv<'_, T>,
    heads: Heads,
    batch: &Batch<'_>,
    qs: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let width = heads.heads * heads.head_dim;
    let rows = out.len() / width;
    let num_keys = |t: usize| batch.query(t).1;
    let total_keys: usize = (0..rows).map(num_keys).sum();
    let max_keys = (0..rows).map(num_keys).max().unwrap_or(0);
    // Scores and weighted sums: ~4 operations per (key, head, element).
    let cost_per_key = 4 * width;
    let ranges_per_row = (4 * rayon::current_num_threads()).div_ceil(rows.max(1));
    let keys_per_range = max_keys.div_ceil(ranges_per_row).max(MIN_KEYS_PER_RANGE);
    let work = Rows {
        kv,
        heads,
        batch,
        qs,
        scale,
        cost_per_key,
    };
    if keys_per_range >= max_keys || !worth_parallel(total_keys * cost_per_key) {
        work.whole(total_keys, out);
    } else {
        with_taken(&SPLIT_SCRATCH, |scratch| {
            work.split(keys_per_range, out, scratch)
        });
    }
}

/// The split path's per-call lists, kept per thread across calls.
#[derive(Default)]
struct SplitScratch {
    /// (row, key range) work items.
    items: Vec<(usize, Range<usize>)>,
    /// Each item's unnormalised output and softmax statistics.
    partials: Vec<f32>,
    stats: Vec<HeadStats>,
}

thread_local! {
    static SPLIT_SCRATCH: RefCell<SplitScratch> = RefCell::new(SplitScratch::default());
}

/// What every row computation shares.
struct Rows<'a, T> {
    kv: &'a PagedKv<'a, T>,
    heads: Heads,
    batch: &'a Batch<'a>,
    qs: &'a [f32],
    scale: f32,
    cost_per_key: usize,
}

impl<T: KvElem> Rows<'_, T> {
    fn task(&self, t: usize, keys: Range<usize>) -> Task<'_> {
        let width = self.heads.heads * self.heads.head_dim;
        Task {
            block_table: self.batch.block_table(self.batch.query(t).0),
            keys,
            q_row: &self.qs[t * width..(t + 1) * width],
            scale: self.scale,
        }
    }

    /// One item per row over all its keys, normalised in place.
    fn whole(&self, total_keys: usize, out: &mut [f32]) {
        let width = self.heads.heads * self.heads.head_dim;
        let rows = out.len() / width;
        let cost_per_row = self.cost_per_key * total_keys.div_ceil(rows.max(1));
        for_each_row(out, width, cost_per_row, |t, out_row| {
            let num_keys = self.batch.query(t).1;
            attend_full(self.kv, self.heads, self.task(t, 0..num_keys), out_row);
        });
    }

    /// Items (row, key range) computed in parallel, then merged per row.
    fn split(&self, keys_per_range: usize, out: &mut [f32], scratch: &mut SplitScratch) {
        let (width, heads) = (self.heads.heads * self.heads.head_dim, self.heads.heads);
        let rows = out.len() / width;
        let SplitScratch {
            items,
            partials,
            stats,
        } = scratch;
        // Each row's items are consecutive; an empty row still gets one (empty) item.
        items.clear();
        items.extend((0..rows).flat_map(|t| {
            let n = self.batch.query(t).1;
            let count = n.div_ceil(keys_per_range).max(1);
            (0..count).map(move |c| (t, c * keys_per_range..n.min((c + 1) * keys_per_range)))
        }));
        partials.clear();
        partials.resize(items.len() * width, 0.0);
        stats.clear();
        stats.resize(items.len() * heads, HeadStats::EMPTY);
        partials
            .par_chunks_exact_mut(width)
            .zip(stats.par_chunks_exact_mut(heads))
            .zip(items.par_iter())
            .with_min_len(min_items(self.cost_per_key * keys_per_range))
            .for_each(|((partial, item_stats), (t, keys))| {
                let task = self.task(*t, keys.clone());
                attend_range(self.kv, self.heads, task, partial, item_stats);
            });
        let mut first = 0;
        for (t, out_row) in out.chunks_exact_mut(width).enumerate() {
            let count = items[first..]
                .iter()
                .take_while(|(row, _)| *row == t)
                .count();
            merge_partials(
                &partials[first * width..(first + count) * width],
                &stats[first * heads..(first + count) * heads],
                self.heads.head_dim,
                out_row,
            );
            first += count;
        }
    }
}
