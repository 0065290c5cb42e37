//! Per-token log-probabilities, for requests that ask for them (OpenAI's
//! `logprobs` / `top_logprobs`).
//!
//! The backend computes them with the token ([`nanovllm_kernels::Backend::sample`], defined
//! in `nanovllm_kernels::sampling`): a token's logprob is taken from the log-softmax of its
//! row of logits after temperature scaling (`logits / temperature`; the raw logits when
//! greedy), before top-k / top-p / min-p: the distribution the sampler starts from, so a
//! token the filters removed still has a finite logprob. The sum runs in f64, so the
//! values are accurate to f32 rounding.
//!
//! `top` lists the `num_top` most likely tokens (at most
//! [`nanovllm_kernels::sampling::MAX_NUM_LOGPROBS`]), most likely first, equal values → lower
//! id first (the sampler's tie order). NaN logits count as -inf.

use nanovllm_kernels::RowLogprobs;

/// One candidate token and its logprob.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TopLogprob {
    pub token_id: u32,
    pub logprob: f32,
}

/// The sampled token's logprob and the top alternatives at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub token_id: u32,
    pub logprob: f32,
    /// The `num_top` most likely tokens (fewer when the vocabulary is smaller).
    pub top: Vec<TopLogprob>,
}

impl TokenLogprobs {
    /// The backend's logprobs of a row whose sampled token is `token_id`.
    pub fn from_row(token_id: u32, row: RowLogprobs) -> Self {
        Self {
            token_id,
            logprob: row.logprob,
            top: row
                .top
                .into_iter()
                .map(|(token_id, logprob)| TopLogprob { token_id, logprob })
                .collect(),
        }
    }
}
