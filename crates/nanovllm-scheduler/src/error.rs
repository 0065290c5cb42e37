use crate::sequence::SeqId;

/// Everything the scheduler can refuse. Messages say what is wrong and what to do.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SchedulerError {
    #[error("invalid sampling parameter {field} = {value}: expected {expected}")]
    InvalidSamplingParam {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("empty prompt: a request needs at least one token")]
    EmptyPrompt,
    #[error("prompt of {prompt_len} tokens is longer than max_model_len = {max_model_len}: shorten it or raise max_model_len")]
    PromptTooLong {
        prompt_len: usize,
        max_model_len: usize,
    },
    #[error("prompt of {prompt_len} tokens needs {needed_blocks} KV blocks of {block_size} tokens but the whole cache has {num_blocks}: shorten it or give the KV cache more memory")]
    PromptExceedsCache {
        prompt_len: usize,
        needed_blocks: usize,
        block_size: usize,
        num_blocks: usize,
    },
    #[error("prompt of {prompt_len} tokens with max_tokens = {max_tokens} may grow to {needed_tokens} tokens, which need {needed_blocks} KV blocks of {block_size} tokens, but the whole cache has {num_blocks}: lower max_tokens, shorten the prompt, or give the KV cache more memory")]
    SequenceExceedsCache {
        prompt_len: usize,
        max_tokens: usize,
        needed_tokens: usize,
        needed_blocks: usize,
        block_size: usize,
        num_blocks: usize,
    },
    #[error("sequence {seq_id} needs {needed_blocks} KV blocks but the whole cache has {num_blocks}: it can never be scheduled; give the KV cache more memory or lower max_tokens")]
    Unschedulable {
        seq_id: SeqId,
        needed_blocks: usize,
        num_blocks: usize,
    },
    #[error("invalid scheduler config: {0}")]
    InvalidConfig(String),
    #[error("postprocess got {got} sampled tokens for a batch of {expected} sequences")]
    SampledCountMismatch { expected: usize, got: usize },
}
