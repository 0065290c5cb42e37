//! Golden engine tests for Mistral: greedy continuations of `mistral-tiny` (f32, GQA
//! 8 q / 4 kv heads, `sliding_window` 80) through `LLM` must equal transformers'
//! (scenarios in `common/mod.rs`), however the engine batches, chunks, caches, preempts or
//! shards the work. Every case (prompt plus 24 tokens, at most 69) fits in the window, so
//! an engine that clamps `max_model_len` to it serves them all.
//!
//! Every greedy step of the reference has a top-1/top-2 logit margin ≥ 4.0e-3
//! (`greedy_min_margin`), so a correct f32 engine cannot flip a token through rounding.

mod common;

use common::*;

const FIXTURES: [&str; 1] = ["mistral-tiny"];
const TP_SIZES: [usize; 2] = [2, 4];

#[test]
fn fixtures_are_mistral() {
    for fixture in FIXTURES {
        assert_eq!(reference(fixture).architecture, "MistralForCausalLM");
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
