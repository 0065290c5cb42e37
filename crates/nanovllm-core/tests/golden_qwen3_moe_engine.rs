//! Golden engine tests for Qwen3-MoE: greedy continuations of `qwen3-moe-tiny` (f32,
//! 8 experts top-2, `norm_topk_prob: false`, dense layer 1 through `mlp_only_layers`) and
//! `qwen3-moe-tiny-bf16` (16 experts top-4, `norm_topk_prob: true`, sparse layer 1 only
//! through `decoder_sparse_step: 2`) through `LLM` must equal transformers' (scenarios in
//! `common/mod.rs`), however the engine batches, chunks, caches, preempts or shards the
//! work; TP 4 replicates each of the 2 KV heads on two ranks.
//!
//! Every greedy step of the references has a top-1/top-2 logit margin ≥ 1.8e-3
//! (`greedy_min_margin`), so a correct f32 engine cannot flip a token through rounding.

mod common;

use common::*;

const FIXTURES: [&str; 2] = ["qwen3-moe-tiny", "qwen3-moe-tiny-bf16"];
const TP_SIZES: [usize; 2] = [2, 4];

#[test]
fn fixtures_are_qwen3_moe() {
    for fixture in FIXTURES {
        assert_eq!(reference(fixture).architecture, "Qwen3MoeForCausalLM");
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
