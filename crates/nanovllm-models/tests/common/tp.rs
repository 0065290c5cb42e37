//! Tensor-parallel test harness: loads a model on `world_size` threads (one
//! [`ThreadCommunicator`] rank each) and prefills prompts, packed, over shuffled blocks; and the
//! fixture check every architecture shares (each rank within `tol` of transformers, all
//! ranks bit-identical, since `ThreadCommunicator` reduces in rank order).
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::sync::Arc;

use nanovllm_kernels::{Communicator, CpuBackend, ThreadCommunicator};
use nanovllm_models::{
    load_model, LoadFormat, ModelConfig, ModelContext, ShardSpec, WeightQuantization,
};

use crate::common::golden::{floats, ids};
use crate::common::*;

/// Loads the model on `world_size` threads and prefills `prompts` (packed) on each;
/// returns each rank's logits rows. Each rank must hold `1 / world_size` of the KV heads, or
/// one when they are replicated.
pub fn run_tp(
    config: &ModelConfig,
    dir: &Path,
    format: LoadFormat,
    world_size: usize,
    prompts: &[Vec<u32>],
) -> Vec<Vec<Vec<f32>>> {
    run_tp_quantized(config, dir, format, world_size, prompts, None)
}

/// [`run_tp`] with the linear weights quantized while loading.
pub fn run_tp_quantized(
    config: &ModelConfig,
    dir: &Path,
    format: LoadFormat,
    world_size: usize,
    prompts: &[Vec<u32>],
    quantization: Option<WeightQuantization>,
) -> Vec<Vec<Vec<f32>>> {
    let block_size = 16;
    std::thread::scope(|s| {
        let handles: Vec<_> = ThreadCommunicator::group(world_size)
            .into_iter()
            .map(|comm| {
                s.spawn(move || {
                    let ctx = ModelContext {
                        backend: Arc::new(CpuBackend::new()),
                        shard: ShardSpec {
                            rank: comm.rank(),
                            world_size,
                        },
                        quantization,
                        comm: Arc::new(comm),
                    };
                    let model = load_model(config, dir, format, &ctx).unwrap();
                    let spec = model.kv_cache_spec();
                    // Split evenly, or one KV head replicated on world / kv_heads ranks.
                    let kv_heads = config.num_key_value_heads;
                    let expected = if world_size > kv_heads {
                        1
                    } else {
                        kv_heads / world_size
                    };
                    assert_eq!(spec.num_kv_heads, expected);
                    let blocks: Vec<usize> = prompts
                        .iter()
                        .map(|p| p.len().div_ceil(block_size))
                        .collect();
                    let total = blocks.iter().sum();
                    let mut cache =
                        new_cache(ctx.backend.as_ref(), model.as_ref(), total, block_size);
                    let mut pool = BlockPool::shuffled(total, 5);
                    let tables: Vec<Vec<u32>> = blocks.iter().map(|&n| pool.take(n)).collect();
                    let steps: Vec<SeqStep> = prompts
                        .iter()
                        .zip(&tables)
                        .map(|(p, t)| SeqStep::prefill(t, p))
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

/// `(prompt, last_logits)` of every reference case of `fixture`.
pub fn reference_cases(fixture: &str) -> Vec<(Vec<u32>, Vec<f32>)> {
    let text = std::fs::read_to_string(fixture_dir(fixture).join("reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (ids(&c["prompt_token_ids"]), floats(&c["last_logits"])))
        .collect()
}

/// `fixture` prefilled on `world_size` ranks: every rank's logits within `tol` of the
/// reference, and every rank's equal to rank 0's.
pub fn check_ranks_match_reference(fixture: &str, world_size: usize, tol: f32) {
    let dir = fixture_dir(fixture);
    let config = ModelConfig::from_dir(&dir).unwrap();
    let cases = reference_cases(fixture);
    let prompts: Vec<Vec<u32>> = cases.iter().map(|(p, _)| p.clone()).collect();
    let ranks = run_tp(&config, &dir, LoadFormat::Safetensors, world_size, &prompts);
    for (rank, rows) in ranks.iter().enumerate() {
        for ((_, reference), row) in cases.iter().zip(rows) {
            let diff = max_abs_diff(row, reference);
            assert!(
                diff <= tol,
                "{fixture} world {world_size} rank {rank}: {diff:e}"
            );
        }
        assert_eq!(
            rows, &ranks[0],
            "{fixture} world {world_size}: rank {rank} disagrees"
        );
    }
}
