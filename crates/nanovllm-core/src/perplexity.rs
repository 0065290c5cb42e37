//! Perplexity of token sequences, scored through the normal engine path (what
//! `nanovllm perplexity` runs).
//!
//! Each line is one request with [`SamplingParams::prompt_logprobs`] and `max_tokens = 1`
//! ([`scoring_params`]), all queued at once and stepped to the end, so chunked prefill,
//! batching and the scheduler's rules apply as for any request. The logprob of prompt token
//! `i` given tokens `0..i` comes from the log-softmax of the model's raw logits (see
//! [`crate::RequestOutput::prompt_logprobs`]); the first token of a line has none and is not
//! scored, as in vLLM's `prompt_logprobs` and in the fixture script's reference.
//!
//! Definitions (those of `fixtures/qwen3-trained/reference_perplexity.json`):
//! - a line's `nll_sum` = −Σ_{i≥1} log p(token_i | tokens_<i), summed in f64 (each logprob is
//!   an f32);
//! - perplexity = exp(Σ `nll_sum` / Σ (tokens − 1)) over every line.
//!
//! Invariant: prefix caching cannot change a score, because the scheduler gives a request
//! that wants prompt logprobs no prefix-cache hit (its rows must be computed to be scored).

use serde::Serialize;

use crate::engine::{LLMEngine, Prompt, RequestId};
use crate::error::{EngineError, RequestError};
use nanovllm_scheduler::SamplingParams;

/// The sampling params every scored line runs with: prompt logprobs (no alternatives) and a
/// single generated token, greedy, which is discarded.
pub fn scoring_params() -> SamplingParams {
    SamplingParams {
        prompt_logprobs: Some(0),
        ..SamplingParams::greedy(1)
    }
}

/// Why one input line cannot be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    /// The engine refuses it as a request (out-of-vocabulary ids, too long, no tokenizer…).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Fewer than two tokens leave nothing to score.
    #[error(
        "the line has {tokens} token(s); it needs at least 2, since its first token is not scored"
    )]
    TooShort { tokens: usize },
}

/// Why a run failed after its lines were accepted.
#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    /// [`score`] was given a line [`prepare_line`] would refuse; `index` counts from 0.
    #[error("line #{index}: {source}")]
    Line { index: usize, source: LineError },
    /// The engine aborted a line's request before its prompt was scored.
    #[error("line #{index} was not scored: {reason}")]
    NotScored { index: usize, reason: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The score of one line.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LineScore {
    /// The line's length in tokens; `tokens − 1` of them are scored.
    pub tokens: usize,
    /// −Σ log p over the scored tokens, in nats.
    pub nll_sum: f64,
}

/// The figures of a run; see the module docs for the definitions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PerplexityReport {
    pub perplexity: f64,
    /// Tokens scored: Σ (tokens − 1) over the lines.
    pub tokens: usize,
    pub lines: usize,
    /// Σ of the lines' `nll_sum`.
    pub nll_sum: f64,
    /// Per line, in input order.
    pub line_scores: Vec<LineScore>,
}

impl PerplexityReport {
    /// The totals over `line_scores`.
    pub fn from_lines(line_scores: Vec<LineScore>) -> Self {
        let tokens: usize = line_scores.iter().map(|l| l.tokens.saturating_sub(1)).sum();
        let nll_sum: f64 = line_scores.iter().map(|l| l.nll_sum).sum();
        Self {
            perplexity: (nll_sum / tokens.max(1) as f64).exp(),
            tokens,
            lines: line_scores.len(),
            nll_sum,
            line_scores,
        }
    }
}

/// A line's token ids as the engine would run them (a text prompt tokenized by the model's
/// tokenizer with its default special tokens, as transformers' `tokenizer(text)` and the
/// `tokenizers` library's `encode(text)` add them), checked as a request with
/// [`scoring_params`], and at least two tokens long.
pub fn prepare_line(engine: &LLMEngine, prompt: Prompt) -> Result<Vec<u32>, LineError> {
    let ids = engine.validate_request(prompt, &scoring_params())?;
    if ids.len() < 2 {
        return Err(LineError::TooShort { tokens: ids.len() });
    }
    Ok(ids)
}

/// Scores every line (queued at once, stepped to the end) and returns the report, lines in
/// input order; `on_scored` is called with the number of lines scored so far whenever it
/// grows. A line [`prepare_line`] refuses is an error before anything runs.
pub fn score(
    engine: &mut LLMEngine,
    lines: Vec<Vec<u32>>,
    on_scored: &mut dyn FnMut(usize),
) -> Result<PerplexityReport, PerplexityError> {
    for (index, ids) in lines.iter().enumerate() {
        prepare_line(engine, Prompt::TokenIds(ids.clone()))
            .map_err(|source| PerplexityError::Line { index, source })?;
    }
    let mut index_of: std::collections::HashMap<RequestId, usize> = Default::default();
    let mut scores: Vec<Option<LineScore>> = vec![None; lines.len()];
    for (index, ids) in lines.into_iter().enumerate() {
        let id = engine.add_request(Prompt::TokenIds(ids), scoring_params())?;
        index_of.insert(id, index);
    }
    let mut num_scored = 0;
    while engine.has_unfinished() {
        for finished in engine.step()?.finished {
            let Some(&index) = index_of.get(&finished.request_id) else {
                continue;
            };
            let not_scored = |reason: String| PerplexityError::NotScored { index, reason };
            if let Some(error) = finished.error {
                return Err(not_scored(error));
            }
            let entries = finished
                .prompt_logprobs
                .ok_or_else(|| not_scored("the engine gave no prompt logprobs".into()))?;
            scores[index] =
                Some(line_score(&finished.prompt_token_ids, &entries).map_err(not_scored)?);
            num_scored += 1;
            on_scored(num_scored);
        }
    }
    let line_scores = scores
        .into_iter()
        .enumerate()
        .map(|(index, s)| {
            s.ok_or_else(|| PerplexityError::NotScored {
                index,
                reason: "the engine finished without it".into(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PerplexityReport::from_lines(line_scores))
}

/// The score of one line from its prompt logprobs (entry 0 `None`, entry `i` the logprob of
/// `ids[i]`); an error unless the entries are exactly that.
fn line_score(ids: &[u32], entries: &[Option<crate::TokenLogprobs>]) -> Result<LineScore, String> {
    if entries.len() != ids.len() || entries.first().is_some_and(Option::is_some) {
        return Err(format!(
            "{} prompt logprob entries for {} tokens",
            entries.len(),
            ids.len()
        ));
    }
    let mut nll_sum = 0.0f64;
    for (position, (entry, &token)) in entries.iter().zip(ids).enumerate().skip(1) {
        match entry {
            Some(e) if e.token_id == token => nll_sum -= f64::from(e.logprob),
            _ => {
                return Err(format!(
                    "no logprob of token {token} at position {position}"
                ))
            }
        }
    }
    Ok(LineScore {
        tokens: ids.len(),
        nll_sum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TokenLogprobs;

    fn entry(token_id: u32, logprob: f32) -> Option<TokenLogprobs> {
        Some(TokenLogprobs {
            token_id,
            logprob,
            top: Vec::new(),
        })
    }

    #[test]
    fn a_line_sums_the_negative_logprobs_after_its_first_token() {
        let score = line_score(&[7, 8, 9], &[None, entry(8, -1.5), entry(9, -0.25)]).unwrap();
        assert_eq!(score.tokens, 3);
        assert_eq!(score.nll_sum, 1.75);
    }

    #[test]
    fn entries_that_do_not_match_the_line_are_refused() {
        // One entry short, a wrong token, and a first entry that should be None.
        assert!(line_score(&[7, 8, 9], &[None, entry(8, -1.0)]).is_err());
        let err = line_score(&[7, 8], &[None, entry(5, -1.0)]).unwrap_err();
        assert!(err.contains("token 8 at position 1"), "{err}");
        assert!(line_score(&[7, 8], &[entry(7, -1.0), entry(8, -1.0)]).is_err());
    }

    #[test]
    fn perplexity_is_exp_of_the_mean_nll_over_scored_tokens() {
        let report = PerplexityReport::from_lines(vec![
            LineScore {
                tokens: 3,
                nll_sum: 2.0,
            },
            LineScore {
                tokens: 5,
                nll_sum: 6.0,
            },
        ]);
        assert_eq!((report.tokens, report.lines), (6, 2));
        assert_eq!(report.nll_sum, 8.0);
        assert!((report.perplexity - (8.0f64 / 6.0).exp()).abs() < 1e-12);
    }
}
