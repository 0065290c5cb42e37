//! Tensor-parallel Qwen3 on the CPU: each rank is a thread with its own shard and a
//! tiny in-process communicator; every rank must return the same logits as one rank
//! (and as transformers, for the fixtures). Tolerance 1e-4 absolute, as the golden tests:
//! the only difference from one rank is the order of the partial-sum additions.

mod common;
#[path = "common/tp.rs"]
mod tp;

use std::path::Path;
use std::sync::Arc;

use common::*;
use nanovllm_kernels::CpuBackend;
use nanovllm_models::{load_model, LoadFormat, ModelConfig, ModelContext, ModelError, ShardSpec};
use tp::{check_ranks_match_reference, run_tp};

#[test]
fn sharded_ranks_match_the_reference_on_fixtures() {
    // qwen3-tiny: 4 q / 2 kv heads, tied; at 4 ranks each KV head lives on two.
    // qwen3-tiny-bf16: 6 q / 2 kv heads, untied, sharded files; at 6 ranks each KV head
    // lives on three.
    for (fixture, worlds) in [
        ("qwen3-tiny", &[2, 4][..]),
        ("qwen3-tiny-bf16", &[2, 6][..]),
    ] {
        for &world_size in worlds {
            check_ranks_match_reference(fixture, world_size, 1e-4);
        }
    }
}

/// A dummy-weight Qwen3 with `q_heads` / `kv_heads` heads of 8 at every world size in
/// `worlds`, against one rank. Dummy weights are a pure function of (name, element), so a
/// sharded dummy model is the same model; the odd vocab makes the last rank's LM head rows
/// padding.
fn check_dummy_matches_one_rank(q_heads: usize, kv_heads: usize, worlds: &[usize]) {
    let json = format!(
        r#"{{
        "architectures": ["Qwen3ForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": {q_heads},
        "num_key_value_heads": {kv_heads}, "head_dim": 8, "vocab_size": 101,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "torch_dtype": "float32"
    }}"#
    );
    let config = ModelConfig::from_json_str(&json, Path::new("inline")).unwrap();
    let prompts = vec![vec![1, 5, 9, 100, 42, 7, 3], vec![99, 0]];
    let dir = Path::new("/nonexistent"); // dummy weights read nothing
    let single = run_tp(&config, dir, LoadFormat::Dummy, 1, &prompts).remove(0);
    for &world in worlds {
        let ranks = run_tp(&config, dir, LoadFormat::Dummy, world, &prompts);
        for (rank, rows) in ranks.iter().enumerate() {
            for (row, expected) in rows.iter().zip(&single) {
                assert_eq!(row.len(), 101, "padding columns dropped");
                let diff = max_abs_diff(row, expected);
                assert!(
                    diff <= 1e-4,
                    "{q_heads} q / {kv_heads} kv heads, world {world} rank {rank}: {diff:e}"
                );
            }
        }
    }
}

#[test]
fn dummy_weights_shard_consistently_with_vocab_padding() {
    check_dummy_matches_one_rank(4, 4, &[2, 4]);
}

/// Fewer KV heads than ranks: each KV head replicated on `world / kv_heads` ranks (MQA at
/// 2 and 4 ranks, 2 KV heads at 4 ranks).
#[test]
fn replicated_kv_heads_match_one_rank() {
    check_dummy_matches_one_rank(4, 1, &[2, 4]);
    check_dummy_matches_one_rank(8, 2, &[4]);
}

#[test]
fn unsplittable_world_sizes_name_the_count_and_working_sizes() {
    let dir = fixture_dir("qwen3-tiny-bf16"); // 6 q heads, 2 kv heads, intermediate 96
    let config = ModelConfig::from_dir(&dir).unwrap();
    let load = |world_size| {
        let ctx = ModelContext {
            backend: Arc::new(CpuBackend::new()),
            comm: Arc::new(nanovllm_kernels::NoopCommunicator),
            shard: ShardSpec {
                rank: 0,
                world_size,
            },
            quantization: None,
        };
        match load_model(&config, &dir, LoadFormat::Safetensors, &ctx) {
            Err(ModelError::Shard(msg)) => msg,
            Err(e) => panic!("expected a Shard error, got {e}"),
            Ok(_) => panic!("expected a Shard error, got a model"),
        }
    };
    let msg = load(3);
    assert!(
        msg.contains(
            "tensor_parallel_size = 3 neither divides nor is a multiple of num_key_value_heads = 2"
        ) && msg.contains("use 1, 2 or 6"),
        "{msg}"
    );
    let msg = load(4);
    assert!(
        msg.contains("tensor_parallel_size = 4 does not divide num_attention_heads = 6")
            && msg.contains("use 1, 2 or 6"),
        "{msg}"
    );
}
