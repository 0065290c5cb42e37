//! KV cache arguments both backends check the same way: the cache layout, and
//! `store_kv`'s shapes. The cache dtypes each backend supports differ, and the slot
//! values are read per backend (directly on the CPU, through their known range on CUDA),
//! so those are checked there.

use crate::error::{KernelError, Result};
use crate::kv_cache::LayerKvCache;
use crate::tensor::Tensor;

use super::{dims1, dims2, expect_shape, wrong_rank};

/// `[num_blocks, block_size, kv_heads, head_dim]` of a layer's cache: `k` must be 4-d,
/// `v` shaped like it, and every dimension but `num_blocks` positive.
pub(crate) fn cache_dims(op: &'static str, cache: &LayerKvCache) -> Result<[usize; 4]> {
    let [num_blocks, block_size, kv_heads, head_dim] = *cache.k.shape() else {
        return Err(wrong_rank(op, "cache.k", 4, &cache.k));
    };
    expect_shape(op, &cache.v, cache.k.shape())?;
    if block_size == 0 || kv_heads == 0 || head_dim == 0 {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "cache shape {:?} has a zero block_size, kv_heads or head_dim",
                cache.k.shape()
            ),
        });
    }
    Ok([num_blocks, block_size, kv_heads, head_dim])
}

/// Checks `k, v: [T, row_width]` and `slot_mapping: [T]`; returns `T`.
pub(crate) fn store_shapes(
    op: &'static str,
    k: &Tensor,
    v: &Tensor,
    slot_mapping: &Tensor,
    row_width: usize,
) -> Result<usize> {
    let (num_tokens, _) = dims2(op, "k", k)?;
    expect_shape(op, k, &[num_tokens, row_width])?;
    expect_shape(op, v, &[num_tokens, row_width])?;
    dims1(op, "slot_mapping", slot_mapping)?;
    expect_shape(op, slot_mapping, &[num_tokens])?;
    Ok(num_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn cache(k: &[usize], v: &[usize]) -> LayerKvCache {
        LayerKvCache::new(
            Tensor::zeros_cpu(k, DType::F32),
            Tensor::zeros_cpu(v, DType::F32),
        )
    }

    #[test]
    fn the_cache_layout_is_checked() {
        assert_eq!(
            cache_dims("t", &cache(&[4, 2, 3, 8], &[4, 2, 3, 8])).unwrap(),
            [4, 2, 3, 8]
        );
        // No blocks is a valid (empty) cache; a zero row dimension is not.
        assert!(cache_dims("t", &cache(&[0, 2, 3, 8], &[0, 2, 3, 8])).is_ok());
        assert!(matches!(
            cache_dims("t", &cache(&[4, 0, 3, 8], &[4, 0, 3, 8])),
            Err(KernelError::Invalid { .. })
        ));
        assert!(matches!(
            cache_dims("t", &cache(&[4, 2, 3, 8], &[4, 2, 3, 4])),
            Err(KernelError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            cache_dims("t", &cache(&[8, 3, 8], &[8, 3, 8])),
            Err(KernelError::WrongRank { arg: "cache.k", .. })
        ));
    }

    #[test]
    fn keys_values_and_slots_must_agree() {
        let kv = Tensor::zeros_cpu(&[3, 16], DType::F32);
        let slots = Tensor::zeros_cpu(&[3], DType::I64);
        assert_eq!(store_shapes("t", &kv, &kv, &slots, 16).unwrap(), 3);
        assert!(matches!(
            store_shapes("t", &kv, &kv, &slots, 8),
            Err(KernelError::ShapeMismatch { .. })
        ));
        let short = Tensor::zeros_cpu(&[2, 16], DType::F32);
        assert!(store_shapes("t", &kv, &short, &slots, 16).is_err());
        assert!(store_shapes("t", &kv, &kv, &Tensor::zeros_cpu(&[2], DType::I64), 16).is_err());
        assert!(matches!(
            store_shapes("t", &kv, &kv, &Tensor::zeros_cpu(&[3, 1], DType::I64), 16),
            Err(KernelError::WrongRank {
                arg: "slot_mapping",
                ..
            })
        ));
    }
}
