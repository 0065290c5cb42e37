//! Every error code, in OpenAI's error shape.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value as Json};

use super::*;

/// Checks the status and the `{"error": {message, type, param, code}}` shape; returns the error.
async fn expect_error(response: Response, status: StatusCode) -> Json {
    let (got, body) = json_of(response).await;
    assert_eq!(got, status, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    assert_eq!(error["type"], kind);
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    error.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_and_name_the_field() {
    let s = server(Setup {
        max_tokens_cap: Some(32),
        ..Setup::default()
    });
    let response = s
        .post_raw("/v1/completions", "{\"prompt\": ".into(), None)
        .await;
    let e = expect_error(response, StatusCode::BAD_REQUEST).await;
    assert!(
        e["message"].as_str().unwrap().contains("malformed JSON"),
        "{e}"
    );

    for (path, body, param) in [
        (
            "/v1/completions",
            json!({"prompt": "a", "temperature": "hot"}),
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "temperature": 7}),
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "max_tokens": 33}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "top_p": 0}),
            "top_p",
        ),
        ("/v1/completions", json!({"prompt": "a", "n": 0}), "n"),
        ("/v1/completions", json!({"prompt": "a", "stop": 3}), "stop"),
        (
            "/v1/completions",
            json!({"prompt": "a", "logprobs": 21}),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "best_of": 2}),
            "best_of",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "logit_bias": {"x": 1}}),
            "logit_bias",
        ),
        (
            "/v1/completions",
            json!({"prompt": [], "max_tokens": 1}),
            "prompt",
        ),
        ("/v1/completions", json!({"prompt": [1, "x"]}), "prompt"),
        ("/v1/completions", json!({"prompt": [100000]}), "prompt"),
        ("/v1/completions", json!({"prompt": ""}), "prompt"),
        ("/v1/chat/completions", json!({"messages": []}), "messages"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"content": "x"}]}),
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "stream_options": {"x": 1}}),
            "stream_options.x",
        ),
    ] {
        let e = expect_error(s.post(path, &body).await, StatusCode::BAD_REQUEST).await;
        assert_eq!(e["param"], param, "{body}: {e}");
    }

    // A prompt longer than the context (512 tokens).
    let long = vec![5u32; 600];
    let e = expect_error(
        s.post("/v1/completions", &json!({"prompt": long, "max_tokens": 1}))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["code"], "context_length_exceeded");
    // A prompt that fits, but not with the tokens asked for.
    let e = expect_error(
        s.post(
            "/v1/completions",
            &json!({"prompt": vec![5u32; 500], "max_tokens": 20}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["code"], "context_length_exceeded");
    // Nothing was queued by any of these.
    assert_eq!(s.metric("nanovllm_prompt_tokens_total").await, 0.0);

    // Without max_tokens a request gets what the cap and the context allow, never an error.
    let (status, out) = s
        .post_json(
            "/v1/completions",
            &json!({"prompt": "a", "ignore_eos": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["usage"]["completion_tokens"], 32);
    let (status, out) = s
        .post_json(
            "/v1/completions",
            &json!({"prompt": vec![5u32; 500], "ignore_eos": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["usage"]["completion_tokens"], 12, "the context left");
    assert_eq!(out["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_required_on_v1_when_set() {
    let s = server(Setup {
        api_key: Some("sekret".into()),
        ..Setup::default()
    });
    let body = json!({"prompt": "a", "max_tokens": 1}).to_string();
    let e = expect_error(
        s.post_raw("/v1/completions", body.clone(), None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(e["code"], "invalid_api_key");
    expect_error(
        s.post_raw("/v1/completions", body.clone(), Some("wrong"))
            .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let models = Request::get("/v1/models").body(Body::empty()).unwrap();
    expect_error(s.send(models).await, StatusCode::UNAUTHORIZED).await;
    let ok = s.post_raw("/v1/completions", body, Some("sekret")).await;
    assert_eq!(ok.status(), StatusCode::OK);
    // Probes and scrapers need no key.
    assert_eq!(s.get("/health").await.status(), StatusCode::OK);
    assert_eq!(s.get("/metrics").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_and_routes_are_404_wrong_methods_405() {
    let s = server(Setup::default());
    let e = expect_error(
        s.post("/v1/completions", &json!({"model": "gpt-4", "prompt": "a"}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["param"], "model");
    let chat = json!({"model": "gpt-4", "messages": [{"role": "user", "content": "a"}]});
    expect_error(
        s.post("/v1/chat/completions", &chat).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_error(s.get("/v1/models/gpt-4").await, StatusCode::NOT_FOUND).await;
    expect_error(s.get("/v1/engines").await, StatusCode::NOT_FOUND).await;
    expect_error(
        s.get("/v1/completions").await,
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    assert_eq!(
        s.metric("nanovllm_http_requests_total{status=\"404\"}")
            .await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413() {
    let s = server(Setup {
        max_body_bytes: 1000,
        ..Setup::default()
    });
    let big = json!({"prompt": "x".repeat(2000), "max_tokens": 1});
    let e = expect_error(
        s.post("/v1/completions", &big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(e["code"], "request_too_large");
    let chat = json!({"messages": [{"role": "user", "content": "x".repeat(2000)}]});
    expect_error(
        s.post("/v1/chat/completions", &chat).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    let small = json!({"prompt": "x", "max_tokens": 1});
    assert_eq!(
        s.post("/v1/completions", &small).await.status(),
        StatusCode::OK
    );
}

/// One running sequence, one waiting: the next request finds the queue full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_waiting_queue_is_503() {
    let s = server(Setup {
        max_num_seqs: 1,
        max_waiting_requests: 1,
        ..Setup::default()
    });
    let long = json!({"prompt": "a b c", "max_tokens": 400, "temperature": 0,
                      "ignore_eos": true, "stream": true});
    let running = s.post("/v1/completions", &long).await;
    assert_eq!(running.status(), StatusCode::OK);
    let mut running = running.into_body().into_data_stream();
    read_events(&mut running, 1).await; // it has a token: it runs
    let waiting = s.post("/v1/completions", &long).await;
    assert_eq!(waiting.status(), StatusCode::OK);
    let response = s
        .post("/v1/completions", &json!({"prompt": "x", "max_tokens": 1}))
        .await;
    assert_eq!(response.headers()["retry-after"], "1");
    let e = expect_error(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(e["code"], "server_overloaded");
    drop(running);
    drop(waiting);
    s.wait_until_idle().await;
    let ok = s
        .post("/v1/completions", &json!({"prompt": "x", "max_tokens": 1}))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

/// `max_tokens` = 2^64 − 1 once wrapped `prompt + max_tokens` past the context check and was
/// queued; it must be refused like any other request that does not fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_at_the_integer_limit_is_context_length_exceeded() {
    let s = server(Setup::default());
    for path in ["/v1/completions", "/v1/chat/completions"] {
        let body = if path == "/v1/completions" {
            json!({"prompt": "hello", "max_tokens": u64::MAX})
        } else {
            json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": u64::MAX})
        };
        let e = expect_error(s.post(path, &body).await, StatusCode::BAD_REQUEST).await;
        assert_eq!(e["code"], "context_length_exceeded", "{path}: {e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("18446744073709551615 to generate"),
            "{e}"
        );
    }
    assert_eq!(s.metric("nanovllm_prompt_tokens_total").await, 0.0);
}

/// A request that could outgrow the whole KV cache is refused at admission (it used to be
/// accepted and then fail mid-stream with a 500). The cache caps the context it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_cache_can_never_hold_is_refused_at_admission() {
    // 8 blocks of 16 tokens: 128 tokens, below the model's 512, so max_model_len is 128.
    let s = server(Setup {
        num_kvcache_blocks: 8,
        ..Setup::default()
    });
    let e = expect_error(
        s.post(
            "/v1/completions",
            &json!({"prompt": "hello", "max_tokens": 300, "stream": true}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["code"], "context_length_exceeded", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("maximum context length is 128 tokens"),
        "{e}"
    );
    assert_eq!(s.metric("nanovllm_prompt_tokens_total").await, 0.0);
    // What fits still runs.
    let (status, out) = s
        .post_json(
            "/v1/completions",
            &json!({"prompt": "hello", "max_tokens": 8, "ignore_eos": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
}
