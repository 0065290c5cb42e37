//! Per-step attention metadata, built by the runner from a scheduled batch.

use crate::tensor::Tensor;

/// Describes the packed batch to the attention ops. All tensors live on the backend's device.
///
/// Invariants: `cu_seqlens_q` has `num_seqs + 1` entries starting at 0 and ending at the
/// number of packed tokens; `context_lens[i] >= q_len(i)`; `block_tables` is
/// `U32 [num_seqs, max_blocks_per_seq]`, row `i` holding at least
/// `ceil(context_lens[i] / block_size)` valid block ids (the rest is padding).
#[derive(Clone, Debug)]
pub struct AttentionMetadata {
    pub is_prefill: bool,
    pub num_seqs: usize,
    pub block_size: usize,
    /// U32 `[num_seqs + 1]`: packed query offsets.
    pub cu_seqlens_q: Tensor,
    /// U32 `[num_seqs]`: keys visible to each sequence (cached prefix + new tokens).
    pub context_lens: Tensor,
    /// U32 `[num_seqs, max_blocks_per_seq]`.
    pub block_tables: Tensor,
    /// I64 `[num_tokens]`: cache slot of each new token, −1 = none.
    pub slot_mapping: Tensor,
    pub max_seqlen_q: usize,
    pub max_context_len: usize,
}
