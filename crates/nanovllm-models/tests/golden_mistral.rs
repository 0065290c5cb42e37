//! Golden tests: Mistral on the CPU backend against transformers' f32 outputs
//! (`fixtures/mistral-tiny/reference.json`, see `fixtures/README.md`); the shared
//! scenarios live in `common/golden.rs`.
//!
//! `mistral-tiny` is f32, untied, GQA 8 q / 4 kv heads, an explicit head_dim 16 (≠ hidden
//! / heads = 8, as in Mistral-Nemo), with
//! `sliding_window: 80`, longer than every reference sequence (prompt plus greedy tokens,
//! at most 69), so windowed and full attention agree on all of them and an engine that
//! clamps `max_model_len` to the window still serves every case.
//!
//! Tolerance: **1e-4 absolute** on logits; greedy continuations token for token (the
//! reference's smallest top-1/top-2 margin is 4.0e-3).

mod common;

use common::golden::*;
use common::{fixture_dir, BlockPool};

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 1] = ["mistral-tiny"];

/// The premise of every test here: each case fits in the window.
#[test]
fn fixture_is_mistral_and_every_case_fits_the_window() {
    let g = golden("mistral-tiny");
    assert_eq!(g.config.architecture, "MistralForCausalLM");
    let text = std::fs::read_to_string(fixture_dir("mistral-tiny").join("config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let window = config["sliding_window"].as_u64().unwrap() as usize;
    for case in &g.cases {
        let total = case.prompt.len() + case.greedy.len();
        assert!(
            total <= window,
            "{}: {total} tokens > window {window}",
            case.name
        );
    }
}

golden_scenarios!(FIXTURES, TOL);

#[test]
fn greedy_decode_of_each_case_matches_reference() {
    for name in FIXTURES {
        check_greedy_alone(name, None, |blocks| BlockPool::shuffled(blocks, 19));
    }
}
