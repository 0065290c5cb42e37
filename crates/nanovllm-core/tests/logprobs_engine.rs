//! Logprobs through the whole engine on the `qwen3-tiny` fixture: the logprob of
//! the first generated token must equal the log-softmax of transformers' logits
//! at the last prompt position (`last_logits` in reference.json), and only the
//! requests that ask get logprobs.
//!
//! Tolerance: the engine's f32 logits are within ~1e-4 of torch's, and
//! log-softmax moves an error in the logits by at most twice as much, so 1e-3.

use std::path::{Path, PathBuf};

use nanovllm_core::{DeviceKind, EngineConfig, KvCacheDType, LLMEngine, SamplingParams};
use serde_json::Value;

const TOLERANCE: f64 = 1e-3;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny")
}

fn engine() -> LLMEngine {
    let config = EngineConfig {
        device: DeviceKind::Cpu,
        kvcache_block_size: 16,
        num_kvcache_blocks: Some(64),
        // Pinned: the references are f32 math, and the CPU's default KV cache is bf16.
        kv_cache_dtype: KvCacheDType::F32,
        ..EngineConfig::new(fixture_dir())
    };
    LLMEngine::new(config).expect("qwen3-tiny loads")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Naive log-softmax in f64.
fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
    logits.iter().map(|l| l - max - z.ln()).collect()
}

#[test]
fn first_token_logprobs_match_transformers_logits() {
    let text = std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let mut engine = engine();
    let mut checked = 0;
    for case in reference["cases"].as_array().unwrap() {
        let prompt: Vec<u32> = case["prompt_token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let expected = log_softmax(&floats(&case["last_logits"]));
        let id = engine
            .add_request_with_logprobs(prompt, SamplingParams::greedy(3), Some(4))
            .unwrap();
        let mut per_token = Vec::new();
        while engine.has_unfinished() {
            let out = engine.step().unwrap();
            for (rid, lp) in out.logprobs {
                assert_eq!(rid, id);
                per_token.push(lp);
            }
        }
        assert_eq!(per_token.len(), 3, "one entry per generated token");
        let first = &per_token[0];
        let greedy = case["greedy_token_ids"][0].as_u64().unwrap() as u32;
        assert_eq!(first.token_id, greedy);
        assert!((first.logprob as f64 - expected[greedy as usize]).abs() < TOLERANCE);
        assert_eq!(first.top.len(), 4);
        // Top-4 ids equal the reference's 4 largest logits (the fixture's greedy
        // margins are > 1e-3, the top ranks beyond the first are compared by value).
        let top_ids: Vec<u64> = case["last_logits_top"]["ids"].as_array().unwrap()[..4]
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        for (t, want_id) in first.top.iter().zip(&top_ids) {
            assert!(
                (t.logprob as f64 - expected[*want_id as usize]).abs() < TOLERANCE,
                "case {}: top {} ({}) vs reference id {want_id} ({})",
                case["name"],
                t.token_id,
                t.logprob,
                expected[*want_id as usize]
            );
        }
        // Greedy picks the most likely token: its logprob is the top one.
        for lp in &per_token {
            assert_eq!(lp.top[0].token_id, lp.token_id);
            assert_eq!(lp.top[0].logprob, lp.logprob);
        }
        checked += 1;
    }
    assert!(checked >= 5);
}

#[test]
fn only_requests_that_ask_get_logprobs() {
    let mut engine = engine();
    let plain = engine
        .add_request(vec![5u32, 6, 7], SamplingParams::greedy(4))
        .unwrap();
    let asking = engine
        .add_request_with_logprobs(vec![8u32, 9], SamplingParams::greedy(4), Some(0))
        .unwrap();
    let mut tokens_of_asking = 0;
    let mut logprobs_of_asking = 0;
    while engine.has_unfinished() {
        let out = engine.step().unwrap();
        tokens_of_asking += out.new_tokens.iter().filter(|(r, _)| *r == asking).count();
        for (rid, lp) in &out.logprobs {
            assert_ne!(*rid, plain);
            assert!(lp.top.is_empty());
            assert!(lp.logprob <= 0.0);
            logprobs_of_asking += 1;
        }
    }
    assert_eq!(tokens_of_asking, 4);
    assert_eq!(logprobs_of_asking, 4);
}
