//! Host-side validation of attention inputs on CUDA: ranks, shapes and dtypes (the checks
//! common to both backends are in [`crate::validate::attention`]), and — in every build,
//! outside graph capture — the metadata *values* (offsets, lengths, block ids), read from
//! the tensors' host copies (no device access when the metadata was written from the
//! host, as the runner does). Errors match the CPU backend's (`src/cpu/attention/meta.rs`)
//! kind for kind.
//!
//! Inside a capture the values are not known yet and are not checked; the kernels clamp
//! lengths to the block table and block ids to the cache, so bad metadata replayed there
//! gives wrong numbers but never an out-of-bounds access.

use crate::attention::AttentionMetadata;
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::kv_cache::LayerKvCache;
use crate::tensor::Tensor;

use crate::validate;
use crate::validate::attention::Bounds;
pub(crate) use crate::validate::attention::MetadataValues;

use super::super::check;

/// The cache layout `[num_blocks, block_size, kv_heads, head_dim]` and its dtype: the
/// same geometry `store_kv` reads.
pub(crate) use super::super::kv::CacheGeometry as Geometry;

/// The shared cache checks ([`validate::kv::cache_dims`]), plus what attention needs:
/// bf16, f32 or e4m3, k and v alike, and at least one block to read.
pub(crate) fn geometry(op: &'static str, cache: &LayerKvCache) -> Result<Geometry> {
    let [num_blocks, block_size, kv_heads, head_dim] = validate::kv::cache_dims(op, cache)?;
    let dtype = cache.k.dtype();
    check::expect_dtype(op, "cache.v", &cache.v, dtype)?;
    if !matches!(dtype, DType::BF16 | DType::F32 | DType::F8E4M3) {
        return Err(KernelError::UnsupportedDType { op, dtype });
    }
    if num_blocks == 0 {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "the KV cache {:?} is empty; allocate at least one block",
                cache.k.shape()
            ),
        });
    }
    Ok(Geometry {
        num_blocks,
        block_size,
        kv_heads,
        head_dim,
        dtype,
    })
}

/// `(rows, heads)` of `q: bf16 [rows, heads * head_dim]`, checked against the cache.
pub(crate) fn heads(op: &'static str, q: &Tensor, geometry: &Geometry) -> Result<(usize, usize)> {
    let (rows, heads) =
        validate::attention::query_heads(op, q, geometry.head_dim, geometry.kv_heads)?;
    check::expect_dtype(op, "q", q, DType::BF16)?;
    Ok((rows, heads))
}

/// Checks the metadata tensors' shapes and dtypes; returns `max_blocks` (block table
/// columns). `prefill` selects packed queries (`cu_seqlens_q`) or one row per sequence.
pub(crate) fn metadata_shapes(
    op: &'static str,
    meta: &AttentionMetadata,
    geometry: &Geometry,
    rows: usize,
    prefill: bool,
) -> Result<usize> {
    let max_blocks =
        validate::attention::metadata_shapes(op, meta, geometry.block_size, rows, prefill)?;
    if prefill && rows > 0 && meta.max_seqlen_q == 0 {
        return Err(KernelError::Invalid {
            op,
            msg: format!("max_seqlen_q is 0 but q has {rows} rows"),
        });
    }
    if max_blocks.saturating_mul(geometry.block_size) > u32::MAX as usize {
        return Err(KernelError::Invalid {
            op,
            msg: format!("block_tables has {max_blocks} columns: more keys than u32 can count"),
        });
    }
    Ok(max_blocks)
}

/// The value checks shared with the CPU backend, plus the host upper bounds the CUDA
/// grids are sized by (`max_seqlen_q`, `max_context_len`).
pub(crate) fn metadata_values(
    op: &'static str,
    values: &MetadataValues<'_>,
    meta: &AttentionMetadata,
    geometry: &Geometry,
    rows: usize,
) -> Result<()> {
    let bounds = Bounds {
        max_seqlen_q: meta.max_seqlen_q,
        max_context_len: meta.max_context_len,
    };
    validate::attention::metadata_values(
        op,
        values,
        rows,
        geometry.block_size,
        geometry.num_blocks,
        Some(bounds),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::attention::test_metadata as meta;

    fn geometry() -> Geometry {
        Geometry {
            num_blocks: 4,
            block_size: 4,
            kv_heads: 2,
            head_dim: 8,
            dtype: DType::BF16,
        }
    }

    fn check(cu: Option<&[u32]>, ctx: &[u32], tables: &[u32], rows: usize) -> Result<()> {
        let values = MetadataValues {
            cu_seqlens_q: cu,
            context_lens: ctx,
            block_tables: tables,
            max_blocks: 2,
        };
        metadata_values("t", &values, &meta(), &geometry(), rows)
    }

    /// The value checks themselves are tested in `crate::validate::attention`; this
    /// wrapper adds the bounds from the metadata (max_seqlen_q 2, max_context_len 8).
    #[test]
    fn values_must_respect_the_grid_bounds_of_the_metadata() {
        let invalid = |r: Result<()>| matches!(r, Err(KernelError::Invalid { .. }));
        check(Some(&[0, 2, 3]), &[5, 8], &[0, 1, 2, 3], 3).unwrap();
        // More new tokens than the max_seqlen_q bound the grid is sized by.
        assert!(invalid(check(Some(&[0, 3, 4]), &[5, 8], &[0, 1, 2, 3], 4)));
        // Beyond max_context_len (the block table would hold it).
        let mut short = meta();
        short.max_context_len = 4;
        let values = MetadataValues {
            cu_seqlens_q: None,
            context_lens: &[5, 1],
            block_tables: &[0, 1, 2, 3],
            max_blocks: 2,
        };
        assert!(invalid(metadata_values(
            "t",
            &values,
            &short,
            &geometry(),
            2
        )));
        // The shared checks run too.
        assert!(matches!(
            check(None, &[5, 8], &[0, 4, 2, 3], 2),
            Err(KernelError::IndexOutOfRange {
                index: 4,
                size: 4,
                ..
            })
        ));
    }

    #[test]
    fn shapes_and_dtypes_are_checked_without_a_device() {
        let g = geometry();
        let q = Tensor::zeros_cpu(&[3, 32], DType::BF16);
        assert_eq!(heads("t", &q, &g).unwrap(), (3, 4));
        let q_f32 = Tensor::zeros_cpu(&[3, 32], DType::F32);
        assert!(matches!(
            heads("t", &q_f32, &g),
            Err(KernelError::WrongDType { arg: "q", .. })
        ));
        let q_odd = Tensor::zeros_cpu(&[3, 30], DType::BF16);
        assert!(matches!(
            heads("t", &q_odd, &g),
            Err(KernelError::Invalid { .. })
        ));
        let q_3heads = Tensor::zeros_cpu(&[3, 24], DType::BF16);
        assert!(matches!(
            heads("t", &q_3heads, &g),
            Err(KernelError::Invalid { .. })
        ));

        assert_eq!(metadata_shapes("t", &meta(), &g, 3, true).unwrap(), 2);
        assert!(matches!(
            metadata_shapes("t", &meta(), &g, 3, false),
            Err(KernelError::Invalid { .. })
        ));
        let mut m = meta();
        m.block_size = 8;
        assert!(matches!(
            metadata_shapes("t", &m, &g, 3, true),
            Err(KernelError::Invalid { .. })
        ));
        let mut m = meta();
        m.context_lens = Tensor::zeros_cpu(&[1], DType::U32);
        assert!(matches!(
            metadata_shapes("t", &m, &g, 3, true),
            Err(KernelError::ShapeMismatch { .. })
        ));
        let mut m = meta();
        m.block_tables = Tensor::zeros_cpu(&[2, 2], DType::I64);
        assert!(matches!(
            metadata_shapes("t", &m, &g, 3, true),
            Err(KernelError::WrongDType { .. })
        ));
        let mut m = meta();
        m.max_seqlen_q = 0;
        assert!(matches!(
            metadata_shapes("t", &m, &g, 3, true),
            Err(KernelError::Invalid { .. })
        ));
    }

    #[test]
    fn cache_geometry_is_checked() {
        let cache = |dtype| {
            LayerKvCache::new(
                Tensor::zeros_cpu(&[4, 4, 2, 8], dtype),
                Tensor::zeros_cpu(&[4, 4, 2, 8], dtype),
            )
        };
        let g = super::geometry("t", &cache(DType::BF16)).unwrap();
        assert_eq!((g.num_blocks, g.row_width()), (4, 16));
        assert!(super::geometry("t", &cache(DType::F32)).is_ok());
        assert!(matches!(
            super::geometry("t", &cache(DType::F16)),
            Err(KernelError::UnsupportedDType { .. })
        ));
        let mismatched = LayerKvCache::new(
            Tensor::zeros_cpu(&[4, 4, 2, 8], DType::BF16),
            Tensor::zeros_cpu(&[4, 4, 2, 4], DType::BF16),
        );
        assert!(matches!(
            super::geometry("t", &mismatched),
            Err(KernelError::ShapeMismatch { .. })
        ));
    }
}
