//! [`LLM`]: batch generation on top of [`LLMEngine`].
//!
//! `generate` validates every prompt before queueing any (an invalid one is an
//! error naming its index, and nothing runs), then steps the engine until all
//! of its requests finish and returns their outputs in input order. If a step
//! fails, the call's remaining requests are aborted so the engine is left empty.
//! Outputs of requests that were already in the engine (added through
//! [`LLM::from_engine`]) are not returned by `generate`.

use std::collections::HashMap;
use std::time::Duration;

use nanovllm_scheduler::{BatchKind, FinishReason, SamplingParams};

use crate::config::EngineConfig;
use crate::engine::{EngineStats, LLMEngine, Prompt, RequestId, RequestOutput};
use crate::error::{EngineError, Result};
use crate::logprobs::TokenLogprobs;

/// Sampling params for a `generate` call: one for all prompts, or one per prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamsArg {
    One(SamplingParams),
    PerPrompt(Vec<SamplingParams>),
}

impl From<SamplingParams> for ParamsArg {
    fn from(p: SamplingParams) -> Self {
        ParamsArg::One(p)
    }
}
impl From<&SamplingParams> for ParamsArg {
    fn from(p: &SamplingParams) -> Self {
        ParamsArg::One(p.clone())
    }
}
impl From<Vec<SamplingParams>> for ParamsArg {
    fn from(p: Vec<SamplingParams>) -> Self {
        ParamsArg::PerPrompt(p)
    }
}
impl From<&[SamplingParams]> for ParamsArg {
    fn from(p: &[SamplingParams]) -> Self {
        ParamsArg::PerPrompt(p.to_vec())
    }
}

/// One prompt's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Generated text, special tokens skipped (empty without a tokenizer).
    pub text: String,
    /// Generated token ids (prompt excluded).
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_token_ids: Vec<u32>,
    pub num_cached_tokens: usize,
    /// Set when the engine had to abort this request (e.g. it outgrew the KV cache).
    pub error: Option<String>,
    /// With [`SamplingParams::prompt_logprobs`]: one entry per prompt token, `None` for the
    /// first, then each token's logprob given the tokens before it and the most likely
    /// alternatives (see [`RequestOutput::prompt_logprobs`]); `None` when not asked for.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
}

impl From<RequestOutput> for Output {
    fn from(r: RequestOutput) -> Self {
        Self {
            text: r.text,
            token_ids: r.token_ids,
            finish_reason: r.finish_reason,
            prompt_token_ids: r.prompt_token_ids,
            num_cached_tokens: r.num_cached_tokens,
            error: r.error,
            prompt_logprobs: r.prompt_logprobs,
        }
    }
}

/// Passed to the progress callback after every step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    pub num_finished: usize,
    pub num_requests: usize,
    /// The step that just ran (`None` if it ran nothing).
    pub step_kind: Option<BatchKind>,
    pub step_tokens: usize,
    pub step_elapsed: Duration,
    /// Engine totals so far.
    pub stats: EngineStats,
}

/// Offline batch inference.
#[derive(Debug)]
pub struct LLM {
    engine: LLMEngine,
}

impl LLM {
    pub fn new(config: EngineConfig) -> Result<Self> {
        Ok(Self {
            engine: LLMEngine::new(config)?,
        })
    }

    pub fn from_engine(engine: LLMEngine) -> Self {
        Self { engine }
    }

    pub fn engine(&self) -> &LLMEngine {
        &self.engine
    }

    pub fn into_engine(self) -> LLMEngine {
        self.engine
    }

    /// Generates a completion for every prompt; outputs are in input order.
    pub fn generate<I, P>(
        &mut self,
        prompts: I,
        params: impl Into<ParamsArg>,
    ) -> Result<Vec<Output>>
    where
        I: IntoIterator<Item = P>,
        P: Into<Prompt>,
    {
        self.generate_with_progress(prompts, params, |_| {})
    }

    /// [`LLM::generate`], calling `on_step` after every engine step.
    pub fn generate_with_progress<I, P>(
        &mut self,
        prompts: I,
        params: impl Into<ParamsArg>,
        mut on_step: impl FnMut(&Progress),
    ) -> Result<Vec<Output>>
    where
        I: IntoIterator<Item = P>,
        P: Into<Prompt>,
    {
        let prompts: Vec<Prompt> = prompts.into_iter().map(Into::into).collect();
        let params = match params.into() {
            ParamsArg::One(p) => vec![p; prompts.len()],
            ParamsArg::PerPrompt(list) => {
                if list.len() != prompts.len() {
                    return Err(EngineError::ParamsCountMismatch {
                        num_prompts: prompts.len(),
                        num_params: list.len(),
                    });
                }
                list
            }
        };
        // Validate everything first: an invalid prompt means nothing runs.
        let mut validated = Vec::with_capacity(prompts.len());
        for (index, (prompt, p)) in prompts.into_iter().zip(&params).enumerate() {
            let ids = self
                .engine
                .validate_request(prompt, p)
                .map_err(|reason| EngineError::invalid_request(Some(index), reason))?;
            validated.push(ids);
        }

        let num_requests = validated.len();
        let mut index_of: HashMap<RequestId, usize> = HashMap::with_capacity(num_requests);
        for (index, (ids, p)) in validated.into_iter().zip(params).enumerate() {
            match self.engine.add_request(ids, p) {
                Ok(id) => {
                    index_of.insert(id, index);
                }
                Err(err) => {
                    self.abort_all(&index_of);
                    return Err(match err {
                        EngineError::InvalidRequest { reason, .. } => {
                            EngineError::invalid_request(Some(index), reason)
                        }
                        other => other,
                    });
                }
            }
        }

        let mut outputs: Vec<Option<Output>> = vec![None; num_requests];
        let mut num_finished = 0;
        while num_finished < num_requests {
            let step = match self.engine.step() {
                Ok(step) => step,
                Err(err) => {
                    self.abort_all(&index_of);
                    return Err(err);
                }
            };
            let made_progress = step.kind.is_some() || !step.finished.is_empty();
            for finished in step.finished {
                if let Some(&index) = index_of.get(&finished.request_id) {
                    outputs[index] = Some(finished.into());
                    num_finished += 1;
                }
            }
            on_step(&Progress {
                num_finished,
                num_requests,
                step_kind: step.kind,
                step_tokens: step.num_tokens,
                step_elapsed: step.elapsed,
                stats: self.engine.stats(),
            });
            if !made_progress && num_finished < num_requests {
                self.abort_all(&index_of);
                return Err(EngineError::Internal(format!(
                    "the engine went idle with {} of {num_requests} requests unfinished",
                    num_requests - num_finished
                )));
            }
        }
        outputs
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.ok_or_else(|| EngineError::Internal(format!("request #{i} produced no output")))
            })
            .collect()
    }

    /// Aborts every request of a failed call, best effort (errors are already being returned).
    fn abort_all(&mut self, index_of: &HashMap<RequestId, usize>) {
        for &id in index_of.keys() {
            let _ = self.engine.abort(id);
        }
    }
}
