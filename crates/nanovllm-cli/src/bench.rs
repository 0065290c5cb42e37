//! `nanovllm bench`: throughput on nano-vLLM's bench.py workload. Parses the flags
//! into [`nanovllm_core::bench::BenchOptions`], runs [`nanovllm_core::bench::run`],
//! prints the report (the `Total:` line is bench.py's) and writes `--json`.

use anyhow::Context;
use nanovllm_core::bench::{self, BenchOptions, WorkloadOverrides, WorkloadSpec};
use nanovllm_core::{EngineConfig, LoadFormat};

use crate::args::{BenchArgs, BenchProfile};

/// Runs the benchmark; `Ok(true)` on success (an error is fatal, exit code 2).
pub fn run(args: BenchArgs) -> anyhow::Result<bool> {
    let options = BenchOptions {
        engine: engine_config(&args)?,
        workload: workload_spec(&args),
        temperature: args.temperature,
        threads: args.threads,
    };
    let report = bench::run(options)?;
    print!("{report}");
    if let Some(path) = &args.json {
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

fn workload_spec(args: &BenchArgs) -> WorkloadSpec {
    let profile = match args.profile {
        BenchProfile::Seed => WorkloadSpec::SEED,
        BenchProfile::Cpu => WorkloadSpec::CPU,
    };
    profile.with_overrides(WorkloadOverrides {
        num_seqs: args.num_seqs,
        min_input: args.min_input,
        max_input: args.max_input,
        min_output: args.min_output,
        max_output: args.max_output,
    })
}
