//! Golden engine tests for Mixtral: greedy continuations of the tiny Mixtral fixtures
//! through `LLM` must equal transformers' (`scripts/make_fixtures.py`), however the engine
//! batches, chunks, caches or preempts the work. The engine knows nothing of experts: it
//! loads the model through the registry like any other.
//!
//! Settings for every test: device cpu, `kvcache_block_size` = the fixture's
//! `block_size_for_tests` (16), greedy, `ignore_eos`, `max_tokens` = the reference length.
//! Every greedy step of the references has a top-1/top-2 logit margin ≥ 5.9e-3
//! (`greedy_min_margin`), so a correct f32 engine cannot flip a token through rounding.

use std::path::{Path, PathBuf};

use nanovllm_core::{DeviceKind, EngineConfig, FinishReason, Output, SamplingParams, LLM};
use serde_json::Value;

const FIXTURES: [&str; 2] = ["mixtral-tiny", "mixtral-tiny-bf16"];

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    prompt_token_ids: Vec<u32>,
    greedy_token_ids: Vec<u32>,
}

struct Reference {
    block_size: usize,
    cases: Vec<Case>,
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn reference(fixture: &str) -> Reference {
    let path = fixture_dir(fixture).join("reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (fixtures are part of the repo)", path.display()));
    let json: Value = serde_json::from_str(&text).expect("reference.json parses");
    assert_eq!(json["architecture"], "MixtralForCausalLM");
    Reference {
        block_size: json["block_size_for_tests"].as_u64().expect("block size") as usize,
        cases: json["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| Case {
                name: c["name"].as_str().expect("name").to_string(),
                prompt_token_ids: ids(&c["prompt_token_ids"]),
                greedy_token_ids: ids(&c["greedy_token_ids"]),
            })
            .collect(),
    }
}

fn test_config(fixture: &str, block_size: usize) -> EngineConfig {
    EngineConfig {
        kvcache_block_size: block_size,
        device: DeviceKind::Cpu,
        num_kvcache_blocks: Some(256),
        ..EngineConfig::new(fixture_dir(fixture))
    }
}

fn llm(config: EngineConfig) -> LLM {
    let model = config.model.display().to_string();
    LLM::new(config).unwrap_or_else(|e| panic!("building the engine for {model}: {e}"))
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(n)
    }
}

/// Generates `cases` together in one call and checks each against its reference.
fn generate_and_check(llm: &mut LLM, cases: &[Case], what: &str) -> Vec<Output> {
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt_token_ids.clone()).collect();
    let params: Vec<SamplingParams> = cases
        .iter()
        .map(|c| greedy(c.greedy_token_ids.len()))
        .collect();
    let outputs = llm
        .generate(prompts, params)
        .unwrap_or_else(|e| panic!("{what}: generate failed: {e}"));
    assert_eq!(outputs.len(), cases.len(), "{what}");
    for (case, out) in cases.iter().zip(&outputs) {
        assert_eq!(out.error, None, "{what}/{}", case.name);
        assert_eq!(
            out.finish_reason,
            FinishReason::Length,
            "{what}/{}",
            case.name
        );
        if out.token_ids != case.greedy_token_ids {
            let first = out
                .token_ids
                .iter()
                .zip(&case.greedy_token_ids)
                .position(|(a, b)| a != b);
            panic!(
                "{what}/{}: continuation differs from the reference at token {first:?}\n  got  {:?}\n  want {:?}",
                case.name, out.token_ids, case.greedy_token_ids
            );
        }
    }
    outputs
}

#[test]
fn all_cases_batched_together() {
    for fixture in FIXTURES {
        let r = reference(fixture);
        generate_and_check(
            &mut llm(test_config(fixture, r.block_size)),
            &r.cases,
            fixture,
        );
    }
}

#[test]
fn each_case_alone_and_in_shuffled_order() {
    for fixture in FIXTURES {
        let r = reference(fixture);
        for case in &r.cases {
            // A fresh engine per case: no prefix cache, nothing else in the batch.
            let mut llm = llm(test_config(fixture, r.block_size));
            generate_and_check(&mut llm, std::slice::from_ref(case), fixture);
        }
        let n = r.cases.len();
        let shuffled: Vec<Case> = (0..n).map(|i| r.cases[(i * 3 + 2) % n].clone()).collect();
        assert_ne!(shuffled[0].name, r.cases[0].name);
        let mut llm = llm(test_config(fixture, r.block_size));
        generate_and_check(&mut llm, &shuffled, &format!("{fixture} shuffled"));
    }
}

#[test]
fn prefix_cache_reuses_the_shared_prefix() {
    for fixture in FIXTURES {
        let r = reference(fixture);
        let find = |name: &str| {
            r.cases
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("{fixture} has no case {name}"))
                .clone()
        };
        let (a, b) = (find("shared_a"), find("shared_b"));
        assert_eq!(a.prompt_token_ids[..32], b.prompt_token_ids[..32]);
        let mut llm = llm(test_config(fixture, r.block_size));
        let first = generate_and_check(&mut llm, std::slice::from_ref(&a), fixture);
        assert_eq!(first[0].num_cached_tokens, 0, "{fixture}: cold cache");
        let second = generate_and_check(&mut llm, std::slice::from_ref(&b), fixture);
        assert!(
            second[0].num_cached_tokens >= 32,
            "{fixture}: shared_b after shared_a should hit 32 cached tokens, got {}",
            second[0].num_cached_tokens
        );
        // The same prompt again: served (mostly) from the cache, same output.
        let again = generate_and_check(&mut llm, std::slice::from_ref(&a), fixture);
        assert!(again[0].num_cached_tokens >= 32, "{fixture}");
        // The same case twice in one batch.
        let twice = generate_and_check(&mut llm, &[b.clone(), b], fixture);
        assert_eq!(twice[0].token_ids, twice[1].token_ids);
    }
}

#[test]
fn chunked_prefill() {
    for fixture in FIXTURES {
        let r = reference(fixture);
        for max_num_batched_tokens in [8, 24] {
            let mut llm = llm(EngineConfig {
                max_num_batched_tokens,
                ..test_config(fixture, r.block_size)
            });
            generate_and_check(
                &mut llm,
                &r.cases,
                &format!("{fixture} max_num_batched_tokens={max_num_batched_tokens}"),
            );
        }
    }
}

#[test]
fn preemption_under_a_tiny_kv_cache() {
    for fixture in FIXTURES {
        let r = reference(fixture);
        // Just enough blocks for the longest case alone.
        let longest = r
            .cases
            .iter()
            .map(|c| c.prompt_token_ids.len() + c.greedy_token_ids.len())
            .max()
            .expect("cases");
        let num_blocks = longest.div_ceil(r.block_size);
        let mut llm = llm(EngineConfig {
            num_kvcache_blocks: Some(num_blocks),
            ..test_config(fixture, r.block_size)
        });
        generate_and_check(
            &mut llm,
            &r.cases,
            &format!("{fixture} with {num_blocks} KV blocks"),
        );
        let preemptions = llm.engine().stats().num_preemptions;
        assert!(
            preemptions > 0,
            "{fixture}: {num_blocks} blocks for all cases must preempt"
        );
    }
}
