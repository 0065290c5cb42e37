//! Golden engine tests for Qwen3 with YaRN rope scaling: greedy continuations of
//! `qwen3-yarn-tiny` (bf16, MHA 4 / 4 heads, `rope_scaling` yarn ×4 over 32 original
//! positions, transformers-4 form) through `LLM` must equal transformers' (scenarios in
//! `common/mod.rs`), however the engine batches, chunks, caches, preempts or shards the
//! work.
//!
//! Every greedy step of the reference has a top-1/top-2 logit margin ≥ 3.0e-3
//! (`greedy_min_margin`), so a correct f32 engine cannot flip a token through rounding.

mod common;

use common::*;

const FIXTURES: [&str; 1] = ["qwen3-yarn-tiny"];
const TP_SIZES: [usize; 2] = [2, 4];

#[test]
fn fixtures_are_qwen3_yarn() {
    for fixture in FIXTURES {
        assert_eq!(reference(fixture).architecture, "Qwen3ForCausalLM");
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
