//! The OpenAI request and response bodies this server speaks.
//!
//! Requests are parsed strictly: an unknown field is a 400 naming it, so that
//! a typo never silently runs with defaults. Fields that need more than a
//! type check (`prompt`, `stop`, `messages`) arrive as JSON values and are
//! checked by the handlers with messages that name the field. Responses are
//! plain `Serialize` structs whose field names are OpenAI's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// Seconds since the Unix epoch (OpenAI's `created`).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A unique response id like `cmpl-1a2b3c4d5e6f7a8b-2a`: `prefix`, then [`unique_suffix`].
pub fn response_id(prefix: &str) -> String {
    format!("{prefix}-{}", unique_suffix())
}

/// A suffix unique to this call, like `1a2b3c4d5e6f7a8b-2a`: the process start time
/// (nanoseconds, hex) and a counter, so ids differ across restarts too.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{n:x}", start & 0xffff_ffff_ffff_ffff)
}

/// Sampling fields shared by both endpoints (vLLM's extensions included),
/// read from the same body as the endpoint's own request struct.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// vLLM's extension; 0 or -1 disables it.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    /// A string or a list of strings.
    pub stop: Option<Json>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub n: Option<usize>,
    pub ignore_eos: Option<bool>,
    /// OpenAI's penalties on the generated tokens, in [-2, 2].
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// vLLM's penalty on prompt and generated tokens, > 0 (1 is off).
    pub repetition_penalty: Option<f32>,
    /// `{"token id": bias}`, biases in [-100, 100] (checked by `sampling::parse_logit_bias`).
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Accepted when equal to `n` (1 when `n` is absent): one sequence per choice.
    pub best_of: Option<usize>,
    /// OpenAI's structured output: `{"type": "text" | "json_object" | "json_schema", …}`.
    pub response_format: Option<Json>,
    /// vLLM's structured output object (`json`, `regex`, `choice`, `grammar`, `json_object`).
    pub structured_outputs: Option<Json>,
    /// vLLM's older spellings of `structured_outputs`' constraints.
    pub guided_json: Option<Json>,
    pub guided_regex: Option<Json>,
    pub guided_choice: Option<Json>,
    pub guided_grammar: Option<Json>,
    /// Accepted and ignored: the server has one structured-output backend (llguidance).
    #[allow(dead_code)]
    pub guided_decoding_backend: Option<String>,
    /// Refused unless null: llguidance bounds the whitespace a JSON grammar allows itself.
    pub guided_whitespace_pattern: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Accepted and ignored, as vLLM does: OpenAI's end-user id, its storage flag, its
    /// metadata and its service tier mean nothing to a local server.
    #[allow(dead_code)]
    pub user: Option<String>,
    #[allow(dead_code)]
    pub store: Option<bool>,
    #[allow(dead_code)]
    pub metadata: Option<Json>,
    #[allow(dead_code)]
    pub service_tier: Option<String>,
}

/// Fields of [`SamplingFields`] (and the OpenAI fields both endpoints accept and ignore),
/// read from the same body as each endpoint's own fields.
pub const SAMPLING_FIELDS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "stop_token_ids",
    "n",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "best_of",
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_decoding_backend",
    "guided_whitespace_pattern",
    "stream",
    "stream_options",
    "user",
    "store",
    "metadata",
    "service_tier",
];

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
    /// Accepted and ignored: chunks are never padded.
    #[serde(default)]
    #[allow(dead_code)]
    pub include_obfuscation: bool,
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    /// A string, a list of strings, a list of token ids or a list of lists of token ids.
    pub prompt: Json,
    pub max_tokens: Option<usize>,
    /// Number of top alternatives per token (0..=20); absent = no logprobs.
    pub logprobs: Option<usize>,
    /// Prepend the prompt to each choice's text (and, with `logprobs`, the prompt
    /// tokens' logprobs to its logprobs).
    pub echo: Option<bool>,
}

/// Fields of `CompletionRequest` (a completions body also holds [`SAMPLING_FIELDS`]).
pub const COMPLETION_FIELDS: &[&str] = &["model", "prompt", "max_tokens", "logprobs", "echo"];

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Vec<Json>,
    pub max_tokens: Option<usize>,
    /// Wins over `max_tokens` when both are given.
    pub max_completion_tokens: Option<usize>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    /// Passed to the chat template as is (its `tools` variable).
    pub tools: Option<Json>,
    // `tool_choice` and `parallel_tool_calls` are read as `tool_choice::ToolFields`.
    /// Extra chat-template variables (e.g. `{"enable_thinking": false}`).
    pub chat_template_kwargs: Option<Map<String, Json>>,
    /// Shorthand for `chat_template_kwargs.enable_thinking`.
    pub enable_thinking: Option<bool>,
    /// End the prompt with the assistant header [default: true].
    pub add_generation_prompt: Option<bool>,
    /// OpenAI's switch for several tool calls in one reply.
    #[allow(dead_code)] // read through `tool_choice::ToolFields`; here for the type check
    pub parallel_tool_calls: Option<bool>,
}

/// Fields of `ChatCompletionRequest` and the OpenAI fields a chat body may hold and this server
/// ignores (a chat body also holds [`SAMPLING_FIELDS`]).
pub const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "chat_template_kwargs",
    "enable_thinking",
    "add_generation_prompt",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

// ---- /v1/completions ----

#[derive(Clone, Debug, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    /// Always set in a full response; in a stream only on the usage chunk
    /// (`null` on the others when `include_usage` is on, absent otherwise).
    #[serde(skip_serializing_if = "Skip::skip")]
    pub usage: Skip<Usage>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// The legacy completions logprobs object.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// Null only for the first prompt token of an echo (nothing precedes it).
    pub token_logprobs: Vec<Option<f64>>,
    /// `{token: logprob}`; logprobs here and in `token_logprobs` are the same f32
    /// values widened to f64, so clients can compare them exactly. Null where
    /// `token_logprobs` is.
    pub top_logprobs: Vec<Option<Map<String, Json>>>,
    pub text_offset: Vec<usize>,
}

// ---- /v1/chat/completions ----

#[derive(Clone, Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    #[serde(skip_serializing_if = "Skip::skip")]
    pub usage: Skip<Usage>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    /// `message` in a full response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<ChatMessageOut>,
    /// `delta` in a stream chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<ChatDelta>,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatMessageOut {
    pub role: &'static str,
    /// `null` when the reply is only tool calls and/or reasoning.
    pub content: Option<String>,
    /// The thinking split off by the reasoning parser (vLLM's field); absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

/// A call in `message.tool_calls`.
#[derive(Clone, Debug, Serialize)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Clone, Debug, Serialize)]
pub struct FunctionCallOut {
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A piece of a call in a stream: the call's first delta has `id`, `type` and
/// `function.name` (with `arguments` ""), the next ones argument text only; a client
/// concatenates `arguments` per `index`.
#[derive(Clone, Debug, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Clone, Debug, Serialize)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// A field that is either omitted, `null`, or a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip<T> {
    Omit,
    Null,
    Value(T),
}

impl<T> Skip<T> {
    pub fn skip(&self) -> bool {
        matches!(self, Skip::Omit)
    }
}

impl<T: Serialize> Serialize for Skip<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Skip::Value(v) => v.serialize(s),
            Skip::Omit | Skip::Null => s.serialize_none(),
        }
    }
}

/// `GET /v1/models` entry.
#[derive(Clone, Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub max_model_len: usize,
}
