//! Runs a [`Workload`] through an [`LLMEngine`] and measures it, like bench.py:
//! one warm-up request, then every request queued at once, stepped to the end;
//! throughput is output tokens over the wall time of those steps.
//!
//! Invariant: every request has `ignore_eos` and fits `max_model_len`, so the run
//! produces exactly [`Workload::num_output_tokens`] tokens; anything else is an
//! engine bug and fails the run instead of reporting a wrong figure. With
//! [`BenchOptions::structured_output`] every request is constrained, and a request whose
//! grammar completes stops early: the run then produces at most that many tokens, and the
//! report counts those it did.

use std::time::Instant;

use nanovllm_kernels::DType;
use nanovllm_models::CheckpointQuantization;
use nanovllm_scheduler::{BatchKind, SamplingParams, StructuredOutput};

use crate::bench::report::{peak_rss_mib, BenchReport, DecodeStepMs};
use crate::bench::workload::{Workload, WorkloadSpec, MAX_PROMPT_TOKEN_ID};
use crate::config::EngineConfig;
use crate::engine::LLMEngine;
use crate::error::{EngineError, Result};

/// bench.py's sampling temperature.
pub const BENCH_PY_TEMPERATURE: f32 = 0.6;

/// What to run: the engine, the workload and the measured requests' sampling.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The engine; `model` may be a config.json with `load_format = Dummy` (random weights).
    pub engine: EngineConfig,
    pub workload: WorkloadSpec,
    /// Sampling temperature of the measured requests (bench.py: 0.6; 0 = greedy).
    pub temperature: f32,
    /// Constrains every measured request to this grammar (the engine needs a tokenizer).
    pub structured_output: Option<StructuredOutput>,
}

impl BenchOptions {
    /// bench.py's sampling (temperature 0.6).
    pub fn new(engine: EngineConfig, workload: WorkloadSpec) -> Self {
        Self {
            engine,
            workload,
            temperature: BENCH_PY_TEMPERATURE,
            structured_output: None,
        }
    }
}

/// Builds the engine, runs the workload and returns its figures.
pub fn run(options: BenchOptions) -> Result<BenchReport> {
    let BenchOptions {
        engine: config,
        workload: spec,
        temperature,
        structured_output,
    } = options;
    spec.validate()?;
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(EngineError::InvalidBenchmark {
            what: "temperature",
            value: temperature.to_string(),
            expected: "a finite value >= 0".into(),
        });
    }
    let model_name = config.model.display().to_string();
    let mut engine = LLMEngine::new(config)?;
    check_fits_model(&engine, &spec)?;
    let workload = Workload::generate(&spec)?;
    log_concurrency_at_average(&engine, &workload);

    // Warm-up, like bench.py's single "Benchmark: " request.
    engine.add_request(vec![1u32, 2, 3, 4, 5], SamplingParams::greedy(8))?;
    while engine.has_unfinished() {
        engine.step()?;
    }

    let stats_before = engine.stats();
    for (prompt, &max_tokens) in workload.prompts.iter().zip(&workload.max_tokens) {
        let params = SamplingParams {
            temperature,
            ignore_eos: true,
            max_tokens,
            structured_output: structured_output.clone(),
            ..SamplingParams::default()
        };
        engine.add_request(prompt.clone(), params)?;
    }
    let (mut decode_steps, mut decode_rows) = (0u64, 0u64);
    let mut peak_kv: f64 = 0.0;
    let mut output_tokens = 0usize;
    let start = Instant::now();
    while engine.has_unfinished() {
        let out = engine.step()?;
        if out.kind == Some(BatchKind::Decode) {
            decode_steps += 1;
            decode_rows += out.num_tokens as u64;
        }
        output_tokens += out.new_tokens.len();
        peak_kv = peak_kv.max(engine.kv_cache_usage().used_fraction());
    }
    let time_s = start.elapsed().as_secs_f64();
    let expected = workload.num_output_tokens();
    let complete = match structured_output {
        None => output_tokens == expected,
        Some(_) => output_tokens <= expected,
    };
    if !complete {
        return Err(EngineError::Internal(format!(
            "the engine produced {output_tokens} tokens, the workload asks for {} (ignore_eos)",
            workload.num_output_tokens()
        )));
    }
    let run = engine.stats().since(&stats_before);
    let kv = engine.kv_cache_usage();
    Ok(BenchReport {
        device: engine.device().to_string(),
        model: model_name,
        weights: weight_format(&engine)?,
        kv_cache_dtype: engine
            .config()
            .kv_cache_dtype
            .dtype_on(engine.device())
            .to_string(),
        kv_cache_tokens: kv.num_blocks * kv.block_size,
        num_seqs: spec.num_seqs,
        prompt_tokens: workload.num_prompt_tokens(),
        output_tokens,
        time_s,
        output_tokens_per_s: output_tokens as f64 / time_s.max(1e-9),
        prefill_tokens_per_s: run.prefill_tokens_per_s(),
        decode_tokens_per_s: run.decode_tokens_per_s(),
        mean_decode_batch_size: decode_rows as f64 / (decode_steps.max(1) as f64),
        num_preemptions: run.num_preemptions,
        peak_kv_cache_used_fraction: peak_kv,
        peak_rss_mib: peak_rss_mib(),
        cuda_graph_batch_sizes: engine.cuda_graph_batch_sizes(),
        decode_step: DecodeStepMs::mean_of(&run.decode_step_times, run.num_decode_steps),
    })
}

/// The linear weights' format (see [`BenchReport::weights`]): the quantized dtype of
/// `--quantization`, else that of an FP8 checkpoint (re-blocked to `fp8_g128` while
/// loading), else `--dtype` when it converts the weights, else the checkpoint's.
fn weight_format(engine: &LLMEngine) -> Result<String> {
    let config = engine.config();
    let dtype = match (config.quantization, &engine.model_config().quantization) {
        (Some(quantization), _) => quantization.dtype(),
        (None, Some(CheckpointQuantization::Fp8 { .. })) => DType::Fp8G128,
        (None, None) => config
            .dtype
            .weight_dtype_on(engine.device())?
            .unwrap_or(engine.model_config().dtype),
    };
    Ok(dtype.to_string())
}

/// The start-up block's concurrency line again, at this workload's average request length
/// (prompt and `max_tokens`), which is what decides how many run at once.
fn log_concurrency_at_average(engine: &LLMEngine, workload: &Workload) {
    let n = workload.prompts.len().max(1);
    let tokens = (workload.num_prompt_tokens() + workload.num_output_tokens()).div_ceil(n);
    tracing::info!(
        "{} (this workload's average prompt + max_tokens)",
        crate::startup_log::concurrency_line(tokens, engine.max_concurrency(tokens))
    );
}

/// Refuses, before any token is drawn, a model the workload cannot run on: prompt
/// token ids beyond its vocabulary, or sequences longer than `max_model_len` (which the
/// engine would cut short, breaking the output count).
fn check_fits_model(engine: &LLMEngine, spec: &WorkloadSpec) -> Result<()> {
    let vocab_size = engine.model_config().vocab_size;
    if vocab_size <= MAX_PROMPT_TOKEN_ID as usize {
        return Err(EngineError::InvalidBenchmark {
            what: "model vocab_size",
            value: vocab_size.to_string(),
            expected: format!(
                "more than {MAX_PROMPT_TOKEN_ID}: bench.py's prompts hold token ids 0..={MAX_PROMPT_TOKEN_ID}"
            ),
        });
    }
    let max_model_len = engine.max_model_len();
    if spec.max_seq_len() > max_model_len {
        return Err(EngineError::InvalidBenchmark {
            what: "max_model_len",
            value: max_model_len.to_string(),
            expected: format!(
                "at least max_input + max_output = {} (max_model_len is clamped to the model's \
                 max_position_embeddings): raise max_model_len or lower max_input / max_output",
                spec.max_seq_len()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::DeviceKind;
    use nanovllm_models::LoadFormat;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(name)
    }

    const TINY: WorkloadSpec = WorkloadSpec {
        num_seqs: 3,
        min_input: 4,
        max_input: 8,
        min_output: 2,
        max_output: 4,
    };

    fn options(model: PathBuf, load_format: LoadFormat, spec: WorkloadSpec) -> BenchOptions {
        let mut engine = EngineConfig::new(model);
        engine.load_format = load_format;
        engine.device = DeviceKind::Cpu;
        engine.kvcache_block_size = 16;
        engine.num_kvcache_blocks = Some(64);
        BenchOptions::new(engine, spec)
    }

    #[test]
    fn a_run_produces_exactly_the_workloads_tokens() {
        let model = fixture("qwen3-tiny-fullvocab");
        let report = run(options(model, LoadFormat::Safetensors, TINY)).unwrap();
        let workload = Workload::generate(&TINY).unwrap();
        assert_eq!(report.device, "cpu");
        assert_eq!(report.num_seqs, 3);
        assert_eq!(report.prompt_tokens, workload.num_prompt_tokens());
        assert_eq!(report.output_tokens, workload.num_output_tokens());
        assert_eq!(report.num_preemptions, 0);
        assert!(report.time_s > 0.0 && report.output_tokens_per_s > 0.0);
        assert!(report.peak_kv_cache_used_fraction > 0.0);
        assert!(report.peak_kv_cache_used_fraction <= 1.0);
        assert!(report.mean_decode_batch_size >= 1.0 && report.mean_decode_batch_size <= 3.0);
        assert!(report.cuda_graph_batch_sizes.is_empty());
        // The fixture's bf16 weights, the default bf16 cache, 64 blocks of 16 tokens.
        assert_eq!(report.weights, "bf16");
        assert_eq!(report.kv_cache_dtype, "bf16");
        assert_eq!(report.kv_cache_tokens, 64 * 16);
        // Every decode step of the run was timed.
        let step = report.decode_step;
        assert!(step.steps > 0);
        assert!(step.forward > 0.0);
        let parts = step.schedule + step.inputs + step.postprocess;
        assert!((step.host - parts).abs() < 1e-9);
    }

    #[test]
    fn a_config_json_runs_with_dummy_weights_and_greedy_sampling() {
        let config = fixture("qwen3-tiny-fullvocab").join("config.json");
        let mut opts = options(config.clone(), LoadFormat::Dummy, TINY);
        opts.temperature = 0.0;
        let report = run(opts).unwrap();
        assert_eq!(report.model, config.display().to_string());
        let workload = Workload::generate(&TINY).unwrap();
        assert_eq!(report.output_tokens, workload.num_output_tokens());
    }

    /// Every request constrained to a short grammar: requests stop when it completes, and
    /// the report counts the tokens produced.
    #[test]
    fn a_constrained_run_counts_the_tokens_it_produced() {
        let tokenizer =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/qwen3-tokenizer");
        if !tokenizer.join("tokenizer.json").is_file() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "no Qwen3 tokenizer"
            );
            eprintln!("skipping: no Qwen3 tokenizer at {}", tokenizer.display());
            return;
        }
        let model = fixture("qwen3-tiny-fullvocab");
        let mut opts = options(model, LoadFormat::Safetensors, TINY);
        opts.engine.tokenizer = Some(tokenizer);
        // One token at most: every request stops after its first.
        opts.structured_output = Some(StructuredOutput::Regex("[0-9]".to_string()));
        let report = run(opts).unwrap();
        assert_eq!(report.output_tokens, TINY.num_seqs);
    }

    /// The weights' format as the report names it: the checkpoint's dtype, `--dtype`'s,
    /// `--quantization`'s, or an FP8 checkpoint's re-blocked format.
    #[test]
    fn the_weight_format_names_what_the_linear_weights_run_in() {
        let format = |model: &str, edit: &dyn Fn(&mut EngineConfig)| {
            let mut config = options(fixture(model), LoadFormat::Safetensors, TINY).engine;
            edit(&mut config);
            weight_format(&LLMEngine::new(config).unwrap()).unwrap()
        };
        assert_eq!(format("qwen3-trained", &|_| {}), "bf16");
        assert_eq!(
            format("qwen3-trained", &|c| c.dtype = crate::ModelDType::Float32),
            "f32"
        );
        assert_eq!(
            format("qwen3-trained", &|c| {
                c.quantization = Some(crate::Quantization::Int8)
            }),
            "int8_g32"
        );
        assert_eq!(format("qwen3-trained-fp8", &|_| {}), "fp8_g128");
    }

    #[test]
    fn a_small_vocabulary_is_refused_before_running() {
        let err = run(options(
            fixture("qwen3-tiny"),
            LoadFormat::Safetensors,
            TINY,
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("vocab_size = 512"), "{err}");
        assert!(err.contains("0..=10000"), "{err}");
    }

    #[test]
    fn sequences_longer_than_the_model_are_refused_before_running() {
        // The fixture's max_position_embeddings is 512.
        let spec = WorkloadSpec {
            max_input: 400,
            max_output: 200,
            ..TINY
        };
        let model = fixture("qwen3-tiny-fullvocab");
        let err = run(options(model, LoadFormat::Safetensors, spec))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_model_len = 512"), "{err}");
        assert!(err.contains("= 600"), "{err}");
    }

    #[test]
    fn bad_temperature_and_threads_are_refused() {
        let model = fixture("qwen3-tiny-fullvocab");
        let mut opts = options(model.clone(), LoadFormat::Safetensors, TINY);
        opts.temperature = -0.5;
        let err = run(opts).unwrap_err().to_string();
        assert!(err.contains("temperature = -0.5"), "{err}");
        let mut opts = options(model, LoadFormat::Safetensors, TINY);
        opts.engine.threads = Some(0);
        let err = run(opts).unwrap_err().to_string();
        assert!(err.contains("threads = 0"), "{err}");
    }
}
