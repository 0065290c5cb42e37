//! [`PrimitiveOnly`]: a backend that implements only the [`Backend`] methods without a
//! default body, so that running the shared suite on it tests the defaults (e.g.
//! `add_rms_norm` as `add_inplace` then `rms_norm`) the way a new backend would use them.

use crate::{AttentionMetadata, Backend, DType, Device, LayerKvCache, Result, Tensor, TensorParts};

/// Forwards every required method of [`Backend`] to the inner backend and overrides none
/// of the defaulted ones. Run the suite on it with
/// `backend_test_suite!(PrimitiveOnly(CpuBackend::new()))`.
#[derive(Debug)]
pub struct PrimitiveOnly<B>(pub B);

impl<B: Backend> Backend for PrimitiveOnly<B> {
    fn device(&self) -> Device {
        self.0.device()
    }

    fn activation_dtype(&self) -> DType {
        self.0.activation_dtype()
    }

    fn upload(&self, host: Tensor) -> Result<Tensor> {
        self.0.upload(host)
    }

    fn copy_from_host(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        self.0.copy_from_host(src, dst)
    }

    fn to_host(&self, t: &Tensor) -> Result<Tensor> {
        self.0.to_host(t)
    }

    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.0.zeros(shape, dtype)
    }

    fn synchronize(&self) -> Result<()> {
        self.0.synchronize()
    }

    fn embedding(&self, ids: &Tensor, table: &Tensor) -> Result<Tensor> {
        self.0.embedding(ids, table)
    }

    fn embedding_shard(&self, ids: &Tensor, table: &Tensor, vocab_start: usize) -> Result<Tensor> {
        self.0.embedding_shard(ids, table, vocab_start)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        self.0.rms_norm(x, weight, eps)
    }

    fn rope(
        &self,
        x: &mut Tensor,
        positions: &Tensor,
        cos_sin: &Tensor,
        head_dim: usize,
    ) -> Result<()> {
        self.0.rope(x, positions, cos_sin, head_dim)
    }

    fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        self.0.matmul(x, w)
    }

    fn silu_mul(&self, gate_up: &Tensor) -> Result<Tensor> {
        self.0.silu_mul(gate_up)
    }

    fn add_inplace(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        self.0.add_inplace(x, y)
    }

    fn split_last_dim(&self, x: &Tensor, sizes: &[usize]) -> Result<TensorParts> {
        self.0.split_last_dim(x, sizes)
    }

    fn index_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
        self.0.index_rows(x, rows)
    }

    fn store_kv(
        &self,
        k: &Tensor,
        v: &Tensor,
        cache: &mut LayerKvCache,
        slot_mapping: &Tensor,
    ) -> Result<()> {
        self.0.store_kv(k, v, cache, slot_mapping)
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
        self.0.prefill_attention(q, k, v, cache, meta, scale)
    }

    fn decode_attention(
        &self,
        q: &Tensor,
        cache: &LayerKvCache,
        meta: &AttentionMetadata,
        scale: f32,
    ) -> Result<Tensor> {
        self.0.decode_attention(q, cache, meta, scale)
    }

    fn moe_route(&self, router_logits: &Tensor, top_k: usize) -> Result<(Tensor, Tensor)> {
        self.0.moe_route(router_logits, top_k)
    }

    fn moe_experts(
        &self,
        x: &Tensor,
        w13: &Tensor,
        w2: &Tensor,
        topk_ids: &Tensor,
        topk_weights: &Tensor,
    ) -> Result<Tensor> {
        self.0.moe_experts(x, w13, w2, topk_ids, topk_weights)
    }
}
