//! The paged KV cache: per layer, `k` and `v` of shape
//! `[num_blocks, block_size, num_kv_heads, head_dim]`.
//!
//! Slot `s` is token offset `s % block_size` of block `s / block_size`. Which
//! sequence owns which block is the scheduler's business; the cache only
//! stores.

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct LayerKvCache {
    pub k: Tensor,
    pub v: Tensor,
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
    /// Bytes one block takes across all layers (K and V).
    pub fn bytes_per_block(
        num_layers: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
    ) -> usize {
        2 * num_layers * block_size * num_kv_heads * head_dim * dtype.size_in_bytes()
    }

    /// Allocates a zeroed cache on `backend`.
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
                Ok(LayerKvCache {
                    k: backend.zeros(&shape, dtype)?,
                    v: backend.zeros(&shape, dtype)?,
                })
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
}
