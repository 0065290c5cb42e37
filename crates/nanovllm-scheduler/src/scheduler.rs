//! Continuous batching, as in nano-vLLM: each step is a prefill or a decode.
//!
//! - **Prefill first.** Walk `waiting` from the front while the step has sequence slots
//!   (`max_num_seqs`, counting the running ones) and token budget (`max_num_batched_tokens`).
//!   A sequence without blocks is allocated all of them at once, its cached prefix counting
//!   as computed (none for a sequence that still scores its prompt,
//!   `SamplingParams::prompt_logprobs`: each of its chunks marks the rows to score,
//!   `ScheduledSeq::prompt_logprob_rows`); if that fails, admission stops (FIFO). A prompt
//!   that does not fit the remaining budget is chunked: it stays at the front of `waiting`,
//!   holding its blocks, its entry is not sampled, and nothing is admitted after it.
//! - **Decode** when no prefill was scheduled: every running sequence computes the KV of its
//!   last token (position `len - 1`, needing `ceil(len / block_size)` blocks) and samples one.
//!   When no block is free, the newest running sequence (possibly the one asking) is
//!   preempted by recompute: its blocks are released tail first (they stay cached) and it
//!   returns to the front of `waiting`, where re-admission hits its own cached prefix.
//! - Work that can never be scheduled (a sequence needing more blocks than the whole cache)
//!   is reported as [`SchedulerError::Unschedulable`]; after `abort` of that sequence the next
//!   `schedule()` goes on with the others. `schedule` never loops unboundedly.
//!
//! Invariants (checked by [`Scheduler::check_invariants`]):
//! - Every unfinished sequence is in `seqs` and in exactly one of `waiting` (status
//!   `Waiting`) and `running` (status `Running`). Finished and aborted sequences leave at
//!   once, as a [`FinishedSeq`] carrying the finish reason.
//! - Only the front of `waiting` may hold blocks (an unfinished prefill chunk).
//! - `running.len() <= max_num_seqs`, so a decode step always schedules every running sequence.
//! - Between steps a running sequence has `num_computed_tokens == len - 1`; while a step is in
//!   flight `num_scheduled_tokens` holds its share. Call `postprocess` with each batch before
//!   the next `schedule`.

use std::collections::VecDeque;

use crate::batch::{BatchKind, ScheduledBatch};
use crate::block_manager::BlockManager;
use crate::error::SchedulerError;
use crate::params::SamplingParams;
use crate::sequence::{FinishReason, SeqId, Sequence, SequenceStatus};
use crate::u64_hasher::U64Map;

#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Most sequences in one step (default 512).
    pub max_num_seqs: usize,
    /// Most tokens in one prefill step (default 16384).
    pub max_num_batched_tokens: usize,
    /// Longest sequence, prompt plus completion (default 4096).
    pub max_model_len: usize,
    /// Tokens per KV block: a power of two >= 16 (default 256).
    pub block_size: usize,
    /// KV blocks in the cache.
    pub num_blocks: usize,
    /// Tokens that end a sequence unless its params say `ignore_eos`.
    pub eos_token_ids: Vec<u32>,
    /// Reuse the KV blocks of earlier sequences with the same prefix (default on, as in
    /// vLLM V1); off, no block is ever shared.
    pub enable_prefix_caching: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 512,
            max_num_batched_tokens: 16384,
            max_model_len: 4096,
            block_size: 256,
            num_blocks: 1024,
            eos_token_ids: Vec::new(),
            enable_prefix_caching: true,
        }
    }
}

/// A sequence that finished in this step (or was aborted).
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedSeq {
    pub seq_id: SeqId,
    pub finish_reason: FinishReason,
    pub prompt_token_ids: Vec<u32>,
    pub completion_token_ids: Vec<u32>,
    /// Prompt tokens served from the prefix cache at the last admission.
    pub num_cached_tokens: usize,
}

/// What one `postprocess` produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    /// `(seq_id, token)` for every token appended in this step, in batch order
    /// (ignored prefill-chunk samples are not listed).
    pub new_tokens: Vec<(SeqId, u32)>,
    pub finished: Vec<FinishedSeq>,
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    block_manager: BlockManager,
    seqs: U64Map<Sequence>,
    waiting: VecDeque<SeqId>,
    running: VecDeque<SeqId>,
    next_seq_id: SeqId,
    /// Buffers of the batch last handed back to `postprocess`, refilled by the next `schedule`.
    spare_batch: ScheduledBatch,
    num_preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        let block_manager = BlockManager::new(config.num_blocks, config.block_size)?
            .with_prefix_caching(config.enable_prefix_caching);
        for (name, value) in [
            ("max_num_seqs", config.max_num_seqs),
            ("max_num_batched_tokens", config.max_num_batched_tokens),
            ("max_model_len", config.max_model_len),
        ] {
            // Positions and packed offsets travel as u32.
            if value == 0 || value > u32::MAX as usize / 2 {
                return Err(SchedulerError::InvalidConfig(format!(
                    "{name} = {value}: expected an integer in 1..=2^31"
                )));
            }
        }
        Ok(Self {
            config,
            block_manager,
            seqs: U64Map::default(),
            waiting: VecDeque::new(),
            running: VecDeque::new(),
            next_seq_id: 0,
            spare_batch: ScheduledBatch::default(),
            num_preemptions: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Whether a request of `prompt_len` tokens with `params` may be queued: a prompt that
    /// is not empty, fits `max_model_len` and the whole KV cache, and valid `params`.
    /// [`Self::add`] runs it; a front end runs it to refuse a request before queueing it.
    pub fn check_prompt(
        &self,
        prompt_len: usize,
        params: &SamplingParams,
    ) -> Result<(), SchedulerError> {
        let config = &self.config;
        if prompt_len == 0 {
            return Err(SchedulerError::EmptyPrompt);
        }
        if prompt_len > config.max_model_len {
            return Err(SchedulerError::PromptTooLong {
                prompt_len,
                max_model_len: config.max_model_len,
            });
        }
        let needed_blocks = prompt_len.div_ceil(config.block_size);
        if needed_blocks > config.num_blocks {
            return Err(SchedulerError::PromptExceedsCache {
                prompt_len,
                needed_blocks,
                block_size: config.block_size,
                num_blocks: config.num_blocks,
            });
        }
        params.validate()
    }

    /// Whether a request of `prompt_len` tokens can reach `params.max_tokens` (or
    /// `max_model_len`) without outgrowing the whole KV cache. The engine refuses a request
    /// that fails it at admission, instead of aborting it mid-stream
    /// ([`SchedulerError::Unschedulable`]) once it has grown; [`Self::add`] does not run it, so
    /// a caller driving the scheduler directly may still queue such work.
    pub fn check_growth(
        &self,
        prompt_len: usize,
        params: &SamplingParams,
    ) -> Result<(), SchedulerError> {
        let config = &self.config;
        // The longest the sequence gets in the cache: every token it is fed, i.e. the prompt
        // and all but the last completion token, never past max_model_len (saturating:
        // max_tokens may be as large as usize::MAX).
        let needed_tokens = prompt_len
            .saturating_add(params.max_tokens)
            .saturating_sub(1)
            .min(config.max_model_len);
        let needed_blocks = needed_tokens.div_ceil(config.block_size);
        if needed_blocks > config.num_blocks {
            return Err(SchedulerError::SequenceExceedsCache {
                prompt_len,
                max_tokens: params.max_tokens,
                needed_tokens,
                needed_blocks,
                block_size: config.block_size,
                num_blocks: config.num_blocks,
            });
        }
        Ok(())
    }

    /// Validates ([`Self::check_prompt`]) and queues a request; returns its id.
    pub fn add(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<SeqId, SchedulerError> {
        self.check_prompt(prompt.len(), &params)?;
        let seq_id = self.next_seq_id;
        self.next_seq_id += 1;
        self.seqs
            .insert(seq_id, Sequence::new(seq_id, prompt, params));
        self.waiting.push_back(seq_id);
        Ok(seq_id)
    }

    /// Picks the next step's work; `Ok(None)` when nothing is waiting or running.
    pub fn schedule(&mut self) -> Result<Option<ScheduledBatch>, SchedulerError> {
        if !self.has_unfinished() {
            return Ok(None);
        }
        let block_size = self.config.block_size;
        let mut batch = std::mem::take(&mut self.spare_batch);
        batch.reset(BatchKind::Prefill, block_size);
        if self.schedule_prefill(&mut batch) {
            return Ok(Some(batch));
        }
        batch.reset(BatchKind::Decode, block_size);
        if self.schedule_decode(&mut batch) {
            return Ok(Some(batch));
        }
        // Nothing runs, or decode had to preempt every running sequence: prefill is all that is left.
        batch.reset(BatchKind::Prefill, block_size);
        if self.schedule_prefill(&mut batch) {
            return Ok(Some(batch));
        }
        self.spare_batch = batch;
        // No sequence holds a block now, yet the head of `waiting` does not fit: it never will.
        match self.waiting.front().and_then(|id| self.seqs.get(id)) {
            Some(seq) => Err(SchedulerError::Unschedulable {
                seq_id: seq.seq_id,
                needed_blocks: seq.num_blocks(block_size),
                num_blocks: self.config.num_blocks,
            }),
            None => Ok(None),
        }
    }

    /// Admits waiting sequences (or continues the unfinished chunk at the front) into `batch`.
    fn schedule_prefill(&mut self, batch: &mut ScheduledBatch) -> bool {
        let mut token_budget = self.config.max_num_batched_tokens;
        let mut num_seqs = self.running.len();
        while let Some(&seq_id) = self.waiting.front() {
            let Some(seq) = self.seqs.get_mut(&seq_id) else {
                break;
            };
            let continues_chunk = !seq.block_table.is_empty();
            if !continues_chunk
                && (token_budget == 0
                    || num_seqs >= self.config.max_num_seqs
                    || !self.block_manager.allocate(seq))
            {
                break;
            }
            let num_remaining = seq.len() - seq.num_computed_tokens;
            let chunk = num_remaining.min(token_budget);
            batch.push_seq(seq, chunk, chunk == num_remaining);
            seq.num_scheduled_tokens = chunk;
            token_budget -= chunk;
            num_seqs += 1;
            if chunk < num_remaining {
                break;
            }
            seq.status = SequenceStatus::Running;
            self.waiting.pop_front();
            self.running.push_back(seq_id);
        }
        !batch.seqs.is_empty()
    }

    /// One token for every running sequence, preempting the newest ones when blocks run out.
    fn schedule_decode(&mut self, batch: &mut ScheduledBatch) -> bool {
        let mut i = 0;
        while i < self.running.len() {
            let seq_id = self.running[i];
            let Some(seq) = self.seqs.get_mut(&seq_id) else {
                self.running.remove(i);
                continue;
            };
            if self.block_manager.append(seq) {
                batch.push_seq(seq, 1, true);
                seq.num_scheduled_tokens = 1;
                i += 1;
            } else if let Some(newest) = self.running.pop_back() {
                // If `newest` is this very sequence, the loop ends: it preempted itself.
                self.preempt(newest);
            }
        }
        !batch.seqs.is_empty()
    }

    /// Recompute preemption: free the blocks (they stay cached), back to the front of `waiting`.
    fn preempt(&mut self, seq_id: SeqId) {
        let Some(seq) = self.seqs.get_mut(&seq_id) else {
            return;
        };
        self.block_manager.deallocate(seq);
        seq.status = SequenceStatus::Waiting;
        seq.num_scheduled_tokens = 0;
        self.waiting.push_front(seq_id);
        self.num_preemptions += 1;
    }

    /// Applies one sampled token per scheduled sequence (entries of `sample == false` are ignored).
    ///
    /// Every entry's new tokens count as computed. Entries of sequences aborted since
    /// `schedule` (or not scheduled by this batch) are skipped. Finished sequences release
    /// their blocks and are returned in `StepOutput::finished`.
    pub fn postprocess(
        &mut self,
        batch: ScheduledBatch,
        sampled: &[u32],
    ) -> Result<StepOutput, SchedulerError> {
        if sampled.len() != batch.seqs.len() {
            return Err(SchedulerError::SampledCountMismatch {
                expected: batch.seqs.len(),
                got: sampled.len(),
            });
        }
        let mut output = StepOutput {
            new_tokens: Vec::with_capacity(batch.seqs.len()),
            finished: Vec::new(),
        };
        for (scheduled, &token) in batch.seqs.iter().zip(sampled) {
            let Some(seq) = self.seqs.get_mut(&scheduled.seq_id) else {
                continue;
            };
            // Not scheduled by this batch (e.g. the same batch handed back twice).
            if seq.num_scheduled_tokens == 0
                || seq.num_scheduled_tokens != scheduled.num_new_tokens
                || seq.num_computed_tokens != scheduled.num_computed_tokens
            {
                continue;
            }
            // From here on only the scheduler's own state counts, not the batch's copy of it.
            let context_len = seq.num_computed_tokens + seq.num_scheduled_tokens;
            seq.num_scheduled_tokens = 0;
            self.block_manager.mark_computed(seq, context_len);
            if context_len < seq.len() {
                continue; // an unfinished prefill chunk: its sample is ignored
            }
            seq.token_ids.push(token);
            output.new_tokens.push((seq.seq_id, token));
            if let Some(reason) = finish_reason(&self.config, seq, token) {
                if let Some(mut seq) = self.seqs.remove(&scheduled.seq_id) {
                    self.block_manager.deallocate(&mut seq);
                    output.finished.push(into_finished(seq, reason));
                }
            }
        }
        if !output.finished.is_empty() {
            let seqs = &self.seqs;
            self.running.retain(|id| seqs.contains_key(id));
        }
        self.spare_batch = batch;
        Ok(output)
    }

    /// Frees a sequence at any time; returns it as finished with `Abort`, or None if unknown.
    pub fn abort(&mut self, seq_id: SeqId) -> Option<FinishedSeq> {
        let mut seq = self.seqs.remove(&seq_id)?;
        self.block_manager.deallocate(&mut seq);
        if let Some(i) = self.waiting.iter().position(|&id| id == seq_id) {
            self.waiting.remove(i);
        } else if let Some(i) = self.running.iter().position(|&id| id == seq_id) {
            self.running.remove(i);
        }
        Some(into_finished(seq, FinishReason::Abort))
    }

    pub fn sequence(&self, seq_id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&seq_id)
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Waiting sequences, front (next to be admitted) first.
    pub fn waiting_ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.waiting.iter().copied()
    }

    pub fn has_unfinished(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn block_manager(&self) -> &BlockManager {
        &self.block_manager
    }

    /// Recompute preemptions since the scheduler was created.
    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    /// Checks every invariant of the module docs and of the block manager. For tests and
    /// debugging; O(sequences + blocks + tokens).
    pub fn check_invariants(&self) -> Result<(), String> {
        let queued = self.waiting.len() + self.running.len();
        if queued != self.seqs.len() {
            return Err(format!(
                "{} sequences but {} waiting + {} running",
                self.seqs.len(),
                self.waiting.len(),
                self.running.len()
            ));
        }
        if self.running.len() > self.config.max_num_seqs {
            return Err(format!("{} running > max_num_seqs", self.running.len()));
        }
        let mut ids: Vec<SeqId> = self.waiting.iter().chain(&self.running).copied().collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err("a sequence is queued twice".into());
        }
        for (pos, id) in self.waiting.iter().enumerate() {
            let seq = self
                .seqs
                .get(id)
                .ok_or(format!("waiting seq {id} unknown"))?;
            if seq.status != SequenceStatus::Waiting {
                return Err(format!("waiting seq {id} has status {:?}", seq.status));
            }
            if pos > 0 && (!seq.block_table.is_empty() || seq.num_computed_tokens > 0) {
                return Err(format!("waiting seq {id} behind the front holds blocks"));
            }
        }
        for id in &self.running {
            let seq = self
                .seqs
                .get(id)
                .ok_or(format!("running seq {id} unknown"))?;
            if seq.status != SequenceStatus::Running {
                return Err(format!("running seq {id} has status {:?}", seq.status));
            }
            let computed = seq.num_computed_tokens + seq.num_scheduled_tokens.max(1);
            if computed != seq.len() {
                return Err(format!(
                    "running seq {id}: {} computed + {} scheduled tokens of {}",
                    seq.num_computed_tokens,
                    seq.num_scheduled_tokens,
                    seq.len()
                ));
            }
        }
        for seq in self.seqs.values() {
            if seq.len() > self.config.max_model_len || seq.num_cached_tokens >= seq.len() {
                return Err(format!(
                    "seq {}: len {} with {} cached tokens",
                    seq.seq_id,
                    seq.len(),
                    seq.num_cached_tokens
                ));
            }
        }
        self.block_manager.check_invariants(self.seqs.values())
    }
}

/// Why `seq` stops after appending `token`, if it does.
fn finish_reason(config: &SchedulerConfig, seq: &Sequence, token: u32) -> Option<FinishReason> {
    if !seq.params.ignore_eos && config.eos_token_ids.contains(&token) {
        Some(FinishReason::Eos)
    } else if seq.params.stop_token_ids.contains(&token) {
        Some(FinishReason::Stop)
    } else if seq.num_completion_tokens() >= seq.params.max_tokens
        || seq.len() >= config.max_model_len
    {
        Some(FinishReason::Length)
    } else {
        None
    }
}

fn into_finished(seq: Sequence, finish_reason: FinishReason) -> FinishedSeq {
    let mut prompt_token_ids = seq.token_ids;
    let completion_token_ids = prompt_token_ids.split_off(seq.num_prompt_tokens);
    FinishedSeq {
        seq_id: seq.seq_id,
        finish_reason,
        prompt_token_ids,
        completion_token_ids,
        num_cached_tokens: seq.num_cached_tokens,
    }
}
