//! Golden engine tests for Llama: greedy continuations of `llama-tiny` (bf16, tied, GQA
//! 8 q / 2 kv heads, `llama3` rope scaling) through `LLM` must equal transformers'
//! (scenarios in `common/mod.rs`), however the engine batches, chunks, caches, preempts or
//! shards the work; TP 4 replicates each KV head on two ranks.
//!
//! Every greedy step of the reference has a top-1/top-2 logit margin ≥ 9.6e-3
//! (`greedy_min_margin`), so a correct f32 engine cannot flip a token through rounding.

mod common;

use common::*;
use nanovllm_core::tp::TpMode;
use nanovllm_core::EngineConfig;

const FIXTURES: [&str; 1] = ["llama-tiny"];
const TP_SIZES: [usize; 2] = [2, 4];

#[test]
fn fixtures_are_llama() {
    for fixture in FIXTURES {
        assert_eq!(reference(fixture).architecture, "LlamaForCausalLM");
    }
}

engine_scenarios!(FIXTURES, FIXTURES);

/// All cases in one batch through the engine at tensor parallelism `tp` (one thread per
/// rank): the tokens must be transformers'. Sharding changes only the order of the
/// partial-sum additions (logits within 1e-4), far below the references' margins.
#[test]
fn tensor_parallel_engine_matches_reference() {
    for fixture in FIXTURES {
        let r = reference(fixture);
        for tp in TP_SIZES {
            let mut config = EngineConfig {
                tensor_parallel_size: tp,
                ..test_config(fixture, r.block_size)
            };
            config.tp.mode = TpMode::Threads;
            config.tp.timeout_secs = 60;
            generate_and_check(&mut llm(config), &r.cases, &format!("{fixture} tp {tp}"));
        }
    }
}
