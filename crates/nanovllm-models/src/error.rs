use std::path::PathBuf;

use nanovllm_kernels::{DType, KernelError};

/// Errors of config parsing, weight loading and model execution.
///
/// Like every error enum of the workspace, a variant's message says its cause itself and
/// `source()` returns `None` (a field named `source` or marked `#[source]`/`#[from]` would
/// make printers that walk the chain, such as anyhow's `{:#}`, say the cause twice);
/// `#[error(transparent)]` wrappers pass both on unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid {file}: {msg}")]
    InvalidConfig { file: PathBuf, msg: String },
    #[error("unknown architecture {name:?}: supported are {supported:?}")]
    UnknownArchitecture {
        name: String,
        supported: Vec<&'static str>,
    },
    #[error("{architecture} does not support {field}: {msg}")]
    UnsupportedFeature {
        architecture: String,
        /// The config field and its value, e.g. `attention_bias = true`.
        field: String,
        msg: String,
    },
    #[error("tensor {name} is missing from the checkpoint in {dir}")]
    MissingTensor { name: String, dir: PathBuf },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor {name} has unsupported dtype {dtype}: expected f32, bf16, f16, or F8_E4M3 with its scales (FP8 checkpoints)")]
    UnsupportedDType { name: String, dtype: String },
    #[error("invalid safetensors file {path}: {msg} (the file may be truncated or corrupt)")]
    InvalidCheckpoint { path: PathBuf, msg: String },
    #[error("no checkpoint in {dir}: expected model.safetensors, model.safetensors.index.json or *.safetensors (or load dummy weights)")]
    NoCheckpoint { dir: PathBuf },
    #[error(
        "{index} maps tensors to shard {shard}, which does not exist: re-download the checkpoint"
    )]
    MissingShard { index: PathBuf, shard: PathBuf },
    #[error("tensors {first} ({first_dtype}) and {second} ({second_dtype}) are packed into one weight but have different dtypes")]
    MixedDTypes {
        first: String,
        first_dtype: DType,
        second: String,
        second_dtype: DType,
    },
    #[error(
        "the checkpoint has {count} tensor(s) that {architecture} does not use: {}; \
         config.json's architecture does not match the checkpoint, or the checkpoint holds \
         weights this engine does not implement",
        list_names(.first, .count)
    )]
    UnusedTensors {
        architecture: String,
        /// How many tensors went unused.
        count: usize,
        /// The first few of them, sorted by name.
        first: Vec<String>,
    },
    #[error("tensor parallelism: {0}")]
    Shard(String),
    #[error("KV cache does not fit the model: {field} is {found}, the model needs {expected}")]
    KvCacheMismatch {
        field: &'static str,
        expected: usize,
        found: usize,
    },
    #[error(
        "{layer}: expert {expert} is missing from the checkpoint (no tensor {tensor}); the \
         checkpoint is incomplete, or num_local_experts in config.json is larger than it"
    )]
    MissingExpert {
        layer: String,
        expert: usize,
        tensor: String,
    },
    #[error(
        "{layer}: the router gate has {found} experts but num_local_experts in config.json is \
         {expected}; the config does not belong to this checkpoint"
    )]
    ExpertCount {
        layer: String,
        expected: usize,
        found: usize,
    },
    #[error(
        "config.json's quantization_config.quant_method is {method:?}, which this engine \
         cannot load: supported are \"fp8\" checkpoints (e4m3 weights with block-wise \
         weight_scale_inv or a per-tensor weight_scale), or a bf16/f16/f32 checkpoint \
         quantized while loading with --quantization int8|int4|fp8"
    )]
    UnsupportedQuantization { method: String },
    #[error(
        "--quantization asks to quantize the weights to {requested}, but the checkpoint is \
         already quantized ({method} in config.json's quantization_config); load it without \
         --quantization"
    )]
    AlreadyQuantized { requested: DType, method: String },
    #[error(
        "tensor parallelism: {name} is split into shards of {shard} input features, which \
         cuts its {dtype} blocks of {block} weights; use a --tensor-parallel-size whose \
         shards are whole blocks, or (for quantization while loading) no --quantization"
    )]
    ShardCutsBlock {
        name: String,
        shard: usize,
        block: usize,
        dtype: DType,
    },
    #[error("{name}: {msg}")]
    Quantization { name: String, msg: String },
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// `a, b, c` or `a, b, c and 7 more` (of `count` names, `first` listed).
fn list_names(first: &[String], count: &usize) -> String {
    let listed = first.join(", ");
    match count.saturating_sub(first.len()) {
        0 => listed,
        more => format!("{listed} and {more} more"),
    }
}
