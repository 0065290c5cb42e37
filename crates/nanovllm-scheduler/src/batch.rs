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
//! - No two rows of a step share a slot: new tokens never write into a block another
//!   sequence reads as its cached prefix.
//! - A `Decode` batch has exactly one new token per sequence, all sampled; in a `Prefill`
//!   batch only the last sequence may be an unfinished chunk (`sample == false`).
//!
//! The scheduler reuses a batch's buffers: hand it back through `Scheduler::postprocess`.

use crate::sequence::{SeqId, Sequence};

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
    /// Tokens the sequence had generated before this step (kept across a preemption): the
    /// step of the random numbers its next token draws (`nanovllm_kernels::sampling`).
    pub num_generated_tokens: usize,
    /// Prompt logprobs: the number of this step's leading rows (positions
    /// `num_computed_tokens..`) whose logits score the next prompt token, i.e. the rows of
    /// prompt positions before the last one. 0 unless the request asked
    /// (`SamplingParams::prompt_logprobs`) and has generated nothing yet
    /// ([`Sequence::needs_prompt_logprobs`]). The last prompt position is the sampling
    /// row, never one of these.
    pub prompt_logprob_rows: usize,
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

impl ScheduledBatch {
    /// Empties every buffer, keeping its capacity, and starts the CSR offsets at 0.
    pub(crate) fn reset(&mut self, kind: BatchKind, block_size: usize) {
        self.kind = kind;
        self.block_size = block_size;
        self.seqs.clear();
        self.input_ids.clear();
        self.positions.clear();
        self.cu_seqlens_q.clear();
        self.cu_seqlens_q.push(0);
        self.slot_mapping.clear();
        self.block_tables.clear();
        self.block_table_offsets.clear();
        self.block_table_offsets.push(0);
    }

    /// Appends `seq`'s next `num_new_tokens` tokens (from `seq.num_computed_tokens` on).
    /// The caller guarantees that the block table covers them and `block_size` is a power of two.
    pub(crate) fn push_seq(&mut self, seq: &Sequence, num_new_tokens: usize, sample: bool) {
        let shift = self.block_size.trailing_zeros();
        let offset_mask = self.block_size - 1;
        let start = seq.num_computed_tokens;
        let end = start + num_new_tokens;
        // Element-wise extends: decode copies 1 token and a few block ids per sequence, where
        // a `memmove` call per copy costs more than the copy itself.
        self.input_ids
            .extend(seq.token_ids[start..end].iter().copied());
        for pos in start..end {
            self.positions.push(pos as u32);
            let block = seq.block_table[pos >> shift] as i64;
            self.slot_mapping
                .push((block << shift) | (pos & offset_mask) as i64);
        }
        self.cu_seqlens_q.push(self.input_ids.len() as u32);
        self.block_tables.extend(seq.block_table.iter().copied());
        self.block_table_offsets
            .push(self.block_tables.len() as u32);
        let prompt_logprob_rows = if seq.needs_prompt_logprobs() {
            end.min(seq.num_prompt_tokens - 1).saturating_sub(start)
        } else {
            0
        };
        self.seqs.push(ScheduledSeq {
            seq_id: seq.seq_id,
            num_computed_tokens: start,
            num_new_tokens,
            context_len: end,
            sample,
            num_generated_tokens: seq.token_ids.len() - seq.num_prompt_tokens,
            prompt_logprob_rows,
        });
    }

    /// Checks every invariant of the module docs. For tests and debugging (it allocates).
    pub fn check_invariants(&self) -> Result<(), String> {
        let bs = self.block_size;
        if bs == 0 || !bs.is_power_of_two() {
            return Err(format!("block_size {bs} is not a power of two"));
        }
        let n = self.seqs.len();
        let rows = self.input_ids.len();
        if self.cu_seqlens_q.len() != n + 1 || self.block_table_offsets.len() != n + 1 {
            return Err(format!(
                "{n} seqs but {} cu_seqlens_q and {} block_table_offsets entries",
                self.cu_seqlens_q.len(),
                self.block_table_offsets.len()
            ));
        }
        if self.positions.len() != rows || self.slot_mapping.len() != rows {
            return Err(format!(
                "{rows} input_ids but {} positions and {} slots",
                self.positions.len(),
                self.slot_mapping.len()
            ));
        }
        if self.cu_seqlens_q[0] != 0
            || self.cu_seqlens_q[n] as usize != rows
            || self.block_table_offsets[0] != 0
            || self.block_table_offsets[n] as usize != self.block_tables.len()
        {
            return Err("CSR offsets do not start at 0 and end at the buffer length".into());
        }
        let mut slots = Vec::with_capacity(rows);
        for (i, s) in self.seqs.iter().enumerate() {
            let (a, b) = (
                self.cu_seqlens_q[i] as usize,
                self.cu_seqlens_q[i + 1] as usize,
            );
            let (ta, tb) = (
                self.block_table_offsets[i] as usize,
                self.block_table_offsets[i + 1] as usize,
            );
            if b < a || tb < ta || b - a != s.num_new_tokens || s.num_new_tokens == 0 {
                return Err(format!(
                    "seq {}: rows {a}..{b} but {} new tokens",
                    s.seq_id, s.num_new_tokens
                ));
            }
            if s.context_len != s.num_computed_tokens + s.num_new_tokens {
                return Err(format!(
                    "seq {}: context_len is not computed + new",
                    s.seq_id
                ));
            }
            if self.seqs[..i].iter().any(|o| o.seq_id == s.seq_id) {
                return Err(format!("seq {} scheduled twice", s.seq_id));
            }
            let table = &self.block_tables[ta..tb];
            if table.len() < s.context_len.div_ceil(bs) {
                return Err(format!("seq {}: block table too short", s.seq_id));
            }
            for (r, pos) in (a..b).zip(s.num_computed_tokens..) {
                let slot = table[pos / bs] as i64 * bs as i64 + (pos % bs) as i64;
                if self.positions[r] as usize != pos || self.slot_mapping[r] != slot {
                    return Err(format!(
                        "seq {}: row {r} has a wrong position or slot",
                        s.seq_id
                    ));
                }
                slots.push(slot);
            }
            let unfinished_chunk_ok = self.is_prefill() && i + 1 == n;
            if !s.sample && !unfinished_chunk_ok {
                return Err(format!(
                    "seq {}: unsampled entry that is not the last prefill",
                    s.seq_id
                ));
            }
            if s.prompt_logprob_rows > s.num_new_tokens
                || (s.prompt_logprob_rows == s.num_new_tokens && s.sample)
            {
                return Err(format!(
                    "seq {}: {} prompt logprob rows of {} new tokens (sampled: {})",
                    s.seq_id, s.prompt_logprob_rows, s.num_new_tokens, s.sample
                ));
            }
            if !self.is_prefill() && s.num_new_tokens != 1 {
                return Err(format!(
                    "seq {}: decode with {} new tokens",
                    s.seq_id, s.num_new_tokens
                ));
            }
        }
        slots.sort_unstable();
        if let Some(w) = slots.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("slot {} written twice in one step", w[0]));
        }
        Ok(())
    }
}
