//! # nanovllm-kernels
//!
//! Owns tensors and the [`Backend`] seam: a device, its buffers, and the small
//! fixed set of ops that models are written in (embedding, RMSNorm, RoPE,
//! matmul, SiLU·mul, paged KV store, prefill/decode attention, MoE routing and
//! experts), plus optional device capabilities the engine asks for
//! ([`DeviceMemory`], [`GraphCapture`], [`CollectiveGroups`]). The CPU backend
//! implements every op in Rust, multithreaded with rayon; the CUDA backend
//! (feature `cuda`) implements them with `kernels/*.cu` and cuBLAS. Sampling is
//! an op too ([`Backend::sample`], defined in [`sampling`]): only token ids reach the host.
//!
//! It also defines the [`Communicator`] seam used by tensor-parallel layers.
//!
//! It must not depend on the scheduler, the models or the engine: it knows
//! nothing of sequences, configs or checkpoints.

mod attention;
mod backend;
mod capability;
mod comm;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod dtype;
mod error;
mod host_bytes;
mod kv_cache;
pub mod quant;
pub mod sampling;
// Used by the CUDA backend's pinned staging; tested on every build.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod staging;
mod storage;
mod tensor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod validate;

/// GPU target parsing shared with build.rs, unit-tested on every build.
#[cfg(all(test, not(feature = "cuda")))]
#[path = "cuda/arch.rs"]
mod cuda_arch;

pub use attention::AttentionMetadata;
pub use backend::{Backend, Device, TopKWeights};
pub use capability::{CapturedGraph, CollectiveGroups, DeviceMemory, GraphCapture, MemoryStats};
pub use comm::{Communicator, NoopCommunicator, TcpCommunicator, ThreadCommunicator};
#[cfg(feature = "cuda")]
pub use comm::{NcclCommunicator, NcclUniqueId, NCCL_UNIQUE_ID_BYTES};
pub use cpu::CpuBackend;
#[cfg(feature = "cuda")]
pub use cuda::CudaBackend;
pub use dtype::{Block, DType};
pub use error::{KernelError, Result};
pub use kv_cache::{KvCache, KvScales, LayerKvCache};
pub use sampling::{Penalties, RowLogprobs, SampleOutput, SamplingRow, NO_FINITE_LOGIT};
pub use tensor::{CpuStorage, Storage, Tensor, TensorParts, INLINE_DIMS};
