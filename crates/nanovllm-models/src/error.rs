use std::path::PathBuf;

use nanovllm_kernels::KernelError;

/// Errors of config parsing, weight loading and model execution.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {file}: {msg}")]
    InvalidConfig { file: PathBuf, msg: String },
    #[error("unknown architecture {name:?}: supported are {supported:?}")]
    UnknownArchitecture {
        name: String,
        supported: Vec<&'static str>,
    },
    #[error("tensor {name} is missing from the checkpoint in {dir}")]
    MissingTensor { name: String, dir: PathBuf },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor {name} has unsupported dtype {dtype}: expected f32, bf16 or f16")]
    UnsupportedDType { name: String, dtype: String },
    #[error("invalid safetensors file {path}: {msg} (the file may be truncated or corrupt)")]
    InvalidCheckpoint { path: PathBuf, msg: String },
    #[error("tensor parallelism: {0}")]
    Shard(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}
