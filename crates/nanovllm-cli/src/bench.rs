//! `nanovllm bench`: throughput on nano-vLLM's bench.py workload. Builds the engine
//! config from the flags, runs [`nanovllm_core::bench::run`] with the shared
//! [`nanovllm_core::bench::BenchFlags`], prints the report (the `Total:` line is
//! bench.py's) and writes `--json`.

use anyhow::Context;
use nanovllm_core::bench;
use nanovllm_core::{EngineConfig, LoadFormat};

use crate::args::BenchArgs;

/// Runs the benchmark; `Ok(true)` on success (an error is fatal, exit code 2).
pub fn run(args: BenchArgs) -> anyhow::Result<bool> {
    let report = bench::run(args.bench.options(engine_config(&args)?))?;
    print!("{report}");
    if let Some(path) = &args.bench.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write --json {}", path.display()))?;
    }
    Ok(true)
}

/// The engine flags; `--model-config FILE` stands for `--model FILE --load-format dummy`.
fn engine_config(args: &BenchArgs) -> anyhow::Result<EngineConfig> {
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
