//! Validation of attention inputs: head counts from `q` and the cache, and the packed
//! batch described by [`AttentionMetadata`] (the checks themselves are shared with CUDA,
//! in [`crate::validate::attention`]; this file reads the CPU buffers). After these checks
//! the kernels may index `q`, the block tables and the cache without further bounds worries.

use crate::attention::AttentionMetadata;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::validate;

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
    let head_dim = geometry.head_dim;
    let (rows, heads) = validate::attention::query_heads(op, q, head_dim, geometry.kv_heads)?;
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
    let max_blocks =
        validate::attention::metadata_shapes(op, meta, geometry.block_size, num_q_rows, prefill)?;
    let context_lens = check::u32s(op, "context_lens", &meta.context_lens)?;
    let block_tables = check::u32s(op, "block_tables", &meta.block_tables)?;
    let cu_seqlens_q = if prefill {
        Some(check::u32s(op, "cu_seqlens_q", &meta.cu_seqlens_q)?)
    } else {
        None
    };
    let values = validate::attention::MetadataValues {
        cu_seqlens_q,
        context_lens,
        block_tables,
        max_blocks,
    };
    validate::attention::metadata_values(
        op,
        &values,
        num_q_rows,
        geometry.block_size,
        geometry.num_blocks,
        None,
    )?;
    Ok(Batch {
        cu_seqlens_q,
        context_lens,
        block_tables,
        max_blocks,
    })
}
