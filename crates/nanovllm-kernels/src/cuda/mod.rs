//! The CUDA backend (feature `cuda`): `kernels/*.cu` compiled by `build.rs` into fatbins
//! embedded in the binary, GEMMs through cuBLAS, memory through cudarc.
//!
//! Invariants:
//! - **One stream.** A [`CudaBackend`] owns one context and ONE non-default stream; every
//!   allocation, copy, kernel and GEMM is queued on it, so work is ordered without events.
//!   Event tracking is disabled in the context for that reason: no hidden event
//!   record/wait calls, which also keeps stream capture clean.
//! - **Stream-ordered memory.** Buffers come from `cuMemAllocAsync` on that stream and are
//!   freed with `cuMemFreeAsync` when their tensor drops, so dropping a tensor whose
//!   kernels are still queued is safe. Every allocation is counted in a
//!   [`MemoryTracker`] (current and peak bytes; see [`CudaBackend::memory_stats`]).
//! - **dtypes.** Activations and logits are bf16 ([`crate::Backend::activation_dtype`]);
//!   kernels read bf16, accumulate in f32 and store bf16. Float weights are stored bf16
//!   ([`crate::Backend::upload_weight`] converts); ops also accept f32/f16 weights
//!   (slower: converted per call). Block-quantized weights ([`crate::quant`]) stay in
//!   their bytes and `matmul` dequantizes them in registers (`quant.rs`); byte-backed
//!   buffers take [`DType::storage_bytes`](crate::DType::storage_bytes) bytes. The KV cache may be bf16 or f32. Integer inputs are
//!   u32, slot mappings i64 (−1 = skip).
//! - **Graph capture.** Between [`CudaBackend::begin_capture`] and
//!   [`CudaBackend::end_capture`] every op is capturable: kernels take their sizes from
//!   launch parameters that stay valid on replay (the replayed graph reuses the same
//!   buffers, grid and scalars with new data), allocations are graph memory nodes, and
//!   cuBLAS works in a fixed workspace. What is NOT allowed while capturing: host copies
//!   (`upload`, `to_host`, `copy_from_host`) and `synchronize`; index range checks are
//!   skipped (replay data is unknown; the engine validates ids on admission). Every buffer allocated during capture must be dropped
//!   before `end_capture` (copy outputs into static buffers with
//!   [`CudaBackend::copy_device`]).
//! - **Index validation without syncs.** Ids, positions, rows and slots are range-checked
//!   before a launch (errors as on the CPU). Integer tensors copied from the host carry
//!   their `(min, max)`, so the check is free; a kernel-written index tensor is read back
//!   at each use (`CudaBackend::index_range`). Small u32 tensors written from the host also
//!   keep their values (`host_copy.rs`), so attention checks its metadata values (offsets,
//!   lengths, block ids) in every build, like the CPU, without touching the device.
//!   Kernels also bounds-check, so a bad index skipped by a capture never reads or writes
//!   out of bounds. (MoE expert ids are device-written: they are checked in debug builds
//!   only; the kernels drop an out-of-range id.)
//! - **Pinned staging.** `copy_from_host` of up to 1 MiB (every step input) copies into a
//!   persistent page-locked ring and queues an asynchronous copy from there (`pinned.rs`);
//!   a segment of the ring is rewritten only after an event proves its last copies ran.
//! - **Pinned host staging.** `sample` (`sampling.rs`) keeps two page-locked host buffers
//!   (its packed parameters and its results), grown when too small and reused across
//!   calls; they are host memory, not counted by the tracker, and no copy uses them once
//!   `sample` returns (it synchronises, also on its error paths).
//! - **Cached pool memory.** Freed buffers stay in the device's default memory pool for
//!   reuse; [`CudaBackend::mem_info`] trims the pool first, so its `free` is accurate.
//! - **No panics without a GPU.** [`is_available`] and [`CudaBackend::new`] probe for
//!   libcuda before touching the driver, so a `cuda` build runs on CPU-only machines.

#[cfg(test)]
mod arch;
mod attention;
mod capability;
mod check;
mod device;
mod elementwise;
mod embedding;
#[cfg(test)]
mod emu_build;
mod graph;
mod host_copy;
mod kernels;
mod kv;
mod launch;
mod matmul;
mod memory;
mod moe;
mod norm;
mod ops;
mod pinned;
mod quant;
mod rope;
mod rows;
mod sampling;
mod storage;

pub use device::{device_count, is_available, unavailable_reason, CudaBackend};
pub use graph::CudaGraph;
pub use memory::MemoryTracker;
pub use storage::CudaStorage;

// The NCCL communicator (`comm/nccl.rs`) reads and writes device buffers directly.
pub(crate) use device::{device_buf, device_buf_mut};
