//! The scheduler's output: one step's work as plain data.
//!
//! Invariants (checked by tests):
//! - `seqs` is in execution order; sequence `i` owns the packed token rows
//!   `cu_seqlens_q[i]..cu_seqlens_q[i + 1]` of `input_ids`, `positions` and
//!   `slot_mapping`.
//! - `positions[r]` of sequence `i` runs from `seqs[i].num_computed_tokens`
//!   up to `seqs[i].context_len - 1`: the new tokens continue the KV already
//!   in the cache, so attention for sequence `i` covers `context_len` keys.
//! - `slot_mapping[r] = block_table[pos / block_size] * block_size + pos % block_size`,
//!   always a valid slot (the runner adds −1 padding of its own if it needs it).
//! - `block_tables` holds sequence `i`'s block table at
//!   `block_table_offsets[i]..block_table_offsets[i + 1]`, covering at least
//!   `ceil(context_len / block_size)` blocks.

use crate::sequence::SeqId;

/// Whether a step computes prompts (possibly chunks of them) or one new token per sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchKind {
    Prefill,
    #[default]
    Decode,
}

/// One sequence's share of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub seq_id: SeqId,
    /// Tokens whose KV is already in the cache before this step (prefix hits and earlier chunks).
    pub num_computed_tokens: usize,
    /// Tokens computed in this step (`cu_seqlens_q[i + 1] - cu_seqlens_q[i]`).
    pub num_new_tokens: usize,
    /// Keys visible to this sequence's attention after the step: `num_computed_tokens + num_new_tokens`.
    pub context_len: usize,
    /// False for a prefill chunk that does not reach the end of the prompt: its sampled token is ignored.
    pub sample: bool,
}

/// One engine step, as plain data. See the module docs for the invariants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduledBatch {
    pub kind: BatchKind,
    pub block_size: usize,
    pub seqs: Vec<ScheduledSeq>,
    pub input_ids: Vec<u32>,
    pub positions: Vec<u32>,
    /// Packed query offsets, `seqs.len() + 1` entries starting at 0.
    pub cu_seqlens_q: Vec<u32>,
    pub slot_mapping: Vec<i64>,
    pub block_tables: Vec<u32>,
    /// CSR offsets into `block_tables`, `seqs.len() + 1` entries starting at 0.
    pub block_table_offsets: Vec<u32>,
}

impl ScheduledBatch {
    pub fn is_prefill(&self) -> bool {
        self.kind == BatchKind::Prefill
    }
    pub fn num_seqs(&self) -> usize {
        self.seqs.len()
    }
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }
    /// Block table of the `i`-th scheduled sequence.
    pub fn block_table(&self, i: usize) -> &[u32] {
        let (a, b) = (
            self.block_table_offsets[i] as usize,
            self.block_table_offsets[i + 1] as usize,
        );
        &self.block_tables[a..b]
    }
}
