//! `POST /v1/chat/completions`: messages rendered through the model's chat
//! template, then generated like a completion.
//!
//! Messages are normalised before rendering: `content` given as a list of
//! parts becomes the concatenation of its text parts (lines joined by "\n";
//! any other part is refused: the models served are text-only), and a null
//! `content` becomes "". Template variables come from `chat_template_kwargs`,
//! plus `enable_thinking` when given at the top level.
//!
//! Rendering and tokenizing run on the [`CpuPool`](super::cpu_pool::CpuPool);
//! a rendered prompt longer than `AppState::max_prompt_bytes` is refused
//! before tokenizing.
//!
//! Messages keep every other field as sent, so tool calls and their results go through
//! the template: an assistant message's `tool_calls` (arguments as the JSON string
//! OpenAI clients send; Qwen's template writes a string as is and an object as JSON) and
//! a `role: "tool"` message's `tool_call_id`.
//!
//! Replies: [`tool_choice`](super::tool_choice) decides where tool calls come from (a
//! required or named choice constrains the output with a JSON schema), and
//! [`chat_output`](super::chat_output) splits each reply into `reasoning_content`,
//! `content` (null when empty beside calls or reasoning) and `tool_calls`; a reply that
//! made calls and stopped finishes with `tool_calls`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json as JsonResponse;
use serde_json::{Map, Value as Json};

use super::chat_output::{finish_reason, Reply, ReplyParsing};
use super::completions::prompt_too_many_bytes;
use super::errors::ApiError;
use super::generation::{generate, resolve_max_tokens, ChoiceOutput, Generated, Shaping};
use super::logprobs_format::chat_logprobs;
use super::openai_types::{
    response_id, unix_now, ChatChoice, ChatCompletion, ChatCompletionRequest, ChatMessageOut,
    FunctionCallOut, SamplingFields, Skip, ToolCallOut, CHAT_FIELDS, SAMPLING_FIELDS,
};
use super::request_body;
use super::routes::check_model;
use super::sampling;
use super::state::AppState;
use super::streaming::Api;
use super::tool_choice::{self, ToolFields, ToolMode};

pub async fn handle(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = request_body::parse_object(
        body,
        &[CHAT_FIELDS, SAMPLING_FIELDS],
        state.limits.max_body_bytes,
    )?;
    let request: ChatCompletionRequest = request_body::typed(&body)?;
    let fields: SamplingFields = request_body::typed(&body)?;
    let tool_fields: ToolFields = request_body::typed(&body)?;
    drop(body);
    check_model(&state, request.model.as_deref())?;
    let tools = tool_choice::resolve(&tool_fields, state.chat_parsers.tool)?;
    let request = Arc::new(request);
    let (shared, shared_request) = (state.clone(), request.clone());
    let (prompt_ids, prompt_text) = state
        .cpu
        .run(move || render_prompt(&shared, &shared_request))
        .await??;
    let parsing = ReplyParsing::new(&state.chat_parsers, tools, &prompt_text);
    drop(prompt_text);
    let prompts = vec![prompt_ids];
    let requested = request.max_completion_tokens.or(request.max_tokens);
    let max_tokens = resolve_max_tokens(&state, requested, &prompts)?;
    let want_logprobs = request.logprobs.unwrap_or(false);
    if request.top_logprobs.is_some() && !want_logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        ));
    }
    let num_top = want_logprobs.then(|| request.top_logprobs.unwrap_or(0));
    let mut sampling = sampling::build(
        &state.defaults,
        &fields,
        max_tokens,
        num_top,
        state.vocab_size,
    )?;
    if let ToolMode::Forced(forced) = &parsing.tools {
        forced.constrain(&mut sampling.params)?;
    }
    let parsing = parsing.is_active().then_some(parsing);
    let generated = generate(
        &state,
        Api::Chat,
        prompts,
        &sampling,
        &fields,
        want_logprobs,
        Shaping {
            parsing: parsing.as_ref(),
            echo: None,
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
            let logprobs = want_logprobs.then(|| chat_logprobs(&state.tokenizer, &o.logprobs));
            let (message, finish_reason) = message(parsing.as_ref(), o);
            ChatChoice {
                index,
                logprobs,
                message: Some(message),
                delta: None,
                finish_reason: Some(finish_reason),
            }
        })
        .collect();
    Ok(JsonResponse(ChatCompletion {
        id: response_id("chatcmpl"),
        object: "chat.completion",
        created: unix_now(),
        model: state.model_name.clone(),
        choices,
        usage: Skip::Value(usage),
    })
    .into_response())
}

/// A finished choice's message and `finish_reason`, its text parsed as `parsing` says.
fn message(parsing: Option<&ReplyParsing>, output: ChoiceOutput) -> (ChatMessageOut, &'static str) {
    let Some(parsing) = parsing else {
        let message = ChatMessageOut {
            role: "assistant",
            content: Some(output.text),
            reasoning_content: None,
            tool_calls: Vec::new(),
        };
        return (message, output.finish_reason);
    };
    let reply = Reply::parse(parsing, &output.text);
    let finish = finish_reason(output.finish_reason, reply.calls.len());
    let bare = reply.content.is_empty() && (reply.reasoning.is_some() || !reply.calls.is_empty());
    let message = ChatMessageOut {
        role: "assistant",
        content: (!bare).then_some(reply.content),
        reasoning_content: reply.reasoning,
        tool_calls: reply
            .calls
            .into_iter()
            .map(|call| ToolCallOut {
                id: call.id,
                kind: "function",
                function: FunctionCallOut {
                    name: call.name,
                    arguments: call.arguments,
                },
            })
            .collect(),
    };
    (message, finish)
}

/// The request's messages through the chat template: the prompt's token ids and text.
fn render_prompt(
    state: &AppState,
    request: &ChatCompletionRequest,
) -> Result<(Vec<u32>, String), ApiError> {
    let text = render_text(state, request)?;
    let ids = state
        .tokenizer
        .encode(&text)
        .map_err(|e| ApiError::invalid("messages", format!("cannot tokenize the chat: {e}")))?;
    if ids.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "the chat template rendered an empty prompt",
        ));
    }
    Ok((ids, text))
}

/// The request's messages through the chat template (also `/tokenize`'s messages form),
/// refused when longer than any prompt that fits.
pub fn render_text(state: &AppState, request: &ChatCompletionRequest) -> Result<String, ApiError> {
    let template = state.chat_template.as_ref().ok_or_else(|| ApiError::InvalidField {
        param: None,
        message: "this model has no chat template (no `chat_template` in tokenizer_config.json, no chat_template.jinja): pass --chat-template FILE (to serve or generate), or use /v1/completions".into(),
    })?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages must hold at least one message",
        ));
    }
    let messages = request
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| normalize_message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut kwargs = request.chat_template_kwargs.clone().unwrap_or_default();
    if let Some(enable) = request.enable_thinking {
        kwargs
            .entry("enable_thinking")
            .or_insert(Json::Bool(enable));
    }
    let text = template
        .render_json(
            &messages,
            request.tools.as_ref(),
            request.add_generation_prompt.unwrap_or(true),
            &kwargs,
        )
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    if text.len() > state.max_prompt_bytes {
        return Err(prompt_too_many_bytes(state, text.len()));
    }
    Ok(text)
}

/// Checks one message and flattens its content to a string.
fn normalize_message(index: usize, message: &Json) -> Result<Json, ApiError> {
    let param = format!("messages[{index}]");
    let Json::Object(fields) = message else {
        return Err(ApiError::invalid(
            param,
            format!("a message must be an object with `role` and `content`, got {message}"),
        ));
    };
    if !fields.get("role").is_some_and(Json::is_string) {
        return Err(ApiError::invalid(
            format!("{param}.role"),
            "every message needs a string `role` (system, user, assistant or tool)",
        ));
    }
    let content = match fields.get("content") {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s.clone(),
        Some(Json::Array(parts)) => content_parts(&param, parts)?,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("{param}.content"),
                format!("content must be a string or a list of text parts, got {other}"),
            ))
        }
    };
    let mut fields: Map<String, Json> = fields.clone();
    fields.insert("content".into(), Json::String(content));
    Ok(Json::Object(fields))
}

/// `[{"type": "text", "text": "..."}, ...]` → the texts joined by "\n".
fn content_parts(param: &str, parts: &[Json]) -> Result<String, ApiError> {
    let texts = parts
        .iter()
        .map(|part| {
            match (
                part.get("type").and_then(Json::as_str),
                part.get("text").and_then(Json::as_str),
            ) {
                (Some("text"), Some(text)) => Ok(text),
                _ => Err(ApiError::invalid(
                    format!("{param}.content"),
                    format!("only text content parts ({{\"type\": \"text\", \"text\": ...}}) are supported, got {part}"),
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(texts.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_parts_are_flattened_and_null_content_is_empty() {
        let m = normalize_message(
            0,
            &json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
        )
        .unwrap();
        assert_eq!(m["content"], "a\nb");
        let m =
            normalize_message(1, &json!({"role": "assistant", "content": null, "x": 1})).unwrap();
        assert_eq!(m, json!({"role": "assistant", "content": "", "x": 1}));
    }

    /// An assistant message with `tool_calls` (arguments as OpenAI's JSON string, or as an
    /// object) and the `tool` message answering it go through Qwen3's template as it
    /// expects them.
    #[test]
    fn tool_calls_and_results_render_through_qwen3s_template() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny");
        let template = nanovllm_core::ChatTemplate::from_tokenizer_dir(&dir)
            .unwrap()
            .expect("the fixture has Qwen3's template");
        for arguments in [json!(r#"{"city": "Paris"}"#), json!({"city": "Paris"})] {
            let messages = [
                json!({"role": "user", "content": "Weather in Paris?"}),
                json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                    "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}),
                json!({"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]}),
            ];
            let messages: Vec<Json> = messages
                .iter()
                .enumerate()
                .map(|(i, m)| normalize_message(i, m).unwrap())
                .collect();
            let tools = json!([{"type": "function", "function": {"name": "get_weather"}}]);
            let text = template
                .render_json(&messages, Some(&tools), true, &Map::new())
                .unwrap();
            assert!(
                text.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":"),
                "{text}"
            );
            assert!(
                text.contains("<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_messages_name_the_field() {
        let param = |e: ApiError| match e {
            ApiError::InvalidField { param, .. } => param.unwrap_or_default(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            param(normalize_message(2, &json!({"content": "x"})).unwrap_err()),
            "messages[2].role"
        );
        assert_eq!(
            param(
                normalize_message(
                    0,
                    &json!({"role": "user", "content": [{"type": "image_url", "image_url": {}}]})
                )
                .unwrap_err()
            ),
            "messages[0].content"
        );
        assert_eq!(
            param(normalize_message(3, &json!("hi")).unwrap_err()),
            "messages[3]"
        );
    }
}
