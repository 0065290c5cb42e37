//! `--dtype` on the golden fixtures: every float weight converted while loading
//! ([`load_model_as`]), then the same prefill as the golden tests, on the CPU backend.
//!
//! - `qwen3-tiny` (f32) as **bf16** against `reference_bf16_weights.json`: transformers with
//!   every parameter rounded to bf16 and f32 math (`scripts/make_dtype_reference.py`), which
//!   is what the CPU backend computes with bf16 weights. Tolerance **1e-4 absolute**, as for
//!   the bf16 checkpoints' golden tests (bf16 widens exactly; only f32 summation order
//!   differs). The rounding moves these logits by up to 0.19 from the f32 reference, so a
//!   load that skipped the conversion fails by three orders of magnitude.
//! - `qwen3-tiny-bf16` as **f32** against its `reference.json` (transformers' f32-upcast
//!   result), at the same 1e-4: widening bf16 is exact, so the f32 copy computes the same.

mod common;

use common::*;
use nanovllm_kernels::DType;
use nanovllm_models::{load_model_as, LoadFormat, ModelConfig};
use serde_json::Value;

const TOL: f32 = 1e-4;
const BLOCK_SIZE: usize = 16;

/// `(name, prompt, last-position logits)` of every case in `fixtures/<fixture>/<file>`.
fn reference_cases(fixture: &str, file: &str) -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let path = fixture_dir(fixture).join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (see fixtures/README.md)", path.display()));
    let reference: Value = serde_json::from_str(&text).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    cases
        .iter()
        .map(|c| {
            let floats = |v: &Value| -> Vec<f32> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            };
            let prompt = c["prompt_token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            (
                c["name"].as_str().unwrap().to_owned(),
                prompt,
                floats(&c["last_logits"]),
            )
        })
        .collect()
}

/// The last-position logits of a prefill of `prompt` with `fixture`'s weights in `dtype`.
fn last_logits_as(fixture: &str, dtype: DType, prompt: &[u32]) -> Vec<f32> {
    let dir = fixture_dir(fixture);
    let config = ModelConfig::from_dir(&dir).unwrap();
    let ctx = cpu_context();
    let model = load_model_as(&config, &dir, LoadFormat::Safetensors, &ctx, Some(dtype)).unwrap();
    let backend = ctx.backend.as_ref();
    let blocks = prompt.len().div_ceil(BLOCK_SIZE);
    let table: Vec<u32> = (0..blocks as u32).collect();
    let mut cache = new_cache(backend, model.as_ref(), blocks, BLOCK_SIZE);
    let seqs = [SeqStep::prefill(&table, prompt)];
    run_step(model.as_ref(), backend, &mut cache, BLOCK_SIZE, true, &seqs).remove(0)
}

#[test]
fn an_f32_checkpoint_as_bf16_matches_transformers_with_bf16_rounded_weights() {
    let f32_reference = reference_cases("qwen3-tiny", "reference.json");
    let mut moved = 0f32;
    for (name, prompt, expected) in reference_cases("qwen3-tiny", "reference_bf16_weights.json") {
        let got = last_logits_as("qwen3-tiny", DType::BF16, &prompt);
        let diff = max_abs_diff(&got, &expected);
        assert!(diff <= TOL, "{name}: {diff} > {TOL}");
        assert_eq!(argmax(&got), argmax(&expected), "{name}");
        let (_, _, f32_logits) = f32_reference.iter().find(|(n, ..)| *n == name).unwrap();
        moved = moved.max(max_abs_diff(&got, f32_logits));
    }
    assert!(
        moved > 1e-2,
        "bf16 weights moved the logits by only {moved}"
    );
}

#[test]
fn a_bf16_checkpoint_as_f32_matches_the_f32_upcast_reference() {
    for (name, prompt, expected) in reference_cases("qwen3-tiny-bf16", "reference.json") {
        let got = last_logits_as("qwen3-tiny-bf16", DType::F32, &prompt);
        let diff = max_abs_diff(&got, &expected);
        assert!(diff <= TOL, "{name}: {diff} > {TOL}");
        assert_eq!(argmax(&got), argmax(&expected), "{name}");
    }
}
