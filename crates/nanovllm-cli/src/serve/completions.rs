//! `POST /v1/completions`: text (or token-id) prompts in, completions out.
//!
//! `prompt` may be a string, a list of strings, a list of token ids, or a
//! list of lists of token ids; each prompt gets `n` choices, numbered
//! `prompt_index * n + j`. Usage counts each prompt's tokens once.
//!
//! Text prompts longer than `AppState::max_prompt_bytes` are refused before
//! tokenizing; the others are tokenized on the [`CpuPool`](super::cpu_pool::CpuPool).
//!
//! `echo: true` starts each choice with its prompt (see [`Echo`]); with
//! `logprobs` it asks the engine for the prompt's logprobs too.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json as JsonResponse;
use nanovllm_core::RequestError;
use serde_json::Value as Json;

use super::echo::{self, Echo};
use super::errors::ApiError;
use super::generation::{generate, resolve_max_tokens, Generated, Shaping};
use super::logprobs_format::completion_logprobs;
use super::openai_types::{
    response_id, unix_now, Completion, CompletionChoice, CompletionRequest, SamplingFields, Skip,
    COMPLETION_FIELDS, SAMPLING_FIELDS,
};
use super::request_body;
use super::routes::check_model;
use super::sampling;
use super::state::AppState;
use super::streaming::Api;

pub async fn handle(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = request_body::parse_object(
        body,
        &[COMPLETION_FIELDS, SAMPLING_FIELDS],
        state.limits.max_body_bytes,
    )?;
    let mut request: CompletionRequest = request_body::typed(&body)?;
    let fields: SamplingFields = request_body::typed(&body)?;
    drop(body);
    check_model(&state, request.model.as_deref())?;
    check_prompt_bytes(&state, &request.prompt)?;
    let prompt = std::mem::take(&mut request.prompt);
    let echo = request.echo.unwrap_or(false);
    let shared = state.clone();
    let (prompts, texts) = state
        .cpu
        .run(move || -> Result<_, ApiError> {
            let prompts = tokenize_prompts(&shared, &prompt)?;
            let texts = if echo {
                prompt_texts(&shared, &prompt, &prompts)?
            } else {
                Vec::new()
            };
            Ok((prompts, texts))
        })
        .await??;
    let max_tokens = resolve_max_tokens(&state, request.max_tokens, &prompts)?;
    let mut sampling = sampling::build(
        &state.defaults,
        &fields,
        max_tokens,
        request.logprobs,
        state.vocab_size,
    )?;
    let want_logprobs = request.logprobs.is_some();
    let echo = echo.then(|| {
        if want_logprobs {
            sampling.params.prompt_logprobs = request.logprobs;
        }
        Echo::new(
            texts.into_iter().zip(prompts.iter().cloned()).collect(),
            sampling.n,
            request.logprobs,
        )
    });
    let generated = generate(
        &state,
        Api::Completions,
        prompts,
        &sampling,
        &fields,
        want_logprobs,
        Shaping {
            parsing: None,
            echo: echo.clone(),
        },
    );
    let (outputs, usage) = match generated.await? {
        Generated::Streamed(response) => return Ok(response),
        Generated::Finished { outputs, usage } => (outputs, usage),
    };
    let choices = outputs
        .into_iter()
        .enumerate()
        .map(|(index, o)| {
            let (text, logprobs) = match &echo {
                None => (
                    o.text,
                    want_logprobs.then(|| completion_logprobs(&state.tokenizer, &o.logprobs, 0).0),
                ),
                Some(echo) => {
                    let prompt_logprobs = o.prompt_logprobs.unwrap_or_default();
                    let logprobs = echo
                        .logprobs(&state.tokenizer, index, &prompt_logprobs)
                        .map(|(head, offset)| {
                            let (tail, _) =
                                completion_logprobs(&state.tokenizer, &o.logprobs, offset);
                            echo::concat(head, tail)
                        });
                    (format!("{}{}", echo.text(index), o.text), logprobs)
                }
            };
            CompletionChoice {
                index,
                logprobs,
                text,
                finish_reason: Some(o.finish_reason),
            }
        })
        .collect();
    Ok(JsonResponse(Completion {
        id: response_id("cmpl"),
        object: "text_completion",
        created: unix_now(),
        model: state.model_name.clone(),
        choices,
        usage: Skip::Value(usage),
    })
    .into_response())
}

/// Refuses a text prompt too long to fit the context whatever its tokens, before
/// spending time on tokenizing it.
fn check_prompt_bytes(state: &AppState, prompt: &Json) -> Result<(), ApiError> {
    let texts: Vec<&str> = match prompt {
        Json::String(text) => vec![text],
        Json::Array(items) => items.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    };
    match texts.iter().map(|t| t.len()).max() {
        Some(bytes) if bytes > state.max_prompt_bytes => Err(prompt_too_many_bytes(state, bytes)),
        _ => Ok(()),
    }
}

/// The error for a prompt text of `bytes` bytes, beyond `state.max_prompt_bytes`: the
/// engine's own refusal ([`RequestError::PromptTextTooLong`]), so both say it alike.
pub fn prompt_too_many_bytes(state: &AppState, bytes: usize) -> ApiError {
    let refusal = RequestError::PromptTextTooLong {
        bytes,
        max_bytes: state.max_prompt_bytes,
        max_model_len: state.max_model_len,
    };
    ApiError::PromptTooLong {
        message: refusal.to_string(),
    }
}

/// The text each prompt echoes: a text prompt as given, a token-id prompt decoded
/// with its special tokens.
fn prompt_texts(
    state: &AppState,
    prompt: &Json,
    prompts: &[Vec<u32>],
) -> Result<Vec<String>, ApiError> {
    let given: Vec<&str> = match prompt {
        Json::String(text) => vec![text],
        Json::Array(items) => items.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    };
    if given.len() == prompts.len() {
        return Ok(given.into_iter().map(str::to_string).collect());
    }
    prompts
        .iter()
        .map(|ids| {
            state
                .tokenizer
                .decode_with(ids, false)
                .map_err(|e| ApiError::invalid("prompt", format!("cannot decode the prompt: {e}")))
        })
        .collect()
}

/// The prompts of `prompt`, as token ids.
fn tokenize_prompts(state: &AppState, prompt: &Json) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = |message: String| ApiError::invalid("prompt", message);
    let encode = |text: &str| {
        state
            .tokenizer
            .encode(text)
            .map_err(|e| bad(format!("cannot tokenize the prompt: {e}")))
    };
    let token_ids = |items: &[Json]| -> Result<Vec<u32>, ApiError> {
        items
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| bad(format!("token ids must be integers in [0, 2^32), got {x}")))
            })
            .collect()
    };
    let prompts = match prompt {
        Json::String(text) => vec![encode(text)?],
        Json::Array(items) if items.is_empty() => {
            return Err(bad("prompt must not be an empty list".into()))
        }
        Json::Array(items) => match &items[0] {
            Json::String(_) => items
                .iter()
                .map(|item| match item {
                    Json::String(text) => encode(text),
                    other => Err(bad(format!(
                        "a list of prompts must hold only strings, got {other}"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            Json::Number(_) => vec![token_ids(items)?],
            Json::Array(_) => items
                .iter()
                .map(|item| match item {
                    Json::Array(ids) => token_ids(ids),
                    other => Err(bad(format!(
                        "a list of token-id prompts must hold only lists, got {other}"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(bad(format!(
                    "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids; the list holds {other}"
                )))
            }
        },
        other => {
            return Err(bad(format!(
                "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids, got {other}"
            )))
        }
    };
    let vocab_size = state.vocab_size;
    for ids in &prompts {
        if ids.is_empty() {
            return Err(bad(
                "the prompt is empty: a request needs at least one token".into(),
            ));
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(bad(format!(
                "token id {id} is out of range: the model's vocabulary has {vocab_size} tokens"
            )));
        }
    }
    Ok(prompts)
}
