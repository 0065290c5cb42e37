//! The flags of the benchmark itself (workload, sampling, `--json`), declared once for
//! `nanovllm bench` and `cargo xtask bench`. Each front end flattens [`BenchFlags`] next to
//! its own engine flags (`--threads` among them: [`EngineConfig::threads`]) and its own
//! `--model-config`.

use std::path::PathBuf;

use crate::bench::run::{BenchOptions, BENCH_PY_TEMPERATURE};
use crate::bench::workload::{BenchProfile, WorkloadOverrides, WorkloadSpec};
use crate::config::EngineConfig;
use nanovllm_scheduler::StructuredOutput;

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
    /// Constrain every request: `json-object`, or a JSON schema file (strict). For the
    /// step time of constrained decoding; the engine needs a tokenizer (--tokenizer).
    #[arg(long, value_name = "json-object|SCHEMA_FILE", value_parser = parse_structured_output)]
    pub structured_output: Option<StructuredOutput>,
    /// Write the figures as JSON too.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `json-object`, or the path of a JSON schema file (read now, compiled by the engine).
fn parse_structured_output(value: &str) -> Result<StructuredOutput, String> {
    if value == "json-object" {
        return Ok(StructuredOutput::JsonObject);
    }
    let schema = std::fs::read_to_string(value).map_err(|e| {
        format!("expected json-object or a JSON schema file, and cannot read {value}: {e}")
    })?;
    Ok(StructuredOutput::JsonSchema {
        schema,
        strict: true,
    })
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
            structured_output: self.structured_output.clone(),
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
        assert_eq!(options.structured_output, None);
    }

    #[test]
    fn structured_output_is_json_object_or_a_schema_file() {
        let flags = Cli::parse_from(["bench", "--structured-output", "json-object"]).bench;
        assert_eq!(flags.structured_output, Some(StructuredOutput::JsonObject));
        let dir = std::env::temp_dir().join(format!("nanovllm-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("schema.json");
        std::fs::write(&file, r#"{"type":"object"}"#).unwrap();
        let flags = Cli::parse_from(["bench", "--structured-output", file.to_str().unwrap()]).bench;
        assert_eq!(
            flags.structured_output,
            Some(StructuredOutput::JsonSchema {
                schema: r#"{"type":"object"}"#.to_string(),
                strict: true
            })
        );
        let err = Cli::try_parse_from(["bench", "--structured-output", "/nonexistent/s.json"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("json-object or a JSON schema file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
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
