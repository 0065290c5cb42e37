//! End-to-end tests of `nanovllm generate` on the committed tiny fixtures:
//! real process, real files, real exit codes.

mod common;

use common::*;

#[test]
fn greedy_jsonl_matches_transformers_and_keeps_input_order() {
    for line in check_greedy_jsonl("qwen3-tiny") {
        assert!(line["text"].is_string());
    }
}

#[test]
fn bad_jsonl_lines_get_error_entries_while_good_lines_complete() {
    let dir = scratch("partial");
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        [
            r#"{"prompt": "hello world", "max_tokens": 4, "temperature": 0}"#,
            r#"{"prompt": ""}"#,
            r#"{"prompt_token_ids": [1, 2, 99999]}"#,
            r#"{"prompt": "hi", "temperature": -1}"#,
            r#"{not json"#,
            r#"{"prompt_token_ids": [5, 6, 7], "max_tokens": 3, "ignore_eos": true}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out_file = dir.join("out.jsonl");
    let model = fixture("qwen3-tiny");
    let out = generate(
        &model,
        &[
            "--input",
            input.to_str().unwrap(),
            "--output",
            out_file.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = jsonl_lines(&std::fs::read(&out_file).unwrap());
    assert_eq!(lines.len(), 6);
    assert!(lines[0]["error"].is_null() && lines[0]["text"].is_string());
    assert!(lines[0]["token_ids"].as_array().unwrap().len() <= 4);
    for (i, needle) in [(1, "empty"), (2, "99999"), (3, "temperature"), (4, "JSON")] {
        let err = lines[i]["error"].as_str().unwrap_or_default();
        assert!(err.contains(needle), "line {i}: {needle:?} not in {err:?}");
        assert_eq!(lines[i]["index"], i);
    }
    assert_eq!(lines[5]["token_ids"].as_array().unwrap().len(), 3);
    assert_eq!(lines[5]["finish_reason"], "length");
}

#[test]
fn readable_text_output_by_default() {
    let model = fixture("qwen3-tiny");
    let out = generate(
        &model,
        &[
            "--prompt",
            "the cat",
            "--prompt",
            "a dog",
            "--max-tokens",
            "5",
            "--temperature",
            "0.7",
            "--seed",
            "3",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[0] (") && text.contains("[1] ("), "{text}");
}

#[test]
fn nonexistent_model_path() {
    let out = nanovllm(&["generate", "--model", "/no/such/model", "--prompt", "x"]);
    assert_one_line_error(&out, "/no/such/model");
}

/// A missing file is reported with the OS's reason once, not once per level of the error
/// chain (the message of an error that also returned its cause from `source()` did that).
#[test]
fn a_missing_file_is_explained_once() {
    let model = fixture("qwen3-tiny");
    let model = model.to_str().unwrap();
    let cases: [&[&str]; 4] = [
        &["generate", "--model", "/no/such/model", "--prompt", "x"],
        &["bench", "--model-config", "/no/such/config.json"],
        &[
            "generate",
            "--config",
            "/no/such/engine.toml",
            "--prompt",
            "x",
        ],
        &[
            "generate",
            "--model",
            model,
            "--input",
            "/no/such/input.jsonl",
        ],
    ];
    for args in cases {
        let out = nanovllm(args);
        assert_one_line_error(&out, "/no/such/");
        let err = stderr(&out);
        assert_eq!(err.matches("(os error ").count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn unknown_architecture() {
    let dir = copy_fixture("qwen3-tiny", "arch");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("Qwen3ForCausalLM", "GPTNeoXForCausalLM"),
    )
    .unwrap();
    let out = generate(&dir, &["--prompt", "x"]);
    assert_one_line_error(&out, "GPTNeoXForCausalLM");
}

#[test]
fn truncated_safetensors() {
    let dir = copy_fixture("qwen3-tiny", "trunc");
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let out = generate(&dir, &["--prompt", "x"]);
    assert_one_line_error(&out, "model.safetensors");
}

#[test]
fn prompt_longer_than_max_model_len() {
    let model = fixture("qwen3-tiny");
    let long = "word ".repeat(200);
    let out = generate(&model, &["--max-model-len", "32", "--prompt", &long]);
    assert_one_line_error(&out, "max_model_len");
}

#[test]
fn empty_prompt() {
    let model = fixture("qwen3-tiny");
    let out = generate(&model, &["--prompt", ""]);
    assert_one_line_error(&out, "empty");
}

#[test]
fn bad_sampling_value() {
    let model = fixture("qwen3-tiny");
    for (flag, value) in [
        ("--top-p", "1.5"),
        ("--temperature", "-0.5"),
        ("--max-tokens", "0"),
    ] {
        let out = generate(&model, &["--prompt", "x", flag, value]);
        assert_one_line_error(&out, &flag[2..].replace('-', "_"));
    }
}

#[test]
fn token_id_out_of_vocab_with_prompt_token_ids() {
    let dir = scratch("oov");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, "{\"prompt_token_ids\": [3, 512]}\n").unwrap();
    let model = fixture("qwen3-tiny");
    let out = generate(
        &model,
        &["--input", input.to_str().unwrap(), "--output", "-"],
    );
    assert_eq!(out.status.code(), Some(1));
    let lines = jsonl_lines(&out.stdout);
    let err = lines[0]["error"].as_str().unwrap();
    assert!(err.contains("512"), "{err}");
}

#[test]
fn no_prompt_is_a_usage_error() {
    let model = fixture("qwen3-tiny");
    let out = generate(&model, &[]);
    assert_one_line_error(&out, "--prompt");
}
