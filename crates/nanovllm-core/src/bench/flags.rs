//! The flags of the benchmark itself (workload, sampling, `--json`), declared once for
//! `nanovllm bench` and `cargo xtask bench`. Each front end flattens [`BenchFlags`] next to
//! its own engine flags (`--threads` among them: [`EngineConfig::threads`]) and its own
//! `--model-config`.

use std::path::PathBuf;

use crate::bench::run::{BenchOptions, BENCH_PY_TEMPERATURE};
use crate::bench::workload::{BenchProfile, WorkloadOverrides, WorkloadSpec};
use crate::config::EngineConfig;

#[derive(Clone, Debug, clap::Args)]
pub struct BenchFlags {
    /// The workload's shape; --num-seqs and the length bounds override it.
    #[arg(long, value_enum, default_value = "cpu")]
    pub profile: BenchProfile,
    #[command(flatten)]
    pub workload: WorkloadOverrides,
    /// Sampling temperature of the measured requests (bench.py uses 0.6; 0 = greedy).
    #[arg(long, default_value_t = BENCH_PY_TEMPERATURE)]
    pub temperature: f32,
    /// Write the figures as JSON too.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl BenchFlags {
    /// The profile with the bounds given on the command line.
    pub fn workload_spec(&self) -> WorkloadSpec {
        self.profile.spec().with_overrides(self.workload)
    }

    /// What [`crate::bench::run`] runs: these flags on `engine`.
    pub fn options(&self, engine: EngineConfig) -> BenchOptions {
        BenchOptions {
            engine,
            workload: self.workload_spec(),
            temperature: self.temperature,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchFlags,
    }

    #[test]
    fn defaults_are_the_cpu_profile_at_bench_py_temperature() {
        let flags = Cli::parse_from(["bench"]).bench;
        let options = flags.options(EngineConfig::default());
        assert_eq!(options.workload, WorkloadSpec::CPU);
        assert_eq!(options.temperature, BENCH_PY_TEMPERATURE);
        assert_eq!(flags.json, None);
    }

    #[test]
    fn bounds_override_the_profile() {
        let flags = Cli::parse_from([
            "bench",
            "--profile",
            "seed",
            "--num-seqs",
            "3",
            "--max-output",
            "9",
            "--temperature",
            "0",
            "--json",
            "out.json",
        ])
        .bench;
        let options = flags.options(EngineConfig::default());
        assert_eq!(
            options.workload,
            WorkloadSpec {
                num_seqs: 3,
                max_output: 9,
                ..WorkloadSpec::SEED
            }
        );
        assert_eq!(options.temperature, 0.0);
        assert_eq!(flags.json, Some(PathBuf::from("out.json")));
    }
}
