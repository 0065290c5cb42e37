//! Each endpoint's answers, checked against transformers' greedy references
//! and against the engine run directly.

use axum::http::StatusCode;
use nanovllm_core::{ChatMessage, ChatTemplate, DeviceKind, EngineConfig, SamplingParams, LLM};
use serde_json::{json, Map, Value as Json};

use super::*;

/// Greedy text of `prompt` from an engine run directly (no server).
fn direct_greedy(prompt: &str, max_tokens: usize) -> String {
    let config = EngineConfig {
        device: DeviceKind::Cpu,
        kvcache_block_size: 16,
        num_kvcache_blocks: Some(64),
        // As the test server's engine (`tests::server`).
        kv_cache_dtype: nanovllm_core::KvCacheDType::F32,
        ..EngineConfig::new(fixture_dir())
    };
    let mut llm = LLM::new(config).unwrap();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(max_tokens)
    };
    llm.generate([prompt], params).unwrap().remove(0).text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_metrics() {
    let s = server(Setup::default());
    let (status, models) = json_of(s.get("/v1/models").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "qwen3-tiny");
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(models["data"][0]["max_model_len"], 512);
    let (status, card) = json_of(s.get("/v1/models/qwen3-tiny").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(card["id"], "qwen3-tiny");
    assert_eq!(s.get("/health").await.status(), StatusCode::OK);
    assert_eq!(s.metric("nanovllm_kv_cache_blocks_total").await, 64.0);
    assert_eq!(s.metric("nanovllm_kv_cache_blocks_free").await, 64.0);
    assert_eq!(s.metric("nanovllm_num_requests_running").await, 0.0);
    // The metric scrapes above were counted as 200s.
    assert!(
        s.metric("nanovllm_http_requests_total{status=\"200\"}")
            .await
            >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_completions_match_transformers() {
    let s = server(Setup::default());
    let tok = tokenizer();
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    // Every case in one request: a list of token-id prompts, one choice each.
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_token_ids"])).collect();
    let body = json!({"model": "qwen3-tiny", "prompt": prompts, "max_tokens": 24,
                      "temperature": 0, "ignore_eos": true});
    let (status, out) = s.post_json("/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["object"], "text_completion");
    assert!(out["id"].as_str().unwrap().starts_with("cmpl-"));
    let choices = out["choices"].as_array().unwrap();
    assert_eq!(choices.len(), cases.len());
    for (i, (choice, case)) in choices.iter().zip(cases).enumerate() {
        assert_eq!(choice["index"], i);
        let expected = tok.decode(&ids(&case["greedy_token_ids"])).unwrap();
        assert_eq!(choice["text"], expected.as_str(), "case {}", case["name"]);
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(choice["logprobs"], Json::Null);
    }
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    assert_eq!(out["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(out["usage"]["completion_tokens"], 24 * cases.len());
    assert_eq!(
        out["usage"]["total_tokens"],
        prompt_tokens + 24 * cases.len()
    );
    s.wait_until_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_prompt_completes_like_the_engine_run_directly() {
    let s = server(Setup::default());
    let prompt = "The quick brown fox";
    let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": true});
    let (status, out) = s.post_json("/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        out["choices"][0]["text"],
        direct_greedy(prompt, 12).as_str()
    );
    assert_eq!(
        out["usage"]["prompt_tokens"],
        tokenizer().encode(prompt).unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_renders_the_template_and_passes_template_variables() {
    let s = server(Setup::default());
    let template = ChatTemplate::from_tokenizer_dir(&fixture_dir())
        .unwrap()
        .unwrap();
    let messages = [ChatMessage::system("Be brief."), ChatMessage::user("Hello")];
    let rendered = template.render(&messages, true, &Map::new()).unwrap();
    let body = json!({"model": "qwen3-tiny", "messages": messages, "max_tokens": 10,
                      "temperature": 0, "ignore_eos": true});
    let (status, out) = s.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["object"], "chat.completion");
    assert!(out["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &out["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        direct_greedy(&rendered, 10).as_str()
    );
    assert_eq!(choice["finish_reason"], "length");
    let prompt_tokens = tokenizer().encode(&rendered).unwrap().len();
    assert_eq!(out["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(out["usage"]["completion_tokens"], 10);

    // enable_thinking = false appends "<think>\n\n</think>\n\n" to the prompt,
    // through chat_template_kwargs or the top-level shorthand alike.
    let mut kwargs = Map::new();
    kwargs.insert("enable_thinking".into(), Json::Bool(false));
    let no_think = template.render(&messages, true, &kwargs).unwrap();
    assert!(no_think.ends_with("<think>\n\n</think>\n\n"));
    let no_think_tokens = tokenizer().encode(&no_think).unwrap().len();
    for extra in [
        json!({"chat_template_kwargs": {"enable_thinking": false}}),
        json!({"enable_thinking": false}),
    ] {
        let mut body = body.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, out) = s.post_json("/v1/chat/completions", &body).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(out["usage"]["prompt_tokens"], no_think_tokens, "{extra}");
        assert_eq!(
            out["choices"][0]["message"]["content"],
            direct_greedy(&no_think, 10).as_str()
        );
    }
    // max_completion_tokens wins over max_tokens.
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 9,
                      "max_completion_tokens": 3, "temperature": 0, "ignore_eos": true});
    let (_, out) = s.post_json("/v1/chat/completions", &body).await;
    assert_eq!(out["usage"]["completion_tokens"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_with_a_seed_are_reproducible_per_choice() {
    let s = server(Setup::default());
    let body = |n: usize, seed: u64| {
        json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 1.0,
               "top_k": 0, "top_p": 1.0, "n": n, "seed": seed, "ignore_eos": true})
    };
    let (status, out) = s.post_json("/v1/completions", &body(3, 7)).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let texts: Vec<String> = out["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts.len(), 3);
    assert_eq!(out["usage"]["completion_tokens"], 24);
    // Choice i is seeded with seed + i: the same as a single choice with that seed.
    for (i, text) in texts.iter().enumerate() {
        let (_, single) = s.post_json("/v1/completions", &body(1, 7 + i as u64)).await;
        assert_eq!(single["choices"][0]["text"], text.as_str(), "choice {i}");
    }
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "three seeded choices at temperature 1 all equal: {texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_in_the_completions_and_chat_shapes() {
    let s = server(Setup::default());
    let body = json!({"prompt": "Hello world", "max_tokens": 6, "temperature": 0,
                      "ignore_eos": true, "logprobs": 3});
    let (status, out) = s.post_json("/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let lp = &out["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6);
    let offsets = lp["text_offset"].as_array().unwrap();
    assert_eq!(offsets[0], 0);
    for i in 0..6 {
        let token = tokens[i].as_str().unwrap();
        let logprob = lp["token_logprobs"][i].as_f64().unwrap();
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!(logprob <= 0.0);
        // Greedy: the sampled token is the most likely; the map holds the top 3
        // (tokens whose strings coincide share one key, holding the likelier).
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert_eq!(logprob, best, "token {i}");
        assert_eq!(top[token].as_f64().unwrap(), logprob);
        assert!((1..=3).contains(&top.len()), "{top:?}");
        if i > 0 {
            let step = offsets[i].as_u64().unwrap() - offsets[i - 1].as_u64().unwrap();
            assert_eq!(step as usize, tokens[i - 1].as_str().unwrap().len());
        }
    }

    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                      "temperature": 0, "ignore_eos": true, "logprobs": true, "top_logprobs": 2});
    let (status, out) = s.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let content = out["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["logprob"], entry["logprob"]);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        let token = entry["token"].as_str().unwrap();
        assert_eq!(entry["bytes"], json!(token.as_bytes()));
    }
    // Without logprobs the field is null.
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1});
    let (_, out) = s.post_json("/v1/chat/completions", &body).await;
    assert_eq!(out["choices"][0]["logprobs"], Json::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_token_id_ends_with_stop_and_its_text_is_not_shown() {
    let s = server(Setup::default());
    let tok = tokenizer();
    let case = &reference()["cases"][4]; // len40
    let prompt = ids(&case["prompt_token_ids"]);
    let greedy = ids(&case["greedy_token_ids"]);
    // The first token that does not occur before its position.
    let k = (5..greedy.len())
        .find(|&k| !greedy[..k].contains(&greedy[k]))
        .unwrap();
    let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0,
                      "stop_token_ids": [greedy[k]]});
    let (status, out) = s.post_json("/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        out["choices"][0]["text"],
        tok.decode(&greedy[..k]).unwrap().as_str()
    );
    assert_eq!(out["usage"]["completion_tokens"], k + 1);
}
