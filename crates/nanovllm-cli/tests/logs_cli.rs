//! What the `nanovllm` binary logs on stderr, run as a user runs it on the qwen3-tiny
//! fixture: the start-up block, generate's summary line, the -q / -v / RUST_LOG levels,
//! plain text when piped, and serve's per-request line and vLLM metric names.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

/// The binary with `args`, `RUST_LOG` and `NO_COLOR` as given here only.
fn run(rust_log: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nanovllm"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    command.output().expect("the nanovllm binary runs")
}

/// `generate` on qwen3-tiny: one prompt, 4 tokens, then the global flags in `extra`.
fn generate_tiny(rust_log: Option<&str>, extra: &[&str]) -> Output {
    let model = fixture("qwen3-tiny");
    let base = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hello world",
        "--max-tokens",
        "4",
        "--ignore-eos",
    ];
    let out = run(rust_log, &[&base[..], extra].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(4 tokens, finish: length)"),
        "the output is unchanged by logging"
    );
    out
}

#[test]
fn generate_logs_the_start_up_block_then_a_summary_in_plain_text() {
    let out = generate_tiny(None, &[]);
    let err = stderr(&out);
    assert!(
        !out.stderr.contains(&0x1b),
        "an ANSI escape in piped stderr: {err:?}"
    );
    assert!(
        err.lines().all(is_log_record),
        "every stderr line is a log record: {err}"
    );
    let info = log_messages(&out, "INFO");
    // The block, in order, each line once.
    let block = [
        "model: ",
        "weights: ",
        "device: cpu, ",
        "KV cache: ",
        "Maximum concurrency for ",
    ];
    let at: Vec<usize> = block
        .iter()
        .map(|prefix| {
            let found: Vec<usize> = (0..info.len())
                .filter(|&i| info[i].starts_with(prefix))
                .collect();
            assert!(!found.is_empty(), "no {prefix:?} line in {info:#?}");
            found[0]
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "out of order: {info:#?}"
    );
    assert!(
        info[at[0]].contains("qwen3-tiny (Qwen3ForCausalLM, f32 weights)"),
        "{}",
        info[at[0]]
    );
    assert!(info[at[1]].contains(" loaded in "), "{}", info[at[1]]);
    assert!(info[at[2]].contains("CPU threads"), "{}", info[at[2]]);
    assert!(
        info[at[3]].contains(" blocks of ") && info[at[3]].contains("iB"),
        "{}",
        info[at[3]]
    );
    // At max_model_len, then at this run's average request (2 prompt tokens + 4).
    assert!(info[at[4]].ends_with('x'), "{}", info[at[4]]);
    assert!(
        info.iter()
            .any(|m| m.starts_with("Maximum concurrency for ")
                && m.ends_with("(these requests' average prompt + max_tokens)")),
        "{info:#?}"
    );
    let summary = info.last().unwrap();
    assert!(
        summary.starts_with("generate done: requests 1, prompt tokens ")
            && summary.contains(", output tokens 4, time ")
            && summary.contains(" tok/s, decode ")
            && summary.ends_with(" tok/s"),
        "{summary}"
    );
}

#[test]
fn quiet_silences_info_and_keeps_warnings() {
    for flags in [&["-q"][..], &["--quiet"][..]] {
        let out = generate_tiny(None, flags);
        assert!(
            log_messages(&out, "INFO").is_empty(),
            "{flags:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).trim().is_empty(), "{}", stderr(&out));
    }
    // A warning still shows with -q: an unreadable RUST_LOG is one.
    let out = generate_tiny(Some("nanovllm=notalevel"), &["-q"]);
    let warnings = log_messages(&out, "WARN");
    assert!(
        warnings.len() == 1 && warnings[0].contains("ignoring RUST_LOG"),
        "{}",
        stderr(&out)
    );
    assert!(log_messages(&out, "INFO").is_empty(), "{}", stderr(&out));
}

#[test]
fn verbose_and_rust_log_add_debug_records() {
    let normal = generate_tiny(None, &[]);
    assert!(
        log_messages(&normal, "DEBUG").is_empty(),
        "{}",
        stderr(&normal)
    );
    let finished = |out: &Output| {
        log_messages(out, "DEBUG")
            .iter()
            .any(|m| m.starts_with("request finished"))
    };
    let verbose = generate_tiny(None, &["-v"]);
    assert!(finished(&verbose), "{}", stderr(&verbose));
    let env = generate_tiny(Some("debug"), &[]);
    assert!(finished(&env), "{}", stderr(&env));
    // RUST_LOG wins over the flags.
    let env_over_quiet = generate_tiny(Some("nanovllm=debug"), &["-q"]);
    assert!(finished(&env_over_quiet), "{}", stderr(&env_over_quiet));
    assert!(!log_messages(&env_over_quiet, "INFO").is_empty());
}

/// `method path` on `addr` with a JSON `body` (or none); the response body.
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the sample named exactly `series` in a Prometheus text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn serve_logs_each_request_and_exposes_vllm_metrics() {
    let model = fixture("qwen3-tiny");
    let server = Server::start(&["--model", model.to_str().unwrap()]);
    let addr = server.addr.clone();
    let request = serde_json::json!({
        "model": "qwen3-tiny",
        "prompt": "hello world",
        "max_tokens": 3,
        "temperature": 0,
        "ignore_eos": true,
    });
    let answer: Value =
        serde_json::from_str(&http(&addr, "POST", "/v1/completions", Some(&request))).unwrap();
    let prompt_tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 3, "{answer}");
    // The engine thread publishes its gauges and the request's latency just after the
    // answer is sent: wait for them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let label = r#"{model_name="qwen3-tiny"}"#;
    let metrics = loop {
        let metrics = http(&addr, "GET", "/metrics", None);
        let done = sample(&metrics, &format!("vllm:num_requests_running{label}")) == 0.0
            && sample(
                &metrics,
                &format!("vllm:e2e_request_latency_seconds_count{label}"),
            ) == 1.0;
        if done || std::time::Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let err = server.stop();

    for (series, want) in [
        ("vllm:prompt_tokens_total", prompt_tokens as f64),
        ("vllm:generation_tokens_total", 3.0),
        ("vllm:num_requests_running", 0.0),
        ("vllm:num_requests_waiting", 0.0),
        ("vllm:gpu_cache_usage_perc", 0.0),
        ("vllm:time_to_first_token_seconds_count", 1.0),
        ("vllm:time_per_output_token_seconds_count", 2.0),
        ("vllm:e2e_request_latency_seconds_count", 1.0),
    ] {
        assert_eq!(
            sample(&metrics, &format!("{series}{label}")),
            want,
            "{series}"
        );
    }
    let bucket = r#"vllm:e2e_request_latency_seconds_bucket{model_name="qwen3-tiny",le="+Inf"}"#;
    assert_eq!(sample(&metrics, bucket), 1.0);

    assert!(!err.contains('\u{1b}'), "an ANSI escape in piped stderr");
    let line = format!(" finished: prompt_tokens {prompt_tokens}, completion_tokens 3, time ");
    let logged: Vec<&str> = err
        .lines()
        .filter(|l| is_log_record(l) && l.contains(" INFO ") && l.contains(&line))
        .filter(|l| l.split_once(": request ").is_some())
        .collect();
    assert_eq!(logged.len(), 1, "{line:?} not logged once in\n{err}");
    assert!(
        logged[0].ends_with(" s, finish_reason length"),
        "{}",
        logged[0]
    );
    assert!(err.contains("KV cache: "), "the start-up block: {err}");
}
