//! CPU backend op benchmarks at Qwen3-0.6B shapes (hidden 1024, 16 heads, 8 KV heads,
//! head_dim 128, intermediate 3072).
//!
//! - matmul with bf16 weights `[N, 1024]`, N ∈ {2048 (q_proj), 3072 (gate/up half)}, at
//!   M = 1 (decode), 4–64 (batched decode; q_proj only) and 512 (prefill); f32 weights at M = 512 as the
//!   plain-gemm baseline. Throughput is reported in FLOP/s (elements = 2·M·N·K).
//! - `matmul_dram`: the same bf16 kernels over a 24-matrix ring of `[3072, 1024]` weights
//!   (144 MiB, far beyond L3), so W streams from DRAM as in a real decode step.
//! - decode attention, one sequence at context 1024 and 4096, a batch of 16 sequences
//!   at context 256 and one of 32 at context 1024 (a 64 MiB bf16 cache: read from DRAM),
//!   f32, bf16 and FP8 (e4m3) cache.
//! - prefill attention, one 512-token sequence.
//! - `sample` over Qwen3's 151 936-token vocabulary, 1 and 32 rows: greedy, plain
//!   temperature, and Qwen3's defaults (T 0.6, top-k 20, top-p 0.95).
//!
//! Run: `cargo bench -p benches --bench cpu_ops`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use nanovllm_kernels::{
    AttentionMetadata, Backend, CpuBackend, DType, KvCache, SamplingRow, Tensor,
};

const HIDDEN: usize = 1024;
const HEADS: usize = 16;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const BLOCK_SIZE: usize = 256;

/// Deterministic inputs (xorshift64*), uniform in [-1, 1).
struct Rng(u64);
impl Rng {
    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
                bits as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }
}

fn tensor(data: Vec<f32>, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f32(data, shape)
        .and_then(|t| t.to_dtype_cpu(dtype))
        .expect("bench tensor")
}

fn bench_matmul(c: &mut Criterion) {
    nanovllm_kernels::cpu::configure_process();
    let backend = CpuBackend::new();
    let mut rng = Rng(0x1234_5678);
    let mut group = c.benchmark_group("matmul");
    group.sample_size(20);
    let cases = [
        (DType::BF16, 2048, [1, 4, 16, 32, 64, 512].as_slice()),
        (DType::BF16, 3072, [1, 32, 512].as_slice()),
        (DType::F32, 3072, [1, 512].as_slice()),
    ];
    for (dtype, n, ms) in cases {
        let w = tensor(rng.vec(n * HIDDEN), &[n, HIDDEN], dtype);
        for &m in ms {
            let x = tensor(rng.vec(m * HIDDEN), &[m, HIDDEN], DType::F32);
            group.throughput(Throughput::Elements((2 * m * n * HIDDEN) as u64));
            let id = BenchmarkId::new(format!("{dtype}_w{n}x{HIDDEN}"), format!("m{m}"));
            group.bench_with_input(id, &m, |b, _| {
                b.iter(|| {
                    backend
                        .matmul(black_box(&x), black_box(&w))
                        .expect("matmul")
                })
            });
        }
    }
    group.finish();
}

/// Decode reads every weight from DRAM once per step; a single matrix would sit in L3
/// after the first iteration, so cycle through a ring of matrices larger than L3.
fn bench_matmul_dram(c: &mut Criterion) {
    const RING: usize = 24;
    const N: usize = 3072;
    nanovllm_kernels::cpu::configure_process();
    let backend = CpuBackend::new();
    let mut rng = Rng(0x5eed_0d0d);
    let ring: Vec<Tensor> = (0..RING)
        .map(|_| tensor(rng.vec(N * HIDDEN), &[N, HIDDEN], DType::BF16))
        .collect();
    let mut group = c.benchmark_group("matmul_dram");
    group.sample_size(20);
    for m in [1, 16, 32] {
        let x = tensor(rng.vec(m * HIDDEN), &[m, HIDDEN], DType::F32);
        // Bytes of W streamed per call: the figure to compare with DRAM bandwidth.
        group.throughput(Throughput::Bytes((2 * N * HIDDEN) as u64));
        let id = BenchmarkId::new(format!("bf16_w{N}x{HIDDEN}"), format!("m{m}"));
        let mut next = 0;
        group.bench_with_input(id, &m, |b, _| {
            b.iter(|| {
                next = (next + 1) % RING;
                backend
                    .matmul(black_box(&x), black_box(&ring[next]))
                    .expect("matmul")
            })
        });
    }
    group.finish();
}

/// `num_seqs` sequences of `context_len` keys each, every one on its own blocks taken in
/// reverse order (non-contiguous, like a real allocator's output), their K/V stored, and
/// metadata for `q_len` queries at the end of each (decode when `q_len` is 1).
fn paged_setup(
    backend: &CpuBackend,
    rng: &mut Rng,
    num_seqs: usize,
    context_len: usize,
    q_len: usize,
    cache_dtype: DType,
) -> (KvCache, AttentionMetadata) {
    let blocks_per_seq = context_len.div_ceil(BLOCK_SIZE);
    let num_blocks = num_seqs * blocks_per_seq;
    let mut cache = KvCache::new(
        backend,
        1,
        num_blocks,
        BLOCK_SIZE,
        KV_HEADS,
        HEAD_DIM,
        cache_dtype,
    )
    .expect("cache");
    let table: Vec<u32> = (0..num_blocks as u32).rev().collect();
    let slots: Vec<i64> = table
        .chunks_exact(blocks_per_seq)
        .flat_map(|seq_table| {
            (0..context_len)
                .map(|p| (seq_table[p / BLOCK_SIZE] as usize * BLOCK_SIZE + p % BLOCK_SIZE) as i64)
        })
        .collect();
    let (rows, width) = (num_seqs * context_len, KV_HEADS * HEAD_DIM);
    let k = tensor(rng.vec(rows * width), &[rows, width], DType::F32);
    let v = tensor(rng.vec(rows * width), &[rows, width], DType::F32);
    let slot_mapping = Tensor::from_i64(slots.clone(), &[rows]).expect("slots");
    backend
        .store_kv(&k, &v, &mut cache.layers[0], &slot_mapping)
        .expect("store_kv");
    let query_slots: Vec<i64> = slots
        .chunks_exact(context_len)
        .flat_map(|seq_slots| seq_slots[context_len - q_len..].to_vec())
        .collect();
    let cu_seqlens_q: Vec<u32> = (0..=num_seqs as u32).map(|s| s * q_len as u32).collect();
    let meta = AttentionMetadata {
        is_prefill: q_len > 1,
        num_seqs,
        block_size: BLOCK_SIZE,
        cu_seqlens_q: Tensor::from_u32(cu_seqlens_q, &[num_seqs + 1]).expect("cu"),
        context_lens: Tensor::from_u32(vec![context_len as u32; num_seqs], &[num_seqs])
            .expect("ctx"),
        block_tables: Tensor::from_u32(table, &[num_seqs, blocks_per_seq]).expect("table"),
        slot_mapping: Tensor::from_i64(query_slots, &[num_seqs * q_len]).expect("slots"),
        max_seqlen_q: q_len,
        max_context_len: context_len,
    };
    (cache, meta)
}

/// One sequence at context 1024 and 4096 (split across threads by key ranges), a batch
/// of 16 at context 256, the batched-decode benchmark's shape, and one of 32 at context
/// 1024 (split by sequence).
fn bench_decode_attention(c: &mut Criterion) {
    nanovllm_kernels::cpu::configure_process();
    let backend = CpuBackend::new();
    let mut rng = Rng(0x9abc_def0);
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let mut group = c.benchmark_group("decode_attention");
    for cache_dtype in [DType::F32, DType::BF16, DType::F8E4M3] {
        for (num_seqs, context_len) in [(1, 1024), (1, 4096), (16, 256), (32, 1024)] {
            let (cache, meta) =
                paged_setup(&backend, &mut rng, num_seqs, context_len, 1, cache_dtype);
            let q = tensor(
                rng.vec(num_seqs * HEADS * HEAD_DIM),
                &[num_seqs, HEADS * HEAD_DIM],
                DType::F32,
            );
            // QKᵀ and PV: 2 · 2 · heads · context · head_dim per sequence.
            group.throughput(Throughput::Elements(
                (4 * num_seqs * HEADS * context_len * HEAD_DIM) as u64,
            ));
            let shape = match num_seqs {
                1 => format!("ctx{context_len}"),
                _ => format!("{num_seqs}seqs_ctx{context_len}"),
            };
            let id = BenchmarkId::new(format!("{cache_dtype}_cache"), shape);
            group.bench_function(id, |b| {
                b.iter(|| {
                    backend
                        .decode_attention(black_box(&q), &cache.layers[0], &meta, scale)
                        .expect("decode_attention")
                })
            });
        }
    }
    group.finish();
}

fn bench_prefill_attention(c: &mut Criterion) {
    nanovllm_kernels::cpu::configure_process();
    let backend = CpuBackend::new();
    let mut rng = Rng(0x0fed_cba9);
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let tokens = 512;
    let (cache, meta) = paged_setup(&backend, &mut rng, 1, tokens, tokens, DType::F32);
    let q = tensor(
        rng.vec(tokens * HEADS * HEAD_DIM),
        &[tokens, HEADS * HEAD_DIM],
        DType::F32,
    );
    let kv_width = KV_HEADS * HEAD_DIM;
    let k = tensor(rng.vec(tokens * kv_width), &[tokens, kv_width], DType::F32);
    let v = tensor(rng.vec(tokens * kv_width), &[tokens, kv_width], DType::F32);
    let mut group = c.benchmark_group("prefill_attention");
    group.sample_size(20);
    // Causal: query i sees i + 1 keys; 4 FLOP per (query, key, head, dim).
    let pairs = tokens * (tokens + 1) / 2;
    group.throughput(Throughput::Elements((4 * HEADS * pairs * HEAD_DIM) as u64));
    group.bench_function(BenchmarkId::new("f32_cache", format!("t{tokens}")), |b| {
        b.iter(|| {
            backend
                .prefill_attention(black_box(&q), &k, &v, &cache.layers[0], &meta, scale)
                .expect("prefill_attention")
        })
    });
    group.finish();
}

fn bench_sample(c: &mut Criterion) {
    nanovllm_kernels::cpu::configure_process();
    let backend = CpuBackend::new();
    let mut rng = Rng(0x5a3f_1e07);
    let vocab = 151_936;
    let mut group = c.benchmark_group("sample");
    group.sample_size(20);
    let settings = [
        ("greedy", SamplingRow::default()),
        (
            "t1",
            SamplingRow {
                temperature: 1.0,
                ..SamplingRow::default()
            },
        ),
        (
            "qwen3_defaults",
            SamplingRow {
                temperature: 0.6,
                top_k: 20,
                top_p: 0.95,
                ..SamplingRow::default()
            },
        ),
    ];
    for rows in [1, 32] {
        // Logits spread like a model's: [-8, 8).
        let logits: Vec<f32> = rng.vec(rows * vocab).iter().map(|x| 8.0 * x).collect();
        let logits = tensor(logits, &[rows, vocab], DType::F32);
        group.throughput(Throughput::Elements((rows * vocab) as u64));
        for (name, setting) in settings {
            let specs: Vec<SamplingRow<'_>> = (0..rows)
                .map(|r| SamplingRow {
                    seed: r as u64,
                    ..setting
                })
                .collect();
            group.bench_function(BenchmarkId::new(name, format!("r{rows}")), |b| {
                b.iter_batched(
                    || logits.clone(),
                    |t| backend.sample(t, black_box(&specs)).expect("sample"),
                    BatchSize::LargeInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(
    cpu_ops,
    bench_matmul,
    bench_matmul_dram,
    bench_decode_attention,
    bench_prefill_attention,
    bench_sample
);
criterion_main!(cpu_ops);
