//! A client that goes away aborts its sequences and their KV blocks are freed:
//! a dropped SSE body, a dropped non-streaming request, and a closed socket
//! on a real listener.

use std::io::{Read, Write};
use std::net::TcpStream;

use axum::http::StatusCode;
use serde_json::json;

use super::*;

/// A request that would run for a long time: 300 tokens, eos ignored.
fn long_request(stream: bool) -> Json {
    json!({"prompt": "Once upon a time there was", "max_tokens": 300, "temperature": 0,
           "ignore_eos": true, "stream": stream, "n": 2})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_aborts_its_sequences_and_frees_their_blocks() {
    let s = server(Setup::default());
    let response = s.post("/v1/completions", &long_request(true)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    read_events(&mut body, 3).await;
    assert_eq!(s.metric("nanovllm_num_requests_running").await, 2.0);
    assert!(s.metric("nanovllm_kv_cache_blocks_free").await < 64.0);
    drop(body);
    s.wait_until_idle().await;
    assert_eq!(
        s.metric("nanovllm_request_finished_total{finish_reason=\"abort\"}")
            .await,
        2.0
    );
    let generated = s.metric("nanovllm_generation_tokens_total").await;
    assert!(
        generated < 600.0,
        "the aborted sequences kept running: {generated} tokens"
    );
    // The server goes on serving.
    let ok = s
        .post("/v1/completions", &json!({"prompt": "x", "max_tokens": 2}))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_pending_full_request_aborts_it() {
    let s = server(Setup::default());
    let router = s.router.clone();
    let request = axum::http::Request::post("/v1/completions")
        .body(axum::body::Body::from(long_request(false).to_string()))
        .unwrap();
    let task = tokio::spawn(async move { router.oneshot(request).await });
    // Wait until both sequences run, then drop the request's future.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("nanovllm_num_requests_running").await < 2.0 {
        assert!(Instant::now() < deadline, "the request never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    s.wait_until_idle().await;
    assert_eq!(
        s.metric("nanovllm_request_finished_total{finish_reason=\"abort\"}")
            .await,
        2.0
    );
}

/// Over a real socket: the client closes the connection mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_socket_mid_stream_frees_the_blocks() {
    let s = server(Setup::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = s.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let body = long_request(true).to_string();
    let raw = tokio::task::spawn_blocking(move || {
        let mut socket = TcpStream::connect(addr).unwrap();
        write!(
            socket,
            "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // Read until a few data events arrived, then close the socket.
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&seen).matches("data: ").count() < 4 {
            let n = socket.read(&mut buf).unwrap();
            assert!(n > 0, "the server closed the stream early");
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("text/event-stream"), "{raw}");
    s.wait_until_idle().await;
    assert_eq!(
        s.metric("nanovllm_request_finished_total{finish_reason=\"abort\"}")
            .await,
        2.0
    );
}
