//! The CPU backend: every op in Rust, multithreaded with rayon's global pool. bf16
//! GEMMs and attention have AVX2+FMA kernels picked at run time (`gemv/`, `packed_gemm`,
//! `attention/flash.rs`) with portable fallbacks; f32 weights go through the `gemm` crate.
//!
//! Activations are f32. Weights (matmul, embedding, norms) may be f32, bf16 or f16 and
//! are widened inside the kernels, a row or tile at a time — never as a whole matrix.
//! The KV cache may be f32 or bf16. Each op validates shapes, dtypes and indices before
//! touching data and reports problems as [`crate::KernelError`]s; one file per op family.

mod activation;
mod attention;
mod bias;
pub mod buffer_pool;
mod check;
mod convert;
mod embedding;
pub(crate) mod fp8_encode;
mod gemv;
mod heap;
mod huge_pages;
pub use huge_pages::vec_with_capacity;
mod kv;
mod matmul;
#[cfg(test)]
mod matmul_check;
mod moe;
mod norm;
mod packed_gemm;
mod parallel;
mod quant_matmul;
mod rope;
mod rows;
mod sampling;
mod simd;
#[cfg(test)]
mod tests;

use crate::attention::AttentionMetadata;
use crate::backend::{Backend, Device, TopKWeights};
use crate::dtype::DType;
use crate::error::Result;
use crate::kv_cache::LayerKvCache;
use crate::tensor::{CpuStorage, Storage, Tensor, TensorParts};

pub(crate) use buffer_pool::give_back as give_back_buffer;

#[derive(Debug, Clone)]
pub struct CpuBackend;

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The backend. It has no state of its own: buffers come from the process-wide pool
    /// (`buffer_pool.rs`) and threads from rayon's global pool. For full speed, call
    /// [`configure_process`] once at startup as well.
    pub fn new() -> Self {
        Self
    }
}

/// Process-wide setup the CPU backend's speed relies on, done explicitly by whoever owns the
/// process (the engine's device construction, a benchmark's `main`), never as a side effect of
/// creating a backend. Idempotent: later calls do nothing. Today it raises glibc's mmap and
/// trim thresholds so that freed op outputs stay in the heap for the next op (`heap.rs`).
/// Only speed depends on it, never results.
pub fn configure_process() {
    heap::keep_freed_buffers();
}

/// Frees what the CPU backend keeps for reuse between steps: the buffer pool's buffers and
/// the heap's free memory. For an idle engine (the next step refills both).
pub fn release_cached_memory() {
    buffer_pool::clear();
    release_free_heap();
}

/// Returns the heap's free memory to the operating system (glibc's `malloc_trim`): for
/// after work that allocated a lot and is done (a multi-megabyte prompt's tokenizing), whose
/// freed memory would otherwise stay resident. Leaves the buffer pool alone.
pub fn release_free_heap() {
    heap::release_free_memory();
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn sample(
        &self,
        logits: Tensor,
        rows: &[crate::sampling::SamplingRow<'_>],
    ) -> Result<crate::sampling::SampleOutput> {
        sampling::sample(logits, rows)
    }
    fn activation_dtype(&self) -> DType {
        DType::F32
    }
    fn upload(&self, host: Tensor) -> Result<Tensor> {
        Ok(host)
    }
    fn copy_from_host(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        crate::validate::same_layout("copy_from_host", src, dst)?;
        *dst.cpu_mut("copy_from_host")? = src.cpu("copy_from_host")?.clone();
        Ok(())
    }
    fn to_host(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let mut tensor = Tensor::zeros_cpu(shape, dtype);
        // Big zeroed buffers are KV caches (and the like): huge pages, see huge_pages.rs.
        match tensor.storage_mut() {
            Storage::Cpu(CpuStorage::F32(v)) => huge_pages::advise(v),
            Storage::Cpu(CpuStorage::BF16(v)) => huge_pages::advise(v),
            Storage::Cpu(CpuStorage::F16(v)) => huge_pages::advise(v),
            Storage::Cpu(CpuStorage::Bytes { bytes, .. }) => huge_pages::advise(bytes),
            _ => {}
        }
        Ok(tensor)
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn embedding(&self, ids: &Tensor, table: &Tensor) -> Result<Tensor> {
        embedding::embedding(ids, table)
    }
    fn embedding_shard(&self, ids: &Tensor, table: &Tensor, vocab_start: usize) -> Result<Tensor> {
        embedding::embedding_shard(ids, table, vocab_start)
    }
    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        norm::rms_norm(x, weight, eps)
    }
    fn add_rms_norm(
        &self,
        x: &Tensor,
        residual: &mut Tensor,
        weight: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        norm::add_rms_norm(x, residual, weight, eps)
    }
    fn rope(
        &self,
        x: &mut Tensor,
        positions: &Tensor,
        cos_sin: &Tensor,
        head_dim: usize,
    ) -> Result<()> {
        rope::rope(x, positions, cos_sin, head_dim)
    }
    fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        matmul::matmul(x, w)
    }
    fn silu_mul(&self, gate_up: &Tensor) -> Result<Tensor> {
        activation::silu_mul(gate_up)
    }
    fn add_inplace(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        rows::add_inplace(x, y)
    }
    fn add_bias(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        bias::add_bias(x, bias)
    }
    fn split_last_dim(&self, x: &Tensor, sizes: &[usize]) -> Result<TensorParts> {
        rows::split_last_dim(x, sizes)
    }
    fn index_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
        rows::index_rows(x, rows)
    }
    fn store_kv(
        &self,
        k: &Tensor,
        v: &Tensor,
        cache: &mut LayerKvCache,
        slot_mapping: &Tensor,
    ) -> Result<()> {
        kv::store_kv(k, v, cache, slot_mapping)
    }
    fn prefill_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &LayerKvCache,
        meta: &AttentionMetadata,
        scale: f32,
    ) -> Result<Tensor> {
        attention::prefill_attention(q, k, v, cache, meta, scale)
    }
    fn decode_attention(
        &self,
        q: &Tensor,
        cache: &LayerKvCache,
        meta: &AttentionMetadata,
        scale: f32,
    ) -> Result<Tensor> {
        attention::decode_attention(q, cache, meta, scale)
    }
    fn moe_route(
        &self,
        router_logits: &Tensor,
        top_k: usize,
        weights: TopKWeights,
    ) -> Result<(Tensor, Tensor)> {
        moe::moe_route(router_logits, top_k, weights)
    }
    fn moe_experts(
        &self,
        x: &Tensor,
        w13: &Tensor,
        w2: &Tensor,
        topk_ids: &Tensor,
        topk_weights: &Tensor,
    ) -> Result<Tensor> {
        moe::moe_experts(x, w13, w2, topk_ids, topk_weights)
    }

    fn release_idle_memory(&self) {
        release_cached_memory();
    }
}
