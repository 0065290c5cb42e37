//! End-to-end tests of the vLLM-named engine flags on `nanovllm generate`: `--seed` (the
//! engine's), `--dtype`, `--generation-config`, `--block-size`, `--no-enable-prefix-caching`,
//! `--threads` and an explicit `--max-model-len` the cache cannot hold.

mod common;

use common::*;
use serde_json::Value;

/// The completions' token ids of two prompts run with `sampling` and `extra` flags.
fn token_ids(sampling: &[&str], extra: &[&str]) -> Vec<Value> {
    let model = fixture("qwen3-tiny");
    let prompts = ["--prompt", "the cat", "--prompt", "a dog"];
    let output = ["--ignore-eos", "--output", "-", "--quiet"];
    let out = generate(&model, &[&prompts[..], sampling, &output, extra].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    jsonl_lines(&out.stdout)
        .into_iter()
        .map(|line| line["token_ids"].clone())
        .collect()
}

/// Sampled at temperature 1, 16 tokens each.
fn sampled_token_ids(extra: &[&str]) -> Vec<Value> {
    token_ids(&["--max-tokens", "16", "--temperature", "1.0"], extra)
}

#[test]
fn the_engine_seed_makes_sampled_runs_repeat_and_other_seeds_differ() {
    let first = sampled_token_ids(&["--seed", "3"]);
    assert_eq!(first.len(), 2);
    assert_eq!(sampled_token_ids(&["--seed", "3"]), first);
    assert_ne!(sampled_token_ids(&["--seed", "4"]), first);
    // The two prompts of one run draw from different per-request seeds.
    assert_ne!(first[0], first[1]);
}

#[test]
fn engine_flags_with_vllm_names_run() {
    let greedy = |extra: &[&str]| token_ids(&["--temperature", "0", "--max-tokens", "6"], extra);
    let reference = greedy(&[]);
    // Block size, prefix caching and threads change how, never what.
    for extra in [
        &["--block-size", "32"][..],
        &["--kvcache-block-size", "32"],
        &["--no-enable-prefix-caching"],
        &["--threads", "1"],
        &["--dtype", "float32"],
    ] {
        assert_eq!(greedy(extra), reference, "{extra:?}");
    }
    // bf16 and f16 weights run (their logits are checked in the models crate).
    for dtype in ["bf16", "half"] {
        assert_eq!(greedy(&["--dtype", dtype]).len(), 2, "{dtype}");
    }
}

#[test]
fn generation_config_folder_and_vllm() {
    let model = fixture("qwen3-tiny");
    let model = model.to_str().unwrap();
    // A folder whose generation config asks for greedy decoding of 3 tokens.
    let folder = scratch("genconfig");
    std::fs::write(
        folder.join("generation_config.json"),
        r#"{"do_sample": false, "max_new_tokens": 3, "eos_token_id": 511}"#,
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let args = [
            &["generate", "--model", model, "--prompt", "the cat"][..],
            &["--ignore-eos", "--output", "-", "--quiet"],
            extra,
        ]
        .concat();
        let out = nanovllm(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        jsonl_lines(&out.stdout).remove(0)["token_ids"].clone()
    };
    let from_folder = run(&["--generation-config", folder.to_str().unwrap()]);
    assert_eq!(from_folder.as_array().unwrap().len(), 3);
    assert_eq!(
        from_folder,
        run(&["--temperature", "0", "--max-tokens", "3"])
    );
    // vllm: not the folder's max_new_tokens nor the model's; the engine's default length.
    let vllm = run(&["--generation-config", "vllm", "--seed", "1"]);
    assert!(vllm.as_array().unwrap().len() > 3, "{vllm}");
    let missing = nanovllm(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "x",
        "--generation-config",
        "/no/such/folder",
    ]);
    assert_one_line_error(&missing, "/no/such/folder/generation_config.json");
}

#[test]
fn an_explicit_max_model_len_beyond_the_cache_is_refused_with_the_numbers() {
    let model = fixture("qwen3-tiny");
    let out = generate(
        &model,
        &[
            "--prompt",
            "x",
            "--num-kvcache-blocks",
            "2",
            "--block-size",
            "16",
            "--max-model-len",
            "100",
        ],
    );
    assert_one_line_error(
        &out,
        "max_model_len = 100 does not fit in the KV cache, which holds 32 tokens",
    );
}
