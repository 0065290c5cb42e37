//! [`AppState`]: what every handler shares — the engine handle, the
//! tokenizer and chat template (handlers tokenize, on the [`CpuPool`], so the
//! engine thread only runs steps and the async workers stay free), the served
//! model's name and limits, and the metrics.

use std::sync::Arc;

use nanovllm_core::{ChatTemplate, SamplingParams, Tokenizer};

use super::chat_output::ChatParsers;
use super::cpu_pool::CpuPool;
use super::engine_thread::EngineHandle;
use super::metrics::Metrics;

/// Limits and access control of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for (400 beyond); `None`: the context length.
    pub max_tokens_cap: Option<usize>,
    /// Required `Authorization: Bearer` key for `/v1/*`; `None`: open.
    pub api_key: Option<String>,
}

#[derive(Debug)]
pub struct AppState {
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<Arc<ChatTemplate>>,
    /// The reasoning and tool-call parsers of chat replies.
    pub chat_parsers: ChatParsers,
    /// The name clients must use in `model` (the model directory's name by default).
    pub model_name: String,
    /// The engine's effective context length.
    pub max_model_len: usize,
    /// Longest prompt text, in bytes, that could fit `max_model_len` tokens; longer
    /// prompts are refused before tokenizing ([`nanovllm_core::Tokenizer::max_text_bytes`]).
    pub max_prompt_bytes: usize,
    /// Where tokenizing and other CPU-heavy request work runs.
    pub cpu: CpuPool,
    /// The model's vocabulary size (token ids must be below it).
    pub vocab_size: usize,
    /// Sampling of a request that sets nothing.
    pub defaults: SamplingParams,
    /// `max_tokens` of a request that sets none (`--max-tokens` or
    /// generation_config's `max_new_tokens`); `None`: the context left.
    pub default_max_tokens: Option<usize>,
    pub limits: ServerLimits,
    /// Unix time the server started (`created` of the model card).
    pub started_at: u64,
}
