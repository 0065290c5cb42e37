//! Tensor-parallel Llama on the CPU: each rank is a thread holding its heads, with an
//! in-process communicator. Every rank must return the same logits, within 1e-4 of
//! transformers (as the golden tests: only the order of partial-sum additions differs).
//!
//! `llama-tiny` has 8 q / 2 kv heads: at TP 2 each rank holds one KV head; at TP 4 each KV
//! head is **replicated** on two ranks (each rank holds 2 q heads and a copy of their KV
//! head), as vLLM shards a model with fewer KV heads than ranks.

mod common;
#[path = "common/tp.rs"]
mod tp;

use tp::check_ranks_match_reference;

#[test]
fn two_ranks_match_the_reference() {
    check_ranks_match_reference("llama-tiny", 2, 1e-4);
}

#[test]
fn four_ranks_with_replicated_kv_heads_match_the_reference() {
    check_ranks_match_reference("llama-tiny", 4, 1e-4);
}
