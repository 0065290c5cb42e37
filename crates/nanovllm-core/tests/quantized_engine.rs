//! `--quantization` through the engine on the trained fixture (`qwen3-trained`): the
//! engine and its tensor-parallel ranks all load quantized weights. Prompt logprobs of an
//! eval line with int4 weights:
//! - differ from the unquantized engine's (by more than 1e-3 somewhere: the option took
//!   effect), while the line's total stays within 1% (the int4 bound is 10% on
//!   perplexity);
//! - are the same at a tensor-parallel size of 2 (threads) to 1e-4, as the other TP tests:
//!   a rank that loaded unquantized weights would differ by the quantization error.

use std::path::{Path, PathBuf};

use nanovllm_core::tp::TpMode;
use nanovllm_core::{
    DeviceKind, EngineConfig, KvCacheDType, LLMEngine, Quantization, SamplingParams,
};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-trained")
}

fn eval_line() -> Vec<u32> {
    let text = std::fs::read_to_string(fixture_dir().join("eval.jsonl")).unwrap();
    let v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    v["prompt_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .take(96)
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Each prompt position's logprob (position 0 has none).
fn prompt_logprobs(quantization: Option<Quantization>, tp: usize) -> Vec<f32> {
    let mut config = EngineConfig {
        device: DeviceKind::Cpu,
        kvcache_block_size: 16,
        num_kvcache_blocks: Some(16),
        kv_cache_dtype: KvCacheDType::F32,
        quantization,
        tensor_parallel_size: tp,
        ..EngineConfig::new(fixture_dir())
    };
    config.tp.mode = TpMode::Threads;
    let mut engine = LLMEngine::new(config).unwrap();
    let params = SamplingParams {
        prompt_logprobs: Some(0),
        ignore_eos: true,
        ..SamplingParams::greedy(1)
    };
    let id = engine.add_request(eval_line(), params).unwrap();
    while engine.has_unfinished() {
        if let Some(output) = engine.step().unwrap().finished.into_iter().next() {
            assert_eq!(output.request_id, id);
            let entries = output.prompt_logprobs.unwrap();
            return entries
                .iter()
                .skip(1)
                .map(|e| e.as_ref().unwrap().logprob)
                .collect();
        }
    }
    panic!("the request never finished");
}

#[test]
fn int4_weights_load_on_every_rank_and_stay_close() {
    let base = prompt_logprobs(None, 1);
    let int4 = prompt_logprobs(Some(Quantization::Int4), 1);
    let moved = base
        .iter()
        .zip(&int4)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        moved > 1e-3,
        "int4 changed no logprob by more than {moved}: not quantized?"
    );
    let (sum_base, sum_int4): (f32, f32) = (base.iter().sum(), int4.iter().sum());
    assert!(
        (sum_int4 / sum_base - 1.0).abs() < 0.01,
        "int4 total logprob {sum_int4} vs {sum_base}"
    );
    let tp2 = prompt_logprobs(Some(Quantization::Int4), 2);
    for (i, (a, b)) in int4.iter().zip(&tp2).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4,
            "position {}: tp1 {a} vs tp2 {b}",
            i + 1
        );
    }
}
