//! The paged KV cache: per layer, `k` and `v` of shape
//! `[num_blocks, block_size, num_kv_heads, head_dim]`.
//!
//! Slot `s` is token offset `s % block_size` of block `s / block_size`. Which
//! sequence owns which block is the scheduler's business; the cache only
//! stores.
//!
//! An FP8 (e4m3) cache stores `e4m3(k / k_scale)` and `e4m3(v / v_scale)` and reads
//! `e4m3 · scale`, with one f32 scale per layer for K and one for V ([`KvScales`],
//! 1.0 unless the checkpoint names others). Every backend op that touches the cache
//! applies them, so the scales travel with the layer's tensors. f32 and bf16 caches
//! store the values themselves and ignore the scales.

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

/// The per-layer dequantization scales of an FP8 KV cache: stored `q = e4m3(x / scale)`,
/// read `x ≈ q · scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvScales {
    pub k: f32,
    pub v: f32,
}

impl KvScales {
    /// Scale 1.0: the values are stored as they are (saturating at ±448 in e4m3).
    pub const UNIT: KvScales = KvScales { k: 1.0, v: 1.0 };

    /// Checks both scales are finite and positive (a zero, negative or NaN scale would
    /// turn every stored value into NaN or ±0).
    pub fn validate(self, what: &str) -> Result<Self> {
        for (name, s) in [("k_scale", self.k), ("v_scale", self.v)] {
            if !(s.is_finite() && s > 0.0) {
                return Err(KernelError::Invalid {
                    op: "kv_cache",
                    msg: format!(
                        "{what}: {name} = {s}; an FP8 KV-cache scale must be a finite \
                         positive number"
                    ),
                });
            }
        }
        Ok(self)
    }
}

impl Default for KvScales {
    fn default() -> Self {
        Self::UNIT
    }
}

#[derive(Clone, Debug)]
pub struct LayerKvCache {
    pub k: Tensor,
    pub v: Tensor,
    /// Dequantization scales of an FP8 cache (ignored for f32/bf16 caches).
    pub scales: KvScales,
}

impl LayerKvCache {
    /// A layer cache with unit scales.
    pub fn new(k: Tensor, v: Tensor) -> Self {
        Self {
            k,
            v,
            scales: KvScales::UNIT,
        }
    }

    /// The scales the kernels apply: this layer's for an FP8 cache, 1.0 otherwise.
    pub fn effective_scales(&self) -> KvScales {
        if self.k.dtype() == DType::F8E4M3 {
            self.scales
        } else {
            KvScales::UNIT
        }
    }
}

#[derive(Clone, Debug)]
pub struct KvCache {
    pub layers: Vec<LayerKvCache>,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
}

impl KvCache {
    /// Bytes one block takes across all layers (K and V): one byte per element for an
    /// FP8 cache, so the same budget holds twice the tokens of bf16.
    pub fn bytes_per_block(
        num_layers: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
    ) -> usize {
        2 * dtype.storage_bytes(num_layers * block_size * num_kv_heads * head_dim)
    }

    /// Allocates a zeroed cache on `backend`, every layer with unit scales.
    pub fn new(
        backend: &dyn Backend,
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
    ) -> Result<Self> {
        let shape = [num_blocks, block_size, num_kv_heads, head_dim];
        let layers = (0..num_layers)
            .map(|_| {
                Ok(LayerKvCache::new(
                    backend.zeros(&shape, dtype)?,
                    backend.zeros(&shape, dtype)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            num_blocks,
            block_size,
            num_kv_heads,
            head_dim,
            dtype,
        })
    }

    /// Sets every layer's FP8 scales (`scales[i]` for layer `i`; one entry per layer).
    /// Validated even for f32/bf16 caches, which then ignore them.
    pub fn set_scales(&mut self, scales: &[KvScales]) -> Result<()> {
        if scales.len() != self.layers.len() {
            return Err(KernelError::Invalid {
                op: "kv_cache",
                msg: format!(
                    "{} KV-cache scale pairs for {} layers; give one (k_scale, v_scale) per layer",
                    scales.len(),
                    self.layers.len()
                ),
            });
        }
        for (i, (layer, &s)) in self.layers.iter_mut().zip(scales).enumerate() {
            layer.scales = s.validate(&format!("layer {i}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_fp8_block_takes_half_the_bytes_of_bf16() {
        let bf16 = KvCache::bytes_per_block(28, 16, 8, 128, DType::BF16);
        let fp8 = KvCache::bytes_per_block(28, 16, 8, 128, DType::F8E4M3);
        assert_eq!(bf16, 2 * 28 * 16 * 8 * 128 * 2);
        assert_eq!(2 * fp8, bf16);
    }

    #[test]
    fn scales_are_validated_per_layer() {
        let backend = crate::CpuBackend::new();
        let mut cache = KvCache::new(&backend, 2, 1, 4, 1, 8, DType::F8E4M3).unwrap();
        let s = KvScales { k: 0.5, v: 2.0 };
        cache.set_scales(&[KvScales::UNIT, s]).unwrap();
        assert_eq!(cache.layers[1].effective_scales(), s);
        assert!(cache.set_scales(&[s]).is_err());
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let pair = [s, KvScales { k: 1.0, v: bad }];
            assert!(cache.set_scales(&pair).is_err(), "v_scale {bad}");
        }
        let mut bf16 = KvCache::new(&backend, 1, 1, 4, 1, 8, DType::BF16).unwrap();
        bf16.set_scales(&[s]).unwrap();
        assert_eq!(bf16.layers[0].effective_scales(), KvScales::UNIT);
    }
}
