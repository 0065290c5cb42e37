//! Tool-call parsers: find the calls in a model's free-form reply (`tool_choice: "auto"`).
//!
//! Each model family writes calls its own way; a [`ToolCallParser`] reads the reply as it
//! arrives, one piece of text at a time, and hands out [`ToolOutput`]s: text outside calls
//! (`content`) and whole calls. The same parser serves a full reply (one piece, then
//! [`ToolCallParser::finish`]) and a stream, so both give the same result however the text
//! is split.
//!
//! Invariants:
//! - Text that could still be the start of a call marker is held back until the next piece
//!   decides, so no part of a marker ever reaches `content`.
//! - A call is handed out only once complete and valid; a block that turns out not to be a
//!   valid call is handed out as content, verbatim, markers included (as vLLM does).
//! - Whitespace right before or after a call is dropped (it only separates calls); text
//!   without any call comes out unchanged.
//!
//! Families ([`ToolParserKind`]): [`hermes`] (Hermes, Qwen2, Qwen3:
//! `<tool_call>{"name": …, "arguments": …}</tool_call>`) and [`mistral`] (`[TOOL_CALLS]`
//! then a JSON array, or `[TOOL_CALLS]name[ARGS]{…}`). Mistral's markers are special
//! tokens that decoding drops: [`ToolParserKind::markers`] names them, and the chat path
//! puts their text back where their token ids appear (see `chat_output`).

pub mod hermes;
pub mod mistral;

use serde_json::{Map, Value as Json};

use super::openai_types::unique_suffix;

/// The tool-call formats this server parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolParserKind {
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>` (Hermes, Qwen2, Qwen2.5, Qwen3).
    Hermes,
    /// `[TOOL_CALLS][{"name": …, "arguments": …}]` or `[TOOL_CALLS]name[ARGS]{…}` (Mistral,
    /// Mixtral).
    Mistral,
}

impl ToolParserKind {
    /// The parser of a model family, from config.json's `architectures[0]`; `None` for
    /// families without a known format.
    pub fn for_architecture(architecture: &str) -> Option<Self> {
        match architecture {
            "Qwen2ForCausalLM" | "Qwen3ForCausalLM" | "Qwen3MoeForCausalLM" => Some(Self::Hermes),
            "MistralForCausalLM" | "MixtralForCausalLM" => Some(Self::Mistral),
            _ => None,
        }
    }

    /// Marker strings of this format that may be special tokens (dropped by decoding).
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            Self::Hermes => &[],
            Self::Mistral => &[mistral::TOOL_CALLS, mistral::ARGS],
        }
    }

    pub fn parser(self) -> ToolCallParser {
        ToolCallParser {
            format: match self {
                Self::Hermes => Format::Hermes(hermes::HermesParser::default()),
                Self::Mistral => Format::Mistral(mistral::MistralParser::default()),
            },
            content: ContentFilter::default(),
            num_calls: 0,
        }
    }
}

/// One function call of a reply, as `message.tool_calls` holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_…`, unique within this server's life.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

impl ToolCall {
    pub fn new(name: String, arguments: String) -> Self {
        Self {
            id: format!("call_{}", unique_suffix()),
            name,
            arguments,
        }
    }
}

/// What a parser hands out, in reply order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolOutput {
    Content(String),
    /// The `index`-th call of the reply (0-based).
    Call {
        index: usize,
        call: ToolCall,
    },
}

/// What a format parser finds in the text it is given (before whitespace trimming and call
/// numbering, which [`ToolCallParser`] does for every format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Text(String),
    Call { name: String, arguments: String },
}

#[derive(Debug)]
enum Format {
    Hermes(hermes::HermesParser),
    Mistral(mistral::MistralParser),
}

/// A streaming tool-call parser for one reply (see the module doc).
#[derive(Debug)]
pub struct ToolCallParser {
    format: Format,
    content: ContentFilter,
    num_calls: usize,
}

impl ToolCallParser {
    /// Reads the next piece of the reply.
    pub fn push(&mut self, text: &str) -> Vec<ToolOutput> {
        let found = match &mut self.format {
            Format::Hermes(p) => p.push(text),
            Format::Mistral(p) => p.push(text),
        };
        self.number(found, false)
    }

    /// The reply ended: everything still held back.
    pub fn finish(&mut self) -> Vec<ToolOutput> {
        let found = match &mut self.format {
            Format::Hermes(p) => p.finish(),
            Format::Mistral(p) => p.finish(),
        };
        self.number(found, true)
    }

    fn number(&mut self, found: Vec<Found>, end: bool) -> Vec<ToolOutput> {
        let mut out = Vec::new();
        for f in found {
            match f {
                Found::Text(text) => self.content.text(&text, &mut out),
                Found::Call { name, arguments } => {
                    self.content.call();
                    out.push(ToolOutput::Call {
                        index: self.num_calls,
                        call: ToolCall::new(name, arguments),
                    });
                    self.num_calls += 1;
                }
            }
        }
        if end {
            self.content.finish(&mut out);
        }
        out
    }
}

/// Drops the whitespace that only separates calls from each other and from the text:
/// trailing whitespace is held until non-whitespace text follows (emitted) or a call does
/// (dropped), and leading whitespace after a call is dropped.
#[derive(Debug, Default)]
struct ContentFilter {
    held: String,
    after_call: bool,
}

impl ContentFilter {
    fn text(&mut self, text: &str, out: &mut Vec<ToolOutput>) {
        let text = if self.after_call {
            let rest = text.trim_start();
            if rest.is_empty() {
                return;
            }
            self.after_call = false;
            rest
        } else {
            text
        };
        let body = text.trim_end();
        if body.is_empty() {
            self.held.push_str(text);
            return;
        }
        let mut emitted = std::mem::take(&mut self.held);
        emitted.push_str(body);
        self.held.push_str(&text[body.len()..]);
        out.push(ToolOutput::Content(emitted));
    }

    fn call(&mut self) {
        self.held.clear();
        self.after_call = true;
    }

    fn finish(&mut self, out: &mut Vec<ToolOutput>) {
        if !self.held.is_empty() {
            out.push(ToolOutput::Content(std::mem::take(&mut self.held)));
        }
    }
}

/// `{"name": "...", "arguments": {...}}` (arguments may also be a JSON string holding an
/// object, or absent: `{}`) → the call's name and its arguments as JSON text.
pub fn call_of_object(value: &Json) -> Option<(String, String)> {
    let object = value.as_object()?;
    let name = object.get("name")?.as_str()?.to_string();
    let arguments = match object.get("arguments").or_else(|| object.get("parameters")) {
        None => Json::Object(Map::new()),
        Some(Json::String(text)) => serde_json::from_str::<Json>(text).ok()?,
        Some(value) => value.clone(),
    };
    if !arguments.is_object() {
        return None;
    }
    Some((name, arguments.to_string()))
}

/// The length of the longest suffix of `text` that is a proper prefix of `marker` (text
/// that may be the start of a marker split across pieces).
pub fn partial_marker_len(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && text.ends_with(&marker[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
pub mod test_support {
    use super::*;

    /// Parses `text` in one piece and, for every split point, in two; checks that every
    /// split gives the same content and calls as the whole, and returns the whole's
    /// (content concatenated, calls as (name, arguments)).
    pub fn parse_every_split(kind: ToolParserKind, text: &str) -> (String, Vec<(String, String)>) {
        let whole = collect(kind, &[text]);
        for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let split = collect(kind, &[&text[..cut], &text[cut..]]);
            assert_eq!(split, whole, "split at byte {cut} of {text:?}");
        }
        whole
    }

    pub fn collect(kind: ToolParserKind, pieces: &[&str]) -> (String, Vec<(String, String)>) {
        let mut parser = kind.parser();
        let mut outputs = Vec::new();
        for piece in pieces {
            outputs.extend(parser.push(piece));
        }
        outputs.extend(parser.finish());
        let mut content = String::new();
        let mut calls = Vec::new();
        for o in outputs {
            match o {
                ToolOutput::Content(c) => {
                    assert!(!c.is_empty(), "empty content output");
                    content.push_str(&c);
                }
                ToolOutput::Call { index, call } => {
                    assert_eq!(index, calls.len(), "calls are numbered in order");
                    assert!(call.id.starts_with("call_"));
                    calls.push((call.name, call.arguments));
                }
            }
        }
        (content, calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_their_parser() {
        assert_eq!(
            ToolParserKind::for_architecture("Qwen3ForCausalLM"),
            Some(ToolParserKind::Hermes)
        );
        assert_eq!(
            ToolParserKind::for_architecture("MixtralForCausalLM"),
            Some(ToolParserKind::Mistral)
        );
        assert_eq!(ToolParserKind::for_architecture("LlamaForCausalLM"), None);
    }

    #[test]
    fn partial_markers_are_the_longest_proper_prefix_suffix() {
        assert_eq!(partial_marker_len("abc<tool_", "<tool_call>"), 6);
        assert_eq!(partial_marker_len("abc<", "<tool_call>"), 1);
        assert_eq!(partial_marker_len("abc", "<tool_call>"), 0);
        assert_eq!(partial_marker_len("<tool_call>", "<tool_call>"), 0);
        assert_eq!(partial_marker_len("é<", "<tool_call>"), 1);
    }

    #[test]
    fn call_objects_take_objects_or_json_strings() {
        let v = serde_json::json!({"name": "f", "arguments": {"a": 1}});
        assert_eq!(call_of_object(&v), Some(("f".into(), r#"{"a":1}"#.into())));
        let v = serde_json::json!({"name": "f", "arguments": "{\"a\": 1}"});
        assert_eq!(call_of_object(&v), Some(("f".into(), r#"{"a":1}"#.into())));
        let v = serde_json::json!({"name": "f"});
        assert_eq!(call_of_object(&v), Some(("f".into(), "{}".into())));
        assert_eq!(
            call_of_object(&serde_json::json!({"name": "f", "arguments": 3})),
            None
        );
        assert_eq!(call_of_object(&serde_json::json!({"arguments": {}})), None);
    }

    #[test]
    fn separating_whitespace_is_dropped_and_other_text_kept() {
        let mut out = Vec::new();
        let mut f = ContentFilter::default();
        f.text("Let me check. \n", &mut out);
        f.call();
        f.text("\n", &mut out);
        f.text("  done", &mut out);
        f.text(" \n", &mut out);
        f.finish(&mut out);
        assert_eq!(
            out,
            vec![
                ToolOutput::Content("Let me check.".into()),
                ToolOutput::Content("done".into()),
                ToolOutput::Content(" \n".into()),
            ]
        );
    }
}
