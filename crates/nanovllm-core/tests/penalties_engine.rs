//! Penalties through the whole engine on a real checkpoint (`qwen3-tiny`, random weights):
//! greedy decoding of a random model falls into loops, and the repetition, frequency and
//! presence penalties must measurably reduce the repeated tokens. (Their exact arithmetic
//! is the sampling op's, tested against its reference in `nanovllm_kernels`, and the
//! engine's token-by-token agreement with the definition in `engine_tests`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nanovllm_core::{DeviceKind, EngineConfig, LLMEngine, SamplingParams, LLM};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny")
}

/// Generated tokens that repeat an earlier generated token, over every prompt.
fn repeats(llm: &mut LLM, prompts: &[Vec<u32>], params: &SamplingParams) -> usize {
    llm.generate(prompts.to_vec(), params.clone())
        .unwrap()
        .iter()
        .map(|out| {
            let distinct: BTreeSet<u32> = out.token_ids.iter().copied().collect();
            out.token_ids.len() - distinct.len()
        })
        .sum()
}

#[test]
fn penalties_measurably_reduce_repeats() {
    let engine = LLMEngine::new(EngineConfig {
        device: DeviceKind::Cpu,
        ..EngineConfig::new(fixture_dir())
    })
    .unwrap();
    let mut llm = LLM::from_engine(engine);
    let prompts: Vec<Vec<u32>> = (0..4u32)
        .map(|s| (0..6u32).map(|i| (i * 53 + s * 211 + 7) % 512).collect())
        .collect();
    let greedy = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(48)
    };
    let plain = repeats(&mut llm, &prompts, &greedy);
    for (name, params) in [
        (
            "repetition_penalty 2",
            SamplingParams {
                repetition_penalty: 2.0,
                ..greedy.clone()
            },
        ),
        (
            "frequency_penalty 2",
            SamplingParams {
                frequency_penalty: 2.0,
                ..greedy.clone()
            },
        ),
        (
            "presence_penalty 2",
            SamplingParams {
                presence_penalty: 2.0,
                ..greedy.clone()
            },
        ),
    ] {
        let penalised = repeats(&mut llm, &prompts, &params);
        // Measurably: at most half the repeats of plain greedy decoding.
        assert!(
            penalised * 2 <= plain,
            "{name}: {penalised} repeated tokens vs {plain} without"
        );
    }
}
