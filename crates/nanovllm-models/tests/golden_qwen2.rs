//! Golden tests: Qwen2 (Qwen2.5) on the CPU backend against transformers' f32 outputs
//! (`fixtures/qwen2-tiny/reference.json`, see `fixtures/README.md`); the shared scenarios
//! live in `common/golden.rs`.
//!
//! `qwen2-tiny` is f32, untied, MQA (4 q heads, 1 kv head), head_dim 16 implied by
//! hidden / heads, with **random non-zero q/k/v biases** (a loader that drops them, or a
//! Qwen3-shaped one, is off by far more than the tolerance) and no q/k norm. Its config is
//! in the transformers-4 form and, like Qwen2.5's, carries `sliding_window: 32` with
//! `use_sliding_window: false`: transformers ignores the window, so cases longer than 32
//! tokens must attend to everything.
//!
//! Tolerance: **1e-4 absolute** on logits; greedy continuations token for token (the
//! reference's smallest top-1/top-2 margin is 2.3e-2).

mod common;

use common::golden::*;
use common::BlockPool;

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 1] = ["qwen2-tiny"];

#[test]
fn fixture_is_qwen2_with_one_kv_head() {
    let g = golden("qwen2-tiny");
    assert_eq!(g.config.architecture, "Qwen2ForCausalLM");
    assert_eq!(g.config.num_key_value_heads, 1);
    assert_eq!(g.config.head_dim, 16);
}

golden_scenarios!(FIXTURES, TOL);

/// Every case decoded greedily on its own; most run past the ignored 32-token window.
#[test]
fn greedy_decode_of_each_case_matches_reference() {
    for name in FIXTURES {
        check_greedy_alone(name, None, |blocks| BlockPool::shuffled(blocks, 17));
    }
}
