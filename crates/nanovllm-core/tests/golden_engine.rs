//! Golden engine tests for Qwen3: greedy continuations of the tiny Qwen3 checkpoints
//! must equal transformers' references (scenarios in `common/mod.rs`), plus the
//! tokenizer, request-validation, bf16-cache and dummy-weight paths.
//!
//! Every greedy step of the references has a top-1/top-2 logit margin ≥ 1e-3
//! (`greedy_min_margin`), so a correct f32 engine cannot flip a token through
//! rounding: any difference is a bug.

mod common;

use common::*;
use nanovllm_core::{
    EngineConfig, EngineError, KvCacheDType, LLMEngine, LoadFormat, Prompt, RequestError,
    SamplingParams, SchedulerError, LLM,
};

/// `qwen3-tiny-d128` has Qwen3's real attention shape (head_dim 128, GQA groups of 2) and
/// a 600-token case; `cuda_engine.rs` runs it on a GPU, where only this shape takes the
/// fast attention kernels.
const FIXTURES: [&str; 4] = [
    "qwen3-tiny",
    "qwen3-tiny-bf16",
    "qwen3-tiny-fullvocab",
    "qwen3-tiny-d128",
];
/// The fixtures the scenarios other than `all_cases_batched_together` run on.
const SMALL_FIXTURES: [&str; 2] = ["qwen3-tiny", "qwen3-tiny-bf16"];

engine_scenarios!(FIXTURES, SMALL_FIXTURES);

/// `qwen3-tiny-d128` through the other scenarios but preemption: its `len600` case alone
/// needs more KV blocks than all the others together, so a cache sized for it never has
/// to preempt (`check_preemption` would fail on its premise, not on the engine).
#[test]
fn head_dim_128_alone_shuffled_prefix_cached_and_chunked() {
    let fixture = "qwen3-tiny-d128";
    check_each_alone_and_shuffled(fixture);
    check_prefix_cache(fixture);
    check_chunked_prefill(fixture);
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
        max_model_len: Some(64),
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
