//! Structured output through the engine (llguidance grammars, `SamplingParams::
//! structured_output`) on `qwen3-tiny-fullvocab` (random weights, Qwen3's full vocabulary)
//! with the real Qwen3 tokenizer: whatever the random model prefers, every output must
//! match its grammar. Every grammar here is bounded (enums, integer ranges, maxLength
//! strings, bounded repetitions), so `max_tokens` is never what ends a request.
//!
//! Skipped (with a note) when the tokenizer is absent, except under `CI=true`.

mod common;

use std::path::PathBuf;

use common::*;
use nanovllm_core::{
    EngineConfig, EngineError, FinishReason, LLMEngine, Output, RequestError, SamplingParams,
    StructuredOutput, LLM,
};
use serde_json::Value;

const FIXTURE: &str = "qwen3-tiny-fullvocab";
const SEEDS: [u64; 4] = [1, 2, 3, 4];

fn config(tokenizer: PathBuf) -> EngineConfig {
    EngineConfig {
        tokenizer: Some(tokenizer),
        ..test_config(FIXTURE, reference(FIXTURE).block_size)
    }
}

/// Temperature 1, the given seed, constrained to `spec`.
fn sampled(spec: &StructuredOutput, seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        max_tokens,
        structured_output: Some(spec.clone()),
        ..SamplingParams::default()
    }
}

/// One request per seed, all in one batch.
fn generate_per_seed(llm: &mut LLM, spec: &StructuredOutput, max_tokens: usize) -> Vec<Output> {
    let params: Vec<SamplingParams> = SEEDS
        .iter()
        .map(|&seed| sampled(spec, seed, max_tokens))
        .collect();
    let prompts = vec!["Give me the answer:"; SEEDS.len()];
    let outputs = llm.generate(prompts, params).expect("generate");
    for out in &outputs {
        assert_eq!(out.error, None, "{out:?}");
        assert!(
            matches!(out.finish_reason, FinishReason::Stop | FinishReason::Eos),
            "a bounded grammar ends before max_tokens: {out:?}"
        );
    }
    outputs
}

/// No whitespace outside JSON strings: the grammar's JSON is compact.
fn assert_compact(json: &str) {
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => in_string = !in_string,
            (false, _, c) if c.is_whitespace() => panic!("whitespace outside strings: {json:?}"),
            _ => {}
        }
    }
}

const PERSON_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string", "maxLength": 6},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "color": {"enum": ["red", "green", "blue"]},
    "member": {"type": "boolean"}
  },
  "required": ["name", "age", "color", "member"]
}"#;

/// `value` against `PERSON_SCHEMA`, checked by hand (every rule the schema states).
fn check_person(value: &Value, strict: bool) {
    let obj = value.as_object().expect("an object");
    let name = obj["name"].as_str().expect("name is a string");
    assert!(name.chars().count() <= 6, "{name:?}");
    let age = obj["age"].as_i64().expect("age is an integer");
    assert!((0..=120).contains(&age), "{age}");
    assert!(
        ["red", "green", "blue"].contains(&obj["color"].as_str().expect("color")),
        "{value}"
    );
    assert!(obj["member"].is_boolean(), "{value}");
    if strict {
        assert_eq!(obj.len(), 4, "strict: no extra properties: {value}");
    }
}

#[test]
fn json_schema_outputs_parse_and_validate() {
    let Some(tokenizer) = qwen3_tokenizer_dir() else {
        return;
    };
    let mut llm = llm(config(tokenizer));
    for strict in [true, false] {
        let spec = StructuredOutput::JsonSchema {
            schema: PERSON_SCHEMA.to_string(),
            strict,
        };
        // Non-strict outputs may add properties of any kind: bounded only by max_tokens,
        // which strict=true rules out. So the non-strict run gets a generous budget and
        // may end by length; its listed properties must still hold.
        let outputs = if strict {
            generate_per_seed(&mut llm, &spec, 200)
        } else {
            let params: Vec<_> = SEEDS.iter().map(|&s| sampled(&spec, s, 300)).collect();
            llm.generate(vec!["Give me the answer:"; SEEDS.len()], params)
                .expect("generate")
        };
        for out in &outputs {
            if !strict && out.finish_reason == FinishReason::Length {
                continue;
            }
            assert_compact(&out.text);
            let value: Value = serde_json::from_str(&out.text)
                .unwrap_or_else(|e| panic!("strict={strict}: {:?} is not JSON: {e}", out.text));
            check_person(&value, strict);
        }
    }
}

#[test]
fn json_object_outputs_are_compact_objects() {
    let Some(tokenizer) = qwen3_tokenizer_dir() else {
        return;
    };
    let mut llm = llm(config(tokenizer));
    let params: Vec<_> = SEEDS
        .iter()
        .map(|&s| sampled(&StructuredOutput::JsonObject, s, 48))
        .collect();
    let outputs = llm
        .generate(vec!["{"; SEEDS.len()], params)
        .expect("generate");
    for out in &outputs {
        assert_eq!(out.error, None);
        // An object of random keys may well outgrow max_tokens; what it has so far must be
        // the start of a compact object: no whitespace between tokens of the JSON syntax.
        assert!(out.text.starts_with('{'), "{:?}", out.text);
        assert_compact(&out.text);
        if out.finish_reason != FinishReason::Length {
            let value: Value = serde_json::from_str(&out.text).expect("JSON");
            assert!(value.is_object(), "{value}");
        }
    }
}

#[test]
fn regex_choice_and_lark_outputs_match() {
    let Some(tokenizer) = qwen3_tokenizer_dir() else {
        return;
    };
    let mut llm = llm(config(tokenizer));

    let regex = StructuredOutput::Regex("[a-z]{2,4}-[0-9]{2}".to_string());
    for out in generate_per_seed(&mut llm, &regex, 32) {
        let (word, digits) = out.text.split_once('-').expect("a dash");
        assert!(
            (2..=4).contains(&word.len()) && word.chars().all(|c| c.is_ascii_lowercase()),
            "{:?}",
            out.text
        );
        assert!(
            digits.len() == 2 && digits.chars().all(|c| c.is_ascii_digit()),
            "{:?}",
            out.text
        );
    }

    let choices = ["yes", "no", "maybe so"];
    let choice = StructuredOutput::Choice(choices.iter().map(|c| c.to_string()).collect());
    for out in generate_per_seed(&mut llm, &choice, 16) {
        assert!(choices.contains(&out.text.as_str()), "{:?}", out.text);
    }

    let lark = StructuredOutput::Lark(
        "start: greeting \" \" name\ngreeting: \"hi\" | \"hello\"\nname: /[A-Z][a-z]{1,4}/"
            .to_string(),
    );
    for out in generate_per_seed(&mut llm, &lark, 32) {
        let (greeting, name) = out.text.split_once(' ').expect("a space");
        assert!(["hi", "hello"].contains(&greeting), "{:?}", out.text);
        let mut chars = name.chars();
        assert!(
            chars.next().is_some_and(|c| c.is_ascii_uppercase()),
            "{name:?}"
        );
        let rest: String = chars.collect();
        assert!(
            (1..=4).contains(&rest.len()) && rest.chars().all(|c| c.is_ascii_lowercase()),
            "{name:?}"
        );
    }
}

/// A grammar that is complete ends the request with `Stop` even when EOS is ignored and
/// `max_tokens` would allow more.
#[test]
fn a_finished_grammar_stops_the_request() {
    let Some(tokenizer) = qwen3_tokenizer_dir() else {
        return;
    };
    let mut llm = llm(config(tokenizer));
    let spec = StructuredOutput::Choice(vec!["alpha".to_string(), "beta".to_string()]);
    for ignore_eos in [false, true] {
        let params = SamplingParams {
            ignore_eos,
            ..sampled(&spec, 7, 50)
        };
        let out = &llm.generate(["Pick one:"], params).expect("generate")[0];
        assert!(["alpha", "beta"].contains(&out.text.as_str()), "{out:?}");
        assert!(out.token_ids.len() < 50, "{out:?}");
        if ignore_eos {
            assert_eq!(out.finish_reason, FinishReason::Stop, "{out:?}");
        } else {
            assert_eq!(out.finish_reason.as_openai_str(), "stop", "{out:?}");
        }
    }
}

#[test]
fn invalid_grammars_are_refused_naming_the_problem() {
    let Some(tokenizer) = qwen3_tokenizer_dir() else {
        return;
    };
    let engine = LLMEngine::new(config(tokenizer)).expect("engine");
    let check = |spec: StructuredOutput, form: &str, needle: &str| {
        let params = SamplingParams {
            structured_output: Some(spec),
            ..SamplingParams::default()
        };
        let err = engine
            .validate_request("hi".into(), &params)
            .expect_err("an invalid grammar is refused");
        let msg = err.to_string();
        assert!(
            matches!(&err, RequestError::InvalidGrammar { form: f, .. } if *f == form),
            "{err:?}"
        );
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    };
    check(
        StructuredOutput::JsonSchema {
            schema: "{\"type\": ".to_string(),
            strict: true,
        },
        "json_schema",
        "not valid JSON",
    );
    check(
        StructuredOutput::JsonSchema {
            schema: r#"{"type": "object", "properties": {"a": {"type": "frobnicate"}}}"#
                .to_string(),
            strict: true,
        },
        "json_schema",
        "frobnicate",
    );
    check(StructuredOutput::Regex("(ab".to_string()), "regex", "regex");
    check(
        StructuredOutput::Lark("start: undefined_rule".to_string()),
        "grammar",
        "undefined_rule",
    );
    check(
        StructuredOutput::Choice(Vec::new()),
        "choice",
        "at least one",
    );
}

/// A refused grammar is a request error of `add_request` too, and queues nothing.
#[test]
fn add_request_refuses_an_invalid_grammar() {
    let Some(tokenizer) = qwen3_tokenizer_dir() else {
        return;
    };
    let mut engine = LLMEngine::new(config(tokenizer)).expect("engine");
    let params = SamplingParams {
        structured_output: Some(StructuredOutput::Regex("[".to_string())),
        ..SamplingParams::default()
    };
    let err = engine.add_request("hi", params).expect_err("refused");
    assert!(
        matches!(
            err,
            EngineError::InvalidRequest {
                reason: RequestError::InvalidGrammar { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!engine.has_unfinished());
}

/// Greedy unconstrained requests batched with constrained ones produce transformers'
/// reference tokens (those they produce alone): the masks touch only their own rows.
#[test]
fn unconstrained_neighbours_are_unchanged() {
    let Some(tokenizer) = qwen3_tokenizer_dir() else {
        return;
    };
    let r = reference(FIXTURE);
    let mut llm = llm(config(tokenizer));
    let spec = StructuredOutput::JsonSchema {
        schema: PERSON_SCHEMA.to_string(),
        strict: true,
    };
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    let mut params: Vec<SamplingParams> = Vec::new();
    for (i, case) in r.cases.iter().enumerate() {
        prompts.push(case.prompt_token_ids.clone());
        params.push(greedy(case.greedy_token_ids.len()));
        prompts.push(case.prompt_token_ids.clone());
        params.push(sampled(&spec, i as u64, 200));
    }
    let outputs = llm.generate(prompts, params).expect("generate");
    for (case, pair) in r.cases.iter().zip(outputs.chunks(2)) {
        assert_eq!(pair[0].token_ids, case.greedy_token_ids, "{}", case.name);
        let value: Value = serde_json::from_str(&pair[1].text)
            .unwrap_or_else(|e| panic!("{}: {:?}: {e}", case.name, pair[1].text));
        check_person(&value, true);
    }
}

/// A request without a tokenizer cannot be constrained: the error says what to set.
#[test]
fn structured_output_needs_a_tokenizer() {
    let r = reference("qwen3-tiny");
    let engine = LLMEngine::new(test_config("qwen3-tiny", r.block_size)).expect("engine");
    if engine.tokenizer().is_some() {
        return; // the fixture ships a tokenizer: nothing to check here
    }
    let params = SamplingParams {
        structured_output: Some(StructuredOutput::JsonObject),
        ..SamplingParams::default()
    };
    let err = engine
        .validate_request(vec![1u32, 2].into(), &params)
        .expect_err("refused");
    assert_eq!(err, RequestError::StructuredOutputNeedsTokenizer);
}

/// Under a KV cache too small for the batch (preemption: recomputed requests sample on
/// from their matcher's state) and with prompts split into chunks that do not sample, the
/// constrained outputs are those of a roomy run with the same seeds, and valid.
#[test]
fn preemption_and_chunked_prefill_keep_the_grammar_state() {
    let Some(tokenizer) = qwen3_tokenizer_dir() else {
        return;
    };
    let spec = StructuredOutput::JsonSchema {
        schema: PERSON_SCHEMA.to_string(),
        strict: true,
    };
    let seeds: Vec<u64> = (10..18).collect();
    let prompt = "Describe a person as JSON, with a name, an age and a colour:";
    let max_tokens = 64;
    let run = |llm: &mut LLM| {
        let params: Vec<_> = seeds
            .iter()
            .map(|&s| sampled(&spec, s, max_tokens))
            .collect();
        llm.generate(vec![prompt; seeds.len()], params)
            .expect("generate")
    };
    let roomy = run(&mut llm(config(tokenizer.clone())));

    let block_size = reference(FIXTURE).block_size;
    let tight_config = config(tokenizer);
    let prompt_len = roomy[0].prompt_token_ids.len();
    let mut tight = llm(EngineConfig {
        // One request at its longest, plus a block: the batch must preempt.
        num_kvcache_blocks: Some((prompt_len + max_tokens).div_ceil(block_size) + 1),
        // Prompts split into chunks: the chunks before the last sample nothing.
        max_num_batched_tokens: 8,
        ..tight_config
    });
    let outputs = run(&mut tight);
    assert!(
        tight.engine().stats().num_preemptions > 0,
        "the tight cache must preempt"
    );
    for (a, b) in roomy.iter().zip(&outputs) {
        assert_eq!(b.error, None, "{b:?}");
        assert_eq!(a.token_ids, b.token_ids, "{:?} vs {:?}", a.text, b.text);
        let value: Value = serde_json::from_str(&b.text).expect("JSON");
        check_person(&value, true);
    }
}
