//! A request's state inside the scheduler.

use crate::params::SamplingParams;

/// Identifies a sequence for its whole life; assigned by the scheduler in arrival order.
pub type SeqId = u64;

/// Why a sequence stopped generating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// It produced an end-of-sequence token (and `ignore_eos` was off).
    Eos,
    /// It produced one of its `stop_token_ids`.
    Stop,
    /// It reached `max_tokens` or `max_model_len`.
    Length,
    /// It was aborted (e.g. its client disconnected).
    Abort,
}

impl FinishReason {
    /// The OpenAI / vLLM name: `stop` for eos and stop ids, `length`, `abort`.
    pub fn as_openai_str(self) -> &'static str {
        match self {
            FinishReason::Eos | FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceStatus {
    Waiting,
    Running,
}

/// One request: its tokens so far, its place in the KV cache, and how to sample it.
#[derive(Clone, Debug)]
pub struct Sequence {
    pub seq_id: SeqId,
    pub status: SequenceStatus,
    /// Prompt followed by the generated tokens.
    pub token_ids: Vec<u32>,
    pub num_prompt_tokens: usize,
    /// Tokens found in the prefix cache at the last admission.
    pub num_cached_tokens: usize,
    /// Tokens whose KV is in the cache (cached prefix plus computed chunks and decode steps).
    pub num_computed_tokens: usize,
    /// Tokens being computed in the step in flight (0 when none).
    pub num_scheduled_tokens: usize,
    /// KV blocks holding this sequence's tokens, in order.
    pub block_table: Vec<u32>,
    pub params: SamplingParams,
}

impl Sequence {
    pub fn new(seq_id: SeqId, prompt: Vec<u32>, params: SamplingParams) -> Self {
        let n = prompt.len();
        Self {
            seq_id,
            status: SequenceStatus::Waiting,
            token_ids: prompt,
            num_prompt_tokens: n,
            num_cached_tokens: 0,
            num_computed_tokens: 0,
            num_scheduled_tokens: 0,
            block_table: Vec::new(),
            params,
        }
    }
    pub fn len(&self) -> usize {
        self.token_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.token_ids.is_empty()
    }
    pub fn num_completion_tokens(&self) -> usize {
        self.token_ids.len() - self.num_prompt_tokens
    }
    pub fn completion_token_ids(&self) -> &[u32] {
        &self.token_ids[self.num_prompt_tokens..]
    }
    /// Whether the request asked for prompt logprobs and they are not all computed yet:
    /// it has generated nothing (its prompt's last chunk samples its first token, so a
    /// sequence that has generated has scored its whole prompt, and a recompute after a
    /// preemption scores nothing again). Such a sequence reads nothing from the prefix
    /// cache: every prompt position must be computed to be scored.
    pub fn needs_prompt_logprobs(&self) -> bool {
        self.params.prompt_logprobs.is_some() && self.num_completion_tokens() == 0
    }
    /// Blocks needed to hold `len()` tokens.
    pub fn num_blocks(&self, block_size: usize) -> usize {
        self.token_ids.len().div_ceil(block_size)
    }
}
