//! [`EngineConfig`]: everything an engine is built from.
//!
//! Loadable from TOML (`EngineConfig::from_toml_file`); the CLI overrides
//! fields with its flags, then calls [`EngineConfig::validate`]. Unknown TOML
//! keys are errors so that a typo never silently falls back to a default.
//!
//! Invariants after `validate()`: every size is ≥ 1 (`max_model_len` and `threads` when
//! set), `kvcache_block_size` is a power of two ≥ 16, `gpu_memory_utilization` is in
//! (0, 1] and `kv_cache_memory_gib` is finite and > 0. `max_model_len` is resolved when
//! the engine is built, not here (the model config is not read yet, nor the cache sized):
//! unset, it is the model's own length capped by what the KV cache holds for one
//! sequence; set, it is clamped to the model's length and must fit in the cache.

use std::path::{Path, PathBuf};

use nanovllm_kernels::{DType, Device};
use nanovllm_models::LoadFormat;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

mod generation_source;
mod model_dtype;
mod quantization;

pub use generation_source::GenerationConfigSource;
pub use model_dtype::ModelDType;
pub use quantization::Quantization;

/// Where weights come from (serde mirror of [`LoadFormat`]).
#[derive(Serialize, Deserialize)]
#[serde(remote = "LoadFormat", rename_all = "lowercase")]
enum LoadFormatDef {
    Safetensors,
    Dummy,
}

/// Which device runs the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A GPU when this build has the CUDA backend and the machine a device; else the CPU
    /// (with a one-line notice).
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum KvCacheDType {
    /// bf16 on every device (see [`KvCacheDType::dtype_on`] for why on the CPU).
    #[default]
    Auto,
    F32,
    Bf16,
    /// FP8 e4m3: half the bytes of bf16, so the same budget holds twice the tokens. Keys
    /// and values are stored divided by a per-layer scale (1.0, or the checkpoint's
    /// `k_scale`/`v_scale`) and multiplied back when attention reads them. `fp8_e4m3` is
    /// vLLM's other spelling.
    #[serde(alias = "fp8_e4m3")]
    #[cfg_attr(feature = "clap", value(alias = "fp8_e4m3"))]
    Fp8,
}

impl KvCacheDType {
    /// The element type on `device`: `Auto` is bf16 on CUDA and on the CPU alike.
    ///
    /// Why bf16 on the CPU (it was f32): it halves the cache, so the same
    /// `kv_cache_memory_gib` holds twice the tokens, and it halves what decode attention
    /// reads. Measured with `nanovllm bench --model-config configs/qwen3-0.6b.json --threads 2
    /// --num-seqs 48 --min-input 16 --max-input 96 --min-output 8 --max-output 40` (2 GiB, 256-token
    /// blocks, 2-core VM, 2026-12-07): f32 holds 36 blocks, so
    /// at most 36 sequences ran at once (mean decode batch 22.5, the cache 100 % full); bf16
    /// holds 73 and ran all of them (mean batch 28.3, peak cache use 66 %). Decode throughput,
    /// bf16 over f32, on the quiet host (release build, 2 interleaved rounds): 1.07×, 1.04×
    /// (100.9 and 102.7 tok/s against 94.3 and 98.6); output throughput 1.11×, 1.10×. The
    /// golden tests pin f32 where they compare against transformers' f32 math.
    pub fn dtype_on(self, _device: Device) -> DType {
        match self {
            KvCacheDType::F32 => DType::F32,
            KvCacheDType::Auto | KvCacheDType::Bf16 => DType::BF16,
            KvCacheDType::Fp8 => DType::F8E4M3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// A Hugging Face model directory. With `load_format = "dummy"` it may also
    /// be a `config.json` file (e.g. `configs/qwen3-0.6b.json`).
    pub model: PathBuf,
    /// Directory holding `tokenizer.json`; defaults to the model directory.
    pub tokenizer: Option<PathBuf>,
    #[serde(with = "LoadFormatDef")]
    pub load_format: LoadFormat,
    /// Most tokens in one step; longer prompts are prefilled in chunks.
    pub max_num_batched_tokens: usize,
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Longest sequence (prompt + completion). Unset: the model's own length
    /// ([`nanovllm_models::ModelConfig::max_model_len_limit`]), capped by what the KV cache
    /// holds for one sequence. Set: clamped to the model's length; more than the cache
    /// holds is an error. [`crate::LLMEngine::max_model_len`] is the resolved value.
    pub max_model_len: Option<usize>,
    /// Fraction of the GPU's total memory the engine may use: weights, activations, the
    /// KV cache (sized to fill what is left) and CUDA graphs (CUDA only).
    pub gpu_memory_utilization: f64,
    pub tensor_parallel_size: usize,
    /// Never capture CUDA graphs (CUDA only).
    pub enforce_eager: bool,
    /// Tokens per KV block: a power of two ≥ 16 (`--block-size`).
    ///
    /// The default stays 256 (nano-vLLM's) on the CPU too. Measured like
    /// [`KvCacheDType::dtype_on`] with bf16 KV on the quiet host (release build, 2
    /// interleaved rounds), decode tok/s: 256: 100.9, 102.7; 64: 101.9, 95.9; 16: 98.7, 88.4.
    /// No smaller size was faster in both rounds. Smaller blocks waste less of the cache on
    /// short sequences (peak use on that workload: 66 % at 256, 19 % at 16), but with the
    /// bf16 cache 2 GiB already holds 73 sequences of up to 256 tokens for Qwen3-0.6B;
    /// `--block-size 16` buys more where many short sequences run at once.
    pub kvcache_block_size: usize,
    pub device: DeviceKind,
    /// KV-cache budget on the CPU, in GiB.
    pub kv_cache_memory_gib: f64,
    /// Exact number of KV blocks, overriding the memory-based sizing (tests, benchmarks).
    pub num_kvcache_blocks: Option<usize>,
    /// `auto` (bf16), `f32`, `bf16` or `fp8` (e4m3).
    pub kv_cache_dtype: KvCacheDType,
    /// Quantize the linear weights while loading (`--quantization int8|int4|fp8`); see
    /// [`Quantization`]. `None` keeps them as the checkpoint stores them.
    pub quantization: Option<Quantization>,
    /// Seed of the requests without one of their own: each gets
    /// [`crate::sampling::request_seed`]`(seed, request id)` (`--seed`).
    pub seed: u64,
    /// The weights' dtype (`--dtype`): `auto` keeps the checkpoint's; see [`ModelDType`].
    pub dtype: ModelDType,
    /// Where sampling defaults come from: `auto`, `vllm` or a folder (see
    /// [`GenerationConfigSource`]).
    pub generation_config: GenerationConfigSource,
    /// Reuse the KV blocks of earlier requests with the same prompt prefix (vLLM V1's
    /// default). Off, every prompt is computed in full and no block is shared.
    pub enable_prefix_caching: bool,
    /// Threads of the CPU backend's pool (rayon's global pool, sized once per process).
    /// Unset: the machine's physical cores ([`crate::threads::physical_cores`]).
    pub threads: Option<usize>,
    /// How tensor-parallel ranks run and meet (TOML table `[tp]`; see [`crate::tp`]).
    pub tp: crate::tp::TpConfig,
    /// Branch, tag or commit of `model` when it is a Hugging Face Hub id (`owner/name`);
    /// `None` is the default branch. Ignored for local paths.
    pub revision: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            tokenizer: None,
            load_format: LoadFormat::Safetensors,
            max_num_batched_tokens: 16384,
            max_num_seqs: 512,
            max_model_len: None,
            gpu_memory_utilization: 0.9,
            tensor_parallel_size: 1,
            enforce_eager: false,
            kvcache_block_size: 256,
            device: DeviceKind::Auto,
            kv_cache_memory_gib: 2.0,
            num_kvcache_blocks: None,
            kv_cache_dtype: KvCacheDType::Auto,
            quantization: None,
            seed: 0,
            dtype: ModelDType::Auto,
            generation_config: GenerationConfigSource::Auto,
            enable_prefix_caching: true,
            threads: None,
            tp: crate::tp::TpConfig::default(),
            revision: None,
        }
    }
}

impl EngineConfig {
    /// Defaults with `model` set.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            ..Self::default()
        }
    }

    /// Parses TOML text; `path` only names the source in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| EngineError::ConfigFile {
            path: path.to_path_buf(),
            msg: one_line_toml_error(text, &e),
        })
    }

    /// Reads and parses a TOML engine config. Relative paths inside stay as written
    /// (relative to the working directory), like the CLI flags.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::ConfigFile {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Checks every field; the error names the field, its value and the accepted range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, value: String, expected: &'static str| {
            Err(EngineError::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        if self.model.as_os_str().is_empty() {
            return bad(
                "model",
                "\"\"".into(),
                "a model directory (or a config.json with load_format = dummy)",
            );
        }
        for (field, value) in [
            ("max_num_batched_tokens", Some(self.max_num_batched_tokens)),
            ("max_num_seqs", Some(self.max_num_seqs)),
            ("max_model_len", self.max_model_len),
            ("tensor_parallel_size", Some(self.tensor_parallel_size)),
            ("threads", self.threads),
        ] {
            if value == Some(0) {
                return bad(field, "0".into(), "an integer >= 1");
            }
        }
        if self.kvcache_block_size < 16 || !self.kvcache_block_size.is_power_of_two() {
            return bad(
                "kvcache_block_size",
                self.kvcache_block_size.to_string(),
                "a power of two >= 16",
            );
        }
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            return bad(
                "gpu_memory_utilization",
                self.gpu_memory_utilization.to_string(),
                "a number in (0, 1]",
            );
        }
        if !(self.kv_cache_memory_gib.is_finite() && self.kv_cache_memory_gib > 0.0) {
            return bad(
                "kv_cache_memory_gib",
                self.kv_cache_memory_gib.to_string(),
                "a finite number of GiB > 0",
            );
        }
        self.tp.validate(self.tensor_parallel_size)?;
        if self.num_kvcache_blocks == Some(0) {
            return bad(
                "num_kvcache_blocks",
                "0".into(),
                "an integer >= 1, or unset to size the cache from kv_cache_memory_gib",
            );
        }
        Ok(())
    }

    /// Whether `model` names a config file rather than a model directory: an existing
    /// file, or a missing path ending in `.json` (so the error names that file).
    fn model_is_config_file(&self) -> bool {
        self.model.is_file()
            || (!self.model.is_dir() && self.model.extension().is_some_and(|e| e == "json"))
    }

    /// `config.json` of the model: `model` itself when it is a file, else `model/config.json`.
    pub fn model_config_path(&self) -> PathBuf {
        if self.model_is_config_file() {
            self.model.clone()
        } else {
            self.model.join("config.json")
        }
    }

    /// The directory holding the model's files (`generation_config.json`, weights).
    pub fn model_dir(&self) -> PathBuf {
        if self.model_is_config_file() {
            self.model
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        } else {
            self.model.clone()
        }
    }

    /// The tokenizer directory: `tokenizer` when set, else the model directory.
    pub fn tokenizer_dir(&self) -> PathBuf {
        self.tokenizer.clone().unwrap_or_else(|| self.model_dir())
    }
}

/// A TOML error as one line: `line L, column C: message`. (The error's own `Display` spans
/// five lines with a source excerpt and a caret, which breaks a one-line CLI error.)
fn one_line_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: EngineError) -> &'static str {
        match err {
            EngineError::InvalidConfig { field, .. } => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = EngineConfig::new("m");
        assert_eq!(c.max_num_batched_tokens, 16384);
        assert_eq!(c.max_num_seqs, 512);
        assert_eq!(c.max_model_len, None);
        assert_eq!(c.gpu_memory_utilization, 0.9);
        assert_eq!(c.tensor_parallel_size, 1);
        assert!(!c.enforce_eager);
        assert_eq!(c.kvcache_block_size, 256);
        assert_eq!(c.device, DeviceKind::Auto);
        assert_eq!(c.kv_cache_memory_gib, 2.0);
        assert_eq!(c.num_kvcache_blocks, None);
        assert_eq!(c.kv_cache_dtype, KvCacheDType::Auto);
        assert_eq!(c.load_format, LoadFormat::Safetensors);
        assert_eq!(c.seed, 0);
        assert_eq!(c.dtype, ModelDType::Auto);
        assert_eq!(c.generation_config, GenerationConfigSource::Auto);
        assert!(c.enable_prefix_caching);
        assert_eq!(c.threads, None);
        c.validate().unwrap();
    }

    #[test]
    fn toml_overrides_and_keeps_defaults() {
        let c = EngineConfig::from_toml_str(
            r#"
            model = "configs/qwen3-0.6b.json"
            load_format = "dummy"
            kvcache_block_size = 16
            device = "cpu"
            kv_cache_dtype = "bf16"
            num_kvcache_blocks = 5
            seed = 7
            dtype = "bf16"
            generation_config = "vllm"
            enable_prefix_caching = false
            threads = 3
            max_model_len = 1000
            "#,
            Path::new("engine.toml"),
        )
        .unwrap();
        assert_eq!(c.model, PathBuf::from("configs/qwen3-0.6b.json"));
        assert_eq!(c.load_format, LoadFormat::Dummy);
        assert_eq!(c.kvcache_block_size, 16);
        assert_eq!(c.device, DeviceKind::Cpu);
        assert_eq!(c.kv_cache_dtype, KvCacheDType::Bf16);
        assert_eq!(c.num_kvcache_blocks, Some(5));
        assert_eq!(c.seed, 7);
        assert_eq!(c.dtype, ModelDType::Bfloat16);
        assert_eq!(c.generation_config, GenerationConfigSource::Vllm);
        assert!(!c.enable_prefix_caching);
        assert_eq!(c.threads, Some(3));
        assert_eq!(c.max_model_len, Some(1000));
        assert_eq!(c.max_num_seqs, 512);
        let folder = EngineConfig::from_toml_str("generation_config = \"gen/\"", Path::new("e"));
        assert_eq!(
            folder.unwrap().generation_config,
            GenerationConfigSource::Folder("gen/".into())
        );
    }

    #[test]
    fn kv_cache_dtype_auto_is_bf16_on_cuda_and_on_the_cpu() {
        use KvCacheDType::*;
        assert_eq!(Auto.dtype_on(Device::Cpu), DType::BF16);
        assert_eq!(F32.dtype_on(Device::Cpu), DType::F32);
        assert_eq!(Auto.dtype_on(Device::Cuda(0)), DType::BF16);
        assert_eq!(F32.dtype_on(Device::Cuda(1)), DType::F32);
        assert_eq!(Bf16.dtype_on(Device::Cpu), DType::BF16);
        let c = EngineConfig::from_toml_str("kv_cache_dtype = \"auto\"", Path::new("e.toml"));
        assert_eq!(c.unwrap().kv_cache_dtype, Auto);
        let c = EngineConfig::from_toml_str("kv_cache_dtype = \"f32\"", Path::new("e.toml"));
        assert_eq!(c.unwrap().kv_cache_dtype, F32);
        assert_eq!(Fp8.dtype_on(Device::Cpu), DType::F8E4M3);
        for spelling in ["fp8", "fp8_e4m3"] {
            let toml = format!("kv_cache_dtype = \"{spelling}\"");
            let c = EngineConfig::from_toml_str(&toml, Path::new("e.toml"));
            assert_eq!(c.unwrap().kv_cache_dtype, Fp8, "{spelling}");
        }
    }

    #[test]
    fn toml_rejects_unknown_keys_and_bad_values() {
        let err = EngineConfig::from_toml_str("modle = \"x\"", Path::new("e.toml")).unwrap_err();
        assert!(
            matches!(&err, EngineError::ConfigFile { msg, .. } if msg.contains("modle")),
            "{err}"
        );
        let err = EngineConfig::from_toml_str("device = \"tpu\"", Path::new("e.toml")).unwrap_err();
        assert!(matches!(err, EngineError::ConfigFile { .. }));
        // One line, with where the problem is.
        let text = "max_num_seqs = 4\n\nmodle = \"x\"\n";
        let msg = EngineConfig::from_toml_str(text, Path::new("e.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(msg.lines().count(), 1, "{msg}");
        assert!(
            msg.starts_with("cannot load e.toml: line 3, column 1: unknown field `modle`"),
            "{msg}"
        );
    }

    #[test]
    fn validate_names_the_field() {
        let base = EngineConfig::new("m");
        let cases: Vec<(EngineConfig, &str)> = vec![
            (EngineConfig::default(), "model"),
            (
                EngineConfig {
                    max_num_seqs: 0,
                    ..base.clone()
                },
                "max_num_seqs",
            ),
            (
                EngineConfig {
                    max_num_batched_tokens: 0,
                    ..base.clone()
                },
                "max_num_batched_tokens",
            ),
            (
                EngineConfig {
                    max_model_len: Some(0),
                    ..base.clone()
                },
                "max_model_len",
            ),
            (
                EngineConfig {
                    threads: Some(0),
                    ..base.clone()
                },
                "threads",
            ),
            (
                EngineConfig {
                    tensor_parallel_size: 0,
                    ..base.clone()
                },
                "tensor_parallel_size",
            ),
            (
                EngineConfig {
                    kvcache_block_size: 8,
                    ..base.clone()
                },
                "kvcache_block_size",
            ),
            (
                EngineConfig {
                    kvcache_block_size: 48,
                    ..base.clone()
                },
                "kvcache_block_size",
            ),
            (
                EngineConfig {
                    gpu_memory_utilization: 1.5,
                    ..base.clone()
                },
                "gpu_memory_utilization",
            ),
            (
                EngineConfig {
                    gpu_memory_utilization: 0.0,
                    ..base.clone()
                },
                "gpu_memory_utilization",
            ),
            (
                EngineConfig {
                    kv_cache_memory_gib: f64::NAN,
                    ..base.clone()
                },
                "kv_cache_memory_gib",
            ),
            (
                EngineConfig {
                    kv_cache_memory_gib: 0.0,
                    ..base.clone()
                },
                "kv_cache_memory_gib",
            ),
            (
                EngineConfig {
                    num_kvcache_blocks: Some(0),
                    ..base.clone()
                },
                "num_kvcache_blocks",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(field_of(config.validate().unwrap_err()), field);
        }
        EngineConfig {
            kvcache_block_size: 16,
            ..base
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn model_paths_for_a_dir_and_a_config_file() {
        let dir = EngineConfig::new("/nonexistent/model-dir");
        assert_eq!(
            dir.model_config_path(),
            PathBuf::from("/nonexistent/model-dir/config.json")
        );
        assert_eq!(dir.tokenizer_dir(), PathBuf::from("/nonexistent/model-dir"));
        let file = EngineConfig::new(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        assert_eq!(file.model_config_path(), file.model);
        assert_eq!(file.model_dir(), PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        // A missing `.json` path is taken as the config file (the error then names it).
        let missing = EngineConfig::new("/nonexistent/qwen3.json");
        assert_eq!(missing.model_config_path(), missing.model);
        assert_eq!(missing.model_dir(), PathBuf::from("/nonexistent"));
        let with_tok = EngineConfig {
            tokenizer: Some("tok".into()),
            ..dir
        };
        assert_eq!(with_tok.tokenizer_dir(), PathBuf::from("tok"));
    }
}
