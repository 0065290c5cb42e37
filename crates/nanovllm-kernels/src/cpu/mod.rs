//! The CPU backend: every op in Rust, multithreaded with rayon, GEMMs through the `gemm` crate.
//! Activations are f32; bf16/f16 weights are converted inside the kernels.
//! (Op bodies are being written; see the helper task.)

use crate::attention::AttentionMetadata;
use crate::backend::{Backend, Device};
use crate::dtype::DType;
use crate::error::Result;
use crate::kv_cache::LayerKvCache;
use crate::tensor::Tensor;

#[derive(Debug, Default, Clone)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        Self
    }
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn activation_dtype(&self) -> DType {
        DType::F32
    }
    fn upload(&self, host: Tensor) -> Result<Tensor> {
        Ok(host)
    }
    fn to_host(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Ok(Tensor::zeros_cpu(shape, dtype))
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn embedding(&self, _ids: &Tensor, _table: &Tensor) -> Result<Tensor> {
        todo!()
    }
    fn rms_norm(&self, _x: &Tensor, _weight: &Tensor, _eps: f32) -> Result<Tensor> {
        todo!()
    }
    fn add_rms_norm(
        &self,
        _x: &Tensor,
        _residual: &mut Tensor,
        _weight: &Tensor,
        _eps: f32,
    ) -> Result<Tensor> {
        todo!()
    }
    fn rope(
        &self,
        _x: &mut Tensor,
        _positions: &Tensor,
        _cos_sin: &Tensor,
        _head_dim: usize,
    ) -> Result<()> {
        todo!()
    }
    fn matmul(&self, _x: &Tensor, _w: &Tensor) -> Result<Tensor> {
        todo!()
    }
    fn silu_mul(&self, _gate_up: &Tensor) -> Result<Tensor> {
        todo!()
    }
    fn add_inplace(&self, _x: &mut Tensor, _y: &Tensor) -> Result<()> {
        todo!()
    }
    fn split_last_dim(&self, _x: &Tensor, _sizes: &[usize]) -> Result<Vec<Tensor>> {
        todo!()
    }
    fn index_rows(&self, _x: &Tensor, _rows: &Tensor) -> Result<Tensor> {
        todo!()
    }
    fn store_kv(
        &self,
        _k: &Tensor,
        _v: &Tensor,
        _cache: &mut LayerKvCache,
        _slot_mapping: &Tensor,
    ) -> Result<()> {
        todo!()
    }
    fn prefill_attention(
        &self,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _cache: &LayerKvCache,
        _meta: &AttentionMetadata,
        _scale: f32,
    ) -> Result<Tensor> {
        todo!()
    }
    fn decode_attention(
        &self,
        _q: &Tensor,
        _cache: &LayerKvCache,
        _meta: &AttentionMetadata,
        _scale: f32,
    ) -> Result<Tensor> {
        todo!()
    }
}
