//! Continuous batching. (Being written; see the helper task.)

use crate::batch::ScheduledBatch;
use crate::block_manager::BlockManager;
use crate::error::SchedulerError;
use crate::params::SamplingParams;
use crate::sequence::{FinishReason, SeqId, Sequence};

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
    _bm: BlockManager,
}

impl Scheduler {
    pub fn new(_config: SchedulerConfig) -> Result<Self, SchedulerError> {
        todo!()
    }
    pub fn config(&self) -> &SchedulerConfig {
        todo!()
    }
    /// Validates and queues a request; returns its id.
    pub fn add(
        &mut self,
        _prompt: Vec<u32>,
        _params: SamplingParams,
    ) -> Result<SeqId, SchedulerError> {
        todo!()
    }
    /// Picks the next step's work; `Ok(None)` when nothing is waiting or running.
    pub fn schedule(&mut self) -> Result<Option<ScheduledBatch>, SchedulerError> {
        todo!()
    }
    /// Applies one sampled token per scheduled sequence (entries of `sample == false` are ignored).
    pub fn postprocess(
        &mut self,
        _batch: ScheduledBatch,
        _sampled: &[u32],
    ) -> Result<StepOutput, SchedulerError> {
        todo!()
    }
    /// Frees a sequence at any time; returns it as finished with `Abort`, or None if unknown.
    pub fn abort(&mut self, _seq_id: SeqId) -> Option<FinishedSeq> {
        todo!()
    }
    pub fn sequence(&self, _seq_id: SeqId) -> Option<&Sequence> {
        todo!()
    }
    pub fn num_waiting(&self) -> usize {
        todo!()
    }
    pub fn num_running(&self) -> usize {
        todo!()
    }
    pub fn has_unfinished(&self) -> bool {
        todo!()
    }
    pub fn block_manager(&self) -> &BlockManager {
        todo!()
    }
}
