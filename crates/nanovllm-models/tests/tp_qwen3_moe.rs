//! Tensor-parallel Qwen3-MoE on the CPU: each rank is a thread holding its heads, its
//! share of the dense layers' features and of every expert's intermediate features (all
//! experts on every rank), with an in-process communicator. Every rank must return the same
//! logits, within 1e-4 of transformers (as the golden tests: only the order of partial-sum
//! additions differs).
//!
//! Both fixtures have 4 q / 2 kv heads: at TP 4 each KV head is **replicated** on two
//! ranks. `qwen3-moe-tiny`: intermediate 96, moe_intermediate 32 (24 and 8 per rank at
//! TP 4); `qwen3-moe-tiny-bf16`: 64 and 16 (16 and 4 per rank at TP 4).

mod common;
#[path = "common/tp.rs"]
mod tp;

use tp::check_ranks_match_reference;

#[test]
fn two_ranks_match_the_reference() {
    for fixture in ["qwen3-moe-tiny", "qwen3-moe-tiny-bf16"] {
        check_ranks_match_reference(fixture, 2, 1e-4);
    }
}

#[test]
fn four_ranks_with_replicated_kv_heads_match_the_reference() {
    for fixture in ["qwen3-moe-tiny", "qwen3-moe-tiny-bf16"] {
        check_ranks_match_reference(fixture, 4, 1e-4);
    }
}
