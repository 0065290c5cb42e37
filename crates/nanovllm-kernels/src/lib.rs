//! # nanovllm-kernels
//!
//! Owns tensors and the [`Backend`] seam: a device, its buffers, and the small
//! fixed set of ops that models are written in (embedding, RMSNorm, RoPE,
//! matmul, SiLU·mul, paged KV store, prefill/decode attention, MoE and
//! sampling helpers). The CPU backend implements every op in Rust,
//! multithreaded with rayon; the CUDA backend (feature `cuda`) implements them
//! with `kernels/*.cu` and cuBLAS.
//!
//! It also defines the [`Communicator`] seam used by tensor-parallel layers.
//!
//! It must not depend on the scheduler, the models or the engine: it knows
//! nothing of sequences, configs or checkpoints.

mod attention;
mod backend;
mod comm;
pub mod cpu;
mod dtype;
mod error;
mod kv_cache;
mod tensor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use attention::AttentionMetadata;
pub use backend::{Backend, Device};
pub use comm::{Communicator, NoopCommunicator};
pub use cpu::CpuBackend;
pub use dtype::DType;
pub use error::{KernelError, Result};
pub use kv_cache::{KvCache, LayerKvCache};
pub use tensor::{CpuStorage, Storage, Tensor};
