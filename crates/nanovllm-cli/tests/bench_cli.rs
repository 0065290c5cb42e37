//! End-to-end tests of `nanovllm bench` on the committed tiny fixtures: real process,
//! real files, real exit codes. The expected token counts come from the same bench.py
//! generator (`nanovllm_core::bench`), so a run that drops or adds a token fails.

mod common;

use common::*;
use nanovllm_core::bench::{Workload, WorkloadSpec};
use serde_json::Value;

/// A workload small enough for a debug build on two cores.
const TINY: WorkloadSpec = WorkloadSpec {
    num_seqs: 3,
    min_input: 4,
    max_input: 8,
    min_output: 2,
    max_output: 4,
};

const TINY_FLAGS: [&str; 14] = [
    "--num-seqs",
    "3",
    "--min-input",
    "4",
    "--max-input",
    "8",
    "--min-output",
    "2",
    "--max-output",
    "4",
    "--device",
    "cpu",
    "--kvcache-block-size",
    "16",
];

/// `nanovllm bench <model flags> <TINY_FLAGS> --json FILE`; returns the output and the JSON.
fn bench_tiny(tag: &str, model_flags: &[&str], extra: &[&str]) -> (std::process::Output, Value) {
    let dir = scratch(tag);
    let json_path = dir.join("bench.json");
    let json_flag = ["--json", json_path.to_str().unwrap()];
    let out = nanovllm(&[&["bench"][..], model_flags, &TINY_FLAGS, &json_flag, extra].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (out, json)
}

fn check_figures(json: &Value) {
    let workload = Workload::generate(&TINY).unwrap();
    assert_eq!(json["device"], "cpu");
    assert_eq!(json["num_seqs"], 3);
    assert_eq!(json["prompt_tokens"], workload.num_prompt_tokens());
    assert_eq!(json["output_tokens"], workload.num_output_tokens());
    assert_eq!(json["num_preemptions"], 0);
    for field in ["time_s", "output_tokens_per_s", "decode_tokens_per_s"] {
        assert!(
            json[field].as_f64().is_some_and(|x| x > 0.0),
            "{field}: {json}"
        );
    }
    let kv = json["peak_kv_cache_used_fraction"].as_f64().unwrap();
    assert!(kv > 0.0 && kv <= 1.0, "{json}");
    assert_eq!(json["cuda_graph_batch_sizes"], serde_json::json!([]));
}

#[test]
fn bench_on_a_model_directory_reports_the_workloads_tokens() {
    let model = fixture("qwen3-tiny-fullvocab");
    let (out, json) = bench_tiny("model", &["--model", model.to_str().unwrap()], &[]);
    check_figures(&json);
    assert_eq!(json["model"], model.to_str().unwrap());
    // The text report carries bench.py's line, which gpu-check's run.sh greps.
    let text = String::from_utf8_lossy(&out.stdout);
    let total = format!(
        "Total: {}tok, Time: ",
        Workload::generate(&TINY).unwrap().num_output_tokens()
    );
    assert!(text.lines().any(|l| l.starts_with(&total)), "{text}");
    assert!(text.contains("workload              3 seqs, "), "{text}");
}

#[test]
fn bench_on_a_config_json_runs_dummy_weights() {
    let config = fixture("qwen3-tiny-fullvocab").join("config.json");
    let flags = ["--model-config", config.to_str().unwrap()];
    let (_, json) = bench_tiny("model-config", &flags, &["--temperature", "0"]);
    check_figures(&json);
    assert_eq!(json["model"], config.to_str().unwrap());
}

#[test]
fn bench_without_a_model_says_which_flags_to_give() {
    let out = nanovllm(&[&["bench"][..], &TINY_FLAGS].concat());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_one_line_error(&out, "give --model DIR or --model-config FILE");
}

#[test]
fn bench_refuses_a_model_whose_vocabulary_the_workload_overflows() {
    let model = fixture("qwen3-tiny");
    let out = nanovllm(
        &[
            &["bench", "--model", model.to_str().unwrap()][..],
            &TINY_FLAGS,
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_one_line_error(&out, "vocab_size = 512");
}

#[test]
fn bench_refuses_a_bad_workload_naming_the_field() {
    let model = fixture("qwen3-tiny-fullvocab");
    let out = nanovllm(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--num-seqs",
        "2",
        "--min-input",
        "9",
        "--max-input",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_one_line_error(&out, "min_input = 9");
}

#[test]
fn model_and_model_config_conflict() {
    let model = fixture("qwen3-tiny-fullvocab");
    let config = model.join("config.json");
    let out = nanovllm(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--model-config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bench_throughput_is_the_default_mode_by_name() {
    let config = fixture("qwen3-tiny-fullvocab").join("config.json");
    let dir = scratch("throughput-mode");
    let json_path = dir.join("bench.json");
    let flags = [
        "bench",
        "throughput",
        "--model-config",
        config.to_str().unwrap(),
        "--json",
        json_path.to_str().unwrap(),
    ];
    let out = nanovllm(&[&flags[..], &TINY_FLAGS].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    check_figures(&serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--quantization` and `--kv-cache-dtype` reach the engine and the report: the weight
/// format, the cache's dtype, and an FP8 cache holding twice the tokens of a bf16 one in
/// the same `--kv-cache-memory-gib`. Random weights of a shape whose every in-features is a
/// multiple of 32 (int4's block), with bench.py's vocabulary.
#[test]
fn bench_reports_the_weight_format_and_the_kv_cache() {
    let dir = scratch("bench-quant");
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("qwen3-tiny-fullvocab").join("config.json")).unwrap(),
    )
    .unwrap();
    for (key, value) in [
        ("hidden_size", 128),
        ("head_dim", 32),
        ("num_attention_heads", 4),
        ("num_key_value_heads", 2),
        ("intermediate_size", 256),
        ("vocab_size", 10240),
    ] {
        config[key] = value.into();
    }
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let flags = [
        "--model-config",
        config_path.to_str().unwrap(),
        "--kv-cache-memory-gib",
        "0.01",
    ];
    let (_, plain) = bench_tiny("bench-plain", &flags, &[]);
    assert_eq!(plain["weights"], "bf16");
    assert_eq!(plain["kv_cache_dtype"], "bf16");
    let (out, quant) = bench_tiny(
        "bench-int4-fp8",
        &flags,
        &["--quantization", "int4", "--kv-cache-dtype", "fp8"],
    );
    check_figures(&quant);
    assert_eq!(quant["weights"], "int4_g32");
    assert_eq!(quant["kv_cache_dtype"], "f8_e4m3");
    // Whole 16-token blocks: half the bytes per block, so twice the blocks (or one more).
    let (bf16_tokens, fp8_tokens) = (
        plain["kv_cache_tokens"].as_u64().unwrap(),
        quant["kv_cache_tokens"].as_u64().unwrap(),
    );
    assert!(bf16_tokens > 0 && bf16_tokens % 16 == 0, "{plain}");
    assert!(
        fp8_tokens == 2 * bf16_tokens || fp8_tokens == 2 * bf16_tokens + 16,
        "{fp8_tokens} vs {bf16_tokens}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("weights               int4_g32\n"), "{text}");
    assert!(
        text.contains(&format!(
            "KV cache              f8_e4m3, {fp8_tokens} tokens\n"
        )),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
