//! `nanovllm bench serve` against a real `nanovllm serve` process on a tiny fixture: the
//! token counts it reports must be exactly what was asked (`ignore_eos`), and its
//! latencies must be present and ordered.

mod common;

use common::*;
use serde_json::Value;

/// `nanovllm bench serve --base-url URL <args…> --json FILE`; returns the output and the JSON.
fn bench_serve(server: &Server, tag: &str, args: &[&str]) -> (std::process::Output, Value) {
    let dir = scratch(tag);
    let json_path = dir.join("serve.json");
    let base = [
        "bench",
        "serve",
        "--base-url",
        &server.base_url,
        "--json",
        json_path.to_str().unwrap(),
    ];
    let out = nanovllm(&[&base[..], args].concat());
    let json = std::fs::read_to_string(&json_path)
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap_or(Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
    (out, json)
}

fn start_tiny_server(model: &str, extra: &[&str]) -> Server {
    let model = fixture(model);
    let base = [
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--kvcache-block-size",
        "16",
    ];
    Server::start(&[&base[..], extra].concat())
}

fn assert_latencies(json: &Value) {
    for metric in ["ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"] {
        let m = &json[metric];
        let (mean, p50, p90, p99) = (
            m["mean"].as_f64().unwrap(),
            m["p50"].as_f64().unwrap(),
            m["p90"].as_f64().unwrap(),
            m["p99"].as_f64().unwrap(),
        );
        assert!(mean > 0.0 && p50 > 0.0, "{metric}: {m}");
        assert!(p50 <= p90 && p90 <= p99, "{metric}: {m}");
    }
    // A request's whole time covers its first token.
    assert!(json["e2el_ms"]["mean"].as_f64() > json["ttft_ms"]["mean"].as_f64());
}

#[test]
fn completions_with_token_ids_report_exact_counts() {
    let server = start_tiny_server("qwen3-tiny", &[]);
    let (out, json) = bench_serve(
        &server,
        "bs-completions",
        &[
            "--num-prompts",
            "8",
            "--random-input-len",
            "12",
            "--random-output-len",
            "6",
            "--vocab-size",
            "512",
            "--max-concurrency",
            "3",
            "--ignore-eos",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Serving Benchmark Result"), "{stdout}");
    assert_eq!(json["completed"], 8, "{json}");
    assert_eq!(json["failed"], 0);
    assert_eq!(json["total_input_tokens"], 8 * 12);
    assert_eq!(json["total_output_tokens"], 8 * 6);
    assert_eq!(json["max_concurrency"], 3);
    assert_eq!(json["model"], "qwen3-tiny");
    assert_latencies(&json);
}

#[test]
fn chat_with_text_prompts_at_a_request_rate() {
    // The fixture's own (cut-down) tokenizer turns the random ids into text the server
    // re-tokenizes; sampling at temperature 1 makes replies of visible text.
    let tokenizer = fixture("qwen3-tiny");
    let tokenizer = tokenizer.to_str().unwrap();
    let server = start_tiny_server("qwen3-tiny", &[]);
    let (out, json) = bench_serve(
        &server,
        "bs-chat",
        &[
            "--endpoint",
            "/v1/chat/completions",
            "--tokenizer",
            tokenizer,
            "--num-prompts",
            "6",
            "--random-input-len",
            "10",
            "--random-output-len",
            "5",
            "--random-range-ratio",
            "0.5",
            "--request-rate",
            "50",
            "--ignore-eos",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        (json["completed"].as_u64(), json["failed"].as_u64()),
        (Some(6), Some(0)),
        "{json}"
    );
    assert_eq!(json["request_rate"], 50.0);
    // Each asked for 3..=7 tokens and got them; prompts are the server's own count
    // (the chat template adds tokens around the text).
    let out_tokens = json["total_output_tokens"].as_u64().unwrap();
    assert!((18..=42).contains(&out_tokens), "{json}");
    assert!(
        json["total_input_tokens"].as_u64().unwrap() > 6 * 5,
        "{json}"
    );
    assert_latencies(&json);
}

#[test]
fn a_wrong_model_name_fails_at_once_with_the_servers_answer() {
    let server = start_tiny_server("qwen3-tiny", &[]);
    let (out, _) = bench_serve(
        &server,
        "bs-wrong-model",
        &[
            "--model",
            "no-such-model",
            "--num-prompts",
            "3",
            "--vocab-size",
            "512",
        ],
    );
    assert_one_line_error(&out, "the first request failed");
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
}

#[test]
fn an_unreachable_server_is_one_clear_line() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = nanovllm(&[
        "bench",
        "serve",
        "--base-url",
        &url,
        "--model",
        "m",
        "--num-prompts",
        "1",
    ]);
    assert_one_line_error(&out, "cannot connect");
}
