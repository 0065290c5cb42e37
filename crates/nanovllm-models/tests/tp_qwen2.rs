//! Tensor-parallel Qwen2 on the CPU: each rank is a thread holding its heads and its
//! share of the q/k/v biases, with an in-process communicator. Every rank must return the
//! same logits, within 1e-4 of transformers (as the golden tests: only the order of
//! partial-sum additions differs).
//!
//! `qwen2-tiny` is MQA (4 q heads, **1 kv head**): at TP 2 and TP 4 the one KV head (and
//! its k/v biases) is replicated on every rank, as vLLM shards a model with fewer KV heads
//! than ranks.

mod common;
#[path = "common/tp.rs"]
mod tp;

use tp::check_ranks_match_reference;

#[test]
fn two_ranks_with_a_replicated_kv_head_match_the_reference() {
    check_ranks_match_reference("qwen2-tiny", 2, 1e-4);
}

#[test]
fn four_ranks_with_a_replicated_kv_head_match_the_reference() {
    check_ranks_match_reference("qwen2-tiny", 4, 1e-4);
}
