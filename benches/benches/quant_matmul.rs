//! Quantized-weight matmul against bf16 at the Qwen3-0.6B shapes: gate_up (K = 1024,
//! N = 6144), down (K = 3072, N = 1024) and the LM head (K = 1024, N = 151 936), at
//! M = 1 (decode of one stream), 16 and 32 (batched decode) and 512 (prefill; not for
//! the LM head, which prefill runs on the last token only), for bf16, int8_g32,
//! int4_g32 and fp8_g128 weights.
//!
//! Decode reads every weight from DRAM once per step, so each case cycles through a
//! ring of distinct weight matrices whose smallest (int4) copy still spans 64 MiB, twice
//! the 32 MiB L3 of the dev host: a single matrix would be served from L3 after the first
//! iteration. The quantized weights are made from the bf16 ones, as the loader does.
//! Within a shape and M the dtypes run back to back, so their ratios are measured close
//! together in time; run the bench twice for two rounds.
//!
//! Throughput is in weight bytes per second (`Throughput::Bytes` of the dtype's bytes):
//! the figure to compare with DRAM bandwidth at M = 1; compare times for the ratios.
//!
//! Run: `cargo bench -p benches --bench quant_matmul` (filter e.g. `gate_up_m1`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nanovllm_kernels::{quant, Backend, CpuBackend, DType, Tensor};

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

const DTYPES: [DType; 4] = [DType::BF16, DType::Int8G32, DType::Int4G32, DType::Fp8G128];

/// Bytes the smallest (int4) ring spans at least.
const RING_BYTES: usize = 64 << 20;

fn bench_quant_matmul(c: &mut Criterion) {
    nanovllm_kernels::cpu::configure_process();
    let backend = CpuBackend::new();
    let mut rng = Rng(0x0051_ab1e);
    let mut group = c.benchmark_group("quant_matmul");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let shapes = [
        ("gate_up", 1024, 6144, [1, 16, 32, 512].as_slice()),
        ("down", 3072, 1024, [1, 16, 32, 512].as_slice()),
        ("lm_head", 1024, 151_936, [1, 16, 32].as_slice()),
    ];
    for (name, k, n, ms) in shapes {
        let ring_len = RING_BYTES.div_ceil(DType::Int4G32.storage_bytes(n * k));
        let bf16: Vec<Tensor> = (0..ring_len)
            .map(|_| {
                Tensor::from_f32(rng.vec(n * k), &[n, k])
                    .and_then(|t| t.to_dtype_cpu(DType::BF16))
                    .expect("bf16 weight")
            })
            .collect();
        let rings: Vec<(DType, Vec<Tensor>)> = DTYPES
            .iter()
            .map(|&dtype| {
                let ring = if dtype == DType::BF16 {
                    bf16.clone()
                } else {
                    bf16.iter()
                        .map(|w| quant::quantize(w, dtype).expect("quantize"))
                        .collect()
                };
                (dtype, ring)
            })
            .collect();
        drop(bf16);
        for &m in ms {
            let x = Tensor::from_f32(rng.vec(m * k), &[m, k]).expect("x");
            for (dtype, ring) in &rings {
                group.throughput(Throughput::Bytes(dtype.storage_bytes(n * k) as u64));
                let id = BenchmarkId::new(format!("{name}_m{m}"), dtype);
                let mut next = 0;
                group.bench_function(id, |b| {
                    b.iter(|| {
                        next = (next + 1) % ring.len();
                        backend
                            .matmul(black_box(&x), black_box(&ring[next]))
                            .expect("matmul")
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(quant_matmul, bench_quant_matmul);
criterion_main!(quant_matmul);
