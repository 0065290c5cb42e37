//! Golden engine tests for Qwen2: greedy continuations of `qwen2-tiny` (f32, q/k/v
//! biases, MQA with one KV head, a `sliding_window` that `use_sliding_window: false` turns
//! off) through `LLM` must equal transformers' (scenarios in `common/mod.rs`), however the
//! engine batches, chunks, caches, preempts or shards the work; at TP 2 and 4 the one KV
//! head is replicated on every rank.
//!
//! Every greedy step of the reference has a top-1/top-2 logit margin ≥ 2.3e-2
//! (`greedy_min_margin`), so a correct f32 engine cannot flip a token through rounding.

mod common;

use common::*;

const FIXTURES: [&str; 1] = ["qwen2-tiny"];
const TP_SIZES: [usize; 2] = [2, 4];

#[test]
fn fixtures_are_qwen2() {
    for fixture in FIXTURES {
        assert_eq!(reference(fixture).architecture, "Qwen2ForCausalLM");
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
