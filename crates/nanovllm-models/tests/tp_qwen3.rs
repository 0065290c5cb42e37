//! Tensor-parallel Qwen3 on the CPU: each rank is a thread with its own shard and a
//! tiny in-process communicator; every rank must return the same logits as one rank
//! (and as transformers, for the fixtures). Tolerance 1e-4 absolute, as the golden tests:
//! the only difference from one rank is the order of the partial-sum additions.

mod common;
#[path = "common/thread_comm.rs"]
mod thread_comm;

use std::path::Path;
use std::sync::Arc;

use common::*;
use nanovllm_kernels::{Communicator, CpuBackend};
use nanovllm_models::{load_model, LoadFormat, ModelConfig, ModelContext, ModelError, ShardSpec};
use serde_json::Value;
use thread_comm::ThreadComm;

/// Loads the model on `world_size` threads and prefills `prompts` (packed) on each;
/// returns each rank's logits rows.
fn run_tp(
    config: &ModelConfig,
    dir: &Path,
    format: LoadFormat,
    world_size: usize,
    prompts: &[Vec<u32>],
) -> Vec<Vec<Vec<f32>>> {
    let block_size = 16;
    std::thread::scope(|s| {
        let handles: Vec<_> = ThreadComm::group(world_size)
            .into_iter()
            .map(|comm| {
                s.spawn(move || {
                    let ctx = ModelContext {
                        backend: Arc::new(CpuBackend::new()),
                        shard: ShardSpec {
                            rank: comm.rank(),
                            world_size,
                        },
                        comm: Arc::new(comm),
                    };
                    let model = load_model(config, dir, format, &ctx).unwrap();
                    let spec = model.kv_cache_spec();
                    assert_eq!(spec.num_kv_heads, config.num_key_value_heads / world_size);
                    let blocks: Vec<usize> = prompts
                        .iter()
                        .map(|p| p.len().div_ceil(block_size))
                        .collect();
                    let mut cache = new_cache(
                        ctx.backend.as_ref(),
                        model.as_ref(),
                        blocks.iter().sum(),
                        block_size,
                    );
                    let mut pool = BlockPool::shuffled(blocks.iter().sum(), 5);
                    let tables: Vec<Vec<u32>> = blocks.iter().map(|&n| pool.take(n)).collect();
                    let steps: Vec<SeqStep> = prompts
                        .iter()
                        .zip(&tables)
                        .map(|(p, t)| SeqStep {
                            block_table: t,
                            num_cached: 0,
                            new_tokens: p,
                        })
                        .collect();
                    run_step(
                        model.as_ref(),
                        ctx.backend.as_ref(),
                        &mut cache,
                        block_size,
                        true,
                        &steps,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn reference_cases(fixture: &str) -> Vec<(Vec<u32>, Vec<f32>)> {
    let text = std::fs::read_to_string(fixture_dir(fixture).join("reference.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["prompt_token_ids"].as_array().unwrap();
            let logits = c["last_logits"].as_array().unwrap();
            (
                ids.iter().map(|x| x.as_u64().unwrap() as u32).collect(),
                logits.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            )
        })
        .collect()
}

#[test]
fn two_ranks_match_the_reference_on_fixtures() {
    // qwen3-tiny: 4 q / 2 kv heads, tied; qwen3-tiny-bf16: 6 q / 2 kv heads, untied, sharded files.
    for fixture in ["qwen3-tiny", "qwen3-tiny-bf16"] {
        let dir = fixture_dir(fixture);
        let config = ModelConfig::from_dir(&dir).unwrap();
        let cases = reference_cases(fixture);
        let prompts: Vec<Vec<u32>> = cases.iter().map(|(p, _)| p.clone()).collect();
        let ranks = run_tp(&config, &dir, LoadFormat::Safetensors, 2, &prompts);
        for (rank, rows) in ranks.iter().enumerate() {
            for ((_, reference), row) in cases.iter().zip(rows) {
                let diff = max_abs_diff(row, reference);
                assert!(diff <= 1e-4, "{fixture} rank {rank}: {diff:e}");
            }
        }
        assert_eq!(ranks[0], ranks[1], "{fixture}: ranks disagree");
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
            assert!(msg.contains("num_key_value_heads (2)"), "{msg}");
            assert!(msg.contains("[1, 2]"), "{msg}");
        }
        Err(e) => panic!("expected a Shard error, got {e}"),
        Ok(_) => panic!("expected a Shard error, got a model"),
    }
}
