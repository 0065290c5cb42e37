//! vLLM's `POST /tokenize` and `POST /detokenize`, and `GET /version`.
//!
//! `/tokenize` takes a `prompt` (text) or chat `messages` (rendered through
//! the chat template exactly as `/v1/chat/completions` renders them, with the
//! same `add_generation_prompt`, `chat_template_kwargs`, `enable_thinking` and
//! `tools`), and answers `{"count", "max_model_len", "tokens", "token_strs"}`;
//! `token_strs` (the vocabulary entries, HF's `convert_ids_to_tokens`) is null
//! unless `return_token_strs` is true. `add_special_tokens` defaults to true in
//! both forms: that is how both generation endpoints encode their prompts, so
//! `count` is the `prompt_tokens` that a request with the same prompt reports.
//! `/detokenize` takes `tokens` and answers `{"prompt"}`, special tokens
//! included (HF's `decode`). Bodies are read as the other endpoints read them
//! (unknown fields refused, the body limit, the API key).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json as JsonResponse;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::chat_completions::render_text;
use super::errors::ApiError;
use super::openai_types::ChatCompletionRequest;
use super::request_body;
use super::routes::check_model;
use super::state::AppState;

/// Fields a `/tokenize` body may hold (the chat ones only with `messages`).
pub const TOKENIZE_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "add_special_tokens",
    "return_token_strs",
    "add_generation_prompt",
    "chat_template_kwargs",
    "enable_thinking",
    "tools",
];

/// The fields of [`TOKENIZE_FIELDS`] that only the messages form reads.
const CHAT_ONLY_FIELDS: &[&str] = &[
    "add_generation_prompt",
    "chat_template_kwargs",
    "enable_thinking",
    "tools",
];

#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Json>,
    add_special_tokens: Option<bool>,
    return_token_strs: Option<bool>,
}

/// What `/tokenize` encodes.
enum Source {
    Text(String),
    /// Boxed: a chat request is far larger than a text.
    Chat(Box<ChatCompletionRequest>),
}

#[derive(Debug, Serialize)]
struct TokenizeResponse {
    count: usize,
    max_model_len: usize,
    tokens: Vec<u32>,
    token_strs: Option<Vec<String>>,
}

pub const DETOKENIZE_FIELDS: &[&str] = &["model", "tokens"];

#[derive(Debug, Deserialize)]
struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = request_body::parse_object(body, &[TOKENIZE_FIELDS], state.limits.max_body_bytes)?;
    let request: TokenizeRequest = request_body::typed(&body)?;
    check_model(&state, request.model.as_deref())?;
    let source = match (request.prompt, &request.messages) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "give either `prompt` or `messages`, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::InvalidField {
                param: None,
                message: "missing `prompt` (a text) or `messages` (a chat)".into(),
            })
        }
        (Some(prompt), None) => {
            if let Some(field) = CHAT_ONLY_FIELDS.iter().find(|f| body.get(**f).is_some()) {
                return Err(ApiError::invalid(
                    *field,
                    format!("`{field}` applies to chat `messages`, not to a `prompt`"),
                ));
            }
            Source::Text(prompt)
        }
        (None, Some(_)) => Source::Chat(Box::new(request_body::typed(&body)?)),
    };
    drop(body);
    let add_special_tokens = request.add_special_tokens.unwrap_or(true);
    let want_strs = request.return_token_strs.unwrap_or(false);
    let shared = state.clone();
    let (tokens, token_strs) = state
        .cpu
        .run(move || -> Result<_, ApiError> {
            let (text, param) = match source {
                Source::Chat(chat) => (render_text(&shared, &chat)?, "messages"),
                Source::Text(prompt) => (prompt, "prompt"),
            };
            let tokens = shared
                .tokenizer
                .encode_with(&text, add_special_tokens)
                .map_err(|e| ApiError::invalid(param, format!("cannot tokenize: {e}")))?;
            let strs = want_strs.then(|| {
                tokens
                    .iter()
                    .map(|&id| shared.tokenizer.id_to_token(id).unwrap_or_default())
                    .collect()
            });
            Ok((tokens, strs))
        })
        .await??;
    Ok(JsonResponse(TokenizeResponse {
        count: tokens.len(),
        max_model_len: state.max_model_len,
        tokens,
        token_strs,
    })
    .into_response())
}

pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = request_body::parse_object(body, &[DETOKENIZE_FIELDS], state.limits.max_body_bytes)?;
    let request: DetokenizeRequest = request_body::typed(&body)?;
    drop(body);
    check_model(&state, request.model.as_deref())?;
    let vocab_size = state.vocab_size;
    if let Some(&id) = request.tokens.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(ApiError::invalid(
            "tokens",
            format!(
                "token id {id} is out of range: the model's vocabulary has {vocab_size} tokens"
            ),
        ));
    }
    let shared = state.clone();
    let prompt = state
        .cpu
        .run(move || {
            shared
                .tokenizer
                .decode_with(&request.tokens, false)
                .map_err(|e| ApiError::invalid("tokens", format!("cannot decode: {e}")))
        })
        .await??;
    Ok(JsonResponse(json!({ "prompt": prompt })).into_response())
}

/// `{"version": "<nanovllm's version>"}`.
pub async fn version() -> Response {
    JsonResponse(json!({ "version": env!("CARGO_PKG_VERSION") })).into_response()
}
