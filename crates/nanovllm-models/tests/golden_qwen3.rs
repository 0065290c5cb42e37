//! Golden tests: Qwen3 on the CPU backend against transformers' f32 outputs
//! (`fixtures/<name>/reference.json`, see `fixtures/README.md`); the shared scenarios
//! live in `common/golden.rs`.
//!
//! Tolerance: **1e-4 absolute** on logits, for f32 and bf16 checkpoints alike
//! (bf16 weights widen exactly to f32 and the reference computes in f32).
//! Greedy continuations must match token for token: the reference's smallest
//! top-1/top-2 margin is > 1e-3, ten times the tolerance.

mod common;

use common::golden::*;
use common::BlockPool;

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 3] = ["qwen3-tiny", "qwen3-tiny-bf16", "qwen3-tiny-fullvocab"];

golden_scenarios!(FIXTURES, TOL);

/// Greedy decoding of one case, step by step, feeding back the argmax.
#[test]
fn greedy_decode_of_one_case_matches_reference() {
    for name in FIXTURES {
        check_greedy_alone(name, Some(&["len17"]), BlockPool::identity);
    }
}

/// The full-vocab fixture's `text_cases` (real Qwen3 tokenizer ids): greedy tokens match.
#[test]
fn fullvocab_text_cases_greedy_match_reference() {
    let backend = backend();
    let g = golden("qwen3-tiny-fullvocab");
    let cases = g.reference["text_cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let prompt = ids(&case["prompt_token_ids"]);
        let expected = ids(&case["greedy_token_ids"]);
        let blocks = g.blocks_for(prompt.len() + expected.len());
        let table = BlockPool::shuffled(blocks, 1).take(blocks);
        let generated = g.greedy_alone(backend.as_ref(), &table, &prompt, expected.len());
        assert_eq!(generated, expected, "prompt {:?}", case["prompt"]);
    }
}
