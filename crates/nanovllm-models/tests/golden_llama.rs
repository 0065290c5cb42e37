//! Golden tests: Llama on the CPU backend against transformers' f32 outputs
//! (`fixtures/llama-tiny/reference.json`, see `fixtures/README.md`); the shared scenarios
//! live in `common/golden.rs`.
//!
//! `llama-tiny` is bf16 with tied embeddings, GQA 8 q / 2 kv heads, an explicit head_dim 16
//! (≠ hidden / heads = 8) and `llama3` rope scaling (theta 500000, factor 8 over 64
//! original positions): with head_dim 16 its frequency pairs fall in all three bands
//! (kept, smoothed, divided by the factor), so plain RoPE, or one band wrong, moves every
//! logit by far more than the tolerance.
//!
//! Tolerance: **1e-4 absolute** on logits (bf16 weights widen exactly to f32 and the
//! reference computes in f32, RoPE's frequencies in f32). Greedy continuations match
//! token for token: the smallest top-1/top-2 margin of the reference is 9.6e-3.

mod common;

use common::golden::*;
use common::BlockPool;

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 1] = ["llama-tiny"];

#[test]
fn fixture_is_llama_with_llama3_rope_scaling() {
    let g = golden("llama-tiny");
    assert_eq!(g.config.architecture, "LlamaForCausalLM");
    assert_eq!(g.reference["rope"]["rope_type"], "llama3");
}

golden_scenarios!(FIXTURES, TOL);

/// Every case decoded greedily on its own, step by step across block boundaries; the
/// longest (`shared_b`, 69 tokens) runs past the 64 original positions.
#[test]
fn greedy_decode_of_each_case_matches_reference() {
    for name in FIXTURES {
        check_greedy_alone(name, None, |blocks| BlockPool::shuffled(blocks, 13));
    }
}
