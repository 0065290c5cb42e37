//! # nanovllm-models
//!
//! Owns model architectures: the [`Model`] trait, Hugging Face config parsing
//! ([`ModelConfig`], [`GenerationConfig`]), weight loading (safetensors through
//! mmap, or dummy random weights, with a progress callback) with tensor-parallel sharding,
//! in-situ quantization of the linear weights and FP8 checkpoints, the shared
//! layers, and one file per architecture (`qwen3.rs`, `mixtral.rs`, `llama.rs`,
//! `mistral.rs`, `qwen2.rs`, `qwen3_moe.rs`), each declaring what it supports ([`features::Features`]) and each one
//! line in [`registry`].
//!
//! It depends on the kernels crate only. It must not know about scheduling
//! policy, sequences or sampling: a model maps a [`ForwardInput`] and a KV
//! cache to logits.

mod cast_source;
pub mod config;
pub mod decoder;
mod dummy;
mod error;
pub mod features;
pub mod fp8_checkpoint;
pub mod layers;
pub mod linear_weights;
pub mod llama;
pub mod loader;
pub mod mistral;
pub mod mixtral;
mod model;
pub mod progress;
pub mod qwen2;
pub mod qwen3;
pub mod qwen3_moe;
pub mod registry;
mod safetensors_source;
#[cfg(test)]
mod test_util;

pub use cast_source::CastSource;
pub use config::{CheckpointQuantization, GenerationConfig, ModelConfig, RopeScaling};
pub use dummy::DummySource;
pub use error::ModelError;
pub use fp8_checkpoint::Fp8CheckpointSource;
pub use linear_weights::{LinearWeights, WeightQuantization};
pub use loader::{
    check_tensor_parallel_size, LoadFormat, ShardSpec, Slice, WeightLoader, WeightSource,
};
pub use model::{ForwardInput, KvCacheSpec, Model, ModelContext};
pub use progress::{LoadProgress, LoadProgressFn};
pub use registry::{load_model, load_model_as, load_model_with_progress, supported_architectures};
pub use safetensors_source::SafetensorsSource;
