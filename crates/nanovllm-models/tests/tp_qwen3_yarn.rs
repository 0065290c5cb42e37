//! Tensor-parallel Qwen3 with YaRN rope scaling on the CPU: each rank applies the same
//! scaled rotary embedding to its heads. Every rank must return the same logits, within
//! 1e-4 of transformers (as the golden tests: only the order of partial-sum additions
//! differs).
//!
//! `qwen3-yarn-tiny` has 4 q / 4 kv heads: 2 and 4 ranks split them evenly.

mod common;
#[path = "common/tp.rs"]
mod tp;

use tp::check_ranks_match_reference;

#[test]
fn two_and_four_ranks_match_the_reference() {
    for world_size in [2, 4] {
        check_ranks_match_reference("qwen3-yarn-tiny", world_size, 1e-4);
    }
}
