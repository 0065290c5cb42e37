//! Attention arguments both backends check the same way: query heads against the cache
//! layout, and the shapes and dtypes of the [`AttentionMetadata`] tensors. The metadata
//! *values* (offsets, lengths, block ids) are read per backend (directly on the CPU, by a
//! device-to-host copy on CUDA), so they are checked there.

use crate::attention::AttentionMetadata;
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

use super::{dims1, dims2, expect_dtype, expect_shape};

/// `(rows, heads)` of `q: [rows, heads * head_dim]` for a cache of `kv_heads` heads of
/// `head_dim`: the row width must be a positive multiple of `head_dim` and the heads a
/// multiple of `kv_heads` (GQA).
pub(crate) fn query_heads(
    op: &'static str,
    q: &Tensor,
    head_dim: usize,
    kv_heads: usize,
) -> Result<(usize, usize)> {
    let (rows, width) = dims2(op, "q", q)?;
    if width % head_dim != 0 || width == 0 {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "q row width {width} is not a positive multiple of the cache head_dim {head_dim}"
            ),
        });
    }
    let heads = width / head_dim;
    if heads % kv_heads != 0 {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "{heads} query heads are not a multiple of the cache's {kv_heads} KV heads"
            ),
        });
    }
    Ok((rows, heads))
}

/// Prefill's new `k` and `v` must be `[rows, row_width]` like the cache rows: they are
/// read back from the cache, but a mismatch means the caller mixed up its tensors.
pub(crate) fn new_kv_shapes(
    op: &'static str,
    k: &Tensor,
    v: &Tensor,
    rows: usize,
    row_width: usize,
) -> Result<()> {
    expect_shape(op, k, &[rows, row_width])?;
    expect_shape(op, v, &[rows, row_width])
}

/// Checks `meta` against a cache of `block_size` and `num_q_rows` query rows: its block
/// size, and `context_lens: U32 [S]`, `block_tables: U32 [S, max_blocks]` and, when
/// `prefill`, `cu_seqlens_q: U32 [S + 1]`; in decode, one query row per sequence.
/// Returns `max_blocks` (block table columns).
pub(crate) fn metadata_shapes(
    op: &'static str,
    meta: &AttentionMetadata,
    block_size: usize,
    num_q_rows: usize,
    prefill: bool,
) -> Result<usize> {
    let num_seqs = meta.num_seqs;
    if meta.block_size != block_size {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "metadata block_size {} differs from the cache's {block_size}",
                meta.block_size
            ),
        });
    }
    dims1(op, "context_lens", &meta.context_lens)?;
    expect_shape(op, &meta.context_lens, &[num_seqs])?;
    expect_dtype(op, "context_lens", &meta.context_lens, DType::U32)?;
    let (_, max_blocks) = dims2(op, "block_tables", &meta.block_tables)?;
    expect_shape(op, &meta.block_tables, &[num_seqs, max_blocks])?;
    expect_dtype(op, "block_tables", &meta.block_tables, DType::U32)?;
    if prefill {
        dims1(op, "cu_seqlens_q", &meta.cu_seqlens_q)?;
        expect_shape(op, &meta.cu_seqlens_q, &[num_seqs + 1])?;
        expect_dtype(op, "cu_seqlens_q", &meta.cu_seqlens_q, DType::U32)?;
    } else if num_q_rows != num_seqs {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "decode needs one query row per sequence: q has {num_q_rows} rows for {num_seqs} sequences"
            ),
        });
    }
    Ok(max_blocks)
}

/// Host copies of the metadata values (the backend reads them from its tensors, whose
/// shapes [`metadata_shapes`] checked).
pub(crate) struct MetadataValues<'a> {
    /// `None` in decode (query row `s` is sequence `s`).
    pub cu_seqlens_q: Option<&'a [u32]>,
    pub context_lens: &'a [u32],
    /// Row-major `[num_seqs, max_blocks]`.
    pub block_tables: &'a [u32],
    pub max_blocks: usize,
}

/// Host upper bounds a backend sizes its work by, which the values must then respect.
// Only CUDA sizes grids by them; the CPU kernels follow the values.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    pub max_seqlen_q: usize,
    pub max_context_len: usize,
}

/// Checks the values: `cu_seqlens_q` starts at 0, never decreases, ends at `num_q_rows`,
/// and no sequence has more new tokens than visible keys; each context fits its block
/// table row, whose used block ids are below `num_blocks`; and, with `bounds`, no
/// sequence exceeds them. After this, kernels may index the cache through the tables.
pub(crate) fn metadata_values(
    op: &'static str,
    values: &MetadataValues<'_>,
    num_q_rows: usize,
    block_size: usize,
    num_blocks: usize,
    bounds: Option<Bounds>,
) -> Result<()> {
    let invalid = |msg: String| Err(KernelError::Invalid { op, msg });
    let context_lens = values.context_lens;
    if let Some(cu) = values.cu_seqlens_q {
        if cu.first() != Some(&0) {
            return invalid(format!("cu_seqlens_q must start at 0, got {cu:?}"));
        }
        for (s, pair) in cu.windows(2).enumerate() {
            if pair[1] < pair[0] {
                return invalid(format!("cu_seqlens_q decreases at sequence {s}: {cu:?}"));
            }
            let q_len = pair[1] - pair[0];
            if q_len > context_lens[s] {
                return invalid(format!(
                    "sequence {s} has {q_len} new tokens but context_len {} (must be ≥ q_len)",
                    context_lens[s]
                ));
            }
            if let Some(bounds) = bounds.filter(|b| q_len as usize > b.max_seqlen_q) {
                return invalid(format!(
                    "sequence {s} has {q_len} new tokens but max_seqlen_q is {}",
                    bounds.max_seqlen_q
                ));
            }
        }
        let last = cu.last().copied().unwrap_or(0) as usize;
        if last != num_q_rows {
            return invalid(format!(
                "cu_seqlens_q ends at {last} but q has {num_q_rows} rows"
            ));
        }
    }
    let max_blocks = values.max_blocks;
    for (s, &context_len) in context_lens.iter().enumerate() {
        let needed = (context_len as usize).div_ceil(block_size);
        if needed > max_blocks {
            return invalid(format!(
                "sequence {s} has context_len {context_len}, needing {needed} blocks, \
                 but block_tables has only {max_blocks} columns"
            ));
        }
        if let Some(bounds) = bounds.filter(|b| context_len as usize > b.max_context_len) {
            return invalid(format!(
                "sequence {s} has context_len {context_len} but max_context_len is {}",
                bounds.max_context_len
            ));
        }
        let row = &values.block_tables[s * max_blocks..s * max_blocks + needed];
        if let Some(&index) = row.iter().find(|&&b| b as usize >= num_blocks) {
            return Err(KernelError::IndexOutOfRange {
                op,
                index: index as usize,
                size: num_blocks,
            });
        }
    }
    Ok(())
}

/// Two sequences in blocks of 4 (prefill: 3 query rows), 2 block table columns: the
/// metadata the validation tests of both backends start from.
#[cfg(test)]
pub(crate) fn test_metadata() -> AttentionMetadata {
    AttentionMetadata {
        is_prefill: true,
        num_seqs: 2,
        block_size: 4,
        cu_seqlens_q: Tensor::zeros_cpu(&[3], DType::U32),
        context_lens: Tensor::zeros_cpu(&[2], DType::U32),
        block_tables: Tensor::zeros_cpu(&[2, 2], DType::U32),
        slot_mapping: Tensor::zeros_cpu(&[3], DType::I64),
        max_seqlen_q: 2,
        max_context_len: 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_metadata as meta;

    fn values<'a>(cu: Option<&'a [u32]>, ctx: &'a [u32], tables: &'a [u32]) -> MetadataValues<'a> {
        MetadataValues {
            cu_seqlens_q: cu,
            context_lens: ctx,
            block_tables: tables,
            max_blocks: 2,
        }
    }

    /// Block size 4, 4 blocks in the cache, 2 block table columns.
    fn check(cu: Option<&[u32]>, ctx: &[u32], tables: &[u32], rows: usize) -> Result<()> {
        metadata_values("t", &values(cu, ctx, tables), rows, 4, 4, None)
    }

    #[test]
    fn good_metadata_values_pass() {
        check(Some(&[0, 2, 3]), &[5, 8], &[0, 1, 2, 3], 3).unwrap();
        check(None, &[0, 8], &[9, 9, 2, 3], 2).unwrap(); // a padding row reads no blocks
    }

    #[test]
    fn bad_metadata_values_are_invalid() {
        let invalid = |r: Result<()>| matches!(r, Err(KernelError::Invalid { .. }));
        assert!(invalid(check(Some(&[1, 2, 3]), &[5, 8], &[0, 1, 2, 3], 3)));
        assert!(invalid(check(Some(&[0, 2, 1]), &[5, 8], &[0, 1, 2, 3], 1)));
        assert!(invalid(check(Some(&[0, 2, 3]), &[1, 8], &[0, 1, 2, 3], 3)));
        assert!(invalid(check(Some(&[0, 2, 4]), &[5, 8], &[0, 1, 2, 3], 3)));
        assert!(invalid(check(None, &[5, 9], &[0, 1, 2, 3], 2)));
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
    fn bounds_are_checked_only_when_given() {
        let v = values(Some(&[0, 3, 4]), &[5, 8], &[0, 1, 2, 3]);
        let bounds = |max_seqlen_q, max_context_len| {
            Some(Bounds {
                max_seqlen_q,
                max_context_len,
            })
        };
        assert!(metadata_values("t", &v, 4, 4, 4, None).is_ok());
        assert!(metadata_values("t", &v, 4, 4, 4, bounds(3, 8)).is_ok());
        assert!(metadata_values("t", &v, 4, 4, 4, bounds(2, 8)).is_err());
        assert!(metadata_values("t", &v, 4, 4, 4, bounds(3, 7)).is_err());
    }

    #[test]
    fn query_heads_follow_the_cache_layout() {
        let q = Tensor::zeros_cpu(&[3, 32], DType::F32);
        assert_eq!(query_heads("t", &q, 8, 2).unwrap(), (3, 4));
        let invalid =
            |q: &Tensor| matches!(query_heads("t", q, 8, 2), Err(KernelError::Invalid { .. }));
        assert!(invalid(&Tensor::zeros_cpu(&[3, 30], DType::F32)));
        assert!(invalid(&Tensor::zeros_cpu(&[3, 0], DType::F32)));
        assert!(invalid(&Tensor::zeros_cpu(&[3, 24], DType::F32)));
        assert!(matches!(
            query_heads("t", &Tensor::zeros_cpu(&[96], DType::F32), 8, 2),
            Err(KernelError::WrongRank { arg: "q", .. })
        ));
    }

    #[test]
    fn new_keys_and_values_match_the_query_rows() {
        let kv = Tensor::zeros_cpu(&[3, 16], DType::F32);
        assert!(new_kv_shapes("t", &kv, &kv, 3, 16).is_ok());
        let short = Tensor::zeros_cpu(&[2, 16], DType::F32);
        assert!(matches!(
            new_kv_shapes("t", &kv, &short, 3, 16),
            Err(KernelError::ShapeMismatch { .. })
        ));
        assert!(new_kv_shapes("t", &short, &kv, 3, 16).is_err());
    }

    #[test]
    fn metadata_shapes_and_dtypes_are_checked() {
        assert_eq!(metadata_shapes("t", &meta(), 4, 3, true).unwrap(), 2);
        assert_eq!(metadata_shapes("t", &meta(), 4, 2, false).unwrap(), 2);
        // Decode: one row per sequence; the block size must match the cache's.
        assert!(matches!(
            metadata_shapes("t", &meta(), 4, 3, false),
            Err(KernelError::Invalid { .. })
        ));
        assert!(matches!(
            metadata_shapes("t", &meta(), 8, 3, true),
            Err(KernelError::Invalid { .. })
        ));
        let mut m = meta();
        m.context_lens = Tensor::zeros_cpu(&[1], DType::U32);
        assert!(matches!(
            metadata_shapes("t", &m, 4, 3, true),
            Err(KernelError::ShapeMismatch { .. })
        ));
        let mut m = meta();
        m.block_tables = Tensor::zeros_cpu(&[2, 2], DType::I64);
        assert!(matches!(
            metadata_shapes("t", &m, 4, 3, true),
            Err(KernelError::WrongDType {
                arg: "block_tables",
                ..
            })
        ));
        // cu_seqlens_q is only read in prefill.
        let mut m = meta();
        m.cu_seqlens_q = Tensor::zeros_cpu(&[2], DType::U32);
        assert!(matches!(
            metadata_shapes("t", &m, 4, 3, true),
            Err(KernelError::ShapeMismatch { .. })
        ));
        assert!(metadata_shapes("t", &m, 4, 2, false).is_ok());
    }
}
