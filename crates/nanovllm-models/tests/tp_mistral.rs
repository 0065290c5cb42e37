//! Tensor-parallel Mistral on the CPU: each rank is a thread holding its heads, with an
//! in-process communicator. Every rank must return the same logits, within 1e-4 of
//! transformers (as the golden tests: only the order of partial-sum additions differs).
//!
//! `mistral-tiny` has 8 q / 4 kv heads: 2 and 4 ranks split the KV heads evenly.

mod common;
#[path = "common/tp.rs"]
mod tp;

use tp::check_ranks_match_reference;

#[test]
fn two_and_four_ranks_match_the_reference() {
    for world_size in [2, 4] {
        check_ranks_match_reference("mistral-tiny", world_size, 1e-4);
    }
}
