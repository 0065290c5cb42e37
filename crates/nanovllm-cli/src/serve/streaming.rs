//! Server-sent events for `stream: true`, for both endpoints.
//!
//! The stream is `data: {chunk}` events: for chat, first a `role` delta per
//! choice; for completions with `echo`, first per choice a chunk with its
//! prompt (and the prompt's logprobs, see [`Echo`]), sent with its first token;
//! then a chunk per token whose text is non-empty (or that carries logprobs);
//! then per choice a chunk with its `finish_reason` (and any text
//! held back until the end); with `stream_options.include_usage`, a last
//! chunk with empty `choices` and the usage (every other chunk then has
//! `"usage": null`); and finally `data: [DONE]`. An engine failure becomes a
//! `data: {"error": {...}}` event for that choice.
//!
//! Chat replies with a reasoning or tool-call parser ([`ReplyParsing`]) go through a
//! [`ReplyParser`] per choice: reasoning streams as `delta.reasoning_content`, text as
//! `delta.content`, and each tool call, once complete, as two `delta.tool_calls` chunks
//! (index, id, type and name with `arguments: ""`; then the arguments), so that a client
//! that concatenates `arguments` gets the call's JSON. A token's logprobs ride on the
//! first chunk its text produced (or an empty-content chunk when the parser held it back).
//! The finish chunk says `tool_calls` when the choice made calls and stopped.
//!
//! The stream owns the [`Submission`]: when the client disconnects, axum
//! drops the stream, and the submission's guard aborts what is unfinished.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use nanovllm_core::{TokenLogprobs, Tokenizer};
use serde::Serialize;

use super::chat_output::{finish_reason, Part, ReplyParser, ReplyParsing};
use super::echo::Echo;
use super::errors::ApiError;
use super::generation::Submission;
use super::logprobs_format::{chat_logprobs, completion_logprobs};
use super::openai_types::{
    response_id, unix_now, ChatChoice, ChatCompletion, ChatDelta, Completion, CompletionChoice,
    CompletionLogprobs, FunctionDelta, Skip, ToolCallDelta, Usage,
};
use super::state::AppState;
use super::tracked::{ChoiceEvent, Finish, SeqEvent};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Completions,
    Chat,
}

/// Builds the chunks of one response.
#[derive(Debug)]
pub struct ChunkWriter {
    pub api: Api,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    pub logprobs: bool,
    pub tokenizer: Arc<Tokenizer>,
    /// Completions: text length so far per choice (the logprobs' `text_offset`).
    text_offsets: Vec<usize>,
    /// Completions' `echo`: the prompts the choices start with.
    pub echo: Option<Echo>,
    /// With `echo`: the prompt logprobs received per choice, until its echo is sent.
    prompt_logprobs: Vec<Vec<Option<TokenLogprobs>>>,
    /// With `echo`: whether each choice's echo chunk went out.
    echoed: Vec<bool>,
}

impl ChunkWriter {
    pub fn new(
        api: Api,
        state: &AppState,
        include_usage: bool,
        logprobs: bool,
        num_choices: usize,
    ) -> Self {
        let prefix = match api {
            Api::Completions => "cmpl",
            Api::Chat => "chatcmpl",
        };
        Self {
            api,
            id: response_id(prefix),
            created: unix_now(),
            model: state.model_name.clone(),
            include_usage,
            logprobs,
            tokenizer: state.tokenizer.clone(),
            text_offsets: vec![0; num_choices],
            echo: None,
            prompt_logprobs: vec![Vec::new(); num_choices],
            echoed: vec![false; num_choices],
        }
    }

    /// Keeps a choice's prompt logprobs for its echo chunk.
    fn on_prompt_logprobs(&mut self, choice: usize, logprobs: Vec<Option<TokenLogprobs>>) {
        if let Some(slot) = self.prompt_logprobs.get_mut(choice) {
            *slot = logprobs;
        }
    }

    /// The echo chunk of `choice`, the first time it is asked for (with `echo` only).
    fn echo_chunk(&mut self, choice: usize) -> Option<Event> {
        let echo = self.echo.as_ref()?;
        let echoed = self.echoed.get_mut(choice)?;
        if std::mem::replace(echoed, true) {
            return None;
        }
        let prompt_logprobs = self
            .prompt_logprobs
            .get_mut(choice)
            .map(std::mem::take)
            .unwrap_or_default();
        let text = echo.text(choice).to_string();
        let logprobs = echo.logprobs(&self.tokenizer, choice, &prompt_logprobs);
        let offset = logprobs.as_ref().map_or(text.len(), |(_, offset)| *offset);
        if let Some(o) = self.text_offsets.get_mut(choice) {
            *o = offset;
        }
        Some(self.completion_chunk(choice, text, logprobs.map(|(lp, _)| lp), None))
    }

    /// One completions chunk of `choice`.
    fn completion_chunk(
        &self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish_reason: Option<&'static str>,
    ) -> Event {
        json_event(&Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason,
            }],
            usage: self.usage_field(),
        })
    }

    fn usage_field(&self) -> Skip<Usage> {
        if self.include_usage {
            Skip::Null
        } else {
            Skip::Omit
        }
    }

    /// Chat's opening chunk of a choice: `{"role": "assistant", "content": ""}`.
    fn role_chunk(&self, choice: usize) -> Event {
        self.chat_chunk(
            ChatChoice {
                index: choice,
                message: None,
                delta: Some(ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..ChatDelta::default()
                }),
                logprobs: None,
                finish_reason: None,
            },
            self.usage_field(),
        )
    }

    /// A chunk with new text (and its tokens' logprobs), optionally finishing the choice.
    fn text_chunk(
        &mut self,
        choice: usize,
        text: String,
        logprobs: &[TokenLogprobs],
        finish_reason: Option<&'static str>,
    ) -> Event {
        match self.api {
            Api::Completions => {
                let offset = self.text_offsets.get(choice).copied().unwrap_or(0);
                let logprobs = self.logprobs.then(|| {
                    let (lp, _) = completion_logprobs(&self.tokenizer, logprobs, offset);
                    lp
                });
                if let Some(o) = self.text_offsets.get_mut(choice) {
                    *o += text.len();
                }
                self.completion_chunk(choice, text, logprobs, finish_reason)
            }
            Api::Chat => {
                let logprobs = (self.logprobs && !logprobs.is_empty())
                    .then(|| chat_logprobs(&self.tokenizer, logprobs));
                let content = (!text.is_empty() || finish_reason.is_none()).then_some(text);
                self.chat_chunk(
                    ChatChoice {
                        index: choice,
                        message: None,
                        delta: Some(ChatDelta {
                            content,
                            ..ChatDelta::default()
                        }),
                        logprobs,
                        finish_reason,
                    },
                    self.usage_field(),
                )
            }
        }
    }

    /// Chat chunks of one parsed part of a reply; `logprobs` go on the first.
    fn part_chunks(&self, choice: usize, part: Part, logprobs: &[TokenLogprobs]) -> Vec<Event> {
        let deltas = match part {
            Part::Reasoning(text) => vec![ChatDelta {
                reasoning_content: Some(text),
                ..ChatDelta::default()
            }],
            Part::Content(text) => vec![ChatDelta {
                content: Some(text),
                ..ChatDelta::default()
            }],
            Part::Call { index, call } => vec![
                ChatDelta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index,
                        id: Some(call.id),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(call.name),
                            arguments: String::new(),
                        },
                    }]),
                    ..ChatDelta::default()
                },
                ChatDelta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index,
                        id: None,
                        kind: None,
                        function: FunctionDelta {
                            name: None,
                            arguments: call.arguments,
                        },
                    }]),
                    ..ChatDelta::default()
                },
            ],
        };
        deltas
            .into_iter()
            .enumerate()
            .map(|(i, delta)| {
                let logprobs = (i == 0 && self.logprobs && !logprobs.is_empty())
                    .then(|| chat_logprobs(&self.tokenizer, logprobs));
                self.chat_chunk(
                    ChatChoice {
                        index: choice,
                        message: None,
                        delta: Some(delta),
                        logprobs,
                        finish_reason: None,
                    },
                    self.usage_field(),
                )
            })
            .collect()
    }

    fn usage_chunk(&self, usage: Usage) -> Event {
        match self.api {
            Api::Completions => json_event(&Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Skip::Value(usage),
            }),
            Api::Chat => json_event(&ChatCompletion {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Skip::Value(usage),
            }),
        }
    }

    fn chat_chunk(&self, choice: ChatChoice, usage: Skip<Usage>) -> Event {
        json_event(&ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![choice],
            usage,
        })
    }
}

fn json_event(value: &impl Serialize) -> Event {
    Event::default().data(serde_json::to_string(value).unwrap_or_else(|e| {
        ApiError::Internal(format!("cannot serialize a chunk: {e}"))
            .body()
            .to_string()
    }))
}

struct StreamState {
    submission: Submission,
    writer: ChunkWriter,
    /// One per choice when the reply is parsed; empty otherwise.
    parsers: Vec<ReplyParser>,
    pending: VecDeque<Event>,
    completion_tokens: usize,
    done: bool,
}

impl StreamState {
    fn on_event(&mut self, ChoiceEvent { choice, event }: ChoiceEvent) {
        if let SeqEvent::PromptLogprobs(logprobs) = event {
            self.writer.on_prompt_logprobs(choice, logprobs);
            return;
        }
        if let Some(chunk) = self.writer.echo_chunk(choice) {
            self.pending.push_back(chunk);
        }
        match event {
            SeqEvent::PromptLogprobs(_) => {}
            SeqEvent::Token {
                text,
                logprobs,
                token_id: _,
            } => {
                self.completion_tokens += 1;
                let logprobs: Vec<TokenLogprobs> = logprobs.into_iter().collect();
                if let Some(parser) = self.parsers.get_mut(choice) {
                    let parts = parser.push(&text);
                    self.push_parts(choice, parts, &logprobs);
                } else if !text.is_empty() || (self.writer.logprobs && !logprobs.is_empty()) {
                    let chunk = self.writer.text_chunk(choice, text, &logprobs, None);
                    self.pending.push_back(chunk);
                }
            }
            SeqEvent::Finished { text, finish } => {
                self.submission.guard.mark_finished(choice);
                let chunk = match finish {
                    Finish::Error(e) => json_event(&ApiError::Internal(e).body()),
                    finish if choice < self.parsers.len() => {
                        let parser = &mut self.parsers[choice];
                        let mut parts = parser.push(&text);
                        parts.extend(parser.finish());
                        let reason = finish_reason(finish.as_openai_str(), parser.num_calls());
                        self.push_parts(choice, parts, &[]);
                        self.writer
                            .text_chunk(choice, String::new(), &[], Some(reason))
                    }
                    finish => {
                        self.writer
                            .text_chunk(choice, text, &[], Some(finish.as_openai_str()))
                    }
                };
                self.pending.push_back(chunk);
                if self.submission.guard.all_finished() {
                    self.end();
                }
            }
        }
    }

    /// Chunks of a choice's parsed parts; an empty-content chunk when there are none but
    /// there are logprobs to send.
    fn push_parts(&mut self, choice: usize, parts: Vec<Part>, logprobs: &[TokenLogprobs]) {
        if parts.is_empty() {
            if self.writer.logprobs && !logprobs.is_empty() {
                let chunk = self
                    .writer
                    .text_chunk(choice, String::new(), logprobs, None);
                self.pending.push_back(chunk);
            }
            return;
        }
        let mut logprobs = logprobs;
        for part in parts {
            self.pending
                .extend(self.writer.part_chunks(choice, part, logprobs));
            logprobs = &[];
        }
    }

    /// Usage (when asked) and `[DONE]`.
    fn end(&mut self) {
        if self.writer.include_usage {
            let usage = Usage::new(self.submission.num_prompt_tokens(), self.completion_tokens);
            self.pending.push_back(self.writer.usage_chunk(usage));
        }
        self.pending.push_back(Event::default().data("[DONE]"));
        self.done = true;
    }
}

/// The SSE response for a submission; chat replies are parsed as `parsing` says.
pub fn sse_response(
    submission: Submission,
    writer: ChunkWriter,
    parsing: Option<&ReplyParsing>,
) -> Response {
    let parsers = match parsing {
        Some(parsing) if writer.api == Api::Chat && parsing.is_active() => (0..submission
            .num_choices)
            .map(|_| parsing.parser())
            .collect(),
        _ => Vec::new(),
    };
    let mut pending = VecDeque::new();
    if writer.api == Api::Chat {
        for choice in 0..submission.num_choices {
            pending.push_back(writer.role_chunk(choice));
        }
    }
    let state = StreamState {
        submission,
        writer,
        parsers,
        pending,
        completion_tokens: 0,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event), state));
            }
            if state.done {
                return None;
            }
            match state.submission.events.recv().await {
                Some(event) => state.on_event(event),
                None => {
                    let error = ApiError::Internal(
                        "the engine thread stopped before the request finished".into(),
                    );
                    state.pending.push_back(json_event(&error.body()));
                    state.pending.push_back(Event::default().data("[DONE]"));
                    state.done = true;
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
