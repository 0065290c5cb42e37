//! Quantization quality, measured as perplexity on `fixtures/qwen3-trained` (a small Qwen3
//! trained on this repository's text; random weights cannot show quantization error) over
//! its held-out `eval.jsonl` (24 lines, 5585 scored tokens), through the engine's prompt
//! logprobs ([`nanovllm_core::perplexity`]).
//!
//! Each quantized run is compared with the unquantized one (the bf16 checkpoint, the CPU's
//! default bf16 KV cache), computed once per test binary. The bounds are the issue's: int8
//! ≤ 1.01×, int4 ≤ 1.10×, FP8 weights (in-situ `--quantization fp8`, and the FP8 checkpoint
//! `fixtures/qwen3-trained-fp8`) ≤ 1.02×, FP8 KV cache ≤ 1.02×. Each test also checks that
//! the quantization changed the perplexity at all (by more than 1e-6 relative), so a setting
//! the engine silently ignored fails instead of passing at 1.000×.
//!
//! Measured ratios are in each test's comment (2-core x86 CPU, 2026-12-08, with the loader,
//! FP8 cache and CPU kernels of issue 18; unquantized: 126.4347). They are small against the
//! bounds: this fixture is tiny and briefly trained, so int4 costs it 0.26 %, not the
//! few percent of a real model; still 160× the tool's own error (1.6e-5 relative), so a
//! broken quantizer (wrong scale, nibble order, block layout) shows as far more.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nanovllm_core::perplexity::{score, PerplexityReport};
use nanovllm_core::{DeviceKind, EngineConfig, KvCacheDType, LLMEngine, Quantization};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// The eval set's token ids, one line per request.
fn eval_lines() -> Vec<Vec<u32>> {
    let path = fixture("qwen3-trained").join("eval.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            serde_json::from_value(value["prompt_token_ids"].clone()).unwrap()
        })
        .collect()
}

/// The CPU, 256-token blocks and room for every eval line at once (24 × ≤ 256 tokens).
fn config(model: &str) -> EngineConfig {
    let model = fixture(model);
    assert!(
        model.join("config.json").is_file(),
        "fixture {} is missing",
        model.display()
    );
    EngineConfig {
        device: DeviceKind::Cpu,
        kvcache_block_size: 256,
        num_kvcache_blocks: Some(32),
        ..EngineConfig::new(model)
    }
}

fn perplexity(config: EngineConfig) -> PerplexityReport {
    let mut engine = LLMEngine::new(config).unwrap();
    score(&mut engine, eval_lines(), &mut |_| {}).unwrap()
}

/// The unquantized perplexity, computed once.
fn unquantized() -> f64 {
    static PERPLEXITY: OnceLock<f64> = OnceLock::new();
    *PERPLEXITY.get_or_init(|| perplexity(config("qwen3-trained")).perplexity)
}

/// Checks `config`'s perplexity against the unquantized one: at most `bound` times it, and
/// not equal to it. Returns the ratio (printed, for the comments).
fn check_ratio(what: &str, config: EngineConfig, bound: f64) -> f64 {
    let report = perplexity(config);
    assert_eq!((report.tokens, report.lines), (5585, 24));
    let ratio = report.perplexity / unquantized();
    eprintln!(
        "{what}: perplexity {:.4}, unquantized {:.4}, ratio {ratio:.5}",
        report.perplexity,
        unquantized()
    );
    assert!(
        (ratio - 1.0).abs() > 1e-6,
        "{what} left the perplexity unchanged ({ratio}): was it applied?"
    );
    assert!(ratio <= bound, "{what}: ratio {ratio} > {bound}");
    ratio
}

fn quantized(quantization: Quantization) -> EngineConfig {
    EngineConfig {
        quantization: Some(quantization),
        ..config("qwen3-trained")
    }
}

/// int8, a scale per 32 weights. Measured: 126.4237, ratio 0.99991.
#[test]
fn int8_weights_stay_within_1_percent() {
    check_ratio("int8", quantized(Quantization::Int8), 1.01);
}

/// int4, a scale and minimum per 32 weights. Measured: 126.7566, ratio 1.00255.
#[test]
fn int4_weights_stay_within_10_percent() {
    check_ratio("int4", quantized(Quantization::Int4), 1.10);
}

/// FP8 e4m3 quantized while loading, a scale per 128 weights. Measured: 126.5382, ratio
/// 1.00082.
#[test]
fn fp8_weights_in_situ_stay_within_2_percent() {
    check_ratio("fp8 in situ", quantized(Quantization::Fp8), 1.02);
}

/// The FP8 checkpoint of the same model (128×128 `weight_scale_inv` blocks), loaded as it
/// is. Measured: 126.4150, ratio 0.99984.
#[test]
fn fp8_checkpoint_stays_within_2_percent() {
    check_ratio("fp8 checkpoint", config("qwen3-trained-fp8"), 1.02);
}

/// An FP8 e4m3 KV cache (scale 1.0) under bf16 weights. Measured: 126.4848, ratio 1.00040.
#[test]
fn fp8_kv_cache_stays_within_2_percent() {
    let config = EngineConfig {
        kv_cache_dtype: KvCacheDType::Fp8,
        ..config("qwen3-trained")
    };
    check_ratio("fp8 kv cache", config, 1.02);
}
