//! In-process tests of the HTTP layer on the `qwen3-tiny` fixture: the real
//! router and engine thread, driven with `tower::ServiceExt::oneshot` (and a
//! real 127.0.0.1 listener where the socket itself matters).
//!
//! Reference outputs: `reference.json`'s greedy continuations (computed by
//! transformers) for token-id prompts, and the engine run directly for text.

mod disconnect;
mod endpoints;
mod errors;
mod fields;
mod streaming;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::Router;
use futures_util::StreamExt;
use nanovllm_core::{ChatTemplate, DeviceKind, EngineConfig, LLMEngine, Tokenizer};
use serde_json::Value as Json;
use tower::ServiceExt;

use super::chat_output::ParserOptions;
use super::state::{AppState, ServerLimits};
use super::{routes, start, ServerOptions};

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny")
}

/// Knobs of a test server.
#[derive(Clone, Debug)]
pub struct Setup {
    pub max_num_seqs: usize,
    pub num_kvcache_blocks: usize,
    pub max_waiting_requests: usize,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub max_tokens_cap: Option<usize>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            max_num_seqs: 16,
            num_kvcache_blocks: 64,
            max_waiting_requests: 64,
            api_key: None,
            max_body_bytes: 1 << 20,
            max_tokens_cap: None,
        }
    }
}

/// A router over a running engine thread; stops the thread when dropped.
pub struct TestServer {
    pub state: Arc<AppState>,
    pub router: Router,
    thread: Option<JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.state.engine.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn server(setup: Setup) -> TestServer {
    let config = EngineConfig {
        device: DeviceKind::Cpu,
        kvcache_block_size: 16,
        num_kvcache_blocks: Some(setup.num_kvcache_blocks),
        // Pinned: the references are f32 math, and the CPU's default KV cache is bf16.
        kv_cache_dtype: nanovllm_core::KvCacheDType::F32,
        max_num_seqs: setup.max_num_seqs,
        ..EngineConfig::new(fixture_dir())
    };
    let engine = LLMEngine::new(config).expect("qwen3-tiny loads");
    let options = ServerOptions {
        model_name: "qwen3-tiny".into(),
        limits: ServerLimits {
            max_body_bytes: setup.max_body_bytes,
            max_tokens_cap: setup.max_tokens_cap,
            api_key: setup.api_key,
        },
        max_waiting_requests: setup.max_waiting_requests,
        chat_template: ChatTemplate::from_tokenizer_dir(&fixture_dir()).unwrap(),
        defaults: None,
        default_max_tokens: None,
        max_tp_restarts: 0,
        parsers: ParserOptions::default(),
    };
    let (state, thread) = start(engine, options).expect("the server starts");
    TestServer {
        router: routes::router(state.clone()),
        state,
        thread: Some(thread),
    }
}

pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&fixture_dir()).unwrap()
}

/// reference.json of the fixture.
pub fn reference() -> Json {
    let text = std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

impl TestServer {
    pub async fn send(&self, request: Request<Body>) -> Response {
        self.router.clone().oneshot(request).await.unwrap()
    }

    pub async fn post(&self, path: &str, body: &Json) -> Response {
        self.post_raw(path, body.to_string(), None).await
    }

    pub async fn post_raw(&self, path: &str, body: String, bearer: Option<&str>) -> Response {
        let mut request = Request::post(path).header("content-type", "application/json");
        if let Some(key) = bearer {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    /// POSTs `body` and returns the status and the JSON answer.
    pub async fn post_json(&self, path: &str, body: &Json) -> (StatusCode, Json) {
        json_of(self.post(path, body).await).await
    }

    /// A metric's value from `/metrics` (name with labels, exactly as rendered).
    pub async fn metric(&self, name: &str) -> f64 {
        let response = self.get("/metrics").await;
        let text = body_text(response).await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Waits (at most 10 s) until no sequence runs or waits and every KV block is free.
    pub async fn wait_until_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let free = self.metric("nanovllm_kv_cache_blocks_free").await;
            let total = self.metric("nanovllm_kv_cache_blocks_total").await;
            let running = self.metric("nanovllm_num_requests_running").await;
            let waiting = self.metric("nanovllm_num_requests_waiting").await;
            if free == total && running == 0.0 && waiting == 0.0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not idle after 10 s: {free}/{total} blocks free, {running} running, {waiting} waiting"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn body_text(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

pub async fn json_of(response: Response) -> (StatusCode, Json) {
    let status = response.status();
    let text = body_text(response).await;
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, json)
}

/// The `data:` payloads of a whole SSE body, in order (keep-alive comments skipped).
pub async fn sse_data(response: Response) -> Vec<String> {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "an SSE response"
    );
    parse_sse(&body_text(response).await)
}

pub fn parse_sse(text: &str) -> Vec<String> {
    // Events are separated by a blank line; each of ours is one `data:` line.
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:")))
                .map(str::to_string)
        })
        .collect()
}

/// Reads SSE events from a streaming body until `count` `data:` events arrived.
pub async fn read_events(body: &mut axum::body::BodyDataStream, count: usize) -> Vec<String> {
    let mut buffer = String::new();
    loop {
        let events = parse_sse(&buffer);
        if events.len() >= count && buffer.ends_with("\n\n") {
            return events;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("an SSE event within 10 s")
            .expect("the stream goes on")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}
