//! From checked prompts to engine sequences and back: [`submit`] queues one
//! sequence per (prompt, choice), [`Submission`] receives their events, and
//! [`collect`] waits for a whole (non-streamed) answer.
//!
//! Choice numbering: prompt `p`'s choice `j` is choice `p * n + j`, which is
//! also its index in `Submission::request_ids`.
//!
//! Stop strings: with any, a task of the request's own (`filter_stop_strings`)
//! sits between the engine's events and the handler: it cuts each choice's
//! text before its first stop string, ends the choice there (`finish_reason:
//! "stop"`) and tells the engine to drop the sequence, which frees its blocks.
//! It runs whether or not the client is reading, so the sequence ends as soon
//! as the text is there; the engine thread never sees a stop string.
//!
//! Cancellation: a `Submission` owns an [`AbortGuard`]. Dropping it before
//! every choice finished (the client disconnected, so axum dropped the
//! handler future or the SSE stream) aborts the unfinished sequences, which
//! frees their KV blocks in the engine thread's next turn.

use std::sync::Arc;

use axum::response::Response;
use nanovllm_core::{RequestId, TokenLogprobs};
use tokio::sync::mpsc;

use super::chat_output::{with_markers, ReplyParsing};
use super::echo::Echo;
use super::engine_thread::{EngineHandle, SeqRequest};
use super::errors::ApiError;
use super::openai_types::{SamplingFields, Usage};
use super::sampling::Sampling;
use super::state::AppState;
use super::stop_strings::{StopMatcher, StopStrings};
use super::streaming::{sse_response, Api, ChunkWriter};
use super::tracked::{ChoiceEvent, Finish, SeqEvent};

/// The number of tokens to generate: the request's `max_tokens`, else the
/// server default, else all the context left; refused when it exceeds the
/// server's cap or does not fit the context with the longest prompt.
pub fn resolve_max_tokens(
    state: &AppState,
    requested: Option<usize>,
    prompts: &[Vec<u32>],
) -> Result<usize, ApiError> {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_model_len = state.max_model_len;
    if longest >= max_model_len {
        return Err(ApiError::PromptTooLong {
            message: format!(
                "the prompt has {longest} tokens, which leaves no room to generate within this model's maximum context length of {max_model_len} tokens: shorten the prompt"
            ),
        });
    }
    let room = max_model_len - longest;
    let cap = state.limits.max_tokens_cap;
    let Some(max_tokens) = requested else {
        // Defaults never fail: they shrink to what the cap and the context allow.
        let default = state.default_max_tokens.unwrap_or(room);
        return Ok(default.min(room).min(cap.unwrap_or(usize::MAX)));
    };
    if let Some(cap) = cap {
        if max_tokens > cap {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens is {max_tokens} but this server allows at most {cap} (--max-tokens-cap)"),
            ));
        }
    }
    // `room` rather than `longest + max_tokens`: a request's max_tokens may be as large as
    // u64::MAX, and the sum would wrap.
    if max_tokens > room {
        return Err(ApiError::PromptTooLong {
            message: format!(
                "this model's maximum context length is {max_model_len} tokens, but {} were requested ({longest} in the prompt, {max_tokens} to generate): shorten the prompt or lower max_tokens",
                (longest as u128) + (max_tokens as u128)
            ),
        });
    }
    Ok(max_tokens)
}

/// Sequences of one request in flight.
#[derive(Debug)]
pub struct Submission {
    pub events: mpsc::UnboundedReceiver<ChoiceEvent>,
    pub guard: AbortGuard,
    /// Prompt length of each prompt (usage counts each prompt once).
    pub prompt_lens: Vec<usize>,
    pub num_choices: usize,
}

impl Submission {
    pub fn num_prompt_tokens(&self) -> usize {
        self.prompt_lens.iter().sum()
    }
}

/// Aborts the sequences still running when dropped.
#[derive(Debug)]
pub struct AbortGuard {
    engine: EngineHandle,
    request_ids: Vec<RequestId>,
    finished: Vec<bool>,
}

impl AbortGuard {
    pub fn mark_finished(&mut self, choice: usize) {
        if let Some(f) = self.finished.get_mut(choice) {
            *f = true;
        }
    }

    pub fn all_finished(&self) -> bool {
        self.finished.iter().all(|&f| f)
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let unfinished: Vec<RequestId> = self
            .request_ids
            .iter()
            .zip(&self.finished)
            .filter(|(_, &done)| !done)
            .map(|(&id, _)| id)
            .collect();
        self.engine.abort(unfinished);
    }
}

/// Queues `n` sequences per prompt; `stops` are the request's compiled stop strings.
pub async fn submit(
    state: &AppState,
    prompts: Vec<Vec<u32>>,
    sampling: &Sampling,
    stops: Option<Arc<StopStrings>>,
) -> Result<Submission, ApiError> {
    let prompt_lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let mut seqs = Vec::with_capacity(prompts.len() * sampling.n);
    for (p, prompt_ids) in prompts.into_iter().enumerate() {
        for j in 0..sampling.n {
            seqs.push(SeqRequest {
                choice: p * sampling.n + j,
                prompt_ids: prompt_ids.clone(),
                params: sampling.params_for_choice(j),
                num_top_logprobs: sampling.num_top_logprobs,
            });
        }
    }
    let num_choices = seqs.len();
    let (sender, events) = mpsc::unbounded_channel();
    let request_ids = state.engine.add(seqs, sender).await?;
    let events = match stops {
        Some(stops) => filter_stop_strings(state, &request_ids, stops, events),
        None => events,
    };
    Ok(Submission {
        events,
        guard: AbortGuard {
            engine: state.engine.clone(),
            request_ids,
            finished: vec![false; num_choices],
        },
        prompt_lens,
        num_choices,
    })
}

/// Spawns the task that applies `stops` to every choice's events (see the module doc)
/// and returns the filtered events.
fn filter_stop_strings(
    state: &AppState,
    request_ids: &[RequestId],
    stops: Arc<StopStrings>,
    mut raw: mpsc::UnboundedReceiver<ChoiceEvent>,
) -> mpsc::UnboundedReceiver<ChoiceEvent> {
    let engine = state.engine.clone();
    let request_ids = request_ids.to_vec();
    let mut matchers: Vec<StopMatcher> = request_ids
        .iter()
        .map(|_| StopMatcher::new(Some(stops.clone())))
        .collect();
    let (filtered, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Ends when the engine sent everything (or stopped), or the handler is gone:
        // dropping `raw` then makes the engine drop the sequences still running.
        while let Some(ChoiceEvent { choice, event }) = raw.recv().await {
            let Some(matcher) = matchers.get_mut(choice) else {
                continue;
            };
            if matcher.stopped() {
                // Tokens generated before the engine saw the stop.
                continue;
            }
            let mut out = Vec::with_capacity(2);
            match event {
                SeqEvent::PromptLogprobs(_) => out.push(event),
                SeqEvent::Token {
                    text,
                    token_id,
                    logprobs,
                } => {
                    let (text, stopped) = matcher.push(&text);
                    out.push(SeqEvent::Token {
                        text,
                        token_id,
                        logprobs,
                    });
                    if stopped {
                        if let Some(&id) = request_ids.get(choice) {
                            engine.stop_string_found(id);
                        }
                        out.push(SeqEvent::Finished {
                            text: String::new(),
                            finish: Finish::Stop,
                        });
                    }
                }
                SeqEvent::Finished { text, finish } => {
                    let (mut text, stopped) = matcher.push(&text);
                    let finish = if stopped {
                        Finish::Stop
                    } else {
                        text.push_str(&matcher.flush());
                        finish
                    };
                    out.push(SeqEvent::Finished { text, finish });
                }
            }
            for event in out {
                if filtered.send(ChoiceEvent { choice, event }).is_err() {
                    return;
                }
            }
        }
    });
    events
}

/// One finished choice of a non-streamed answer.
#[derive(Clone, Debug, Default)]
pub struct ChoiceOutput {
    /// With `SamplingParams::prompt_logprobs`: the prompt's logprobs.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprobs>,
    pub finish_reason: &'static str,
}

/// Waits for every choice; an engine failure on any of them fails the request.
pub async fn collect(mut submission: Submission) -> Result<Vec<ChoiceOutput>, ApiError> {
    let mut outputs = vec![ChoiceOutput::default(); submission.num_choices];
    while !submission.guard.all_finished() {
        let Some(ChoiceEvent { choice, event }) = submission.events.recv().await else {
            return Err(ApiError::Internal(
                "the engine thread stopped before the request finished".into(),
            ));
        };
        let Some(out) = outputs.get_mut(choice) else {
            continue;
        };
        match event {
            SeqEvent::PromptLogprobs(logprobs) => out.prompt_logprobs = Some(logprobs),
            SeqEvent::Token {
                text,
                token_id,
                logprobs,
            } => {
                out.text.push_str(&text);
                out.token_ids.push(token_id);
                out.logprobs.extend(logprobs);
            }
            SeqEvent::Finished { text, finish } => {
                submission.guard.mark_finished(choice);
                if let Finish::Error(e) = finish {
                    return Err(ApiError::Internal(e));
                }
                out.text.push_str(&text);
                out.finish_reason = finish.as_openai_str();
            }
        }
    }
    Ok(outputs)
}

/// A generation's result as a handler needs it.
pub enum Generated {
    /// `stream: true`: the SSE response, already streaming.
    Streamed(Response),
    /// The finished choices, with the usage counts of the whole request.
    Finished {
        outputs: Vec<ChoiceOutput>,
        usage: Usage,
    },
}

/// How a generation's choices are shaped beyond their text: chat replies parsed
/// (`parsing`), completions' prompts echoed (`echo`).
#[derive(Default)]
pub struct Shaping<'a> {
    pub parsing: Option<&'a ReplyParsing>,
    pub echo: Option<Echo>,
}

/// Submits the prompts and either streams the answer (`fields.stream`) or waits for it.
/// Shared by both endpoints; they differ only in how they shape choices: chat replies are
/// parsed as `shaping.parsing` says when streamed (a finished answer's text is parsed by the
/// handler) with special markers put back in the text; `shaping.echo` (completions only)
/// starts each streamed choice with its prompt (a finished answer leaves that to the handler).
pub async fn generate(
    state: &AppState,
    api: Api,
    prompts: Vec<Vec<u32>>,
    sampling: &Sampling,
    fields: &SamplingFields,
    want_logprobs: bool,
    Shaping { parsing, echo }: Shaping<'_>,
) -> Result<Generated, ApiError> {
    let include_usage = fields
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let stop = sampling.stop.clone();
    // Compiling up to MAX_STOP_BYTES of stop strings takes a few milliseconds.
    let stops = state.cpu.run(move || StopStrings::new(&stop)).await??;
    let submission = submit(state, prompts, sampling, stops).await?;
    let submission = Submission {
        events: with_markers(parsing, submission.events),
        ..submission
    };
    if fields.stream.unwrap_or(false) {
        let num_choices = submission.num_choices;
        let mut writer = ChunkWriter::new(api, state, include_usage, want_logprobs, num_choices);
        writer.echo = echo;
        return Ok(Generated::Streamed(sse_response(
            submission, writer, parsing,
        )));
    }
    let num_prompt_tokens = submission.num_prompt_tokens();
    let outputs = collect(submission).await?;
    let completion_tokens = outputs.iter().map(|o| o.token_ids.len()).sum();
    Ok(Generated::Finished {
        outputs,
        usage: Usage::new(num_prompt_tokens, completion_tokens),
    })
}
