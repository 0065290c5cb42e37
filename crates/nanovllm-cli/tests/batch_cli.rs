//! `nanovllm generate --input` in OpenAI's batch format (vLLM's run-batch), end to
//! end on the qwen3-tiny fixture (its byte-level tokenizer and Qwen3's chat
//! template): output lines in the batch shape and in input order, answers equal to
//! the simple format's and to the chat template's rendering, `n`, `stop`,
//! logprobs, bad lines among good ones, and stdin.

mod common;

use std::process::Output;

use common::*;
use nanovllm_core::{ChatMessage, ChatTemplate};
use serde_json::{json, Map, Value};

/// `nanovllm generate` on qwen3-tiny with `args`, `stdin` piped in.
fn generate_with_stdin(args: &[&str], stdin: &str) -> Output {
    let model = fixture("qwen3-tiny");
    let base = ["generate", "--model", model.to_str().unwrap()];
    nanovllm_with_stdin(&[&base[..], &TINY_ENGINE, args].concat(), stdin)
}

/// Runs batch `lines` from a file, output on stdout; returns the exit code and the lines.
fn run_batch(lines: &[Value]) -> (Option<i32>, Vec<Value>) {
    let dir = scratch("batch");
    let input = dir.join("in.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let out = generate(
        &fixture("qwen3-tiny"),
        &[
            &TINY_ENGINE[..],
            &["--input", input.to_str().unwrap(), "--output", "-"],
        ]
        .concat(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let lines = jsonl_lines(&out.stdout);
    (out.status.code(), lines)
}

fn line(custom_id: &str, url: &str, body: Value) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": url, "body": body})
}

/// The checks every answered line passes; returns its body.
fn answered<'a>(out: &'a Value, custom_id: &str, object: &str) -> &'a Value {
    assert!(
        out["id"].as_str().unwrap().starts_with("batch_req_"),
        "{out}"
    );
    assert_eq!(out["custom_id"], custom_id, "{out}");
    assert!(out["error"].is_null(), "{out}");
    let response = &out["response"];
    assert_eq!(response["status_code"], 200, "{out}");
    let body = &response["body"];
    assert_eq!(response["request_id"], body["id"], "{out}");
    assert_eq!(body["object"], object, "{out}");
    let usage = &body["usage"];
    let completion_tokens = usage["completion_tokens"].as_u64().unwrap();
    assert!(completion_tokens >= 1, "{out}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion_tokens,
        "{out}"
    );
    body
}

/// A line that failed: `error` has a code and a message; returns the message.
fn failed(out: &Value, custom_id: Option<&str>, code: &str) -> String {
    assert!(
        out["id"].as_str().unwrap().starts_with("batch_req_"),
        "{out}"
    );
    assert_eq!(out["custom_id"], json!(custom_id), "{out}");
    assert_eq!(out["error"]["code"], code, "{out}");
    out["error"]["message"].as_str().unwrap().to_string()
}

/// The simple format's greedy text for `prompt`.
fn simple_text(prompt: &str, max_tokens: usize) -> String {
    let out = generate(
        &fixture("qwen3-tiny"),
        &[
            &TINY_ENGINE[..],
            &[
                "--prompt",
                prompt,
                "--max-tokens",
                &max_tokens.to_string(),
                "--temperature",
                "0",
                "--output",
                "-",
            ],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    jsonl_lines(&out.stdout)[0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn completions_and_chat_lines_are_answered_as_the_server_would() {
    let template = ChatTemplate::from_tokenizer_dir(&fixture("qwen3-tiny"))
        .unwrap()
        .unwrap();
    let rendered = template
        .render(&[ChatMessage::user("hello")], true, &Map::new())
        .unwrap();
    let greedy = json!({"max_tokens": 5, "temperature": 0});
    let with = |extra: Value| {
        let mut body = greedy.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let (code, out) = run_batch(&[
        line(
            "two",
            "/v1/completions",
            with(json!({"prompt": "hello world", "n": 2})),
        ),
        line(
            "chat",
            "/v1/chat/completions",
            with(json!({"messages": [{"role": "user", "content": "hello"}]})),
        ),
        line(
            "templated",
            "/v1/completions",
            with(json!({"prompt": rendered})),
        ),
        line(
            "logprobs",
            "/v1/completions",
            with(json!({"prompt": "the cat", "logprobs": 2})),
        ),
    ]);
    assert_eq!(code, Some(0), "{out:?}");
    assert_eq!(out.len(), 4);

    let two = answered(&out[0], "two", "text_completion");
    let choices = two["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    let expected = simple_text("hello world", 5);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["text"], expected.as_str(), "greedy choices agree");
    }

    // A chat line is its messages through the chat template, then a completion.
    let chat = answered(&out[1], "chat", "chat.completion");
    let templated = answered(&out[2], "templated", "text_completion");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        templated["choices"][0]["text"]
    );
    assert_eq!(chat["usage"], templated["usage"]);

    let logprobs = answered(&out[3], "logprobs", "text_completion");
    let lp = &logprobs["choices"][0]["logprobs"];
    let tokens = logprobs["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), tokens);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
}

#[test]
fn a_stop_string_cuts_the_text() {
    let full = simple_text("the cat", 10);
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 4, "the fixture should say more: {full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = &full[..full.find(&stop).unwrap()];
    let (code, out) = run_batch(&[line(
        "s",
        "/v1/completions",
        json!({"prompt": "the cat", "max_tokens": 10, "temperature": 0, "stop": [stop]}),
    )]);
    assert_eq!(code, Some(0), "{out:?}");
    let body = answered(&out[0], "s", "text_completion");
    assert_eq!(body["choices"][0]["text"], cut);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[test]
fn bad_lines_get_errors_while_the_others_complete() {
    let ok = json!({"prompt": "hello", "max_tokens": 3, "temperature": 0});
    let mut lines: Vec<String> = [
        line("good", "/v1/completions", ok.clone()),
        line("embed", "/v1/embeddings", ok.clone()),
        line(
            "schema",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}],
                   "response_format": {"type": "json_schema"}}),
        ),
        line(
            "hot",
            "/v1/completions",
            json!({"prompt": "hello", "temperature": 9}),
        ),
        line("good", "/v1/completions", ok.clone()),
        json!({"prompt": "a simple-format line"}),
        line(
            "stream",
            "/v1/completions",
            json!({"prompt": "hello", "stream": true}),
        ),
        line(
            "long",
            "/v1/completions",
            json!({"prompt": "hello", "max_tokens": 100000}),
        ),
        line(
            "chat",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
        ),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    lines.insert(2, "{not json".into());
    let dir = scratch("batch-bad");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = dir.join("out.jsonl");
    let run = generate(
        &fixture("qwen3-tiny"),
        &[
            &TINY_ENGINE[..],
            &[
                "--input",
                input.to_str().unwrap(),
                "--output",
                output.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    let out = jsonl_lines(&std::fs::read(&output).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.len(), 10);

    answered(&out[0], "good", "text_completion");
    let message = failed(&out[1], Some("embed"), "invalid_url");
    assert!(message.starts_with("line 2: "), "{message}");
    assert!(out[1]["response"].is_null());
    let message = failed(&out[2], None, "invalid_json_line");
    assert!(message.starts_with("line 3: invalid JSON"), "{message}");
    // Refused by the endpoint: the server's error body, and `error` too.
    let message = failed(&out[3], Some("schema"), "invalid_request_error");
    assert!(message.contains("needs `json_schema`"), "{message}");
    assert_eq!(out[3]["response"]["status_code"], 400);
    assert_eq!(
        out[3]["response"]["body"]["error"]["param"],
        "response_format.json_schema"
    );
    let message = failed(&out[4], Some("hot"), "invalid_request_error");
    assert!(message.contains("temperature"), "{message}");
    let message = failed(&out[5], Some("good"), "duplicate_custom_id");
    assert!(message.contains("already used"), "{message}");
    let message = failed(&out[6], None, "invalid_json_line");
    assert!(message.contains("one input holds one format"), "{message}");
    let message = failed(&out[7], Some("stream"), "invalid_request_error");
    assert!(message.contains("stream"), "{message}");
    failed(&out[8], Some("long"), "context_length_exceeded");
    assert_eq!(out[8]["response"]["status_code"], 400);
    answered(&out[9], "chat", "chat.completion");
}

#[test]
fn stdin_takes_either_format() {
    let batch = format!(
        "{}\n\n{}\n",
        line(
            "a",
            "/v1/completions",
            json!({"prompt": "hello world", "max_tokens": 4, "temperature": 0})
        ),
        line(
            "b",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        ),
    );
    // Without --output, the batch output lines go to stdout.
    let out = generate_with_stdin(&["--input", "-"], &batch);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = jsonl_lines(&out.stdout);
    assert_eq!(lines.len(), 2);
    let a = answered(&lines[0], "a", "text_completion");
    assert_eq!(a["choices"][0]["text"], simple_text("hello world", 4));
    let b = answered(&lines[1], "b", "chat.completion");
    // The run ends with its summary line, counting what the two lines used.
    let tokens = |body: &Value, k: &str| body["usage"][k].as_u64().unwrap();
    let summary = format!(
        "generate done: lines 2, prompt tokens {}, output tokens {},",
        tokens(a, "prompt_tokens") + tokens(b, "prompt_tokens"),
        tokens(a, "completion_tokens") + tokens(b, "completion_tokens")
    );
    assert!(
        stderr(&out).contains(&summary),
        "{summary:?} not in {}",
        stderr(&out)
    );

    let simple = "{\"prompt\": \"hello world\", \"max_tokens\": 4, \"temperature\": 0}\n{\"custom_id\": \"x\"}\n";
    let out = generate_with_stdin(&["--input", "-", "--output", "-"], simple);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = jsonl_lines(&out.stdout);
    assert_eq!(lines[0]["text"], simple_text("hello world", 4));
    assert!(lines[1]["error"]
        .as_str()
        .unwrap()
        .contains("one input holds one format"));
}
