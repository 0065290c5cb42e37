//! One Mixtral MoE layer (`configs/mixtral-small.json`: hidden 1024, intermediate 2048,
//! 8 experts, top-2, bf16 dummy weights) on the CPU backend, grouped vs dense:
//!
//! - `grouped`: the product path, `SparseMoeBlock::forward` (router → `moe_route` →
//!   `moe_experts`, tokens bucketed by expert, one GEMM per expert over its tokens);
//! - `dense`: the same layer computed the naive way, every expert on every token,
//!   weighted by the (zero for unpicked experts) gate: `E / k` = 4× the expert FLOPs.
//!
//! At T = 1, 8 and 64 (decode; at 8 most experts get 1–3 rows) and T = 2048 (prefill). Before timing, the two are checked to
//! agree, so the comparison is between equal computations. Throughput is in tokens.
//!
//! Run: `cargo bench -p benches --bench moe_layer`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nanovllm_kernels::{Backend, CpuBackend, CpuStorage, NoopCommunicator, Tensor, TopKWeights};
use nanovllm_models::layers::{ExpertNames, SparseMoeBlock};
use nanovllm_models::{DummySource, ModelConfig, ShardSpec, WeightLoader};

const CONFIG: &str = "configs/mixtral-small.json";

fn config() -> ModelConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CONFIG);
    let json = std::fs::read_to_string(&path).expect("configs/mixtral-small.json");
    ModelConfig::from_json_str(&json, &path).expect("config parses")
}

/// Deterministic activations (xorshift64*), uniform in [-1, 1).
fn activations(len: usize, mut state: u64) -> Vec<f32> {
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            bits as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The block's stacked `[E, rows, cols]` bf16 weight as `E` separate `[rows, cols]` tensors.
fn split_experts(stacked: &Tensor) -> Vec<Tensor> {
    let (experts, rows, cols) = match *stacked.shape() {
        [e, r, c] => (e, r, c),
        _ => panic!("stacked expert weights are 3-d"),
    };
    let CpuStorage::BF16(data) = stacked.cpu("bench").expect("cpu tensor") else {
        panic!("mixtral-small is bf16");
    };
    data.chunks_exact(rows * cols)
        .take(experts)
        .map(|w| Tensor::from_bf16(w.to_vec(), &[rows, cols]).expect("expert"))
        .collect()
}

/// Every expert on every token, each output scaled by that token's gate weight for the
/// expert (0 unless routed there): the baseline the grouped path must beat.
struct DenseMoe {
    w13: Vec<Tensor>,
    w2: Vec<Tensor>,
}

impl DenseMoe {
    fn forward(&self, backend: &dyn Backend, moe: &SparseMoeBlock, x: &Tensor) -> Vec<f32> {
        let (tokens, hidden) = x.dims2().expect("x");
        let logits = moe.router_logits(backend, x).expect("router");
        let (ids, weights) = backend
            .moe_route(&logits, moe.top_k(), TopKWeights::Renormalized)
            .expect("route");
        let (ids, weights) = (
            ids.as_u32_slice().expect("ids"),
            weights.as_f32_slice().expect("w"),
        );
        let k = moe.top_k();
        let mut out = vec![0f32; tokens * hidden];
        for (e, (w13, w2)) in self.w13.iter().zip(&self.w2).enumerate() {
            let gate_up = backend.matmul(x, w13).expect("w13");
            let act = backend.silu_mul(&gate_up).expect("silu_mul");
            let y = backend.matmul(&act, w2).expect("w2");
            let y = y.as_f32_slice().expect("y");
            for t in 0..tokens {
                let slot = (0..k).find(|&j| ids[t * k + j] as usize == e);
                let gate = slot.map_or(0.0, |j| weights[t * k + j]);
                for (o, &v) in out[t * hidden..(t + 1) * hidden]
                    .iter_mut()
                    .zip(&y[t * hidden..(t + 1) * hidden])
                {
                    *o += gate * v;
                }
            }
        }
        out
    }
}

fn bench_moe_layer(c: &mut Criterion) {
    nanovllm_kernels::cpu::configure_process();
    let backend = CpuBackend::new();
    let config = config();
    let source = DummySource::new(config.dtype, 0);
    let loader = WeightLoader::new(&source, &backend, ShardSpec::default());
    let moe = SparseMoeBlock::load(
        &loader,
        "model.layers.0.block_sparse_moe",
        ExpertNames::MIXTRAL,
        &config,
        TopKWeights::Renormalized,
        Arc::new(NoopCommunicator),
    )
    .expect("MoE layer with dummy weights");
    let dense = DenseMoe {
        w13: split_experts(moe.w13()),
        w2: split_experts(moe.w2()),
    };
    let hidden = config.hidden_size;

    let mut group = c.benchmark_group("moe_layer");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for tokens in [1, 8, 64, 2048] {
        let x = Tensor::from_f32(
            activations(tokens * hidden, 0x5eed + tokens as u64),
            &[tokens, hidden],
        )
        .expect("x");
        // Same layer, same numbers: the relative difference is f32 summation order only.
        let grouped_out = moe.forward(&backend, &x).expect("grouped");
        let dense_out = dense.forward(&backend, &moe, &x);
        let grouped_out = grouped_out.as_f32_slice().expect("out");
        let scale = dense_out.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = grouped_out
            .iter()
            .zip(&dense_out)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-4 * scale,
            "grouped vs dense differ by {diff} (scale {scale})"
        );

        group.throughput(Throughput::Elements(tokens as u64));
        group.bench_with_input(BenchmarkId::new("grouped", tokens), &tokens, |b, _| {
            b.iter(|| moe.forward(&backend, black_box(&x)).expect("grouped"))
        });
        group.bench_with_input(BenchmarkId::new("dense", tokens), &tokens, |b, _| {
            b.iter(|| dense.forward(&backend, &moe, black_box(&x)))
        });
    }
    group.finish();
}

criterion_group!(moe_layer, bench_moe_layer);
criterion_main!(moe_layer);
