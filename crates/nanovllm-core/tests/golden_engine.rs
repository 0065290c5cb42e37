//! Golden engine tests: greedy continuations of real (tiny) checkpoints must equal the
//! references computed by transformers (`scripts/make_fixtures.py`), however the
//! engine batches, chunks, caches or preempts the work.
//!
//! Settings for every test: device cpu, `kvcache_block_size` = the fixture's
//! `block_size_for_tests` (16), greedy, `ignore_eos`, `max_tokens` = the
//! reference length. Every greedy step of the references has a top-1/top-2
//! logit margin ≥ 1e-3 (`greedy_min_margin`), so a correct f32 engine cannot
//! flip a token through rounding: any difference is a bug.

use std::path::{Path, PathBuf};

use nanovllm_core::{
    DeviceKind, EngineConfig, EngineError, FinishReason, KvCacheDType, LLMEngine, LoadFormat,
    Output, Prompt, RequestError, SamplingParams, SchedulerError, LLM,
};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture_dir(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    prompt_token_ids: Vec<u32>,
    greedy_token_ids: Vec<u32>,
}

#[derive(Clone, Debug)]
struct TextCase {
    prompt: String,
    prompt_token_ids: Vec<u32>,
    greedy_token_ids: Vec<u32>,
    greedy_text: String,
}

struct Reference {
    block_size: usize,
    cases: Vec<Case>,
    text_cases: Vec<TextCase>,
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
    let cases = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            prompt_token_ids: ids(&c["prompt_token_ids"]),
            greedy_token_ids: ids(&c["greedy_token_ids"]),
        })
        .collect();
    let text_cases = json
        .get("text_cases")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|c| TextCase {
                    prompt: c["prompt"].as_str().expect("prompt").to_string(),
                    prompt_token_ids: ids(&c["prompt_token_ids"]),
                    greedy_token_ids: ids(&c["greedy_token_ids"]),
                    greedy_text: c["greedy_text"].as_str().expect("text").to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Reference {
        block_size: json["block_size_for_tests"].as_u64().expect("block size") as usize,
        cases,
        text_cases,
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

fn llm(config: EngineConfig) -> LLM {
    let model = config.model.display().to_string();
    LLM::new(config).unwrap_or_else(|e| panic!("building the engine for {model}: {e}"))
}

const FIXTURES: [&str; 3] = ["qwen3-tiny", "qwen3-tiny-bf16", "qwen3-tiny-fullvocab"];

#[test]
fn all_cases_batched_together() {
    for fixture in FIXTURES {
        let r = reference(fixture);
        let mut llm = llm(test_config(fixture, r.block_size));
        generate_and_check(&mut llm, &r.cases, fixture);
    }
}

#[test]
fn each_case_alone_and_in_shuffled_order() {
    for fixture in ["qwen3-tiny", "qwen3-tiny-bf16"] {
        let r = reference(fixture);
        for case in &r.cases {
            // A fresh engine per case: no prefix cache, nothing else in the batch.
            let mut llm = llm(test_config(fixture, r.block_size));
            generate_and_check(&mut llm, std::slice::from_ref(case), fixture);
        }
        // A fixed permutation that moves every case.
        let n = r.cases.len();
        let shuffled: Vec<Case> = (0..n).map(|i| r.cases[(i * 3 + 2) % n].clone()).collect();
        assert_ne!(shuffled[0].name, r.cases[0].name);
        let mut llm = llm(test_config(fixture, r.block_size));
        generate_and_check(&mut llm, &shuffled, &format!("{fixture} shuffled"));
    }
}

#[test]
fn prefix_cache_reuses_the_shared_prefix() {
    for fixture in ["qwen3-tiny", "qwen3-tiny-bf16"] {
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
        assert_eq!(again[0].token_ids, first[0].token_ids);
        // The same case twice in one batch.
        let twice = generate_and_check(&mut llm, &[b.clone(), b], fixture);
        assert_eq!(twice[0].token_ids, twice[1].token_ids);
    }
}

#[test]
fn chunked_prefill() {
    for fixture in ["qwen3-tiny", "qwen3-tiny-bf16"] {
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
    for fixture in ["qwen3-tiny", "qwen3-tiny-bf16"] {
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

/// The Qwen3 tokenizer shipped next to the repo, or `None` (printing why) outside CI.
fn qwen3_tokenizer_dir() -> Option<PathBuf> {
    let dir = repo_root().join("../shared/models/qwen3-tokenizer");
    if dir.join("tokenizer.json").is_file() {
        return Some(dir);
    }
    let msg = format!("Qwen3 tokenizer not found at {}", dir.display());
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (CI=true requires it)");
    }
    eprintln!("skipping: {msg}");
    None
}

#[test]
fn text_prompts_through_the_real_tokenizer() {
    let Some(tokenizer) = qwen3_tokenizer_dir() else {
        return;
    };
    let fixture = "qwen3-tiny-fullvocab";
    let r = reference(fixture);
    assert!(!r.text_cases.is_empty(), "{fixture} has text_cases");
    let mut llm = llm(EngineConfig {
        tokenizer: Some(tokenizer),
        ..test_config(fixture, r.block_size)
    });
    let prompts: Vec<&str> = r.text_cases.iter().map(|c| c.prompt.as_str()).collect();
    let params: Vec<SamplingParams> = r
        .text_cases
        .iter()
        .map(|c| greedy(c.greedy_token_ids.len()))
        .collect();
    let outputs = llm.generate(prompts, params).expect("generate");
    for (case, out) in r.text_cases.iter().zip(&outputs) {
        assert_eq!(
            out.prompt_token_ids, case.prompt_token_ids,
            "{:?}",
            case.prompt
        );
        assert_eq!(out.token_ids, case.greedy_token_ids, "{:?}", case.prompt);
        assert_eq!(out.text, case.greedy_text, "{:?}", case.prompt);
    }
}

#[test]
fn bad_input_is_rejected_and_the_good_request_completes() {
    let fixture = "qwen3-tiny";
    let r = reference(fixture);
    let case = r.cases.iter().find(|c| c.name == "len17").expect("len17");
    let mut engine = LLMEngine::new(EngineConfig {
        max_model_len: 64,
        ..test_config(fixture, r.block_size)
    })
    .expect("engine");
    let vocab_size = engine.model_config().vocab_size;
    let good = engine
        .add_request(
            case.prompt_token_ids.clone(),
            greedy(case.greedy_token_ids.len()),
        )
        .expect("a good request");
    engine.step().expect("first step");

    let reason = |r: Result<u64, EngineError>| match r {
        Err(EngineError::InvalidRequest { reason, .. }) => reason,
        other => panic!("expected InvalidRequest, got {other:?}"),
    };
    assert_eq!(
        reason(engine.add_request(Vec::<u32>::new(), greedy(4))),
        RequestError::EmptyPrompt
    );
    assert_eq!(
        reason(engine.add_request(Prompt::TokenIds(vec![1, vocab_size as u32 + 5]), greedy(4))),
        RequestError::TokenOutOfVocab {
            token_id: vocab_size as u32 + 5,
            position: 1,
            vocab_size
        }
    );
    assert_eq!(
        reason(engine.add_request(vec![1u32; 65], greedy(4))),
        RequestError::PromptTooLong {
            prompt_len: 65,
            max_model_len: 64
        }
    );
    let bad_params = SamplingParams {
        top_p: 1.5,
        ..greedy(4)
    };
    assert!(matches!(
        reason(engine.add_request(vec![1u32, 2], bad_params)),
        RequestError::Rejected(SchedulerError::InvalidSamplingParam { field: "top_p", .. })
    ));

    let mut outputs = Vec::new();
    while engine.has_unfinished() {
        outputs.extend(engine.step().expect("step").finished);
    }
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].request_id, good);
    assert_eq!(outputs[0].token_ids, case.greedy_token_ids);

    // Through LLM::generate: the error names the prompt's index and nothing runs.
    let mut llm = LLM::from_engine(engine);
    let steps_before = llm.engine().stats().num_steps;
    match llm.generate(
        [case.prompt_token_ids.clone(), vec![vocab_size as u32]],
        greedy(4),
    ) {
        Err(EngineError::InvalidRequest {
            index: Some(1),
            reason: RequestError::TokenOutOfVocab { .. },
        }) => {}
        other => panic!("expected an error naming prompt #1, got {other:?}"),
    }
    assert!(!llm.engine().has_unfinished());
    assert_eq!(llm.engine().stats().num_steps, steps_before);
}

#[test]
fn bf16_kv_cache_keeps_the_first_tokens() {
    // The references are f32 math; bf16 K/V round keys and values (relative error
    // ≤ 2^-9). Every case's first-step top-1/top-2 margin is ≥ 0.076 (qwen3-tiny's
    // last_logits_top), far above what that rounding can move, so the first generated
    // token must match. Later steps have margins down to 0.019 and are not checked.
    let fixture = "qwen3-tiny";
    let r = reference(fixture);
    let mut llm = llm(EngineConfig {
        kv_cache_dtype: KvCacheDType::Bf16,
        ..test_config(fixture, r.block_size)
    });
    let prompts: Vec<Vec<u32>> = r.cases.iter().map(|c| c.prompt_token_ids.clone()).collect();
    let outputs = llm
        .generate(prompts, greedy(4))
        .expect("generate with a bf16 KV cache");
    for (case, out) in r.cases.iter().zip(&outputs) {
        assert_eq!(out.token_ids.len(), 4, "{}", case.name);
        assert_eq!(out.token_ids[0], case.greedy_token_ids[0], "{}", case.name);
    }
}

#[test]
fn dummy_weights_from_a_bare_config_file() {
    let config_file = fixture_dir("qwen3-tiny").join("config.json");
    let mut engine = LLMEngine::new(EngineConfig {
        model: config_file,
        load_format: LoadFormat::Dummy,
        ..test_config("qwen3-tiny", 16)
    })
    .expect("an engine over dummy weights");
    assert_eq!(engine.model_config().vocab_size, 512);
    // The file's directory supplies generation_config.json (eos 511) and the tokenizer.
    assert_eq!(engine.eos_token_ids(), &[511]);
    assert!(engine.tokenizer().is_some());
    let id = engine
        .add_request(vec![1u32, 2, 3], greedy(5))
        .expect("add");
    let mut outputs = Vec::new();
    while engine.has_unfinished() {
        outputs.extend(engine.step().expect("step").finished);
    }
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].request_id, id);
    assert_eq!(outputs[0].token_ids.len(), 5);
    assert!(outputs[0].token_ids.iter().all(|&t| t < 512));
}
