//! Prefill attention over blocks of query rows, flash-attention style (AVX2+FMA).
//!
//! A work item is up to [`BLOCK_ROWS`] consecutive query rows of one sequence and one KV
//! head `g`: its `rows × group` query vectors (every query head of `g`'s GQA group) walk
//! the sequence's keys in chunks of [`CHUNK_KEYS`]. Each chunk's K and V rows of head
//! `g` are read from the paged cache (widened for bf16) once per item — not once per
//! query row — into per-thread scratch: K transposed (`[head_dim][CHUNK_KEYS]`, so eight
//! keys' scores are one FMA chain of broadcast query elements), V as rows. Then:
//! scores → causal mask → online softmax (running max and sum per query vector; earlier
//! outputs rescaled when the max grows) → `out += P·V`. Items write disjoint
//! (rows, head-group) parts of the output.
//!
//! Row `i` of a block sees keys `0 .. n_i` (its position + 1); a chunk beyond `n_i`
//! contributes nothing to that row. Everything accumulates in f32; exponentials use
//! [`exp_avx2`] (relative error < 4e-7 on the softmax's range `x ≤ 0`).

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::super::kv::KvElem;
use super::super::parallel::{min_items, worth_parallel, OutPtr};
use super::super::simd::has_avx2_fma;
use super::kernel::PagedKv;
use super::meta::{Batch, Heads};

/// Query rows per work item.
pub(super) const BLOCK_ROWS: usize = 16;
/// Keys per chunk: a head's K and V chunk (`2 · 64 · 128` f32, 64 KiB) stays in L2.
const CHUNK_KEYS: usize = 64;
/// f32 lanes per AVX register.
const LANES: usize = 8;
/// Query vectors per score tile (each times two 8-key vectors: 8 accumulators).
const SCORE_QUERIES: usize = 4;
/// Query vectors per `P·V` tile (each times four 8-wide slices of the head: 8 accumulators).
const PV_QUERIES: usize = 2;

/// Whether [`attend_prefill`] handles this head shape on this CPU.
pub(super) fn available(head_dim: usize) -> bool {
    head_dim % LANES == 0 && has_avx2_fma()
}

/// One work item: `rows` query rows from `first_row` of sequence `seq`, KV head `kv_head`.
#[derive(Clone, Copy, Debug)]
struct Item {
    seq: usize,
    first_row: usize,
    rows: usize,
    kv_head: usize,
}

/// Per-thread scratch, reused across items and calls.
#[derive(Default)]
struct Scratch {
    /// `[head_dim][CHUNK_KEYS]` keys of the chunk, transposed; zero past the chunk's end.
    keys_t: Vec<f32>,
    /// `[CHUNK_KEYS][head_dim]` values of the chunk.
    values: Vec<f32>,
    /// `[queries][CHUNK_KEYS]` scores, then probabilities.
    scores: Vec<f32>,
    /// `[queries][head_dim]` unnormalised outputs.
    acc: Vec<f32>,
    /// Running max and sum per query vector.
    max: Vec<f32>,
    sum: Vec<f32>,
    /// One slot row widened (bf16 caches).
    row: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Causal attention of every query row (prefill batches; [`available`] checked).
pub(super) fn attend_prefill<T: KvElem>(
    kv: &PagedKv<'_, T>,
    heads: Heads,
    batch: &Batch<'_>,
    qs: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let width = heads.heads * heads.head_dim;
    let num_rows = out.len() / width;
    let kv_heads = heads.heads / heads.group;
    let mut items = Vec::new();
    let mut total_cost = 0;
    let mut t = 0;
    while t < num_rows {
        let seq = batch.query(t).0;
        let mut rows = 1;
        while rows < BLOCK_ROWS && t + rows < num_rows && batch.query(t + rows).0 == seq {
            rows += 1;
        }
        total_cost += rows * batch.query(t + rows - 1).1 * 4 * width;
        items.extend((0..kv_heads).map(|kv_head| Item {
            seq,
            first_row: t,
            rows,
            kv_head,
        }));
        t += rows;
    }
    let out_ptr = OutPtr(out.as_mut_ptr());
    let run = |item: &Item| {
        // No rayon call happens while the scratch is borrowed, so it cannot re-enter.
        SCRATCH.with_borrow_mut(|scratch| {
            // SAFETY: `available` was checked; the item's rows and head group are in
            // bounds of `qs` and `out`, and no other item writes them.
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
}

/// One item (see the module docs).
///
/// # Safety
/// AVX2+FMA are available, `head_dim` is a multiple of 8, and the item's output rows ×
/// head group behind `out` are written by nobody else during the call.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
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
    let queries = item.rows * group;
    let first_head = item.kv_head * group;
    // Query vector `qi = i·group + j` is row `first_row + i`, head `first_head + j`.
    let query = |qi: usize| -> *const f32 {
        let (i, j) = (qi / group, qi % group);
        qs.as_ptr()
            .add((item.first_row + i) * width + (first_head + j) * head_dim)
    };
    let key_count = |qi: usize| batch.query(item.first_row + qi / group).1;
    let all_keys = key_count(queries - 1);
    let block_table = batch.block_table(item.seq);

    let s = scratch;
    s.keys_t.resize(head_dim * CHUNK_KEYS, 0.0);
    s.values.resize(CHUNK_KEYS * head_dim, 0.0);
    s.scores.resize(queries * CHUNK_KEYS, 0.0);
    s.acc.clear();
    s.acc.resize(queries * head_dim, 0.0);
    s.max.clear();
    s.max.resize(queries, f32::NEG_INFINITY);
    s.sum.clear();
    s.sum.resize(queries, 0.0);
    s.row.resize(head_dim, 0.0);

    let mut k0 = 0;
    while k0 < all_keys {
        let chunk = CHUNK_KEYS.min(all_keys - k0);
        load_chunk(kv, block_table, k0..k0 + chunk, item.kv_head, head_dim, s);
        let key_vectors = chunk.div_ceil(LANES);
        scores(&query, queries, head_dim, key_vectors, scale, s);
        for qi in 0..queries {
            let valid = key_count(qi).saturating_sub(k0).min(chunk);
            softmax_update(qi, valid, chunk, head_dim, s);
        }
        values_update(queries, head_dim, chunk, s);
        k0 += chunk;
    }

    for qi in 0..queries {
        let (i, j) = (qi / group, qi % group);
        let dst = out
            .get()
            .add((item.first_row + i) * width + (first_head + j) * head_dim);
        // A query with no keys (none in a valid prefill) stays zero.
        let inv = if s.sum[qi] > 0.0 {
            1.0 / s.sum[qi]
        } else {
            0.0
        };
        for d in 0..head_dim {
            *dst.add(d) = s.acc[qi * head_dim + d] * inv;
        }
    }
}

/// Reads keys `keys` of KV head `kv_head` into `keys_t` (transposed, zeros past the
/// chunk) and `values`.
#[inline(always)]
fn load_chunk<T: KvElem>(
    kv: &PagedKv<'_, T>,
    block_table: &[u32],
    keys: Range<usize>,
    kv_head: usize,
    head_dim: usize,
    s: &mut Scratch,
) {
    let geometry = &kv.geometry;
    let (block_size, row_width) = (geometry.block_size, geometry.row_width());
    let chunk = keys.len();
    if chunk < CHUNK_KEYS {
        s.keys_t.fill(0.0);
    }
    for (j, key) in keys.enumerate() {
        let slot = block_table[key / block_size] as usize * block_size + key % block_size;
        let start = slot * row_width + kv_head * head_dim;
        let k_row = T::row_f32(&kv.k[start..start + head_dim], &mut s.row);
        for (d, &x) in k_row.iter().enumerate() {
            s.keys_t[d * CHUNK_KEYS + j] = x;
        }
        let v_row = T::row_f32(&kv.v[start..start + head_dim], &mut s.row);
        s.values[j * head_dim..(j + 1) * head_dim].copy_from_slice(v_row);
    }
}

/// `scores[qi][key] = scale · q_qi · k_key` for the chunk's `key_vectors · 8` keys.
#[inline(always)]
unsafe fn scores(
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
            kv0 += pair;
        }
        q0 += n;
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
#[inline(always)]
unsafe fn score_tile<const Q: usize, const KV: usize>(tile: ScoreTile, s: &mut Scratch) {
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

/// Online softmax for query vector `qi` over the chunk's first `valid` of `chunk` keys:
/// the scores become probabilities relative to the (possibly raised) running max, the
/// other keys zeros; the running sum and the accumulated outputs are rescaled to that max.
#[inline(always)]
unsafe fn softmax_update(qi: usize, valid: usize, chunk: usize, head_dim: usize, s: &mut Scratch) {
    let scores = &mut s.scores[qi * CHUNK_KEYS..(qi + 1) * CHUNK_KEYS];
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
    let chunk_sum = hsum(total);
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

/// `acc[qi] += Σ_key scores[qi][key] · values[key]` for every query vector.
#[inline(always)]
unsafe fn values_update(queries: usize, head_dim: usize, chunk: usize, s: &mut Scratch) {
    let mut q0 = 0;
    while q0 < queries {
        let n = (queries - q0).min(PV_QUERIES);
        let mut d0 = 0;
        while d0 < head_dim {
            let slices = ((head_dim - d0) / LANES).min(4);
            let tile = PvTile {
                q0,
                d0,
                head_dim,
                chunk,
            };
            match (n, slices) {
                (2, 4) => pv_tile::<2, 4>(tile, s),
                (2, 3) => pv_tile::<2, 3>(tile, s),
                (2, 2) => pv_tile::<2, 2>(tile, s),
                (2, _) => pv_tile::<2, 1>(tile, s),
                (_, 4) => pv_tile::<1, 4>(tile, s),
                (_, 3) => pv_tile::<1, 3>(tile, s),
                (_, 2) => pv_tile::<1, 2>(tile, s),
                _ => pv_tile::<1, 1>(tile, s),
            }
            d0 += slices * LANES;
        }
        q0 += n;
    }
}

/// Where one `P·V` tile starts: query vectors `q0 ..`, head elements `d0 ..`.
struct PvTile {
    q0: usize,
    d0: usize,
    head_dim: usize,
    chunk: usize,
}

/// `Q` query vectors × `D` 8-wide slices of the head, accumulated in registers over
/// the chunk's keys.
#[inline(always)]
unsafe fn pv_tile<const Q: usize, const D: usize>(tile: PvTile, s: &mut Scratch) {
    let acc_ptr: [*mut f32; Q] = std::array::from_fn(|i| {
        s.acc
            .as_mut_ptr()
            .add((tile.q0 + i) * tile.head_dim + tile.d0)
    });
    let mut acc: [[__m256; D]; Q] = std::array::from_fn(|i| {
        std::array::from_fn(|v| _mm256_loadu_ps(acc_ptr[i].add(v * LANES)))
    });
    let probs = s.scores.as_ptr().add(tile.q0 * CHUNK_KEYS);
    let values = s.values.as_ptr().add(tile.d0);
    for key in 0..tile.chunk {
        let v: [__m256; D] =
            std::array::from_fn(|i| _mm256_loadu_ps(values.add(key * tile.head_dim + i * LANES)));
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

/// Sum of the 8 lanes in a fixed order.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

/// `eˣ` per lane for `x ≤ 0` (the softmax's range; larger `x` is not supported):
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `eʳ` by its degree-7 Taylor polynomial
/// (truncation < 2e-8), times `2ⁿ` built in the exponent bits. Below −87 (where `eˣ`
/// leaves the normal f32 range) the result is 0; NaN stays NaN.
#[inline(always)]
pub(super) unsafe fn exp_avx2(x: __m256) -> __m256 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact for |n| < 2⁸.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.0));
    let xc = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        xc,
        _mm256_set1_ps(LOG2_E),
    ));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64 `exp` on a fine grid of `[-90, 0]`: relative error < 4e-7 where the
    /// result is a normal f32, exactly 0 below −87, and exp(0) = 1.
    #[test]
    fn exp_avx2_matches_f64() {
        if !has_avx2_fma() {
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

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_avx2_array(x: [f32; LANES]) -> [f32; LANES] {
        let mut out = [0.0f32; LANES];
        _mm256_storeu_ps(out.as_mut_ptr(), exp_avx2(_mm256_loadu_ps(x.as_ptr())));
        out
    }
}
