//! `nanovllm generate` on the tiny Mixtral fixtures, end to end: a real process, the
//! model picked by the registry from config.json like any other.

mod common;

use common::*;

#[test]
fn greedy_jsonl_matches_transformers() {
    for name in ["mixtral-tiny", "mixtral-tiny-bf16"] {
        check_greedy_jsonl(name);
    }
}

#[test]
fn text_prompts_generate() {
    let out = generate(
        &fixture("mixtral-tiny"),
        &[
            "--prompt",
            "the cat",
            "--prompt",
            "a dog",
            "--max-tokens",
            "6",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[0] (") && text.contains("[1] ("), "{text}");
}

/// A config that promises more experts than the checkpoint has: one line naming both counts.
#[test]
fn expert_count_mismatch_is_one_clear_line() {
    let dir = copy_fixture("mixtral-tiny", "mixtral-experts");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let changed = config.replace("\"num_local_experts\": 8", "\"num_local_experts\": 9");
    assert_ne!(config, changed, "fixture config changed shape");
    std::fs::write(dir.join("config.json"), changed).unwrap();
    let out = generate(&dir, &["--prompt", "x"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_one_line_error(&out, "num_local_experts");
    let err = stderr(&out);
    assert!(err.contains("9") && err.contains("8 experts"), "{err}");
}
