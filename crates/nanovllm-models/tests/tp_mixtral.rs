//! Tensor-parallel Mixtral on the CPU: each rank is a thread holding its heads and its
//! share of every expert's intermediate features (all experts on every rank), with an
//! in-process communicator. Every rank must return the same logits, within 1e-4 of
//! transformers (as the golden tests: only the order of partial-sum additions differs).

mod common;
#[path = "common/tp.rs"]
mod tp;

use tp::check_ranks_match_reference;

#[test]
fn sharded_ranks_match_the_reference_on_fixtures() {
    // mixtral-tiny: 4 q / 2 kv heads, intermediate 96 → 2 ranks, and 4 with each KV head
    // on two ranks; mixtral-tiny-bf16: 4 / 4 heads, intermediate 64 → 2 and 4 ranks.
    for (fixture, worlds) in [
        ("mixtral-tiny", &[2, 4][..]),
        ("mixtral-tiny-bf16", &[2, 4][..]),
    ] {
        for &world_size in worlds {
            check_ranks_match_reference(fixture, world_size, 1e-4);
        }
    }
}
