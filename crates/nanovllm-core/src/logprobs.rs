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

/// A request's prompt logprobs as its chunks are scored (`SamplingParams::prompt_logprobs`):
/// entry `i` is prompt token `i`'s logprob given tokens `0..i`, with the most likely
/// alternatives there; entry 0 is `None` (nothing precedes the first token).
///
/// Chunks arrive in position order, each continuing where the last stopped (the scheduler
/// gives such a request no prefix-cache hit, and scores nothing again after a preemption):
/// [`Self::append`] refuses anything else, so an entry is never duplicated or dropped.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PromptLogprobs {
    prompt_len: usize,
    entries: Vec<Option<TokenLogprobs>>,
}

impl PromptLogprobs {
    pub(crate) fn new(prompt_len: usize) -> Self {
        let mut entries = Vec::with_capacity(prompt_len);
        entries.push(None);
        Self {
            prompt_len,
            entries,
        }
    }

    /// Appends the entries of prompt positions `first..first + scored.len()`; an error
    /// (naming the positions) unless `first` is the next position expected.
    pub(crate) fn append(
        &mut self,
        first: usize,
        scored: Vec<TokenLogprobs>,
    ) -> Result<(), String> {
        if first != self.entries.len() || first + scored.len() > self.prompt_len {
            return Err(format!(
                "prompt logprobs for positions {first}..{} after {} of {} entries",
                first + scored.len(),
                self.entries.len(),
                self.prompt_len
            ));
        }
        self.entries.extend(scored.into_iter().map(Some));
        Ok(())
    }

    /// Whether every prompt position has its entry.
    pub(crate) fn is_complete(&self) -> bool {
        self.entries.len() == self.prompt_len
    }

    pub(crate) fn entries(&self) -> &[Option<TokenLogprobs>] {
        &self.entries
    }

    pub(crate) fn into_entries(self) -> Vec<Option<TokenLogprobs>> {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(token_id: u32) -> TokenLogprobs {
        TokenLogprobs {
            token_id,
            logprob: -1.0,
            top: Vec::new(),
        }
    }

    #[test]
    fn prompt_logprobs_take_chunks_in_order_only() {
        let mut p = PromptLogprobs::new(4);
        assert!(!p.is_complete());
        assert!(p.append(2, vec![entry(5)]).is_err(), "a gap");
        p.append(1, vec![entry(5), entry(6)]).unwrap();
        assert!(p.append(1, vec![entry(5)]).is_err(), "a repeat");
        assert!(
            p.append(3, vec![entry(7), entry(8)]).is_err(),
            "past the prompt"
        );
        p.append(3, vec![]).unwrap();
        p.append(3, vec![entry(7)]).unwrap();
        assert!(p.is_complete());
        let ids: Vec<Option<u32>> = p
            .entries()
            .iter()
            .map(|e| e.as_ref().map(|e| e.token_id))
            .collect();
        assert_eq!(ids, vec![None, Some(5), Some(6), Some(7)]);
        // A one-token prompt is complete at once: its only entry is None.
        assert!(PromptLogprobs::new(1).is_complete());
    }
}
