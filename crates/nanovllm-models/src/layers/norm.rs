//! RMSNorm: `x / sqrt(mean(x²) + eps) * weight` over the last dim.

use nanovllm_kernels::{Backend, Tensor};

use crate::error::ModelError;
use crate::loader::WeightLoader;

#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Loads `name: [size]`, replicated on every rank.
    pub fn load(
        loader: &WeightLoader,
        name: &str,
        size: usize,
        eps: f64,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: loader.full(name, &[size])?,
            eps: eps as f32,
        })
    }
    /// `x: [M, size]` → normalised `[M, size]`.
    pub fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(backend.rms_norm(x, &self.weight, self.eps)?)
    }
    /// Fused residual add: `residual += x`, then returns `norm(residual)`.
    pub fn forward_add(
        &self,
        backend: &dyn Backend,
        x: &Tensor,
        residual: &mut Tensor,
    ) -> Result<Tensor, ModelError> {
        Ok(backend.add_rms_norm(x, residual, &self.weight, self.eps)?)
    }
    /// Normalises each `size`-long group of `x: [M, groups * size]` separately
    /// (Qwen3's per-head q/k norm), reshaping to `[M * groups, size]` and back.
    pub fn forward_groups(&self, backend: &dyn Backend, x: Tensor) -> Result<Tensor, ModelError> {
        let (m, n) = x.dims2()?;
        let size = self.weight.numel();
        if size == 0 || n % size != 0 {
            return Err(ModelError::WrongShape {
                name: "per-head norm input".into(),
                expected: vec![m, size],
                found: vec![m, n],
            });
        }
        let grouped = x.reshape(&[m * (n / size), size])?;
        Ok(self.forward(backend, &grouped)?.reshape(&[m, n])?)
    }
}
