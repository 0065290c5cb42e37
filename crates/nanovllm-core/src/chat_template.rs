//! [`ChatTemplate`]: renders chat messages into a prompt with the model's
//! Jinja chat template, the way Hugging Face's `apply_chat_template` does.
//!
//! The template comes from `tokenizer_config.json` (`chat_template`, a string
//! or the `default` entry of a named list) or, failing that, from a
//! `chat_template.jinja` file beside it. It runs in minijinja configured like
//! transformers' environment: `trim_blocks` and `lstrip_blocks` on, Python
//! string/dict/list methods (`.strip()`, `.startswith()`, `.split()`,
//! `.items()` …) through minijinja-contrib's pycompat callback, a
//! `raise_exception(msg)` function, and a `tojson` filter that writes what
//! Python's `json.dumps(..., ensure_ascii=False)` writes.
//!
//! The context holds `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, `tools` (when given) and every extra template variable (e.g.
//! Qwen3's `enable_thinking`); extra variables never override `messages` or
//! `add_generation_prompt`.

mod pyjson;

use std::path::Path;

use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::error::{EngineError, RequestError, Result};

/// Name of the one template held by the environment.
const TEMPLATE_NAME: &str = "chat_template";
/// File holding the template when tokenizer_config.json has none (newer checkpoints).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// One chat message with plain-text content (the common case; the renderer
/// also takes arbitrary JSON messages, see [`ChatTemplate::render_json`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template plus the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The Jinja source, kept for [`Self::source`].
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token` / `eos_token` are the strings the template
    /// sees under those names (empty when the tokenizer has none).
    pub fn new(
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> std::result::Result<Self, String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| format!("{e:#}"))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The template of the tokenizer in `dir`: tokenizer_config.json's
    /// `chat_template`, else `dir/chat_template.jinja`; `None` when neither exists.
    pub fn from_tokenizer_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            Json::Null
        };
        let jinja_path = dir.join(CHAT_TEMPLATE_FILE);
        let (source, source_path) = match template_of(&config) {
            Some(source) => (source, config_path.clone()),
            None if jinja_path.is_file() => (read_text(&jinja_path)?, jinja_path),
            None => return Ok(None),
        };
        let (bos, eos) = (
            token_string(&config, "bos_token"),
            token_string(&config, "eos_token"),
        );
        Self::new(&source, bos, eos)
            .map(Some)
            .map_err(|msg| EngineError::ConfigFile {
                path: source_path,
                msg: format!("the chat template does not compile: {msg}"),
            })
    }

    /// Like [`Self::from_tokenizer_dir`] but with the template read from `file`
    /// (a `--chat-template` override); special tokens still come from `dir`.
    pub fn from_file(file: &Path, tokenizer_dir: &Path) -> Result<Self> {
        let source = read_text(file)?;
        let config_path = tokenizer_dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            Json::Null
        };
        Self::new(
            &source,
            token_string(&config, "bos_token"),
            token_string(&config, "eos_token"),
        )
        .map_err(|msg| EngineError::ConfigFile {
            path: file.to_path_buf(),
            msg: format!("the chat template does not compile: {msg}"),
        })
    }

    /// Renders plain-text messages.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> std::result::Result<String, RequestError> {
        let messages = messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect::<Vec<_>>();
        self.render_json(&messages, None, add_generation_prompt, extra)
    }

    /// The template's Jinja source (what a server inspects to pick a reasoning parser).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders JSON messages (any fields: `tool_calls`, `reasoning_content` …)
    /// with optional `tools`. `extra` holds further template variables.
    pub fn render_json(
        &self,
        messages: &[Json],
        tools: Option<&Json>,
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> std::result::Result<String, RequestError> {
        let mut ctx = extra.clone();
        ctx.insert("messages".into(), Json::Array(messages.to_vec()));
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(add_generation_prompt),
        );
        ctx.entry("bos_token")
            .or_insert_with(|| Json::String(self.bos_token.clone()));
        ctx.entry("eos_token")
            .or_insert_with(|| Json::String(self.eos_token.clone()));
        if let Some(tools) = tools {
            ctx.insert("tools".into(), tools.clone());
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| RequestError::ChatTemplate(format!("{e:#}")))?;
        template
            .render(Value::from(Serde(Json::Object(ctx))))
            .map_err(|e| RequestError::ChatTemplate(render_error_message(&e)))
    }
}

/// `raise_exception(msg)`: the template rejects its input.
fn raise_exception(msg: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

/// `value | tojson` / `tojson(indent=N)`, formatted like Python's `json.dumps`
/// with `ensure_ascii=False` (what transformers installs).
fn tojson(
    value: Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> std::result::Result<Value, JinjaError> {
    let indent = match indent {
        Some(n) => Some(n),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    // Accepted for compatibility; keys keep the order they arrive in.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| {
        JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("tojson: cannot serialize value: {e}"),
        )
    })?;
    Ok(Value::from_safe_string(pyjson::dumps(&json, indent)))
}

/// The template's own message for `raise_exception`, else minijinja's with its location.
fn render_error_message(e: &JinjaError) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_string(),
        _ => format!("{e:#}"),
    }
}

/// `chat_template` as a string, or the `default` entry of a named list.
fn template_of(config: &Json) -> Option<String> {
    match config.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// A special token named in tokenizer_config.json: a string or an AddedToken object.
fn token_string(config: &Json, key: &str) -> String {
    match config.get(key) {
        Some(Json::String(s)) => s.clone(),
        Some(obj) => obj
            .get("content")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| EngineError::ConfigFile {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

fn read_json(path: &Path) -> Result<Json> {
    serde_json::from_str(&read_text(path)?).map_err(|e| EngineError::ConfigFile {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
