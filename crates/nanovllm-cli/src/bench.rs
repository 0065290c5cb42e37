//! `nanovllm bench [throughput]`: throughput on nano-vLLM's bench.py workload. Builds
//! the engine config from the flags, runs [`nanovllm_core::bench::run`] with the shared
//! [`nanovllm_core::bench::BenchFlags`], prints the report (the `Total:` line is
//! bench.py's) and writes `--json`. `nanovllm bench serve` is [`crate::bench_serve`].

use anyhow::Context;
use nanovllm_core::bench;
use nanovllm_core::{EngineConfig, LoadFormat};

use crate::args::{BenchArgs, BenchMode, ThroughputArgs};

/// Runs the mode named, throughput by default.
pub fn run(args: BenchArgs) -> anyhow::Result<bool> {
    match args.mode {
        None => throughput(args.throughput),
        Some(BenchMode::Throughput(throughput_args)) => throughput(*throughput_args),
        Some(BenchMode::Serve(serve_args)) => crate::bench_serve::run(*serve_args),
    }
}

/// Runs the throughput benchmark; `Ok(true)` on success (an error is fatal, exit code 2).
fn throughput(args: ThroughputArgs) -> anyhow::Result<bool> {
    let report = bench::run(args.bench.options(engine_config(&args)?))?;
    print!("{report}");
    if let Some(path) = &args.bench.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write --json {}", path.display()))?;
    }
    Ok(true)
}

/// The engine flags; `--model-config FILE` stands for `--model FILE --load-format dummy`.
fn engine_config(args: &ThroughputArgs) -> anyhow::Result<EngineConfig> {
    let mut config = args.engine.overlay_engine_config()?;
    if let Some(path) = &args.model_config {
        config.model = path.clone();
        config.load_format = LoadFormat::Dummy;
    }
    if config.model.as_os_str().is_empty() {
        anyhow::bail!("no model given: give --model DIR or --model-config FILE");
    }
    config.validate()?;
    Ok(config)
}
