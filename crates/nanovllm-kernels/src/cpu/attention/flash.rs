//! Paged causal attention over blocks of query rows, flash-attention style (AVX2+FMA,
//! and F16C to widen an e4m3 cache): prefill and decode.
//!
//! A work item is up to [`BLOCK_ROWS`] consecutive query rows of one sequence (decode:
//! its one row) and one KV head `g`: its `rows × group` query vectors (every query head
//! of `g`'s GQA group) walk the sequence's keys in chunks of at most [`CHUNK_KEYS`] that
//! never cross a cache block, so a chunk's K and V rows of head `g` are evenly spaced in
//! the cache. Decode chunks are read in place whatever the cache's type (a bf16 cache is
//! widened in registers as it is loaded, an e4m3 one through F16C: decode attention is
//! bound by reading the cache, which bf16 halves and e4m3 quarters); prefill chunks,
//! each shared by up to 32 query vectors, are read in place from an f32 cache and
//! widened once into per-thread scratch from a bf16 or e4m3 one. Per chunk: scores →
//! causal mask → online softmax
//! (running max and sum per query vector; earlier outputs rescaled when the max grows) →
//! `acc += P·V` with the accumulator tile in registers across the chunk's keys.
//!
//! Scores take one of two forms:
//! - up to [`DOT_MAX_QUERIES`] query vectors (decode; GQA groups up to 4): dot products
//!   straight on the K rows, 8 (query, key) accumulators reduced together;
//! - more (prefill blocks): K is transposed once per chunk (`[head_dim][CHUNK_KEYS]`) so
//!   eight keys' scores are one FMA chain of broadcast query elements — the transposition
//!   is shared by all the block's query vectors.
//!
//! Row `i` of a block sees keys `0 .. n_i` (its position + 1); a chunk beyond `n_i`
//! contributes nothing to that row. Items write disjoint (rows, head-group) parts of the
//! output. Everything accumulates in f32; exponentials use [`exp_avx2`] (relative error
//! < 4e-7 on the softmax's range `x ≤ 0`).

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use super::super::kv::{has_avx2_fma_f16c, KvElem};
use super::super::parallel::{min_items, with_taken, worth_parallel, OutPtr};
use super::super::simd::hsum_avx;
use super::kernel::PagedKv;
use super::meta::{Batch, Heads};

/// Query rows per work item.
pub(super) const BLOCK_ROWS: usize = 16;
/// Most keys per chunk: a head's K and V chunk (`2 · 64 · 128` f32, 64 KiB) stays in L2.
const CHUNK_KEYS: usize = 64;
/// Up to this many query vectors per KV head, scores are dot products on the K rows.
const DOT_MAX_QUERIES: usize = 4;
/// Most keys per chunk for dot scores, whose items cover every KV head: the chunk's
/// slot rows (`8 · 8 KiB` for Qwen3-0.6B's f32 K and V) stay in L2 while the KV heads
/// take their slices in turn, so each row is read from memory whole and in order; and
/// 8 rows a cache row apart still fit one 8-way L1 set (see `chunk_rows`).
const DOT_CHUNK_KEYS: usize = 8;
/// f32 lanes per AVX register.
const LANES: usize = 8;
/// Query vectors per score tile (each times two 8-key vectors: 8 accumulators).
const SCORE_QUERIES: usize = 4;
/// Query vectors per `P·V` tile (each times four 8-wide slices of the head: 8 accumulators).
const PV_QUERIES: usize = 2;

/// Whether [`attend`] handles this head shape on this CPU.
pub(super) fn available(head_dim: usize) -> bool {
    head_dim % LANES == 0 && has_avx2_fma_f16c()
}

/// One work item: `rows` query rows from `first_row` of sequence `seq`, KV heads
/// `first_kv_head .. first_kv_head + kv_heads`.
#[derive(Clone, Copy, Debug)]
struct Item {
    seq: usize,
    first_row: usize,
    rows: usize,
    first_kv_head: usize,
    kv_heads: usize,
}

/// Per-thread scratch, reused across items and calls.
#[derive(Default)]
struct Scratch {
    /// `[head_dim][CHUNK_KEYS]` keys of the chunk, transposed (many query vectors only).
    keys_t: Vec<f32>,
    /// `[CHUNK_KEYS][head_dim]` keys and values of the chunk, widened (bf16 caches only).
    keys: Vec<f32>,
    values: Vec<f32>,
    /// `[queries][CHUNK_KEYS]` scores, then probabilities.
    scores: Vec<f32>,
    /// `[queries][head_dim]` unnormalised outputs.
    acc: Vec<f32>,
    /// Running max and sum per query vector.
    max: Vec<f32>,
    sum: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// The work items of a call, reused across calls.
    static ITEMS: RefCell<Vec<Item>> = const { RefCell::new(Vec::new()) };
}

/// Causal attention of every query row, prefill or decode ([`available`] checked).
pub(super) fn attend<T: KvElem>(
    kv: &PagedKv<'_, T>,
    heads: Heads,
    batch: &Batch<'_>,
    qs: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    // Checked in release too: the unsafe kernels below trust them (one check per call).
    assert!(available(heads.head_dim) && qs.len() >= out.len());
    // Taken, not borrowed: the items outlive a parallel loop (see `with_taken`).
    with_taken(&ITEMS, |items| {
        let total_cost = plan_items(heads, batch, out.len(), items);
        let out_ptr = OutPtr(out.as_mut_ptr());
        let run = |item: &Item| {
            // No rayon call happens while the scratch is borrowed, so it cannot re-enter.
            SCRATCH.with_borrow_mut(|scratch| {
                // SAFETY: `available` holds and `qs` has a query row for each of the
                // `out.len() / width` output rows (asserted above); the item's rows and
                // head group are among those rows, and no other item writes them.
                unsafe { attend_item(kv, heads, batch, qs, scale, *item, scratch, out_ptr) }
            })
        };
        if worth_parallel(total_cost) {
            let per_item = total_cost / items.len().max(1);
            items
                .par_iter()
                .with_min_len(min_items(per_item))
                .for_each(run);
        } else {
            items.iter().for_each(run);
        }
    })
}

/// Replaces `items` with the work items for an output of `out_len` floats and returns
/// their total cost (scalar operations).
fn plan_items(heads: Heads, batch: &Batch<'_>, out_len: usize, items: &mut Vec<Item>) -> usize {
    let width = heads.heads * heads.head_dim;
    let num_rows = out_len / width;
    let kv_heads = heads.heads / heads.group;
    items.clear();
    let mut total_cost = 0;
    let mut t = 0;
    while t < num_rows {
        let seq = batch.query(t).0;
        let mut rows = 1;
        while rows < BLOCK_ROWS && t + rows < num_rows && batch.query(t + rows).0 == seq {
            rows += 1;
        }
        total_cost += rows * batch.query(t + rows - 1).1 * 4 * width;
        if rows * heads.group > DOT_MAX_QUERIES {
            // Transposed scores: one item per KV head (its transposed chunk is shared by
            // the block's rows).
            items.extend((0..kv_heads).map(|kv_head| Item {
                seq,
                first_row: t,
                rows,
                first_kv_head: kv_head,
                kv_heads: 1,
            }));
        } else {
            // Dot scores (decode): one item per row block, all KV heads, so each chunk's
            // slot rows are read whole, front to back (see `DOT_CHUNK_KEYS`).
            items.push(Item {
                seq,
                first_row: t,
                rows,
                first_kv_head: 0,
                kv_heads,
            });
        }
        t += rows;
    }
    total_cost
}

/// One item (see the module docs).
///
/// # Safety
/// AVX2+FMA+F16C are available and `head_dim` is a multiple of 8 ([`available`]); `qs`
/// holds a `heads·head_dim` query row for each of the batch's rows, and `out` is valid
/// for writes of the item's rows × head group of the `[rows, heads·head_dim]` output,
/// which nobody else touches during the call.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_item<T: KvElem>(
    kv: &PagedKv<'_, T>,
    heads: Heads,
    batch: &Batch<'_>,
    qs: &[f32],
    scale: f32,
    item: Item,
    scratch: &mut Scratch,
    out: OutPtr,
) {
    let Heads {
        heads: num_heads,
        head_dim,
        group,
    } = heads;
    let width = num_heads * head_dim;
    // Query vectors per KV head; the item's vectors are numbered KV head by KV head:
    // `qi = g·queries + i·group + j` is row `first_row + i`, head `(first_kv_head + g)·group + j`.
    let queries = item.rows * group;
    let all_queries = queries * item.kv_heads;
    let head_of = |qi: usize| (item.first_kv_head + qi / queries) * group + qi % group;
    let row_of = |qi: usize| item.first_row + (qi % queries) / group;
    let query = |qi: usize| -> *const f32 {
        // SAFETY: callers pass `qi < all_queries`: row `row_of(qi)` is one of the item's
        // rows and `head_of(qi) < num_heads`, so the vector's `head_dim` elements lie in
        // `qs`, which holds every row (the contract).
        unsafe { qs.as_ptr().add(row_of(qi) * width + head_of(qi) * head_dim) }
    };
    // Rows are in position order, so the last row sees the most keys.
    let all_keys = batch.query(item.first_row + item.rows - 1).1;
    let block_table = batch.block_table(item.seq);
    let transposed = queries > DOT_MAX_QUERIES;
    let chunk_keys = if transposed {
        CHUNK_KEYS
    } else {
        DOT_CHUNK_KEYS
    };

    let s = scratch;
    if transposed {
        s.keys_t.resize(head_dim * CHUNK_KEYS, 0.0);
    }
    // Dot tiles may fill a few unused rows (see `DotTile`).
    s.scores
        .resize(queries.max(DOT_MAX_QUERIES) * CHUNK_KEYS, 0.0);
    s.acc.clear();
    s.acc.resize(all_queries * head_dim, 0.0);
    s.max.clear();
    s.max.resize(all_queries, f32::NEG_INFINITY);
    s.sum.clear();
    s.sum.resize(all_queries, 0.0);

    let block_size = kv.geometry.block_size;
    let mut k0 = 0;
    while k0 < all_keys {
        let chunk = chunk_keys
            .min(all_keys - k0)
            .min(block_size - k0 % block_size);
        let slot0 = block_table[k0 / block_size] as usize * block_size + k0 % block_size;
        for g in 0..item.kv_heads {
            let q_base = g * queries;
            let head_query = |qi: usize| query(q_base + qi);
            let kv_head = item.first_kv_head + g;
            let softmax = |s: &mut Scratch| {
                for qi in 0..queries {
                    let keys = batch.query(row_of(q_base + qi)).1;
                    let valid = keys.saturating_sub(k0).min(chunk);
                    // SAFETY: AVX2+FMA (this function's contract); row `qi` of the
                    // scores and entry `q_base + qi` of the state exist (sized above).
                    unsafe { softmax_update(qi, q_base + qi, valid, chunk, head_dim, s) };
                }
            };
            // What the kernels below need, and why it holds: AVX2+FMA and
            // `head_dim % 8 == 0` (this function's contract); `rows` locates the chunk's
            // `chunk` K and V rows of `head_dim` elements (bounds-checked by the slicing
            // in `*_chunk_rows`; in the cache, or in scratch buffers nothing resizes until
            // the next chunk); `head_query` gives KV head `g`'s `queries` vectors, each
            // `head_dim` long; the scratch was sized above for `max(queries,
            // DOT_MAX_QUERIES)` rows of `CHUNK_KEYS` scores, `all_queries` accumulators
            // and a transposed chunk; and `chunk ≤ chunk_keys ≤ CHUNK_KEYS`.
            if transposed {
                let rows = prefill_chunk_rows(kv, slot0, chunk, kv_head, head_dim, s);
                // SAFETY: see the comment above `if transposed`.
                unsafe {
                    transpose_keys(rows, chunk, head_dim, s);
                    scores_transposed(
                        &head_query,
                        queries,
                        head_dim,
                        chunk.div_ceil(LANES),
                        scale,
                        s,
                    );
                }
                softmax(s);
                // SAFETY: see the comment above `if transposed`.
                unsafe { values_update(queries, q_base, head_dim, chunk, rows, s) };
            } else {
                let rows = decode_chunk_rows(kv, slot0, chunk, kv_head, head_dim);
                // SAFETY: see the comment above `if transposed`; `queries ≤
                // DOT_MAX_QUERIES` (not `transposed`).
                unsafe { scores_dot(&head_query, queries, head_dim, chunk, rows, scale, s) };
                softmax(s);
                // SAFETY: see the comment above `if transposed`.
                unsafe { values_update(queries, q_base, head_dim, chunk, rows, s) };
            }
        }
        k0 += chunk;
    }

    for qi in 0..all_queries {
        // A query with no keys (none in valid metadata) stays zero.
        let inv = if s.sum[qi] > 0.0 {
            1.0 / s.sum[qi]
        } else {
            0.0
        };
        // SAFETY: query vector `qi`'s `head_dim` outputs (row `row_of(qi)`, head
        // `head_of(qi)`) are in this item's rows × head group, which the caller
        // guarantees are valid for writes and this call's alone.
        unsafe {
            let dst = out.get().add(row_of(qi) * width + head_of(qi) * head_dim);
            for d in 0..head_dim {
                *dst.add(d) = s.acc[qi * head_dim + d] * inv;
            }
        }
    }
}

/// Where a chunk's K and V rows of one head are: row `j` at `k + j·k_stride` and
/// `v + j·v_stride`, elements of type `E` (f32, or the bf16 of a cache read in place).
#[derive(Clone, Copy)]
struct ChunkRows<E> {
    k: *const E,
    k_stride: usize,
    v: *const E,
    v_stride: usize,
}

/// A decode chunk's `chunk` rows of KV head `kv_head` from `slot0` (the chunk lies in one
/// block, so its rows are evenly spaced): in place, whatever the cache's type. Decode
/// chunks are at most [`DOT_CHUNK_KEYS`] rows, which fit one 8-way L1 set even a cache
/// row apart.
#[inline(always)]
fn decode_chunk_rows<T: KvElem>(
    kv: &PagedKv<'_, T>,
    slot0: usize,
    chunk: usize,
    kv_head: usize,
    head_dim: usize,
) -> ChunkRows<T> {
    let row_width = kv.geometry.row_width();
    let start = slot0 * row_width + kv_head * head_dim;
    // Slicing the whole span checks every row the kernels will read.
    let span = start..start + (chunk - 1) * row_width + head_dim;
    ChunkRows {
        k: kv.k[span.clone()].as_ptr(),
        k_stride: row_width,
        v: kv.v[span].as_ptr(),
        v_stride: row_width,
    }
}

/// A prefill chunk's `chunk` rows of KV head `kv_head` from `slot0`, as f32: K in place
/// from an f32 cache, widened into the scratch from a bf16 one; V always copied
/// contiguous (widened if need be): `P·V` sweeps the chunk's V rows once per 32-element
/// slice of the head, and rows a cache row apart (4 KiB in an f32 Qwen3-0.6B cache) all
/// fall in one 8-way L1 set, so a chunk of more than 8 rows read in place would evict
/// itself on every sweep.
#[inline(always)]
fn prefill_chunk_rows<T: KvElem>(
    kv: &PagedKv<'_, T>,
    slot0: usize,
    chunk: usize,
    kv_head: usize,
    head_dim: usize,
    s: &mut Scratch,
) -> ChunkRows<f32> {
    let row_width = kv.geometry.row_width();
    let start = slot0 * row_width + kv_head * head_dim;
    let row = |j: usize| start + j * row_width..start + j * row_width + head_dim;
    let span = start..start + (chunk - 1) * row_width + head_dim;
    let (k, k_stride) = match T::as_f32(&kv.k[span]) {
        Some(k) => (k.as_ptr(), row_width),
        None => {
            s.keys.resize(CHUNK_KEYS * head_dim, 0.0);
            for j in 0..chunk {
                // Not f32, so `row_f32` widens into the destination it is given.
                T::row_f32(&kv.k[row(j)], &mut s.keys[j * head_dim..(j + 1) * head_dim]);
            }
            (s.keys.as_ptr(), head_dim)
        }
    };
    s.values.resize(CHUNK_KEYS * head_dim, 0.0);
    for j in 0..chunk {
        let dst = &mut s.values[j * head_dim..(j + 1) * head_dim];
        match T::as_f32(&kv.v[row(j)]) {
            Some(v) => dst.copy_from_slice(v),
            None => _ = T::row_f32(&kv.v[row(j)], dst),
        }
    }
    ChunkRows {
        k,
        k_stride,
        v: s.values.as_ptr(),
        v_stride: head_dim,
    }
}

/// `keys_t[d][j] = k_j[d]` for the chunk's keys, zeros for the rest of the last vector.
/// Row by row: each K row is read in order (the scattered writes stay in L1).
///
/// # Safety
/// `rows.k` is valid for reading `chunk` rows of `head_dim` f32, `rows.k_stride` apart;
/// `s.keys_t` holds `head_dim · CHUNK_KEYS` elements; `chunk ≤ CHUNK_KEYS`.
#[inline(always)]
unsafe fn transpose_keys(rows: ChunkRows<f32>, chunk: usize, head_dim: usize, s: &mut Scratch) {
    // SAFETY: rows `j.min(chunk - 1) < chunk` and elements `d < head_dim` are readable
    // (the contract); `d · CHUNK_KEYS + j < head_dim · CHUNK_KEYS` since `j < padded ≤
    // CHUNK_KEYS` (a multiple of 8), so every write lands in `keys_t`.
    unsafe {
        let padded = chunk.div_ceil(LANES) * LANES;
        let keys_t = s.keys_t.as_mut_ptr();
        for j in 0..padded {
            let row = rows.k.add(j.min(chunk - 1) * rows.k_stride);
            let keep = if j < chunk { 1.0 } else { 0.0 };
            for d in 0..head_dim {
                *keys_t.add(d * CHUNK_KEYS + j) = *row.add(d) * keep;
            }
        }
    }
}

/// `scores[qi][key] = scale · q_qi · k_key` for the chunk's `key_vectors · 8` keys.
///
/// # Safety
/// AVX2+FMA are available; `query(qi)` for `qi < queries` points at `head_dim` readable
/// f32; `s.keys_t` holds the `[head_dim][CHUNK_KEYS]` transposed chunk, `s.scores` at
/// least `queries` rows of `CHUNK_KEYS`, and `key_vectors · 8 ≤ CHUNK_KEYS`.
#[inline(always)]
unsafe fn scores_transposed(
    query: &impl Fn(usize) -> *const f32,
    queries: usize,
    head_dim: usize,
    key_vectors: usize,
    scale: f32,
    s: &mut Scratch,
) {
    let mut q0 = 0;
    while q0 < queries {
        let n = (queries - q0).min(SCORE_QUERIES);
        let q: [*const f32; SCORE_QUERIES] = std::array::from_fn(|i| query(q0 + i.min(n - 1)));
        let mut kv0 = 0;
        while kv0 < key_vectors {
            let pair = (key_vectors - kv0).min(2);
            let tile = ScoreTile {
                q,
                q0,
                kv0,
                head_dim,
                scale,
            };
            // SAFETY: AVX2+FMA (the contract); the tile's query pointers are vectors
            // `q0 .. q0 + n` (repeating the last, `n ≥ 1`), inside `queries`; its key
            // vectors `kv0 .. kv0 + pair ≤ key_vectors` fit `CHUNK_KEYS`.
            unsafe {
                match (n, pair) {
                    (4, 2) => score_tile::<4, 2>(tile, s),
                    (4, _) => score_tile::<4, 1>(tile, s),
                    (3, 2) => score_tile::<3, 2>(tile, s),
                    (3, _) => score_tile::<3, 1>(tile, s),
                    (2, 2) => score_tile::<2, 2>(tile, s),
                    (2, _) => score_tile::<2, 1>(tile, s),
                    (_, 2) => score_tile::<1, 2>(tile, s),
                    _ => score_tile::<1, 1>(tile, s),
                }
            }
            kv0 += pair;
        }
        q0 += n;
    }
}

/// `scores[qi][key] = scale · q_qi · k_key` for every query vector (at most
/// [`DOT_MAX_QUERIES`]) and the chunk's keys, as dot products on the K rows.
///
/// # Safety
/// AVX2+FMA are available and `head_dim` is a multiple of 8; `1 ≤ queries ≤
/// DOT_MAX_QUERIES`; `query(qi)` for `qi < queries` points at `head_dim` readable f32;
/// `rows.k` is valid for reading `chunk` rows of `head_dim` elements, `rows.k_stride`
/// apart.
#[inline(always)]
unsafe fn scores_dot<E: KvElem>(
    query: &impl Fn(usize) -> *const f32,
    queries: usize,
    head_dim: usize,
    chunk: usize,
    rows: ChunkRows<E>,
    scale: f32,
    s: &mut Scratch,
) {
    debug_assert!(queries <= DOT_MAX_QUERIES);
    let q: [*const f32; DOT_MAX_QUERIES] = std::array::from_fn(|i| query(i.min(queries - 1)));
    let tile = DotTile {
        q,
        rows,
        head_dim,
        scale,
    };
    // Keys per tile: 8 accumulators in all.
    let keys_per_tile = 8 / queries.next_power_of_two();
    let mut key = 0;
    while key + keys_per_tile <= chunk {
        // SAFETY: AVX2+FMA, `head_dim % 8 == 0` (the contract); keys `key .. key +
        // keys_per_tile ≤ chunk` are readable; each tile has `Q · KEYS = 8` sums.
        unsafe {
            match queries {
                1 => dot_tile::<E, 1, 8>(&tile, key, s),
                2 => dot_tile::<E, 2, 4>(&tile, key, s),
                _ => dot_tile::<E, 4, 2>(&tile, key, s),
            }
        }
        key += keys_per_tile;
    }
    while key < chunk {
        // SAFETY: as above, for the one key `key < chunk`.
        unsafe {
            match queries {
                1 => dot_tile::<E, 1, 1>(&tile, key, s),
                2 => dot_tile::<E, 2, 1>(&tile, key, s),
                _ => dot_tile::<E, 4, 1>(&tile, key, s),
            }
        }
        key += 1;
    }
}

/// What every dot tile of a chunk shares. Query pointers past the item's vectors repeat
/// its last one (their scores land in unused rows of `scores`).
struct DotTile<E> {
    q: [*const f32; DOT_MAX_QUERIES],
    rows: ChunkRows<E>,
    head_dim: usize,
    scale: f32,
}

/// `Q` query vectors × `KEYS` keys from `key0`, dotted along the head, the `Q·KEYS ≤ 8`
/// sums reduced together.
///
/// # Safety
/// AVX2+FMA are available and `tile.head_dim` is a multiple of 8; `tile.q[..Q]` point at
/// `head_dim` readable f32 each; K rows `key0 .. key0 + KEYS` of `tile.rows` are
/// readable (`head_dim` elements each); `Q · KEYS ≤ 8`.
#[inline(always)]
unsafe fn dot_tile<E: KvElem, const Q: usize, const KEYS: usize>(
    tile: &DotTile<E>,
    key0: usize,
    s: &mut Scratch,
) {
    // SAFETY: the reads are K rows `key0 + j` (`j < KEYS`) and query vectors `i < Q`, 8
    // elements at `d` with `d + 8 ≤ head_dim` (a multiple of 8); the store writes the local
    // `sums`; `i · KEYS + j < Q · KEYS ≤ 8` indexes `lanes` and `sums`; AVX2+FMA are the
    // contract's.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); KEYS]; Q];
        let k: [*const E; KEYS] =
            std::array::from_fn(|j| tile.rows.k.add((key0 + j) * tile.rows.k_stride));
        let mut d = 0;
        while d < tile.head_dim {
            let kv: [__m256; KEYS] = std::array::from_fn(|j| E::load8(k[j].add(d)));
            for (acc_q, &qp) in acc.iter_mut().zip(&tile.q) {
                let qv = _mm256_loadu_ps(qp.add(d));
                for (a, &kj) in acc_q.iter_mut().zip(&kv) {
                    *a = _mm256_fmadd_ps(qv, kj, *a);
                }
            }
            d += LANES;
        }
        let mut lanes = [_mm256_setzero_ps(); 8];
        for (i, acc_q) in acc.iter().enumerate() {
            for (j, &a) in acc_q.iter().enumerate() {
                lanes[i * KEYS + j] = a;
            }
        }
        let mut sums = [0.0f32; 8];
        _mm256_storeu_ps(
            sums.as_mut_ptr(),
            _mm256_mul_ps(hsum8(lanes), _mm256_set1_ps(tile.scale)),
        );
        for i in 0..Q {
            for j in 0..KEYS {
                s.scores[i * CHUNK_KEYS + key0 + j] = sums[i * KEYS + j];
            }
        }
    }
}

/// Lane `i` of the result is the sum of the lanes of `v[i]` (a fixed order).
///
/// # Safety
/// AVX is available.
#[inline(always)]
unsafe fn hsum8(v: [__m256; 8]) -> __m256 {
    // SAFETY: register-only AVX intrinsics; AVX is the contract's.
    unsafe {
        let a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        let b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
        // a = [v0..v3 low-half sums | v0..v3 high-half sums], b likewise for v4..v7.
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a, b),
            _mm256_permute2f128_ps::<0x31>(a, b),
        )
    }
}

/// Where one score tile starts: query vectors `q0 ..` (pointers `q`), key vector `kv0`.
struct ScoreTile {
    q: [*const f32; SCORE_QUERIES],
    q0: usize,
    kv0: usize,
    head_dim: usize,
    scale: f32,
}

/// `Q` query vectors × `KV` vectors of 8 keys: broadcast one query element, multiply it
/// into each key vector's row of the transposed chunk.
///
/// # Safety
/// AVX2+FMA are available; `tile.q[..Q]` point at `tile.head_dim` readable f32 each;
/// `s.keys_t` holds `[head_dim][CHUNK_KEYS]`, `s.scores` rows `q0 .. q0 + Q` of
/// `CHUNK_KEYS`, and `(kv0 + KV) · 8 ≤ CHUNK_KEYS`.
#[inline(always)]
unsafe fn score_tile<const Q: usize, const KV: usize>(tile: ScoreTile, s: &mut Scratch) {
    // SAFETY: reads of `keys_t` stay in row `d < head_dim`, columns `kv0 · 8 .. (kv0 +
    // KV) · 8 ≤ CHUNK_KEYS`; query reads are element `d < head_dim` of vectors `i < Q`;
    // stores go to score rows `q0 + i` (`i < Q`), the same columns; AVX2+FMA are the
    // contract's.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); KV]; Q];
        let keys_t = s.keys_t.as_ptr().add(tile.kv0 * LANES);
        for d in 0..tile.head_dim {
            let k: [__m256; KV] =
                std::array::from_fn(|v| _mm256_loadu_ps(keys_t.add(d * CHUNK_KEYS + v * LANES)));
            for (acc_q, &qp) in acc.iter_mut().zip(&tile.q) {
                let qd = _mm256_broadcast_ss(&*qp.add(d));
                for (a, &kv) in acc_q.iter_mut().zip(&k) {
                    *a = _mm256_fmadd_ps(qd, kv, *a);
                }
            }
        }
        let scale = _mm256_set1_ps(tile.scale);
        for (i, acc_q) in acc.iter().enumerate() {
            let row = s
                .scores
                .as_mut_ptr()
                .add((tile.q0 + i) * CHUNK_KEYS + tile.kv0 * LANES);
            for (v, &a) in acc_q.iter().enumerate() {
                _mm256_storeu_ps(row.add(v * LANES), _mm256_mul_ps(a, scale));
            }
        }
    }
}

/// Online softmax for the query vector whose scores are row `local` of `scores` and
/// whose state is entry `qi`, over the chunk's first `valid` of `chunk` keys: the scores
/// become probabilities relative to the (possibly raised) running max, the other keys
/// zeros; the running sum and the accumulated outputs are rescaled to that max.
///
/// # Safety
/// AVX2+FMA are available and `chunk ≤ CHUNK_KEYS`.
#[inline(always)]
unsafe fn softmax_update(
    local: usize,
    qi: usize,
    valid: usize,
    chunk: usize,
    head_dim: usize,
    s: &mut Scratch,
) {
    let scores = &mut s.scores[local * CHUNK_KEYS..(local + 1) * CHUNK_KEYS];
    if valid == 0 {
        scores.fill(0.0);
        return;
    }
    let chunk_max = scores[..valid]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let old_max = s.max[qi];
    let new_max = old_max.max(chunk_max);
    // SAFETY: `scores` is one row of `CHUNK_KEYS` (a multiple of 8) and `j < chunk ≤
    // CHUNK_KEYS` steps by 8, so each 8-lane load and store stays in the row; AVX2+FMA
    // are the contract's.
    let chunk_sum = unsafe {
        let mut total = _mm256_setzero_ps();
        let shift = _mm256_set1_ps(new_max);
        let lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut j = 0;
        // Whole vectors up to the chunk's end; `values_update` reads no key beyond it.
        while j < chunk {
            let p = scores.as_mut_ptr().add(j);
            let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(p), shift));
            // Keys past `valid` (masked, or padding) get probability 0.
            let lane = _mm256_add_epi32(_mm256_set1_epi32(j as i32), lane_index);
            let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32), lane);
            let e = _mm256_and_ps(e, _mm256_castsi256_ps(keep));
            _mm256_storeu_ps(p, e);
            total = _mm256_add_ps(total, e);
            j += LANES;
        }
        hsum_avx(total)
    };
    if old_max == f32::NEG_INFINITY {
        s.sum[qi] = chunk_sum;
    } else {
        let correction = (old_max - new_max).exp();
        s.sum[qi] = s.sum[qi] * correction + chunk_sum;
        if correction != 1.0 {
            for a in &mut s.acc[qi * head_dim..(qi + 1) * head_dim] {
                *a *= correction;
            }
        }
    }
    s.max[qi] = new_max;
}

/// `acc[q_base + qi] += Σ_key scores[qi][key] · v_key` for the `queries` vectors of one
/// KV head.
///
/// # Safety
/// AVX2+FMA are available and `head_dim` is a multiple of 8; `rows.v` is valid for
/// reading `chunk` rows of `head_dim` elements, `rows.v_stride` apart; `s.scores` holds
/// `queries` rows of `CHUNK_KEYS` with `chunk ≤ CHUNK_KEYS`, and `s.acc` at least
/// `(q_base + queries) · head_dim` elements.
#[inline(always)]
unsafe fn values_update<E: KvElem>(
    queries: usize,
    q_base: usize,
    head_dim: usize,
    chunk: usize,
    rows: ChunkRows<E>,
    s: &mut Scratch,
) {
    let mut q0 = 0;
    while q0 < queries {
        let n = (queries - q0).min(PV_QUERIES);
        let mut d0 = 0;
        while d0 < head_dim {
            let slices = ((head_dim - d0) / LANES).min(4);
            let tile = PvTile {
                q0,
                q_base,
                d0,
                head_dim,
                chunk,
                rows,
            };
            // SAFETY: AVX2+FMA (the contract); query vectors `q0 .. q0 + n ≤ queries`;
            // head elements `d0 .. d0 + 8 · slices ≤ head_dim` (a multiple of 8, so
            // `slices ≥ 1`).
            unsafe {
                match (n, slices) {
                    (2, 4) => pv_tile::<E, 2, 4>(tile, s),
                    (2, 3) => pv_tile::<E, 2, 3>(tile, s),
                    (2, 2) => pv_tile::<E, 2, 2>(tile, s),
                    (2, _) => pv_tile::<E, 2, 1>(tile, s),
                    (_, 4) => pv_tile::<E, 1, 4>(tile, s),
                    (_, 3) => pv_tile::<E, 1, 3>(tile, s),
                    (_, 2) => pv_tile::<E, 1, 2>(tile, s),
                    _ => pv_tile::<E, 1, 1>(tile, s),
                }
            }
            d0 += slices * LANES;
        }
        q0 += n;
    }
}

/// Where one `P·V` tile starts: query vectors `q0 ..`, head elements `d0 ..`.
struct PvTile<E> {
    q0: usize,
    q_base: usize,
    d0: usize,
    head_dim: usize,
    chunk: usize,
    rows: ChunkRows<E>,
}

/// `Q` query vectors × `D` 8-wide slices of the head, accumulated in registers over
/// the chunk's keys.
///
/// # Safety
/// AVX2+FMA are available; `tile.d0 + 8 · D ≤ tile.head_dim`; `tile.rows.v` is valid
/// for reading `tile.chunk` rows of `head_dim` elements; `s.scores` holds rows `q0 ..
/// q0 + Q` of `CHUNK_KEYS` with `chunk ≤ CHUNK_KEYS`, and `s.acc` rows `q_base + q0 ..
/// q_base + q0 + Q` of `head_dim`.
#[inline(always)]
unsafe fn pv_tile<E: KvElem, const Q: usize, const D: usize>(tile: PvTile<E>, s: &mut Scratch) {
    // SAFETY: accumulator loads and stores are rows `q_base + q0 + i` (`i < Q`), elements
    // `d0 .. d0 + 8 · D ≤ head_dim`; probabilities are score rows `q0 + i`, keys `< chunk`;
    // V reads are rows `key < chunk`, the same elements. All exist by the contract, as do
    // AVX2+FMA.
    unsafe {
        let acc_ptr: [*mut f32; Q] = std::array::from_fn(|i| {
            s.acc
                .as_mut_ptr()
                .add((tile.q_base + tile.q0 + i) * tile.head_dim + tile.d0)
        });
        let mut acc: [[__m256; D]; Q] = std::array::from_fn(|i| {
            std::array::from_fn(|v| _mm256_loadu_ps(acc_ptr[i].add(v * LANES)))
        });
        let probs = s.scores.as_ptr().add(tile.q0 * CHUNK_KEYS);
        let values = tile.rows.v.add(tile.d0);
        for key in 0..tile.chunk {
            let v: [__m256; D] =
                std::array::from_fn(|i| E::load8(values.add(key * tile.rows.v_stride + i * LANES)));
            for (i, acc_q) in acc.iter_mut().enumerate() {
                let p = _mm256_broadcast_ss(&*probs.add(i * CHUNK_KEYS + key));
                for (a, &vv) in acc_q.iter_mut().zip(&v) {
                    *a = _mm256_fmadd_ps(p, vv, *a);
                }
            }
        }
        for (acc_q, &dst) in acc.iter().zip(&acc_ptr) {
            for (v, &a) in acc_q.iter().enumerate() {
                _mm256_storeu_ps(dst.add(v * LANES), a);
            }
        }
    }
}

/// `eˣ` per lane for `x ≤ 0` (the softmax's range; larger `x` is not supported):
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `eʳ` by its degree-7 Taylor polynomial
/// (truncation < 2e-8), times `2ⁿ` built in the exponent bits. Below −87 (where `eˣ`
/// leaves the normal f32 range) the result is 0; NaN stays NaN.
///
/// # Safety
/// AVX2+FMA are available.
#[inline(always)]
unsafe fn exp_avx2(x: __m256) -> __m256 {
    // SAFETY: register-only AVX/AVX2/FMA intrinsics; the features are the contract's.
    unsafe {
        const LOG2_E: f32 = std::f32::consts::LOG2_E;
        // ln 2 split so that n · LN2_HI is exact for |n| < 2⁸.
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.0));
        let xc = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(xc, _mm256_set1_ps(LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        // Horner: 1 + r(1 + r/2(1 + r/3(1 + r/4(1 + r/5(1 + r/6(1 + r/7)))))).
        let mut p = _mm256_set1_ps(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        let e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
        _mm256_andnot_ps(underflow, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64 `exp` on a fine grid of `[-90, 0]`: relative error < 4e-7 where the
    /// result is a normal f32, exactly 0 below −87, and exp(0) = 1.
    #[test]
    fn exp_avx2_matches_f64() {
        if !has_avx2_fma_f16c() {
            eprintln!("skipped: no AVX2+FMA");
            return;
        }
        let xs: Vec<f32> = (0..=900_000).map(|i| -(i as f32) * 1e-4).collect();
        let mut got = vec![0.0f32; xs.len() + LANES];
        for (chunk, dst) in xs.chunks(LANES).zip(got.chunks_mut(LANES)) {
            let mut lane = [0.0f32; LANES];
            lane[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: AVX2+FMA checked above.
            let e = unsafe { exp_avx2_array(lane) };
            dst[..chunk.len()].copy_from_slice(&e[..chunk.len()]);
        }
        for (&x, &e) in xs.iter().zip(&got) {
            if x < -87.0 {
                assert_eq!(e, 0.0, "exp({x})");
                continue;
            }
            let want = (x as f64).exp();
            let rel = ((e as f64 - want) / want).abs();
            assert!(rel < 4e-7, "exp({x}) = {e}, want {want} (rel {rel:e})");
        }
        // SAFETY: as above.
        let one = unsafe { exp_avx2_array([0.0; LANES]) };
        assert_eq!(one, [1.0; LANES]);
    }

    /// [`exp_avx2`] of 8 values.
    ///
    /// # Safety
    /// AVX2+FMA are available.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_avx2_array(x: [f32; LANES]) -> [f32; LANES] {
        let mut out = [0.0f32; LANES];
        // SAFETY: the load reads the 8 floats of `x`, the store writes the 8 of `out`;
        // AVX2+FMA are the contract's.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp_avx2(_mm256_loadu_ps(x.as_ptr()))) };
        out
    }
}
