//! `impl Backend for CudaBackend`: memory ops here, every compute op delegated to its
//! file (`embedding.rs`, `norm.rs`, `rope.rs`, `elementwise.rs`, `rows.rs`, `kv.rs`,
//! `matmul.rs`; attention and MoE in `attention.rs` / `moe.rs`; sampling in
//! `sampling.rs`).

use std::sync::Arc;

use super::capability::NcclGroups;
use super::device::{
    device_buf, device_buf_mut, host_copy, known_range, set_host_copy, set_known_range, CudaBackend,
};
use super::launch::cuda_err;
use super::{attention, elementwise, embedding, kv, matmul, moe, norm, rope, rows};
use crate::attention::AttentionMetadata;
use crate::backend::{Backend, Device, TopKWeights};
use crate::capability::{CollectiveGroups, DeviceMemory, GraphCapture};
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::host_bytes::{host_bytes, host_bytes_mut};
use crate::kv_cache::LayerKvCache;
use crate::tensor::{CpuStorage, Tensor, TensorParts};
use crate::validate;

impl CudaBackend {
    /// Host copies synchronise with the host, which a stream capture forbids.
    pub(crate) fn not_capturing(&self, op: &'static str) -> Result<()> {
        if self.is_capturing() {
            return Err(KernelError::Invalid {
                op,
                msg: "not allowed while capturing a CUDA graph (host copies and \
                      synchronisation cannot be captured)"
                    .to_string(),
            });
        }
        Ok(())
    }

    /// Copies a device tensor's values to a host tensor (waits for queued work).
    pub(crate) fn download(&self, t: &Tensor, op: &'static str) -> Result<Tensor> {
        self.not_capturing(op)?;
        let buf = device_buf(t, op)?;
        let mut host = CpuStorage::zeros(t.dtype(), t.numel());
        let bytes = t.size_in_bytes();
        if bytes > 0 {
            self.stream()
                .memcpy_dtoh(&buf.slice(..bytes), host_bytes_mut(&mut host))
                .map_err(cuda_err(op))?;
            self.stream().synchronize().map_err(cuda_err(op))?;
        }
        Tensor::from_cpu(host, t.shape())
    }

    /// `(min, max)` of an integer tensor's values, for index validation; `None` when
    /// there is nothing to check (empty tensor) or nothing may be checked (while
    /// capturing a graph, the values at replay time are not known).
    ///
    /// Free when the values came from the host (see `CudaStorage::known_range`);
    /// otherwise one small device-to-host copy.
    pub(crate) fn index_range(&self, t: &Tensor, op: &'static str) -> Result<Option<(i64, i64)>> {
        if self.is_capturing() {
            return Ok(None);
        }
        if let Some(range) = known_range(t) {
            return Ok(Some(range));
        }
        if !matches!(t.dtype(), DType::U32 | DType::I64) {
            return Err(KernelError::UnsupportedDType {
                op,
                dtype: t.dtype(),
            });
        }
        let host = self.download(t, op)?;
        Ok(storage_range(host.cpu(op)?))
    }

    /// The values of a u32 tensor, for host-side checks: its host copy when it has one
    /// (no device access; see `super::host_copy`), else read back (waits for queued
    /// work, so not while capturing).
    pub(crate) fn u32_values<'a>(
        &self,
        t: &'a Tensor,
        op: &'static str,
    ) -> Result<std::borrow::Cow<'a, [u32]>> {
        if let Some(values) = host_copy(t) {
            return Ok(std::borrow::Cow::Borrowed(values));
        }
        let host = self.download(t, op)?;
        Ok(std::borrow::Cow::Owned(host.as_u32_slice()?.to_vec()))
    }
}

/// `(min, max)` of integer values; `None` when empty.
fn host_range(values: impl Iterator<Item = i64>) -> Option<(i64, i64)> {
    values.fold(None, |acc, x| match acc {
        None => Some((x, x)),
        Some((lo, hi)) => Some((lo.min(x), hi.max(x))),
    })
}

/// The value range of a host integer buffer (`None` for floats and empty buffers).
fn storage_range(s: &CpuStorage) -> Option<(i64, i64)> {
    match s {
        CpuStorage::U32(v) => host_range(v.iter().map(|&x| x as i64)),
        CpuStorage::I64(v) => host_range(v.iter().copied()),
        _ => None,
    }
}

impl Backend for CudaBackend {
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal())
    }
    fn sample(
        &self,
        logits: Tensor,
        rows: &[crate::sampling::SamplingRow<'_>],
    ) -> Result<crate::sampling::SampleOutput> {
        self.sample_rows(logits, rows)
    }
    fn activation_dtype(&self) -> DType {
        DType::BF16
    }

    fn upload(&self, host: Tensor) -> Result<Tensor> {
        if !host.is_cpu() {
            return Ok(host);
        }
        self.not_capturing("upload")?;
        let mut t = self.alloc(host.shape(), host.dtype())?;
        self.copy_from_host(&host, &mut t)?;
        Ok(t)
    }

    /// Float weights are stored bf16 (converted on the host, once, at load time);
    /// byte-backed weights (block-quantized, FP8) are uploaded as they are.
    fn upload_weight(&self, host: Tensor) -> Result<Tensor> {
        if host.is_cpu() && host.dtype().is_float() && host.dtype() != DType::BF16 {
            return self.upload(host.to_dtype_cpu(DType::BF16)?);
        }
        self.upload(host)
    }

    fn copy_from_host(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        self.not_capturing("copy_from_host")?;
        validate::same_layout("copy_from_host", src, dst)?;
        let host = src.cpu("copy_from_host")?;
        let bytes = host_bytes(host);
        if bytes.is_empty() {
            return Ok(());
        }
        let stream = self.stream().clone();
        let buf = device_buf_mut(dst, "copy_from_host")?;
        // Small copies (a step's inputs) go through pinned memory, asynchronously; large
        // ones (weights) directly from the pageable source.
        if !self.copy_staged(bytes, buf)? {
            stream
                .memcpy_htod(bytes, &mut buf.slice_mut(..bytes.len()))
                .map_err(cuda_err("copy_from_host"))?;
        }
        set_known_range(dst, storage_range(host));
        let values = match host {
            CpuStorage::U32(v) => Some(v.as_slice()),
            _ => None,
        };
        set_host_copy(dst, values);
        Ok(())
    }

    fn to_host(&self, t: &Tensor) -> Result<Tensor> {
        if t.is_cpu() {
            return Ok(t.clone());
        }
        self.download(t, "to_host")
    }

    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.alloc_zeros(shape, dtype)
    }

    fn synchronize(&self) -> Result<()> {
        self.not_capturing("synchronize")?;
        self.stream().synchronize().map_err(cuda_err("synchronize"))
    }

    fn embedding(&self, ids: &Tensor, table: &Tensor) -> Result<Tensor> {
        embedding::embedding(self, ids, table)
    }
    fn embedding_shard(&self, ids: &Tensor, table: &Tensor, vocab_start: usize) -> Result<Tensor> {
        embedding::embedding_shard(self, ids, table, vocab_start)
    }
    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        norm::rms_norm(self, x, weight, eps)
    }
    fn add_rms_norm(
        &self,
        x: &Tensor,
        residual: &mut Tensor,
        weight: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        norm::add_rms_norm(self, x, residual, weight, eps)
    }
    fn rope(
        &self,
        x: &mut Tensor,
        positions: &Tensor,
        cos_sin: &Tensor,
        head_dim: usize,
    ) -> Result<()> {
        rope::rope(self, x, positions, cos_sin, head_dim)
    }
    fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        matmul::matmul(self, x, w)
    }
    fn silu_mul(&self, gate_up: &Tensor) -> Result<Tensor> {
        elementwise::silu_mul(self, gate_up)
    }
    fn add_inplace(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        elementwise::add_inplace(self, x, y)
    }
    fn add_bias(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        elementwise::add_bias(self, x, bias)
    }
    fn split_last_dim(&self, x: &Tensor, sizes: &[usize]) -> Result<TensorParts> {
        rows::split_last_dim(self, x, sizes)
    }
    fn index_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
        rows::index_rows(self, x, rows)
    }
    fn store_kv(
        &self,
        k: &Tensor,
        v: &Tensor,
        cache: &mut LayerKvCache,
        slot_mapping: &Tensor,
    ) -> Result<()> {
        kv::store_kv(self, k, v, cache, slot_mapping)
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
        attention::prefill_attention(self, q, k, v, cache, meta, scale)
    }
    fn decode_attention(
        &self,
        q: &Tensor,
        cache: &LayerKvCache,
        meta: &AttentionMetadata,
        scale: f32,
    ) -> Result<Tensor> {
        attention::decode_attention(self, q, cache, meta, scale)
    }
    fn moe_route(
        &self,
        router_logits: &Tensor,
        top_k: usize,
        weights: TopKWeights,
    ) -> Result<(Tensor, Tensor)> {
        moe::moe_route(self, router_logits, top_k, weights)
    }
    fn moe_experts(
        &self,
        x: &Tensor,
        w13: &Tensor,
        w2: &Tensor,
        topk_ids: &Tensor,
        topk_weights: &Tensor,
    ) -> Result<Tensor> {
        moe::moe_experts(self, x, w13, w2, topk_ids, topk_weights)
    }

    fn device_memory(&self) -> Option<&dyn DeviceMemory> {
        Some(self)
    }
    fn graph_capture(&self) -> Option<&dyn GraphCapture> {
        Some(self)
    }
    fn collective_groups(self: Arc<Self>) -> Option<Arc<dyn CollectiveGroups>> {
        Some(Arc::new(NcclGroups { backend: self }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ranges_of_integer_buffers() {
        assert_eq!(storage_range(&CpuStorage::U32(vec![3, 9, 0])), Some((0, 9)));
        assert_eq!(
            storage_range(&CpuStorage::U32(vec![u32::MAX])),
            Some((u32::MAX as i64, u32::MAX as i64))
        );
        assert_eq!(
            storage_range(&CpuStorage::I64(vec![-1, 7, -2])),
            Some((-2, 7))
        );
        assert_eq!(storage_range(&CpuStorage::I64(vec![])), None);
        assert_eq!(storage_range(&CpuStorage::F32(vec![1.0])), None);
    }
}
