//! Golden engine tests for Llama: greedy continuations of `llama-tiny` (bf16, tied, GQA
//! 8 q / 2 kv heads, `llama3` rope scaling) through `LLM` must equal transformers'
//! (scenarios in `common/mod.rs`), however the engine batches, chunks, caches, preempts or
//! shards the work; TP 4 replicates each KV head on two ranks.
//!
//! Every greedy step of the reference has a top-1/top-2 logit margin ≥ 9.6e-3
//! (`greedy_min_margin`), so a correct f32 engine cannot flip a token through rounding.

mod common;

use common::*;

const FIXTURES: [&str; 1] = ["llama-tiny"];
const TP_SIZES: [usize; 2] = [2, 4];

#[test]
fn fixtures_are_llama() {
    for fixture in FIXTURES {
        assert_eq!(reference(fixture).architecture, "LlamaForCausalLM");
    }
}

engine_scenarios!(FIXTURES, FIXTURES);

/// All cases in one batch at each of `TP_SIZES` (threads): transformers' tokens.
#[test]
fn tensor_parallel_engine_matches_reference() {
    for fixture in FIXTURES {
        check_tensor_parallel(fixture, &TP_SIZES);
    }
}
