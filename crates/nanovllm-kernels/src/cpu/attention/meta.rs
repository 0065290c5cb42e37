//! Validation of attention inputs: head counts from `q` and the cache, and the packed
//! batch described by [`AttentionMetadata`]. After these checks the kernels may index
//! `q`, the block tables and the cache without further bounds worries.

use crate::attention::AttentionMetadata;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

use super::super::check;
use super::super::kv::CacheGeometry;

/// Head layout of one attention call.
#[derive(Clone, Copy, Debug)]
pub(super) struct Heads {
    pub heads: usize,
    pub head_dim: usize,
    /// Query heads per KV head (GQA ratio); query head `h` uses KV head `h / group`.
    pub group: usize,
}

/// Reads `heads` from `q: f32 [rows, heads * head_dim]` and checks it against the cache.
/// Returns `(rows, heads)`.
pub(super) fn heads(
    op: &'static str,
    q: &Tensor,
    geometry: &CacheGeometry,
) -> Result<(usize, Heads)> {
    let (rows, width) = check::dims2(op, "q", q)?;
    let head_dim = geometry.head_dim;
    if width % head_dim != 0 || width == 0 {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "q row width {width} is not a positive multiple of the cache head_dim {head_dim}"
            ),
        });
    }
    let heads = width / head_dim;
    if heads % geometry.kv_heads != 0 {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "{heads} query heads are not a multiple of the cache's {} KV heads",
                geometry.kv_heads
            ),
        });
    }
    Ok((
        rows,
        Heads {
            heads,
            head_dim,
            group: heads / geometry.kv_heads,
        },
    ))
}

/// The packed batch, validated.
#[derive(Clone, Copy, Debug)]
pub(super) struct Batch<'a> {
    /// Prefill: `[num_seqs + 1]` query offsets. Decode: `None` (query row `s` is sequence `s`).
    pub cu_seqlens_q: Option<&'a [u32]>,
    pub context_lens: &'a [u32],
    /// Row-major `[num_seqs, max_blocks]`.
    pub block_tables: &'a [u32],
    pub max_blocks: usize,
}

impl Batch<'_> {
    /// The block table of sequence `s` (padding included).
    pub(super) fn block_table(&self, s: usize) -> &[u32] {
        &self.block_tables[s * self.max_blocks..(s + 1) * self.max_blocks]
    }

    /// For query row `t`: its sequence and how many keys it attends (`pos + 1`).
    pub(super) fn query(&self, t: usize) -> (usize, usize) {
        match self.cu_seqlens_q {
            None => (t, self.context_lens[t] as usize),
            Some(cu) => {
                // cu[0] = 0 ≤ t, so the partition point is ≥ 1.
                let s = cu.partition_point(|&start| start as usize <= t) - 1;
                let q_len = (cu[s + 1] - cu[s]) as usize;
                let i = t - cu[s] as usize;
                let context_len = self.context_lens[s] as usize;
                (s, context_len - q_len + i + 1)
            }
        }
    }
}

/// Checks `meta` against `num_q_rows` query rows and the cache. `prefill` selects whether
/// `cu_seqlens_q` packs several queries per sequence (prefill) or row `s` is sequence `s`.
pub(super) fn batch<'a>(
    op: &'static str,
    meta: &'a AttentionMetadata,
    geometry: &CacheGeometry,
    num_q_rows: usize,
    prefill: bool,
) -> Result<Batch<'a>> {
    let num_seqs = meta.num_seqs;
    if meta.block_size != geometry.block_size {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "metadata block_size {} differs from the cache's {}",
                meta.block_size, geometry.block_size
            ),
        });
    }
    check::dims1(op, "context_lens", &meta.context_lens)?;
    check::expect_shape(op, &meta.context_lens, &[num_seqs])?;
    let context_lens = check::u32s(op, "context_lens", &meta.context_lens)?;
    let (_, max_blocks) = check::dims2(op, "block_tables", &meta.block_tables)?;
    check::expect_shape(op, &meta.block_tables, &[num_seqs, max_blocks])?;
    let block_tables = check::u32s(op, "block_tables", &meta.block_tables)?;

    let cu_seqlens_q = if prefill {
        check::dims1(op, "cu_seqlens_q", &meta.cu_seqlens_q)?;
        check::expect_shape(op, &meta.cu_seqlens_q, &[num_seqs + 1])?;
        let cu = check::u32s(op, "cu_seqlens_q", &meta.cu_seqlens_q)?;
        check_cu_seqlens(op, cu, context_lens, num_q_rows)?;
        Some(cu)
    } else {
        if num_q_rows != num_seqs {
            return Err(KernelError::Invalid {
                op,
                msg: format!("decode needs one query row per sequence: q has {num_q_rows} rows for {num_seqs} sequences"),
            });
        }
        None
    };

    for (s, &context_len) in context_lens.iter().enumerate() {
        let needed = (context_len as usize).div_ceil(geometry.block_size);
        if needed > max_blocks {
            return Err(KernelError::Invalid {
                op,
                msg: format!(
                    "sequence {s} has context_len {context_len}, needing {needed} blocks, \
                     but block_tables has only {max_blocks} columns"
                ),
            });
        }
        let used = &block_tables[s * max_blocks..s * max_blocks + needed];
        check::indices_below(op, used, geometry.num_blocks)?;
    }
    Ok(Batch {
        cu_seqlens_q,
        context_lens,
        block_tables,
        max_blocks,
    })
}

/// `cu` starts at 0, never decreases, ends at `num_q_rows`, and no sequence has more
/// new tokens than visible keys.
fn check_cu_seqlens(
    op: &'static str,
    cu: &[u32],
    context_lens: &[u32],
    num_q_rows: usize,
) -> Result<()> {
    let invalid = |msg: String| Err(KernelError::Invalid { op, msg });
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
    }
    let last = cu.last().copied().unwrap_or(0) as usize;
    if last != num_q_rows {
        return invalid(format!(
            "cu_seqlens_q ends at {last} but q has {num_q_rows} rows"
        ));
    }
    Ok(())
}
