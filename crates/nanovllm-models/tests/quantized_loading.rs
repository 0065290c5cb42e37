//! Quantized weights end to end on the CPU backend, on the trained fixture (random-weight
//! fixtures cannot measure quantization error: their near-tied logits flip under noise).
//!
//! - `fixtures/qwen3-trained-fp8` (an FP8 checkpoint, `scripts/make_fp8_fixture.py`) loads
//!   as `fp8_g128` weights that dequantize to exactly torch's `q.float() * scale_inv`, and
//!   refuses `--quantization`.
//! - `fixtures/qwen3-trained` with in-situ int8 / int4 / fp8: which weights are quantized
//!   (every linear weight and the LM head, as a copy of the tied table; embeddings and norms
//!   stay bf16), and the perplexity on `eval.jsonl` against the unquantized model.
//!
//! - Tensor parallelism: quantized shards are whole blocks, so sharded ranks compute what
//!   one rank does up to the order of the partial sums (1e-4 absolute, as the other TP
//!   tests); a row-parallel shard that would cut a block fails naming the weight.
//!
//! Perplexity here is the model-level one (`exp(Σ nll / tokens scored)`, the first token of
//! each line unscored), the definition of `fixtures/qwen3-trained/reference_perplexity.json`.

mod common;
#[path = "common/tp.rs"]
mod tp;

use std::path::Path;

use common::*;
use nanovllm_kernels::{Backend, CpuBackend, DType, Tensor, ThreadCommunicator};
use nanovllm_models::qwen3::load_qwen3;
use nanovllm_models::{
    load_model, Fp8CheckpointSource, LoadFormat, Model, ModelConfig, ModelContext, ModelError,
    SafetensorsSource, ShardSpec, WeightQuantization,
};
use serde_json::Value;
use tp::run_tp_quantized;

const BLOCK_SIZE: usize = 16;

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn eval_lines() -> Vec<Vec<u32>> {
    std::fs::read_to_string(fixture_dir("qwen3-trained").join("eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["prompt_token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// Perplexity of `model` on every eval line: one prefill per line, logits of every row.
fn perplexity(model: &dyn Model, backend: &dyn Backend) -> f64 {
    let (mut nll, mut scored) = (0f64, 0usize);
    for line in eval_lines() {
        let blocks = line.len().div_ceil(BLOCK_SIZE);
        let table: Vec<u32> = (0..blocks as u32).collect();
        let mut cache = new_cache(backend, model, blocks, BLOCK_SIZE);
        let mut input = build_input(
            backend,
            BLOCK_SIZE,
            true,
            &[SeqStep::prefill(&table, &line)],
        );
        let rows: Vec<u32> = (0..line.len() as u32 - 1).collect();
        input.logits_indices = backend
            .upload(Tensor::from_u32(rows.clone(), &[rows.len()]).unwrap())
            .unwrap();
        let logits = backend
            .to_host(&model.forward(&input, &mut cache).unwrap())
            .unwrap();
        let vocab = logits.shape()[1];
        for (row, next) in logits
            .to_vec_f32()
            .unwrap()
            .chunks_exact(vocab)
            .zip(&line[1..])
        {
            let max = row.iter().fold(f32::MIN, |a, &x| a.max(x)) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            nll -= row[*next as usize] as f64 - max - sum.ln();
            scored += 1;
        }
    }
    (nll / scored as f64).exp()
}

fn ctx(quantization: Option<WeightQuantization>) -> ModelContext {
    ModelContext {
        quantization,
        ..cpu_context()
    }
}

fn trained_perplexity(quantization: Option<WeightQuantization>) -> f64 {
    let dir = fixture_dir("qwen3-trained");
    let config = ModelConfig::from_dir(&dir).unwrap();
    let ctx = ctx(quantization);
    let model = load_model(&config, &dir, LoadFormat::Safetensors, &ctx).unwrap();
    perplexity(model.as_ref(), ctx.backend.as_ref())
}

#[test]
fn fp8_checkpoint_weights_are_torchs_dequantized_values() {
    let dir = fixture_dir("qwen3-trained-fp8");
    let config = ModelConfig::from_dir(&dir).unwrap();
    let stored = SafetensorsSource::open(&dir).unwrap();
    let source = Fp8CheckpointSource::new(&stored, config.quantization.as_ref().unwrap()).unwrap();
    let model = load_qwen3(&config, &source, &cpu_context()).unwrap();
    let q_rows = config.num_attention_heads * config.head_dim;
    let layer = |i: usize| &model.layers()[i];
    for w in [
        layer(0).self_attn.qkv_proj().weight(),
        layer(1).self_attn.o_proj().weight(),
        layer(1).ffn.gate_up_proj().weight(),
        layer(1).ffn.down_proj().weight(),
    ] {
        assert_eq!(w.dtype(), DType::Fp8G128);
    }
    // The tied head shares the bf16 embedding: FP8 checkpoints keep it unquantized.
    assert!(model.lm_head_shares_embedding());
    assert_eq!(model.embed_tokens().table().dtype(), DType::BF16);
    let reference = json(&dir.join("reference_fp8.json"));
    let mut checked = 0;
    for entry in reference["weights"].as_array().unwrap() {
        let (name, row) = (
            entry["name"].as_str().unwrap(),
            entry["row"].as_u64().unwrap() as usize,
        );
        // q_proj rows come first in the packed qkv weight, then k_proj's.
        let (weight, row) = match name {
            "model.layers.0.self_attn.q_proj.weight" => {
                (layer(0).self_attn.qkv_proj().weight(), row)
            }
            "model.layers.1.self_attn.k_proj.weight" => {
                (layer(1).self_attn.qkv_proj().weight(), q_rows + row)
            }
            "model.layers.1.mlp.down_proj.weight" => (layer(1).ffn.down_proj().weight(), row),
            other => panic!("reference_fp8.json names {other}, which this test does not map"),
        };
        let k = weight.shape()[1];
        let got = &weight.to_vec_f32().unwrap()[row * k..(row + 1) * k];
        let want: Vec<f32> = entry["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            got,
            &want[..],
            "{name} row {row}: not torch's dequantized values"
        );
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn an_fp8_checkpoint_refuses_quantization_again() {
    let dir = fixture_dir("qwen3-trained-fp8");
    let config = ModelConfig::from_dir(&dir).unwrap();
    let err = load_model(
        &config,
        &dir,
        LoadFormat::Safetensors,
        &ctx(Some(WeightQuantization::new(DType::Int4G32))),
    )
    .err()
    .unwrap();
    assert!(matches!(err, ModelError::AlreadyQuantized { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("fp8") && msg.contains("without --quantization"),
        "{msg}"
    );
}

#[test]
fn in_situ_quantization_covers_every_linear_weight_and_a_copy_of_the_tied_head() {
    let dir = fixture_dir("qwen3-trained");
    let config = ModelConfig::from_dir(&dir).unwrap();
    let source = SafetensorsSource::open(&dir).unwrap();
    for dtype in [DType::Int8G32, DType::Int4G32, DType::Fp8G128] {
        let model =
            load_qwen3(&config, &source, &ctx(Some(WeightQuantization::new(dtype)))).unwrap();
        for layer in model.layers() {
            for w in [
                layer.self_attn.qkv_proj().weight(),
                layer.self_attn.o_proj().weight(),
                layer.ffn.gate_up_proj().weight(),
                layer.ffn.down_proj().weight(),
            ] {
                assert_eq!(w.dtype(), dtype);
            }
        }
        assert!(!model.lm_head_shares_embedding());
        assert_eq!(model.lm_head().weight().dtype(), dtype);
        assert_eq!(model.embed_tokens().table().dtype(), DType::BF16);
        let no_head = WeightQuantization {
            dtype,
            lm_head: false,
        };
        let model = load_qwen3(&config, &source, &ctx(Some(no_head))).unwrap();
        assert!(model.lm_head_shares_embedding());
        assert_eq!(model.layers()[0].ffn.down_proj().weight().dtype(), dtype);
    }
}

/// The LM-head choice, measured: perplexity on the trained fixture unquantized (126.4366,
/// transformers' reference to 1e-4) against each format with and without the LM head
/// quantized, bounded by the quality targets. Measured on 2 cores (Dec 2026):
///
/// | format | LM head quantized | LM head bf16 |
/// |---|---|---|
/// | int8_g32 | 126.4269 (0.99992×) | 126.4412 (1.00004×) |
/// | int4_g32 | 126.7568 (1.00253×) | 126.6070 (1.00135×) |
/// | fp8_g128 | 126.5387 (1.00081×) | 126.4410 (1.00003×) |
///
/// Ignored by default: seven loads over 5585 tokens take ~100 s through the portable
/// quantized matmul. Run it with
/// `cargo test -p nanovllm-models --test quantized_loading -- --ignored --nocapture`.
#[test]
#[ignore = "a ~100 s measurement; see the doc comment for the command"]
fn lm_head_choice_measured_on_the_trained_fixture() {
    let base = trained_perplexity(None);
    let reference = json(&fixture_dir("qwen3-trained").join("reference_perplexity.json"));
    let want = reference["perplexity"].as_f64().unwrap();
    assert!(
        (base / want - 1.0).abs() < 1e-4,
        "unquantized {base} vs transformers {want}"
    );
    for (dtype, bound) in [
        (DType::Int8G32, 1.01),
        (DType::Int4G32, 1.10),
        (DType::Fp8G128, 1.02),
    ] {
        let with_head = trained_perplexity(Some(WeightQuantization::new(dtype)));
        let without_head = trained_perplexity(Some(WeightQuantization {
            dtype,
            lm_head: false,
        }));
        println!(
            "{dtype}: perplexity {with_head:.4} ({:.5}x) with the LM head quantized, \
             {without_head:.4} ({:.5}x) without; unquantized {base:.4}",
            with_head / base,
            without_head / base
        );
        assert!(
            with_head <= bound * base,
            "{dtype}: {with_head} > {bound} x {base}"
        );
        assert!(
            without_head <= bound * base,
            "{dtype}: {without_head} > {bound} x {base}"
        );
    }
}

/// The FP8 checkpoint computes transformers' perplexity of its dequantized weights
/// (`reference_fp8.json`: 126.4146, 0.99983× the bf16 model's) to 1e-4 relative: the
/// re-blocked weights are exact, so only f32 summation order differs.
#[test]
fn fp8_checkpoint_perplexity_matches_transformers() {
    let dir = fixture_dir("qwen3-trained-fp8");
    let config = ModelConfig::from_dir(&dir).unwrap();
    let ctx = cpu_context();
    let model = load_model(&config, &dir, LoadFormat::Safetensors, &ctx).unwrap();
    let fp8 = perplexity(model.as_ref(), ctx.backend.as_ref());
    let want = json(&dir.join("reference_fp8.json"))["perplexity"]
        .as_f64()
        .unwrap();
    assert!(
        (fp8 / want - 1.0).abs() < 1e-4,
        "fp8 checkpoint {fp8} vs transformers {want}"
    );
}

/// Two eval lines' first 40 tokens.
fn tp_prompts() -> Vec<Vec<u32>> {
    eval_lines()
        .into_iter()
        .take(2)
        .map(|l| l[..40].to_vec())
        .collect()
}

fn check_ranks_match_one_rank(
    fixture: &str,
    world: usize,
    quantization: Option<WeightQuantization>,
) {
    let dir = fixture_dir(fixture);
    let config = ModelConfig::from_dir(&dir).unwrap();
    let prompts = tp_prompts();
    let format = LoadFormat::Safetensors;
    let single = run_tp_quantized(&config, &dir, format, 1, &prompts, quantization).remove(0);
    let ranks = run_tp_quantized(&config, &dir, format, world, &prompts, quantization);
    for (rank, rows) in ranks.iter().enumerate() {
        for (row, expected) in rows.iter().zip(&single) {
            let diff = max_abs_diff(row, expected);
            assert!(
                diff <= 1e-4,
                "{fixture} {quantization:?} world {world} rank {rank}: {diff:e}"
            );
        }
    }
}

#[test]
fn quantized_shards_compute_what_one_rank_does() {
    // intermediate 768 and o_proj's 256 input features split in 2: whole 32- and 128-blocks.
    check_ranks_match_one_rank(
        "qwen3-trained",
        2,
        Some(WeightQuantization::new(DType::Int4G32)),
    );
    check_ranks_match_one_rank("qwen3-trained-fp8", 2, None);
}

#[test]
fn a_row_parallel_shard_that_cuts_a_block_names_the_weight() {
    // At 4 ranks o_proj's 256 input features are shards of 64: half an fp8 block (128),
    // two int8 blocks (32).
    let load_rank0 = |fixture: &str, quantization| {
        let dir = fixture_dir(fixture);
        let config = ModelConfig::from_dir(&dir).unwrap();
        let comm = ThreadCommunicator::group(4).into_iter().next().unwrap();
        let ctx = ModelContext {
            backend: std::sync::Arc::new(CpuBackend::new()),
            comm: std::sync::Arc::new(comm),
            shard: ShardSpec {
                rank: 0,
                world_size: 4,
            },
            quantization,
        };
        load_model(&config, &dir, LoadFormat::Safetensors, &ctx).map(|_| ())
    };
    for (fixture, quantization) in [
        ("qwen3-trained-fp8", None),
        (
            "qwen3-trained",
            Some(WeightQuantization::new(DType::Fp8G128)),
        ),
    ] {
        let err = load_rank0(fixture, quantization).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::ShardCutsBlock {
                    shard: 64,
                    block: 128,
                    ..
                }
            ),
            "{fixture}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("o_proj.weight") && msg.contains("--tensor-parallel-size"),
            "{msg}"
        );
    }
    load_rank0(
        "qwen3-trained",
        Some(WeightQuantization::new(DType::Int8G32)),
    )
    .unwrap();
}

#[test]
fn experts_quantize_and_the_router_stays_as_stored() {
    use nanovllm_models::qwen3_moe::{load_qwen3_moe, Qwen3MoeFeedForward};
    let dir = fixture_dir("qwen3-moe-tiny");
    let config = ModelConfig::from_dir(&dir).unwrap();
    let source = SafetensorsSource::open(&dir).unwrap();
    let q = Some(WeightQuantization::new(DType::Int8G32));
    let model = load_qwen3_moe(&config, &source, &ctx(q)).unwrap();
    let mut sparse = 0;
    for layer in model.layers() {
        match &layer.ffn {
            Qwen3MoeFeedForward::Sparse(moe) => {
                // 8 experts of 32 features over hidden 64.
                assert_eq!(
                    (moe.w13().dtype(), moe.w13().shape()),
                    (DType::Int8G32, &[8, 64, 64][..])
                );
                assert_eq!(
                    (moe.w2().dtype(), moe.w2().shape()),
                    (DType::Int8G32, &[8, 64, 32][..])
                );
                assert_eq!(moe.gate().dtype(), DType::F32);
                sparse += 1;
            }
            Qwen3MoeFeedForward::Dense(mlp) => {
                assert_eq!(mlp.down_proj().weight().dtype(), DType::Int8G32);
            }
        }
    }
    assert_eq!(sparse, 2);
    // Untied: the stored lm_head.weight, quantized.
    assert_eq!(model.lm_head().weight().dtype(), DType::Int8G32);
}

#[test]
fn dummy_weights_quantize_too() {
    let dir = fixture_dir("qwen3-trained");
    let config = ModelConfig::from_dir(&dir).unwrap();
    let ctx = ctx(Some(WeightQuantization::new(DType::Int4G32)));
    let model = load_model(&config, Path::new("/nonexistent"), LoadFormat::Dummy, &ctx).unwrap();
    let backend = ctx.backend.as_ref();
    let prompt = [1u32, 2, 3];
    let table = [0u32];
    let mut cache = new_cache(backend, model.as_ref(), 1, BLOCK_SIZE);
    let logits = run_step(
        model.as_ref(),
        backend,
        &mut cache,
        BLOCK_SIZE,
        true,
        &[SeqStep::prefill(&table, &prompt)],
    );
    assert!(logits[0].iter().all(|x| x.is_finite()));
    // An FP8 checkpoint's shapes as dummy weights (quantized to fp8_g128 by the registry).
    let dir = fixture_dir("qwen3-trained-fp8");
    let config = ModelConfig::from_dir(&dir).unwrap();
    let model = load_model(&config, &dir, LoadFormat::Dummy, &cpu_context()).unwrap();
    let mut cache = new_cache(backend, model.as_ref(), 1, BLOCK_SIZE);
    let logits = run_step(
        model.as_ref(),
        backend,
        &mut cache,
        BLOCK_SIZE,
        true,
        &[SeqStep::prefill(&table, &prompt)],
    );
    assert!(logits[0].iter().all(|x| x.is_finite()));
}
