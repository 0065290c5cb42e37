//! `cargo xtask bench`: nano-vLLM's bench.py workload through the engine. A thin
//! front end over [`nanovllm_core::bench`] (which `nanovllm bench` shares) whose
//! default is the repository's dummy Qwen3-0.6B (`configs/qwen3-0.6b.json`).
//!
//! `target/gpu-check/run.sh` runs this and greps its `Total:` line.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use nanovllm_core::bench::{self, BenchFlags};
use nanovllm_core::{DeviceKind, EngineConfig, KvCacheDType, LoadFormat, Quantization};

/// The engine flags `cargo xtask bench` has (a subset of `nanovllm bench`'s, with the same
/// defaults), `--model-config` defaulting to the repository's dummy Qwen3-0.6B (the one
/// difference from `nanovllm bench`), and the benchmark flags both share.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A Hugging Face model directory (real weights).
    #[arg(long, conflicts_with = "model_config")]
    pub model: Option<PathBuf>,
    /// A config.json of the model's shape, run with random weights (implies --load-format dummy).
    #[arg(long, default_value = "configs/qwen3-0.6b.json")]
    pub model_config: Option<PathBuf>,
    /// Directory holding tokenizer.json, if not the model's (--structured-output needs one).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceKind,
    /// CPU KV-cache budget in GiB.
    #[arg(long)]
    pub kv_cache_memory_gib: Option<f64>,
    /// Element type of the KV cache (auto: bf16 on CUDA and on the CPU). llama.cpp's
    /// default cache is f16, so CPU comparisons with it use bf16.
    #[arg(long, value_enum, default_value = "auto")]
    pub kv_cache_dtype: KvCacheDType,
    /// Quantize the linear weights while loading: int8 (a scale per 32 weights), int4 (a
    /// scale and minimum per 32) or fp8 (e4m3, a scale per 128); compare int8 with
    /// llama.cpp's Q8_0 and int4 with its Q4_K_M.
    #[arg(long, value_enum)]
    pub quantization: Option<Quantization>,
    /// Fraction of GPU memory the engine may use (CUDA) [default: 0.9].
    #[arg(long)]
    pub gpu_memory_utilization: Option<f64>,
    /// Run decode eagerly, without CUDA graphs (CUDA).
    #[arg(long)]
    pub enforce_eager: bool,
    /// Longest sequence [default: the model's, capped by what the KV cache holds].
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Tokens per KV block (a power of two >= 16).
    #[arg(long, alias = "kvcache-block-size")]
    pub block_size: Option<usize>,
    /// Threads of the CPU backend's pool [default: the physical cores].
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub bench: BenchFlags,
}

impl BenchArgs {
    fn engine_config(&self) -> EngineConfig {
        let mut config = match &self.model {
            Some(dir) => EngineConfig::new(dir),
            None => {
                let mut c = EngineConfig::new(self.model_config.clone().unwrap_or_default());
                c.load_format = LoadFormat::Dummy;
                c
            }
        };
        config.tokenizer = self.tokenizer.clone();
        config.device = self.device;
        config.max_model_len = self.max_model_len;
        config.threads = self.threads;
        if let Some(block_size) = self.block_size {
            config.kvcache_block_size = block_size;
        }
        if let Some(gib) = self.kv_cache_memory_gib {
            config.kv_cache_memory_gib = gib;
        }
        config.kv_cache_dtype = self.kv_cache_dtype;
        config.quantization = self.quantization;
        if let Some(util) = self.gpu_memory_utilization {
            config.gpu_memory_utilization = util;
        }
        config.enforce_eager = self.enforce_eager;
        config
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = bench::run(args.bench.options(args.engine_config()))?;
    print!("{report}");
    if let Some(path) = &args.bench.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn engine_config(args: &[&str]) -> EngineConfig {
        Cli::parse_from([&["xtask-bench"][..], args].concat())
            .bench
            .engine_config()
    }

    #[test]
    fn quantization_and_kv_cache_dtype_reach_the_engine() {
        let config = engine_config(&[]);
        assert_eq!(config.quantization, None);
        assert_eq!(config.kv_cache_dtype, KvCacheDType::Auto);
        assert_eq!(config.load_format, LoadFormat::Dummy);
        let config = engine_config(&["--quantization", "int4", "--kv-cache-dtype", "fp8"]);
        assert_eq!(config.quantization, Some(Quantization::Int4));
        assert_eq!(config.kv_cache_dtype, KvCacheDType::Fp8);
        for (name, want) in [("int8", Quantization::Int8), ("fp8", Quantization::Fp8)] {
            assert_eq!(
                engine_config(&["--quantization", name]).quantization,
                Some(want)
            );
        }
    }
}
