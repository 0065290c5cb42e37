//! Prompt logprobs (`SamplingParams::prompt_logprobs`) through the whole engine on the
//! `qwen3-tiny` fixture.
//!
//! - Against transformers: a case's prompt followed by one more token `t` scores `t` at
//!   the case's last position, whose logits reference.json holds (`last_logits`): the
//!   entry must equal their f64 log-softmax at `t`, and its top 5 the reference's top 5.
//!   Tolerance 1e-3, as in `logprobs_engine.rs`: the engine's f32 logits are within ~1e-4
//!   of torch's and log-softmax at most doubles an error in the logits.
//! - Every position against the engine's own single-chunk run: chunked prefill (chunks of
//!   16 and 7 tokens), a warm prefix cache (the request must not read it), preemption
//!   (nothing duplicated or dropped), and a tensor-parallel size of 2 (threads). Tolerance
//!   1e-4: the same math, reduced in a different order (chunk and batch shapes, the
//!   all-reduce), moves a logit by ~1e-6.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nanovllm_core::tp::TpMode;
use nanovllm_core::{
    DeviceKind, EngineConfig, KvCacheDType, LLMEngine, RequestOutput, SamplingParams,
    TokenLogprobs, LLM,
};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny")
}

fn config() -> EngineConfig {
    EngineConfig {
        device: DeviceKind::Cpu,
        kvcache_block_size: 16,
        num_kvcache_blocks: Some(64),
        // Pinned: the references are f32 math, and the CPU's default KV cache is bf16.
        kv_cache_dtype: KvCacheDType::F32,
        ..EngineConfig::new(fixture_dir())
    }
}

fn asking(n: usize, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        prompt_logprobs: Some(n),
        ignore_eos: true,
        ..SamplingParams::greedy(max_tokens)
    }
}

type Entries = Vec<Option<TokenLogprobs>>;

/// Runs every `(prompt, params)` in one engine to completion; returns each request's
/// output and the prompt logprobs its step outputs gave (checked to come exactly once,
/// before or with its first token).
fn run(
    engine: &mut LLMEngine,
    requests: &[(Vec<u32>, SamplingParams)],
) -> Vec<(RequestOutput, Option<Entries>)> {
    let ids: Vec<u64> = requests
        .iter()
        .map(|(p, params)| engine.add_request(p.clone(), params.clone()).unwrap())
        .collect();
    let mut given: HashMap<u64, Entries> = HashMap::new();
    let mut tokens: HashMap<u64, usize> = HashMap::new();
    let mut finished: HashMap<u64, RequestOutput> = HashMap::new();
    while engine.has_unfinished() {
        let out = engine.step().unwrap();
        for (id, entries) in out.prompt_logprobs {
            assert_eq!(
                tokens.get(&id).copied().unwrap_or(0),
                0,
                "given after a token"
            );
            assert!(
                given.insert(id, entries).is_none(),
                "request {id}: given twice"
            );
        }
        for (id, _) in out.new_tokens {
            *tokens.entry(id).or_default() += 1;
        }
        for f in out.finished {
            finished.insert(f.request_id, f);
        }
    }
    ids.iter()
        .map(|id| (finished.remove(id).unwrap(), given.remove(id)))
        .collect()
}

/// A reference.json case: name, prompt, logits at its last position, their top ids.
type Case = (String, Vec<u32>, Vec<f64>, Vec<u32>);

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let logits: Vec<f64> = case["last_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            (
                case["name"].as_str().unwrap().to_string(),
                ids(&case["prompt_token_ids"]),
                logits,
                ids(&case["last_logits_top"]["ids"]),
            )
        })
        .collect()
}

fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
    logits.iter().map(|l| l - max - z.ln()).collect()
}

/// Checks the shape every prompt logprobs answer has: one entry per prompt token, the
/// first `None`, each other the prompt token at its position with `n` alternatives.
fn check_shape(prompt: &[u32], entries: &Entries, n: usize) {
    assert_eq!(entries.len(), prompt.len());
    assert!(entries[0].is_none(), "position 0 has no logprob");
    for (i, e) in entries.iter().enumerate().skip(1) {
        let e = e
            .as_ref()
            .unwrap_or_else(|| panic!("position {i} has no entry"));
        assert_eq!(e.token_id, prompt[i], "position {i}");
        assert!(
            e.logprob <= 0.0 && e.logprob.is_finite(),
            "position {i}: {}",
            e.logprob
        );
        assert_eq!(e.top.len(), n, "position {i}");
        for w in e.top.windows(2) {
            assert!(w[0].logprob >= w[1].logprob, "position {i}: top not sorted");
        }
        if let Some(best) = e.top.first() {
            assert!(
                best.logprob >= e.logprob,
                "position {i}: the top is below the token"
            );
        }
    }
}

fn assert_close(what: &str, a: &Entries, b: &Entries, tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        match (x, y) {
            (None, None) => {}
            (Some(x), Some(y)) => {
                assert_eq!(x.token_id, y.token_id, "{what}: position {i}");
                assert!(
                    (x.logprob - y.logprob).abs() <= tol,
                    "{what}: position {i}: {} vs {}",
                    x.logprob,
                    y.logprob
                );
                assert_eq!(x.top.len(), y.top.len(), "{what}: position {i}");
                for t in &x.top {
                    if let Some(u) = y.top.iter().find(|u| u.token_id == t.token_id) {
                        assert!((t.logprob - u.logprob).abs() <= tol, "{what}: position {i}");
                    }
                }
            }
            _ => panic!("{what}: position {i}: {x:?} vs {y:?}"),
        }
    }
}

#[test]
fn prompt_logprobs_match_transformers_logits() {
    let mut engine = LLMEngine::new(config()).unwrap();
    let mut checked = 0;
    for (name, prompt, last_logits, top_ids) in cases() {
        let expected = log_softmax(&last_logits);
        // The scored token: the reference's fifth most likely, so that it is not the top.
        let scored = top_ids[4];
        let mut extended = prompt.clone();
        extended.push(scored);
        let out = run(&mut engine, &[(extended.clone(), asking(5, 2))]);
        let (output, given) = &out[0];
        let entries = output.prompt_logprobs.as_ref().expect("asked");
        assert_eq!(
            given.as_ref(),
            Some(entries),
            "{name}: step output = request output"
        );
        check_shape(&extended, entries, 5);
        let last = entries[prompt.len()].as_ref().unwrap();
        assert!(
            (last.logprob as f64 - expected[scored as usize]).abs() < 1e-3,
            "{name}: {} vs {}",
            last.logprob,
            expected[scored as usize]
        );
        for (t, &want) in last.top.iter().zip(&top_ids) {
            assert!(
                (t.logprob as f64 - expected[want as usize]).abs() < 1e-3,
                "{name}: top {} ({}) vs reference {want} ({})",
                t.token_id,
                t.logprob,
                expected[want as usize]
            );
        }
        assert_eq!(last.top[4].token_id, scored, "{name}");
        checked += 1;
    }
    assert!(checked >= 5);
}

/// The library API: `LLM::generate`'s outputs carry the prompt logprobs.
#[test]
fn llm_generate_outputs_carry_prompt_logprobs() {
    let prompt = long_prompt();
    let single = run(
        &mut LLMEngine::new(config()).unwrap(),
        &[(prompt.clone(), asking(2, 1))],
    );
    let mut llm = LLM::new(config()).unwrap();
    let outputs = llm
        .generate(
            vec![prompt.clone(), vec![1, 2, 3]],
            vec![asking(2, 1), SamplingParams::greedy(1)],
        )
        .unwrap();
    assert_eq!(outputs[0].prompt_logprobs, single[0].0.prompt_logprobs);
    assert_eq!(outputs[1].prompt_logprobs, None);
}

#[test]
fn one_token_prompts_and_requests_that_do_not_ask() {
    let mut engine = LLMEngine::new(config()).unwrap();
    let out = run(
        &mut engine,
        &[
            (vec![407], asking(3, 2)),
            (vec![5, 6, 7], SamplingParams::greedy(2)),
            (vec![8, 9, 10], asking(0, 1)),
        ],
    );
    assert_eq!(out[0].0.prompt_logprobs, Some(vec![None]));
    assert_eq!(out[0].1, Some(vec![None]));
    assert_eq!(out[1].0.prompt_logprobs, None);
    assert_eq!(out[1].1, None);
    check_shape(&[8, 9, 10], out[2].0.prompt_logprobs.as_ref().unwrap(), 0);
    // More than MAX_NUM_LOGPROBS is refused when added.
    assert!(engine.add_request(vec![1, 2], asking(21, 1)).is_err());
}

/// A 61-token prompt (the `len40` case and more), scored with 4 alternatives.
fn long_prompt() -> Vec<u32> {
    let mut prompt = cases().into_iter().find(|c| c.0 == "len40").unwrap().1;
    prompt.extend((0..21u32).map(|i| (i * 37 + 11) % 512));
    prompt
}

#[test]
fn chunked_prefill_and_a_warm_prefix_cache_give_the_same_prompt_logprobs() {
    let prompt = long_prompt();
    let single = run(
        &mut LLMEngine::new(config()).unwrap(),
        &[(prompt.clone(), asking(4, 3))],
    );
    let reference = single[0].0.prompt_logprobs.clone().unwrap();
    check_shape(&prompt, &reference, 4);
    for max_num_batched_tokens in [16, 7] {
        let mut engine = LLMEngine::new(EngineConfig {
            max_num_batched_tokens,
            ..config()
        })
        .unwrap();
        let out = run(&mut engine, &[(prompt.clone(), asking(4, 3))]);
        let what = format!("chunks of {max_num_batched_tokens}");
        assert_close(
            &what,
            out[0].0.prompt_logprobs.as_ref().unwrap(),
            &reference,
            1e-4,
        );
        assert_eq!(out[0].0.token_ids, single[0].0.token_ids, "{what}");
    }
    // Warm the cache with the same prompt, then ask: nothing may come from the cache.
    let mut engine = LLMEngine::new(config()).unwrap();
    let warm = run(&mut engine, &[(prompt.clone(), SamplingParams::greedy(1))]);
    assert_eq!(warm[0].0.num_cached_tokens, 0);
    let out = run(&mut engine, &[(prompt.clone(), asking(4, 3))]);
    assert_eq!(
        out[0].0.num_cached_tokens, 0,
        "prompt logprobs read no prefix cache"
    );
    assert_close(
        "warm cache",
        out[0].0.prompt_logprobs.as_ref().unwrap(),
        &reference,
        1e-4,
    );
    // Its blocks were published: a request that does not ask hits them.
    let again = run(&mut engine, &[(prompt.clone(), SamplingParams::greedy(1))]);
    assert!(
        again[0].0.num_cached_tokens >= 48,
        "{}",
        again[0].0.num_cached_tokens
    );
}

#[test]
fn preemption_neither_duplicates_nor_drops_entries() {
    let prompts: Vec<Vec<u32>> = (0..4u32)
        .map(|s| (0..20u32).map(|i| (i * 13 + s * 101 + 1) % 512).collect())
        .collect();
    let requests: Vec<(Vec<u32>, SamplingParams)> =
        prompts.iter().map(|p| (p.clone(), asking(2, 40))).collect();
    // Each request grows to 59 tokens (4 blocks of 16); 8 blocks hold two at a time.
    let mut small = LLMEngine::new(EngineConfig {
        num_kvcache_blocks: Some(8),
        ..config()
    })
    .unwrap();
    let preempted = run(&mut small, &requests);
    assert!(
        small.stats().num_preemptions > 0,
        "an 8-block cache must preempt"
    );
    let alone: Vec<Entries> = prompts
        .iter()
        .map(|p| {
            let out = run(
                &mut LLMEngine::new(config()).unwrap(),
                &[(p.clone(), asking(2, 1))],
            );
            out[0].0.prompt_logprobs.clone().unwrap()
        })
        .collect();
    for (k, ((out, given), want)) in preempted.iter().zip(&alone).enumerate() {
        let entries = out.prompt_logprobs.as_ref().unwrap();
        check_shape(&prompts[k], entries, 2);
        assert_eq!(given.as_ref(), Some(entries));
        assert_close(&format!("request {k}"), entries, want, 1e-4);
    }
}

#[test]
fn tensor_parallel_prompt_logprobs_match_a_single_rank() {
    let prompt = long_prompt();
    let single = run(
        &mut LLMEngine::new(config()).unwrap(),
        &[(prompt.clone(), asking(3, 2))],
    );
    let mut config = EngineConfig {
        tensor_parallel_size: 2,
        max_num_batched_tokens: 16,
        ..config()
    };
    config.tp.mode = TpMode::Threads;
    let mut tp = LLMEngine::new(config).unwrap();
    let out = run(
        &mut tp,
        &[
            (prompt.clone(), asking(3, 2)),
            (vec![3; 9], SamplingParams::greedy(2)),
        ],
    );
    assert_close(
        "TP 2",
        out[0].0.prompt_logprobs.as_ref().unwrap(),
        single[0].0.prompt_logprobs.as_ref().unwrap(),
        1e-4,
    );
}

/// Two 300-token prompts in one step: 598 prompt rows, more than one scoring pass
/// (`PROMPT_LOGITS_ROWS_PER_PASS`), each entry as when the prompt runs alone.
#[test]
fn prompt_rows_beyond_one_pass_are_scored_in_several() {
    const { assert!(2 * 299 > nanovllm_core::PROMPT_LOGITS_ROWS_PER_PASS) };
    let prompts: Vec<Vec<u32>> = (0..2u32)
        .map(|s| (0..300u32).map(|i| (i * 29 + s * 7 + 5) % 512).collect())
        .collect();
    let requests: Vec<(Vec<u32>, SamplingParams)> =
        prompts.iter().map(|p| (p.clone(), asking(1, 1))).collect();
    let mut engine = LLMEngine::new(config()).unwrap();
    let together = run(&mut engine, &requests);
    assert_eq!(engine.stats().num_steps, 1, "both prompts in one step");
    for (k, p) in prompts.iter().enumerate() {
        let alone = run(
            &mut LLMEngine::new(config()).unwrap(),
            &[(p.clone(), asking(1, 1))],
        );
        let entries = together[k].0.prompt_logprobs.as_ref().unwrap();
        check_shape(p, entries, 1);
        assert_close(
            &format!("prompt {k}"),
            entries,
            alone[0].0.prompt_logprobs.as_ref().unwrap(),
            1e-4,
        );
    }
}
