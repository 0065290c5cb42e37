//! Tensor-parallel Mixtral on the CPU: each rank is a thread holding its heads and its
//! share of every expert's intermediate features (all experts on every rank), with an
//! in-process communicator. Every rank must return the same logits, within 1e-4 of
//! transformers (as the golden tests: only the order of partial-sum additions differs).

mod common;
#[path = "common/thread_comm.rs"]
mod thread_comm;

use std::sync::Arc;

use common::*;
use nanovllm_kernels::CpuBackend;
use nanovllm_models::{load_model, LoadFormat, ModelConfig, ModelContext, ShardSpec};
use serde_json::Value;
use thread_comm::ThreadComm;

/// `(prompt, last_logits)` of every reference case.
fn reference_cases(fixture: &str) -> Vec<(Vec<u32>, Vec<f32>)> {
    let text = std::fs::read_to_string(fixture_dir(fixture).join("reference.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    let list = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let prompt = list(&c["prompt_token_ids"])
                .iter()
                .map(|&x| x as u32)
                .collect();
            let logits = list(&c["last_logits"]).iter().map(|&x| x as f32).collect();
            (prompt, logits)
        })
        .collect()
}

/// Loads `fixture` on `world_size` threads and prefills all prompts (packed) on each;
/// returns each rank's logits rows.
fn prefill_on_ranks(fixture: &str, world_size: usize, prompts: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let dir = fixture_dir(fixture);
    let config = ModelConfig::from_dir(&dir).unwrap();
    let block_size = 16;
    std::thread::scope(|s| {
        let handles: Vec<_> = ThreadComm::group(world_size)
            .into_iter()
            .map(|comm| {
                let (dir, config) = (&dir, &config);
                s.spawn(move || {
                    let ctx = ModelContext {
                        backend: Arc::new(CpuBackend::new()),
                        shard: ShardSpec {
                            rank: comm.rank,
                            world_size,
                        },
                        comm: Arc::new(comm),
                    };
                    let model = load_model(config, dir, LoadFormat::Safetensors, &ctx).unwrap();
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

#[test]
fn sharded_ranks_match_the_reference_on_fixtures() {
    // mixtral-tiny: 4 q / 2 kv heads, intermediate 96 → 2 ranks;
    // mixtral-tiny-bf16: 4 / 4 heads, intermediate 64 → 2 and 4 ranks.
    for (fixture, worlds) in [
        ("mixtral-tiny", &[2][..]),
        ("mixtral-tiny-bf16", &[2, 4][..]),
    ] {
        let cases = reference_cases(fixture);
        let prompts: Vec<Vec<u32>> = cases.iter().map(|(p, _)| p.clone()).collect();
        for &world_size in worlds {
            let ranks = prefill_on_ranks(fixture, world_size, &prompts);
            for (rank, rows) in ranks.iter().enumerate() {
                for ((_, reference), row) in cases.iter().zip(rows) {
                    let diff = max_abs_diff(row, reference);
                    assert!(
                        diff <= 1e-4,
                        "{fixture} world {world_size} rank {rank}: {diff:e}"
                    );
                }
                assert_eq!(
                    rows, &ranks[0],
                    "{fixture} world {world_size}: rank {rank} disagrees"
                );
            }
        }
    }
}
