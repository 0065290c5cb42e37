//! Paged KV store and attention against naive references.
//!
//! A [`Scenario`] lays several sequences of different lengths out in a paged cache with
//! shuffled, non-contiguous block tables (padded with garbage ids), stores a cached
//! prefix in an "earlier step" and the new tokens in this one, and keeps the logical
//! K/V of every sequence for the reference, which never looks at the cache.
//!
//! An FP8 (e4m3) cache is tested with non-unit scales (some values saturate at ±448):
//! the reference keeps `e4m3(x / scale) · scale`, exactly what the cache holds, computed
//! with the scalar reference encoder [`crate::quant::fp8`], so the attention tolerance
//! still covers only the attention arithmetic.

use crate::quant::fp8::{e4m3_to_f32, f32_to_e4m3};
use crate::{AttentionMetadata, Backend, DType, KvCache, KvScales, Tensor};

use super::check::{
    activation, assert_close, host_f32, host_u32, round_to, rounded, upload_i64, upload_u32, widen,
    Tol,
};
use super::reference;
use super::rng::Rng;

/// One attention test setup.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub cache_dtype: DType,
    /// The cache's scales (used by an FP8 cache only).
    pub kv_scales: KvScales,
    /// `(context_len, q_len)` per sequence: the first `context_len − q_len` tokens are a
    /// cached prefix, the last `q_len` are this step's queries.
    pub seqs: Vec<(usize, usize)>,
    pub seed: u64,
}

/// A built scenario: backend tensors plus what the reference needs.
pub struct Built {
    pub cache: KvCache,
    pub meta: AttentionMetadata,
    /// `[T, heads * head_dim]`, the new tokens' queries.
    pub q: Tensor,
    pub k_new: Tensor,
    pub v_new: Tensor,
    /// `q` as the backend holds it.
    pub q_ref: Vec<f32>,
    /// Per sequence, `[context_len, kv_heads * head_dim]` in logical order, rounded as
    /// the cache holds them.
    pub keys: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
    pub scale: f32,
}

/// Packs rows `from..to` of a `[_, width]` buffer.
fn rows(data: &[f32], width: usize, from: usize, to: usize) -> &[f32] {
    &data[from * width..to * width]
}

impl Scenario {
    /// Qwen3-0.6B's attention shape (16 query heads, 8 KV heads of 128) in blocks of 16.
    pub fn qwen3_0_6b(cache_dtype: DType, seqs: Vec<(usize, usize)>, seed: u64) -> Self {
        Self {
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            cache_dtype,
            kv_scales: KvScales::UNIT,
            seqs,
            seed,
        }
    }

    /// [`Scenario::qwen3_0_6b`] on an FP8 cache with [`FP8_SCALES`].
    pub fn qwen3_0_6b_fp8(seqs: Vec<(usize, usize)>, seed: u64) -> Self {
        Self {
            kv_scales: FP8_SCALES,
            ..Self::qwen3_0_6b(DType::F8E4M3, seqs, seed)
        }
    }

    pub fn build(&self, backend: &dyn Backend) -> Built {
        let mut rng = Rng::new(self.seed);
        let (bs, num_seqs) = (self.block_size, self.seqs.len());
        let kv_width = self.kv_heads * self.head_dim;
        let q_width = self.heads * self.head_dim;

        // Shuffled block ids, with spare blocks nobody owns, padded with garbage ids.
        let blocks_per_seq: Vec<usize> =
            self.seqs.iter().map(|&(ctx, _)| ctx.div_ceil(bs)).collect();
        let num_blocks = blocks_per_seq.iter().sum::<usize>() + 3;
        let max_blocks = blocks_per_seq.iter().copied().max().unwrap_or(0) + 1;
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        rng.shuffle(&mut ids);
        let mut block_tables = vec![u32::MAX; num_seqs * max_blocks];
        let mut next = ids.into_iter();
        for (s, &count) in blocks_per_seq.iter().enumerate() {
            for slot in &mut block_tables[s * max_blocks..s * max_blocks + count] {
                *slot = next.next().unwrap_or(u32::MAX);
            }
        }
        let slot_of = |s: usize, p: usize| -> i64 {
            (block_tables[s * max_blocks + p / bs] as usize * bs + p % bs) as i64
        };

        let act = backend.activation_dtype();
        let raw_k: Vec<Vec<f32>> = self
            .seqs
            .iter()
            .map(|&(ctx, _)| rng.vec(ctx * kv_width, 1.0))
            .collect();
        let raw_v: Vec<Vec<f32>> = self
            .seqs
            .iter()
            .map(|&(ctx, _)| rng.vec(ctx * kv_width, 1.0))
            .collect();

        let mut cache = KvCache::new(
            backend,
            1,
            num_blocks,
            bs,
            self.kv_heads,
            self.head_dim,
            self.cache_dtype,
        )
        .unwrap_or_else(|e| panic!("allocating the KV cache: {e}"));
        cache
            .set_scales(&[self.kv_scales])
            .unwrap_or_else(|e| panic!("setting the KV-cache scales: {e}"));

        // Gathers the tokens `range(ctx, q_len)` of every sequence: K, V rows and slots.
        let gather = |range: &dyn Fn(usize, usize) -> (usize, usize)| {
            let (mut k, mut v, mut slots) = (Vec::new(), Vec::new(), Vec::new());
            for (s, &(ctx, q_len)) in self.seqs.iter().enumerate() {
                let (from, to) = range(ctx, q_len);
                k.extend_from_slice(rows(&raw_k[s], kv_width, from, to));
                v.extend_from_slice(rows(&raw_v[s], kv_width, from, to));
                slots.extend((from..to).map(|p| slot_of(s, p)));
            }
            (k, v, slots)
        };
        let store = |cache: &mut KvCache,
                     k: &[f32],
                     v: &[f32],
                     slots: &[i64]|
         -> (Tensor, Tensor, Tensor) {
            let n = slots.len();
            let (kt, _) = activation(backend, k, &[n, kv_width]);
            let (vt, _) = activation(backend, v, &[n, kv_width]);
            let st = upload_i64(backend, slots, &[n]);
            backend
                .store_kv(&kt, &vt, &mut cache.layers[0], &st)
                .unwrap_or_else(|e| panic!("store_kv: {e}"));
            (kt, vt, st)
        };

        // An earlier step cached every sequence's prefix.
        let (pk, pv, pslots) = gather(&|ctx, q_len| (0, ctx - q_len));
        if !pslots.is_empty() {
            store(&mut cache, &pk, &pv, &pslots);
        }
        // This step's new tokens.
        let (nk, nv, nslots) = gather(&|ctx, q_len| (ctx - q_len, ctx));
        let (k_new, v_new, slot_mapping) = store(&mut cache, &nk, &nv, &nslots);

        let num_tokens = nslots.len();
        let (q, q_ref) = activation(
            backend,
            &rng.vec(num_tokens * q_width, 3.0),
            &[num_tokens, q_width],
        );
        let mut cu_seqlens_q = vec![0u32];
        for &(_, q_len) in &self.seqs {
            cu_seqlens_q.push(cu_seqlens_q[cu_seqlens_q.len() - 1] + q_len as u32);
        }
        let context_lens: Vec<u32> = self.seqs.iter().map(|&(ctx, _)| ctx as u32).collect();
        let meta = AttentionMetadata {
            is_prefill: true,
            num_seqs,
            block_size: bs,
            cu_seqlens_q: upload_u32(backend, &cu_seqlens_q, &[num_seqs + 1]),
            context_lens: upload_u32(backend, &context_lens, &[num_seqs]),
            block_tables: upload_u32(backend, &block_tables, &[num_seqs, max_blocks]),
            slot_mapping,
            max_seqlen_q: self.seqs.iter().map(|&(_, q)| q).max().unwrap_or(0),
            max_context_len: self.seqs.iter().map(|&(c, _)| c).max().unwrap_or(0),
        };
        let as_cached = |x: &Vec<f32>, scale: f32| -> Vec<f32> {
            cached(self.cache_dtype, scale, &rounded(act, x))
        };
        Built {
            cache,
            meta,
            q,
            k_new,
            v_new,
            q_ref,
            keys: raw_k
                .iter()
                .map(|k| as_cached(k, self.kv_scales.k))
                .collect(),
            values: raw_v
                .iter()
                .map(|v| as_cached(v, self.kv_scales.v))
                .collect(),
            scale: 1.0 / (self.head_dim as f32).sqrt(),
        }
    }

    /// The reference output for every query row of `built`.
    pub fn reference(&self, built: &Built) -> Vec<f64> {
        let q_width = self.heads * self.head_dim;
        let mut out = Vec::with_capacity(built.q_ref.len());
        let mut row = 0;
        for (s, &(_, q_len)) in self.seqs.iter().enumerate() {
            out.extend(reference::attention(
                rows(&built.q_ref, q_width, row, row + q_len),
                &built.keys[s],
                &built.values[s],
                self.heads,
                self.kv_heads,
                self.head_dim,
                built.scale,
            ));
            row += q_len;
        }
        out
    }
}

/// Scales of the FP8-cache tests: K values of magnitude ≤ 1 stored up to ±27, V values
/// up to ±476, so those above 0.94 saturate at ±448 (both encoder branches are used).
pub const FP8_SCALES: KvScales = KvScales {
    k: 0.037,
    v: 0.0021,
};

/// The values a cache of `dtype` holds for `xs` and reads back: rounded to bf16, or
/// `e4m3(x / scale) · scale` (the scalar reference encoder), or `xs` themselves.
pub fn cached(dtype: DType, scale: f32, xs: &[f32]) -> Vec<f32> {
    match dtype {
        DType::F8E4M3 => xs.iter().map(|&x| e4m3_stored(x, scale) * scale).collect(),
        _ => rounded(dtype, xs),
    }
}

/// The e4m3 value an FP8 cache with `scale` stores for `x` (before the scale is applied
/// on reading).
fn e4m3_stored(x: f32, scale: f32) -> f32 {
    e4m3_to_f32(f32_to_e4m3(x / scale))
}

/// Attention tolerance vs f64 with full softmax: 1e-5 absolute + 1e-5 relative (outputs
/// are convex combinations of values in [-1, 1]; f32 scores and sums).
fn attention_tol(backend: &dyn Backend) -> Tol {
    Tol::for_backend(backend, 1e-5, 1e-5, 1.0)
}

fn check_prefill(backend: &dyn Backend, scenario: &Scenario) {
    let built = scenario.build(backend);
    let out = backend
        .prefill_attention(
            &built.q,
            &built.k_new,
            &built.v_new,
            &built.cache.layers[0],
            &built.meta,
            built.scale,
        )
        .unwrap_or_else(|e| panic!("prefill_attention {scenario:?}: {e}"));
    assert_eq!(out.shape(), built.q.shape());
    assert_close(
        &format!("prefill_attention {scenario:?}"),
        &host_f32(backend, &out),
        &scenario.reference(&built),
        attention_tol(backend),
    );
}

fn check_decode(backend: &dyn Backend, scenario: &Scenario) {
    assert!(
        scenario.seqs.iter().all(|&(_, q_len)| q_len == 1),
        "decode scenarios have one query per sequence"
    );
    let mut built = scenario.build(backend);
    built.meta.is_prefill = false;
    let out = backend
        .decode_attention(&built.q, &built.cache.layers[0], &built.meta, built.scale)
        .unwrap_or_else(|e| panic!("decode_attention {scenario:?}: {e}"));
    assert_eq!(out.shape(), built.q.shape());
    assert_close(
        &format!("decode_attention {scenario:?}"),
        &host_f32(backend, &out),
        &scenario.reference(&built),
        attention_tol(backend),
    );
}

/// `(heads, kv_heads, head_dim)`: GQA ratios 1, 2 and 4; head dims that are and are
/// not multiples of a vector chunk.
const GQA: [(usize, usize, usize); 3] = [(4, 4, 32), (4, 2, 24), (8, 2, 40)];

/// Exact on f32 caches; one rounding to the cache dtype otherwise (an FP8 cache holds
/// `e4m3(x / scale)` with its layer's scales, read back here without them). Slots of −1
/// write nothing and every untouched slot stays zero; a later store overwrites.
pub fn store_kv_writes_slots_skips_minus_one(backend: &dyn Backend) {
    let mut rng = Rng::new(20);
    let (num_blocks, bs, kv_heads, head_dim) = (6, 4, 2, 8);
    let (width, num_slots) = (kv_heads * head_dim, num_blocks * bs);
    for cache_dtype in [DType::F32, DType::BF16, DType::F8E4M3] {
        let mut cache = KvCache::new(backend, 2, num_blocks, bs, kv_heads, head_dim, cache_dtype)
            .unwrap_or_else(|e| panic!("allocating the KV cache: {e}"));
        // Layer 1 gets the test scales, layer 0 others (an FP8 store must use its layer's).
        cache
            .set_scales(&[KvScales { k: 3.0, v: 5.0 }, FP8_SCALES])
            .unwrap_or_else(|e| panic!("setting the KV-cache scales: {e}"));
        // What the cache holds for `x` stored with `scale`, as read back (no scale).
        let stored = |x: f32, scale: f32| -> f64 {
            match cache_dtype {
                DType::F8E4M3 => e4m3_stored(x, scale) as f64,
                _ => round_to(cache_dtype, x) as f64,
            }
        };
        let num_tokens = 10;
        let mut slots: Vec<i64> = (0..num_slots as i64).collect();
        rng.shuffle(&mut slots);
        slots.truncate(num_tokens);
        slots[2] = -1;
        slots[7] = -1;
        let (k, k_ref) = activation(
            backend,
            &rng.vec(num_tokens * width, 1.0),
            &[num_tokens, width],
        );
        let (v, v_ref) = activation(
            backend,
            &rng.vec(num_tokens * width, 1.0),
            &[num_tokens, width],
        );
        backend
            .store_kv(
                &k,
                &v,
                &mut cache.layers[1],
                &upload_i64(backend, &slots, &[num_tokens]),
            )
            .unwrap_or_else(|e| panic!("store_kv: {e}"));

        let expected = |src: &[f32], scale: f32| -> Vec<f64> {
            let mut want = vec![0.0f64; num_slots * width];
            for (t, &slot) in slots.iter().enumerate() {
                if slot >= 0 {
                    for (d, &x) in src[t * width..(t + 1) * width].iter().enumerate() {
                        want[slot as usize * width + d] = stored(x, scale);
                    }
                }
            }
            want
        };
        let (want_k, want_v) = (
            expected(&k_ref, FP8_SCALES.k),
            expected(&v_ref, FP8_SCALES.v),
        );
        assert_close(
            &format!("{cache_dtype} cache K"),
            &host_f32(backend, &cache.layers[1].k),
            &want_k,
            Tol::EXACT,
        );
        assert_close(
            &format!("{cache_dtype} cache V"),
            &host_f32(backend, &cache.layers[1].v),
            &want_v,
            Tol::EXACT,
        );
        let untouched = vec![0.0f64; num_slots * width];
        assert_close(
            "other layer K",
            &host_f32(backend, &cache.layers[0].k),
            &untouched,
            Tol::EXACT,
        );

        // Overwrite the slot of token 0 with a new row.
        let (k2, k2_ref) = activation(backend, &rng.vec(width, 1.0), &[1, width]);
        let (v2, _) = activation(backend, &rng.vec(width, 1.0), &[1, width]);
        backend
            .store_kv(
                &k2,
                &v2,
                &mut cache.layers[1],
                &upload_i64(backend, &slots[..1], &[1]),
            )
            .unwrap_or_else(|e| panic!("store_kv: {e}"));
        let mut want_k2 = want_k;
        for (d, &x) in k2_ref.iter().enumerate() {
            want_k2[slots[0] as usize * width + d] = stored(x, FP8_SCALES.k);
        }
        assert_close(
            "overwritten K",
            &host_f32(backend, &cache.layers[1].k),
            &want_k2,
            Tol::EXACT,
        );
    }
}

/// Several sequences (with and without cached prefixes) at GQA ratios 1, 2, 4.
pub fn prefill_attention_matches_reference(backend: &dyn Backend) {
    for (i, (heads, kv_heads, head_dim)) in GQA.into_iter().enumerate() {
        check_prefill(
            backend,
            &Scenario {
                heads,
                kv_heads,
                head_dim,
                block_size: 4,
                cache_dtype: DType::F32,
                kv_scales: KvScales::UNIT,
                seqs: vec![(9, 9), (23, 5), (1, 1), (16, 3), (8, 1)],
                seed: 30 + i as u64,
            },
        );
    }
}

pub fn prefill_attention_bf16_cache(backend: &dyn Backend) {
    check_prefill(
        backend,
        &Scenario {
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            block_size: 16,
            cache_dtype: DType::BF16,
            kv_scales: KvScales::UNIT,
            seqs: vec![(40, 40), (70, 33)],
            seed: 40,
        },
    );
}

/// Qwen3-0.6B head shapes, long enough to run in parallel.
pub fn prefill_attention_long_sequences(backend: &dyn Backend) {
    check_prefill(
        backend,
        &Scenario::qwen3_0_6b(DType::F32, vec![(300, 300), (200, 72)], 41),
    );
}

pub fn decode_attention_matches_reference(backend: &dyn Backend) {
    for (i, (heads, kv_heads, head_dim)) in GQA.into_iter().enumerate() {
        for block_size in [4, 16] {
            check_decode(
                backend,
                &Scenario {
                    heads,
                    kv_heads,
                    head_dim,
                    block_size,
                    cache_dtype: DType::F32,
                    kv_scales: KvScales::UNIT,
                    seqs: vec![(1, 1), (4, 1), (5, 1), (37, 1), (64, 1), (300, 1)],
                    seed: 50 + i as u64,
                },
            );
        }
    }
}

/// Qwen3-0.6B's head shape on a bf16 cache: a few sequences (the CPU splits their keys
/// across threads) and a batch of 32 (the CPU's whole-row items, which read the cache
/// in place and widen it in registers).
pub fn decode_attention_bf16_cache(backend: &dyn Backend) {
    let batch: Vec<(usize, usize)> = (0..32).map(|i| (1 + (i * 37) % 200, 1)).collect();
    for seqs in [vec![(1, 1), (33, 1), (517, 1)], batch] {
        check_decode(backend, &Scenario::qwen3_0_6b(DType::BF16, seqs, 60));
    }
}

/// Decode of each sequence's last token must agree with the prefill output for that
/// token (1e-5 absolute + 1e-5 relative: same math, possibly another summation order).
pub fn decode_matches_prefill_last_token(backend: &dyn Backend) {
    for cache_dtype in [DType::F32, DType::BF16, DType::F8E4M3] {
        let scenario = Scenario {
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            block_size: 8,
            cache_dtype,
            kv_scales: FP8_SCALES,
            seqs: vec![(13, 13), (32, 32), (50, 50)],
            seed: 70,
        };
        let built = scenario.build(backend);
        let prefill = backend
            .prefill_attention(
                &built.q,
                &built.k_new,
                &built.v_new,
                &built.cache.layers[0],
                &built.meta,
                built.scale,
            )
            .unwrap_or_else(|e| panic!("prefill_attention: {e}"));
        let last_rows: Vec<u32> = {
            let mut end = 0;
            scenario
                .seqs
                .iter()
                .map(|&(_, q_len)| {
                    end += q_len as u32;
                    end - 1
                })
                .collect()
        };
        let num_seqs = last_rows.len();
        let rows_tensor = upload_u32(backend, &last_rows, &[num_seqs]);
        let q_last = backend
            .index_rows(&built.q, &rows_tensor)
            .unwrap_or_else(|e| panic!("index_rows: {e}"));
        let prefill_last = backend
            .index_rows(&prefill, &rows_tensor)
            .unwrap_or_else(|e| panic!("index_rows: {e}"));

        let cu: Vec<u32> = (0..=num_seqs as u32).collect();
        let mut meta = built.meta.clone();
        meta.is_prefill = false;
        meta.cu_seqlens_q = upload_u32(backend, &cu, &[num_seqs + 1]);
        meta.slot_mapping = upload_i64(backend, &vec![-1; num_seqs], &[num_seqs]);
        meta.max_seqlen_q = 1;
        let decode = backend
            .decode_attention(&q_last, &built.cache.layers[0], &meta, built.scale)
            .unwrap_or_else(|e| panic!("decode_attention: {e}"));
        assert_close(
            &format!("decode vs prefill last token, {cache_dtype} cache"),
            &host_f32(backend, &decode),
            &widen(&host_f32(backend, &prefill_last)),
            attention_tol(backend),
        );
    }
}

/// A decode padding row (`context_len = 0`, as in a padded CUDA-graph batch) attends
/// nothing and yields zeros; the real rows are unaffected.
pub fn decode_zero_context_gives_zeros(backend: &dyn Backend) {
    let scenario = Scenario {
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        block_size: 4,
        cache_dtype: DType::F32,
        kv_scales: KvScales::UNIT,
        seqs: vec![(7, 1), (12, 1)],
        seed: 80,
    };
    let built = scenario.build(backend);
    let want_real = scenario.reference(&built);
    let q_width = scenario.heads * scenario.head_dim;

    // Append a padding sequence: a query row, context_len 0, a garbage block table row.
    let mut q_host = built.q_ref.clone();
    q_host.extend(Rng::new(81).vec(q_width, 1.0));
    let (q, _) = activation(backend, &q_host, &[3, q_width]);
    let max_blocks = built.meta.block_tables.shape()[1];
    let mut table_ids = host_u32(backend, &built.meta.block_tables);
    table_ids.extend(std::iter::repeat_n(u32::MAX, max_blocks));
    let meta = AttentionMetadata {
        is_prefill: false,
        num_seqs: 3,
        block_size: scenario.block_size,
        cu_seqlens_q: upload_u32(backend, &[0, 1, 2, 3], &[4]),
        context_lens: upload_u32(backend, &[7, 12, 0], &[3]),
        block_tables: upload_u32(backend, &table_ids, &[3, max_blocks]),
        slot_mapping: upload_i64(backend, &[-1, -1, -1], &[3]),
        max_seqlen_q: 1,
        max_context_len: 12,
    };
    let out = backend
        .decode_attention(&q, &built.cache.layers[0], &meta, built.scale)
        .unwrap_or_else(|e| panic!("decode_attention with a padding row: {e}"));
    let mut want = want_real;
    want.extend(std::iter::repeat_n(0.0, q_width));
    assert_close(
        "decode with a padding row",
        &host_f32(backend, &out),
        &want,
        attention_tol(backend),
    );
}

/// Prefill on FP8 caches with non-unit scales: GQA ratios 1, 2, 4 with cached prefixes,
/// and Qwen3-0.6B's head shape long enough to run in parallel.
pub fn prefill_attention_fp8_cache(backend: &dyn Backend) {
    for (i, (heads, kv_heads, head_dim)) in GQA.into_iter().enumerate() {
        check_prefill(
            backend,
            &Scenario {
                heads,
                kv_heads,
                head_dim,
                block_size: 4,
                cache_dtype: DType::F8E4M3,
                kv_scales: FP8_SCALES,
                seqs: vec![(9, 9), (23, 5), (1, 1), (16, 3), (8, 1)],
                seed: 130 + i as u64,
            },
        );
    }
    check_prefill(
        backend,
        &Scenario::qwen3_0_6b_fp8(vec![(300, 300), (200, 72)], 141),
    );
}

/// Decode on FP8 caches with non-unit scales: GQA ratios 1, 2, 4 at two block sizes, and
/// Qwen3-0.6B's head shape for a few long sequences (the CPU splits their keys) and a
/// batch of 32 (the CPU's whole-row items, which widen e4m3 in registers).
pub fn decode_attention_fp8_cache(backend: &dyn Backend) {
    for (i, (heads, kv_heads, head_dim)) in GQA.into_iter().enumerate() {
        for block_size in [4, 16] {
            check_decode(
                backend,
                &Scenario {
                    heads,
                    kv_heads,
                    head_dim,
                    block_size,
                    cache_dtype: DType::F8E4M3,
                    kv_scales: FP8_SCALES,
                    seqs: vec![(1, 1), (4, 1), (5, 1), (37, 1), (64, 1), (300, 1)],
                    seed: 150 + i as u64,
                },
            );
        }
    }
    let batch: Vec<(usize, usize)> = (0..32).map(|i| (1 + (i * 37) % 200, 1)).collect();
    for seqs in [vec![(1, 1), (33, 1), (517, 1)], batch] {
        check_decode(backend, &Scenario::qwen3_0_6b_fp8(seqs, 160));
    }
}
