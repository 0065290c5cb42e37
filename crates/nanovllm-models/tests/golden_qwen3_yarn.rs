//! Golden tests: Qwen3 with YaRN rope scaling on the CPU backend against transformers' f32
//! outputs (`fixtures/qwen3-yarn-tiny/reference.json`, see `fixtures/README.md`); the
//! shared scenarios live in `common/golden.rs`.
//!
//! `qwen3-yarn-tiny` is bf16, untied, MHA 4 / 4 heads, head_dim 16, with
//! `rope_scaling: {rope_type: yarn, factor: 4, original_max_position_embeddings: 32}` in
//! the transformers-4 form (Qwen3's long-context recipe): all but the fastest frequency
//! pairs are interpolated and cos/sin are scaled by 0.1 ln 4 + 1 ≈ 1.139 (the reference's
//! `rope` section has transformers' `inv_freq` and `attention_scaling`). Cases run past the
//! 32 original positions.
//!
//! Tolerance: **1e-4 absolute** on logits (bf16 weights widen exactly to f32 and the
//! reference computes in f32, RoPE's frequencies in f32); greedy continuations token for
//! token (the reference's smallest top-1/top-2 margin is 3.0e-3).

mod common;

use common::golden::*;
use common::BlockPool;

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 1] = ["qwen3-yarn-tiny"];

#[test]
fn fixture_is_qwen3_with_yarn() {
    let g = golden("qwen3-yarn-tiny");
    assert_eq!(g.config.architecture, "Qwen3ForCausalLM");
    assert_eq!(g.reference["rope"]["rope_type"], "yarn");
}

golden_scenarios!(FIXTURES, TOL);

#[test]
fn greedy_decode_of_each_case_matches_reference() {
    for name in FIXTURES {
        check_greedy_alone(name, None, |blocks| BlockPool::shuffled(blocks, 29));
    }
}
