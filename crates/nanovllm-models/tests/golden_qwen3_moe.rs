//! Golden tests: Qwen3-MoE on the CPU backend against transformers' f32 outputs
//! (`fixtures/qwen3-moe-tiny*/reference.json`, see `fixtures/README.md`); the shared
//! scenarios live in `common/golden.rs`.
//!
//! - `qwen3-moe-tiny`: f32, untied, 8 experts top-2 with `norm_topk_prob: false` (the
//!   routing weights are the raw softmax probabilities, not renormalised as Mixtral's),
//!   layers 0 and 2 sparse and layer 1 dense through `mlp_only_layers: [1]`,
//!   `moe_intermediate_size` 32 ≠ `intermediate_size` 96; transformers-5 config form.
//! - `qwen3-moe-tiny-bf16`: bf16, tied, 16 experts top-4 with `norm_topk_prob: true`,
//!   only layer 1 sparse through `decoder_sparse_step: 2`; transformers-4 config form
//!   (`num_experts`, as Qwen3-30B-A3B ships it, where transformers 5 writes
//!   `num_local_experts`).
//!
//! Tolerance: **1e-4 absolute** on logits for both (bf16 weights widen exactly to f32 and
//! the reference computes in f32); greedy continuations token for token (the references'
//! smallest top-1/top-2 margin is 1.8e-3; the smallest gap between the k-th and (k+1)-th
//! router probability in `routing` is 5.4e-3, so expert choices are decisive too).

mod common;

use common::golden::*;
use common::BlockPool;

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 2] = ["qwen3-moe-tiny", "qwen3-moe-tiny-bf16"];

#[test]
fn fixtures_are_qwen3_moe() {
    for (name, experts, top_k) in [("qwen3-moe-tiny", 8, 2), ("qwen3-moe-tiny-bf16", 16, 4)] {
        let g = golden(name);
        assert_eq!(g.config.architecture, "Qwen3MoeForCausalLM", "{name}");
        assert_eq!(g.config.num_local_experts, experts, "{name}");
        assert_eq!(g.config.num_experts_per_tok, top_k, "{name}");
    }
}

// Packed prefill matters most here: the MoE groups tokens of different sequences by
// expert, which must not mix their results.
golden_scenarios!(FIXTURES, TOL);

/// Every case decoded greedily on its own (single-token decode: each step routes one
/// token to its top-k experts only).
#[test]
fn greedy_decode_of_each_case_matches_reference() {
    for name in FIXTURES {
        check_greedy_alone(name, None, |blocks| BlockPool::shuffled(blocks, 23));
    }
}
