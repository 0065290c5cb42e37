//! `cargo xtask bench`: nano-vLLM's bench.py workload through the engine.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use nanovllm_core::{BatchKind, DeviceKind, EngineConfig, LLMEngine, LoadFormat, SamplingParams};
use serde::Serialize;

use crate::workload::{Workload, WorkloadSpec};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Profile {
    /// bench.py exactly: 256 sequences, prompts and outputs of 100–1024 tokens.
    Seed,
    /// Scaled for a 2-core CPU: 32 sequences, prompts and outputs of 32–256 tokens.
    Cpu,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A Hugging Face model directory (real weights).
    #[arg(long, conflicts_with = "model_config")]
    pub model: Option<PathBuf>,
    /// A config.json of the model's shape, run with random weights (implies --load-format dummy).
    #[arg(long, default_value = "configs/qwen3-0.6b.json")]
    pub model_config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    #[arg(long, value_enum, default_value = "cpu")]
    pub profile: Profile,
    #[arg(long)]
    pub num_seqs: Option<usize>,
    #[arg(long)]
    pub min_input: Option<usize>,
    #[arg(long)]
    pub max_input: Option<usize>,
    #[arg(long)]
    pub min_output: Option<usize>,
    #[arg(long)]
    pub max_output: Option<usize>,
    /// CPU KV-cache budget in GiB.
    #[arg(long)]
    pub kv_cache_memory_gib: Option<f64>,
    /// Fraction of GPU memory the engine may use (CUDA) [default: 0.9].
    #[arg(long)]
    pub gpu_memory_utilization: Option<f64>,
    /// Run decode eagerly, without CUDA graphs (CUDA).
    #[arg(long)]
    pub enforce_eager: bool,
    #[arg(long, default_value_t = 4096)]
    pub max_model_len: usize,
    /// Sampling temperature of the measured requests (bench.py uses 0.6; 0 = greedy).
    #[arg(long, default_value_t = 0.6)]
    pub temperature: f32,
    /// Worker threads of the CPU backend's pool (default: rayon's, i.e. all cores or
    /// `RAYON_NUM_THREADS`). Set it to match the thread count of a comparison run.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the figures as JSON too.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// The figures of one run (also the `--json` schema).
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub device: String,
    pub model: String,
    pub num_seqs: usize,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub time_s: f64,
    /// bench.py's figure: output tokens / wall time.
    pub output_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub mean_decode_batch_size: f64,
    pub num_preemptions: u64,
    pub peak_kv_cache_used_fraction: f64,
    pub peak_rss_mib: Option<f64>,
    /// Decode batch sizes replayed through CUDA graphs (empty: eager).
    pub cuda_graph_batch_sizes: Vec<usize>,
}

fn spec(args: &BenchArgs) -> WorkloadSpec {
    let mut s = match args.profile {
        Profile::Seed => WorkloadSpec::SEED,
        Profile::Cpu => WorkloadSpec::CPU,
    };
    s.num_seqs = args.num_seqs.unwrap_or(s.num_seqs);
    s.min_input = args.min_input.unwrap_or(s.min_input);
    s.max_input = args.max_input.unwrap_or(s.max_input);
    s.min_output = args.min_output.unwrap_or(s.min_output);
    s.max_output = args.max_output.unwrap_or(s.max_output);
    s
}

/// Peak resident set size of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let spec = spec(&args);
    anyhow::ensure!(
        spec.num_seqs > 0 && spec.min_input <= spec.max_input && spec.min_output <= spec.max_output,
        "invalid workload: need num_seqs > 0, min_input <= max_input, min_output <= max_output"
    );
    anyhow::ensure!(
        args.temperature.is_finite() && args.temperature >= 0.0,
        "invalid --temperature {}: need a finite value >= 0",
        args.temperature
    );
    if let Some(threads) = args.threads {
        anyhow::ensure!(threads > 0, "invalid --threads 0: need at least one thread");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("configuring the thread pool (--threads)")?;
    }
    let workload = Workload::generate(&spec);

    let mut config = match &args.model {
        Some(dir) => EngineConfig::new(dir),
        None => {
            let mut c = EngineConfig::new(args.model_config.clone().unwrap_or_default());
            c.load_format = LoadFormat::Dummy;
            c
        }
    };
    config.device = match args.device {
        DeviceArg::Auto => DeviceKind::Auto,
        DeviceArg::Cpu => DeviceKind::Cpu,
        DeviceArg::Cuda => DeviceKind::Cuda,
    };
    config.max_model_len = args.max_model_len;
    if let Some(gib) = args.kv_cache_memory_gib {
        config.kv_cache_memory_gib = gib;
    }
    if let Some(util) = args.gpu_memory_utilization {
        config.gpu_memory_utilization = util;
    }
    config.enforce_eager = args.enforce_eager;
    let model_name = config.model.display().to_string();
    let mut engine = LLMEngine::new(config).context("building the engine")?;

    // Warm-up, like bench.py's single "Benchmark: " request.
    engine.add_request(vec![1u32, 2, 3, 4, 5], SamplingParams::greedy(8))?;
    while engine.has_unfinished() {
        engine.step()?;
    }

    let stats_before = engine.stats();
    for (prompt, &max_tokens) in workload.prompts.iter().zip(&workload.max_tokens) {
        let params = SamplingParams {
            temperature: args.temperature,
            ignore_eos: true,
            max_tokens,
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
    // ignore_eos: every sequence must produce exactly its max_tokens.
    anyhow::ensure!(
        output_tokens == workload.num_output_tokens(),
        "the engine produced {output_tokens} tokens, the workload asks for {}",
        workload.num_output_tokens()
    );
    let stats = engine.stats();
    let prefill_tokens = stats.num_prefill_tokens - stats_before.num_prefill_tokens;
    let prefill_time = (stats.prefill_time - stats_before.prefill_time).as_secs_f64();
    let decode_tokens = stats.num_decode_tokens - stats_before.num_decode_tokens;
    let decode_time = (stats.decode_time - stats_before.decode_time).as_secs_f64();
    let report = BenchReport {
        device: engine.device().to_string(),
        model: model_name,
        num_seqs: spec.num_seqs,
        prompt_tokens: workload.num_prompt_tokens(),
        output_tokens,
        time_s,
        output_tokens_per_s: output_tokens as f64 / time_s,
        prefill_tokens_per_s: prefill_tokens as f64 / prefill_time.max(1e-9),
        decode_tokens_per_s: decode_tokens as f64 / decode_time.max(1e-9),
        mean_decode_batch_size: decode_rows as f64 / (decode_steps.max(1) as f64),
        num_preemptions: stats.num_preemptions - stats_before.num_preemptions,
        peak_kv_cache_used_fraction: peak_kv,
        peak_rss_mib: peak_rss_mib(),
        cuda_graph_batch_sizes: engine.cuda_graph_batch_sizes(),
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_report(r: &BenchReport) {
    println!("device                {}", r.device);
    println!("model                 {}", r.model);
    println!(
        "workload              {} seqs, {} prompt tokens",
        r.num_seqs, r.prompt_tokens
    );
    println!(
        "Total: {}tok, Time: {:.2}s, Throughput: {:.2}tok/s",
        r.output_tokens, r.time_s, r.output_tokens_per_s
    );
    println!("prefill               {:.1} tok/s", r.prefill_tokens_per_s);
    println!("decode                {:.1} tok/s", r.decode_tokens_per_s);
    println!("mean decode batch     {:.1}", r.mean_decode_batch_size);
    println!("preemptions           {}", r.num_preemptions);
    println!(
        "peak KV-cache use     {:.1}%",
        100.0 * r.peak_kv_cache_used_fraction
    );
    match (
        r.cuda_graph_batch_sizes.first(),
        r.cuda_graph_batch_sizes.last(),
    ) {
        (Some(lo), Some(hi)) => println!(
            "CUDA graphs           {} batch sizes, {lo}..={hi}",
            r.cuda_graph_batch_sizes.len()
        ),
        _ => println!("CUDA graphs           off (eager)"),
    }
    if let Some(mib) = r.peak_rss_mib {
        println!("peak memory (RSS)     {mib:.0} MiB");
    }
}
