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
fn two_ranks_match_the_reference_on_fixtures() {
    // qwen3-tiny: 4 q / 2 kv heads, tied; qwen3-tiny-bf16: 6 q / 2 kv heads, untied, sharded files.
    for fixture in ["qwen3-tiny", "qwen3-tiny-bf16"] {
        check_ranks_match_reference(fixture, 2, 1e-4);
    }
}

/// Dummy weights are a pure function of (name, element), so a sharded dummy model is the
/// same model; an odd vocab makes the last rank's LM head rows padding.
#[test]
fn dummy_weights_shard_consistently_with_vocab_padding() {
    let json = r#"{
        "architectures": ["Qwen3ForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "head_dim": 8, "vocab_size": 101, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": true, "torch_dtype": "float32"
    }"#;
    let config = ModelConfig::from_json_str(json, Path::new("inline")).unwrap();
    let prompts = vec![vec![1, 5, 9, 100, 42, 7, 3], vec![99, 0]];
    let dir = Path::new("/nonexistent"); // dummy weights read nothing
    let single = run_tp(&config, dir, LoadFormat::Dummy, 1, &prompts).remove(0);
    for world in [2, 4] {
        let ranks = run_tp(&config, dir, LoadFormat::Dummy, world, &prompts);
        for (rank, rows) in ranks.iter().enumerate() {
            for (row, expected) in rows.iter().zip(&single) {
                assert_eq!(row.len(), 101, "padding columns dropped");
                let diff = max_abs_diff(row, expected);
                assert!(diff <= 1e-4, "world {world} rank {rank}: {diff:e}");
            }
        }
    }
}

#[test]
fn indivisible_world_size_names_the_count_and_working_sizes() {
    let dir = fixture_dir("qwen3-tiny-bf16"); // 6 q heads, 2 kv heads, intermediate 96
    let config = ModelConfig::from_dir(&dir).unwrap();
    let ctx = ModelContext {
        backend: Arc::new(CpuBackend::new()),
        comm: Arc::new(nanovllm_kernels::NoopCommunicator),
        shard: ShardSpec {
            rank: 0,
            world_size: 3,
        },
    };
    match load_model(&config, &dir, LoadFormat::Safetensors, &ctx) {
        Err(ModelError::Shard(msg)) => {
            assert!(
                msg.contains("tensor_parallel_size = 3 does not divide num_key_value_heads = 2"),
                "{msg}"
            );
            assert!(msg.contains("use 1 or 2"), "{msg}");
        }
        Err(e) => panic!("expected a Shard error, got {e}"),
        Ok(_) => panic!("expected a Shard error, got a model"),
    }
}
