//! The request fields beyond sampling basics (`echo`, the ignored OpenAI fields) and the
//! `/tokenize`, `/detokenize` and `/version` endpoints.

use axum::http::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_detokenize_round_trip() {
    let s = server(Setup::default());
    let text = "Hello, world! Ünïcödé 123";
    let (status, out) = s
        .post_json(
            "/tokenize",
            &json!({"model": "qwen3-tiny", "prompt": text, "return_token_strs": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let tokens = ids(&out["tokens"]);
    assert_eq!(tokens, tokenizer().encode(text).unwrap());
    assert_eq!(out["count"], tokens.len());
    assert_eq!(out["max_model_len"], 512);
    let strs = out["token_strs"].as_array().unwrap();
    assert_eq!(strs.len(), tokens.len());
    assert_eq!(strs[0], tokenizer().id_to_token(tokens[0]).unwrap());
    let (status, back) = s.post_json("/detokenize", &json!({"tokens": tokens})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(back, json!({"prompt": text}));
    // The messages form counts what the chat endpoint feeds the model.
    let messages = json!([{"role": "user", "content": "Hi there"}]);
    let (_, counted) = s
        .post_json("/tokenize", &json!({"messages": messages}))
        .await;
    let (status, chat) = s
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{chat}");
    assert_eq!(counted["count"], chat["usage"]["prompt_tokens"]);
    assert_eq!(counted["token_strs"], Json::Null);
    let (status, version) = json_of(s.get("/version").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_refusals_name_the_field_and_need_the_key() {
    let s = server(Setup {
        api_key: Some("k".into()),
        ..Setup::default()
    });
    let post = |path: &'static str, body: Json| {
        let s = &s;
        async move { json_of(s.post_raw(path, body.to_string(), Some("k")).await).await }
    };
    for (body, param) in [
        (json!({"prompt": "x", "bogus": 1}), "bogus"),
        (json!({"prompt": "x", "messages": []}), "messages"),
        (json!({"prompt": "x", "tools": []}), "tools"),
        (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
    ] {
        let (status, out) = post("/tokenize", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(out["error"]["param"], param, "{body}: {out}");
    }
    let (status, out) = post("/tokenize", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(out["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing"));
    let (status, out) = post("/detokenize", json!({"tokens": [1_000_000]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(out["error"]["param"], "tokens");
    let (status, _) = post("/tokenize", json!({"model": "other", "prompt": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for path in ["/tokenize", "/detokenize"] {
        let response = s.post_raw(path, "{}".into(), None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // /version is open, like /health.
    assert_eq!(s.get("/version").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_prepends_each_prompt() {
    let s = server(Setup::default());
    let body = |echo: bool| {
        json!({"prompt": ["Hello", "The sky"], "max_tokens": 3, "n": 2, "temperature": 0,
               "ignore_eos": true, "echo": echo})
    };
    let (status, plain) = s.post_json("/v1/completions", &body(false)).await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    let (_, echoed) = s.post_json("/v1/completions", &body(true)).await;
    for (i, prompt) in ["Hello", "Hello", "The sky", "The sky"].iter().enumerate() {
        let generated = plain["choices"][i]["text"].as_str().unwrap();
        assert_eq!(echoed["choices"][i]["text"], format!("{prompt}{generated}"));
    }
    // Usage is unchanged by the echo.
    assert_eq!(echoed["usage"], plain["usage"]);
    // Token ids echo as their text; streamed, the echo is the first chunk of its choice.
    let prompt_ids = tokenizer().encode("The sky").unwrap();
    let events = sse_data(
        s.post(
            "/v1/completions",
            &json!({"prompt": prompt_ids, "max_tokens": 3, "temperature": 0,
                    "ignore_eos": true, "echo": true, "stream": true}),
        )
        .await,
    )
    .await;
    let chunks: Vec<Json> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["text"], "The sky");
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(text, echoed["choices"][2]["text"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_fields_are_accepted_on_both_endpoints() {
    let s = server(Setup::default());
    let shared = json!({"max_tokens": 2, "user": "u", "store": false, "metadata": {"a": "b"},
                        "service_tier": "auto", "best_of": 1, "presence_penalty": 0.5,
                        "frequency_penalty": 0.5, "repetition_penalty": 1.1,
                        "logit_bias": {"5": 1}, "response_format": {"type": "text"},
                        "guided_decoding_backend": "xgrammar"});
    let mut completion = shared.clone();
    completion["prompt"] = json!("Hello");
    let (status, out) = s.post_json("/v1/completions", &completion).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let mut chat = shared;
    chat["messages"] = json!([{"role": "user", "content": "Hi"}]);
    chat["parallel_tool_calls"] = json!(true);
    let (status, out) = s.post_json("/v1/chat/completions", &chat).await;
    assert_eq!(status, StatusCode::OK, "{out}");
}
