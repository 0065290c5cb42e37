//! `nanovllm generate` on the tiny Mixtral fixtures, end to end: a real process, the
//! model picked by the registry from config.json like any other.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn nanovllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nanovllm"))
        .args(args)
        .output()
        .expect("the nanovllm binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh copy of a fixture under the system temp dir, so a test can damage it.
fn copy_fixture(name: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!(
        "nanovllm-cli-mixtral-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    dst
}

#[test]
fn greedy_jsonl_matches_transformers() {
    for name in ["mixtral-tiny", "mixtral-tiny-bf16"] {
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("reference.json")).unwrap(),
        )
        .unwrap();
        let cases = reference["cases"].as_array().unwrap();
        let input = std::env::temp_dir().join(format!(
            "nanovllm-cli-mixtral-{name}-{}.jsonl",
            std::process::id()
        ));
        let lines: Vec<String> = cases
            .iter()
            .map(|case| {
                format!(
                    "{{\"prompt_token_ids\": {}, \"max_tokens\": {}, \"temperature\": 0, \"ignore_eos\": true}}",
                    case["prompt_token_ids"],
                    case["greedy_token_ids"].as_array().unwrap().len()
                )
            })
            .collect();
        std::fs::write(&input, lines.join("\n")).unwrap();
        let model = fixture(name);
        let out = nanovllm(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            "-",
            "--kvcache-block-size",
            "16",
            "--device",
            "cpu",
        ]);
        let _ = std::fs::remove_file(&input);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("each stdout line is JSON"))
            .collect();
        assert_eq!(results.len(), cases.len(), "{name}");
        for (i, (line, case)) in results.iter().zip(cases).enumerate() {
            assert_eq!(line["index"], i);
            assert_eq!(
                line["token_ids"], case["greedy_token_ids"],
                "{name} case {}",
                case["name"]
            );
            assert_eq!(line["finish_reason"], "length");
        }
    }
}

#[test]
fn text_prompts_generate() {
    let model = fixture("mixtral-tiny");
    let out = nanovllm(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "the cat",
        "--prompt",
        "a dog",
        "--max-tokens",
        "6",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[0] (") && text.contains("[1] ("), "{text}");
}

/// A config that promises more experts than the checkpoint has: one line naming both counts.
#[test]
fn expert_count_mismatch_is_one_clear_line() {
    let dir = copy_fixture("mixtral-tiny");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let changed = config.replace("\"num_local_experts\": 8", "\"num_local_experts\": 9");
    assert_ne!(config, changed, "fixture config changed shape");
    std::fs::write(dir.join("config.json"), changed).unwrap();
    let out = nanovllm(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let err = stderr(&out);
    assert!(!out.status.success(), "expected failure; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(
        err.contains("9") && err.contains("8 experts") && err.contains("num_local_experts"),
        "{err}"
    );
}
