//! A chat reply → what the client sees: reasoning (`reasoning_content`), text
//! (`content`) and tool calls (`tool_calls`), the same way for a full reply and a stream.
//!
//! [`ChatParsers`] are the server's parsers, chosen at start ([`ParserOptions`]): a
//! tool-call format (by default the model family's) and a reasoning format (by default
//! Qwen3's when the chat template writes `<think>`). Per request, [`ReplyParsing`] says
//! what applies (the tool choice, whether the prompt opened a think block); per choice, a
//! [`ReplyParser`] reads the reply one piece at a time.
//!
//! Order, as in vLLM: reasoning is split off first and the tool-call parser reads only the
//! content. A grammar-enforced tool choice (`required`, a named function) skips both: its
//! whole output is the calls' JSON, turned into calls when the reply ends.
//!
//! Special markers: a tool-call marker that is a special token (Mistral's `[TOOL_CALLS]`)
//! is dropped by decoding, so [`with_markers`] puts its text back wherever its token id is
//! generated, before the parser reads the text.

use std::sync::Arc;

use nanovllm_core::Tokenizer;
use tokio::sync::mpsc;

use super::reasoning::{ReasoningParserKind, ReasoningSplitter, Split};
use super::tool_choice::{Forced, ToolMode};
use super::tool_parsers::{ToolCall, ToolCallParser, ToolOutput, ToolParserKind};
use super::tracked::{ChoiceEvent, SeqEvent};

/// How a parser is chosen at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ParserChoice<T> {
    /// The model's default (its family's tool-call format; Qwen3 reasoning when the chat
    /// template writes `<think>`).
    #[default]
    Auto,
    Off,
    Use(T),
}

/// The serve flags that choose the parsers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParserOptions {
    pub tool_call_parser: ParserChoice<ToolParserKind>,
    pub reasoning_parser: ParserChoice<ReasoningParserKind>,
    /// vLLM's `--enable-auto-tool-choice`: here auto tool choice is on whenever there is a
    /// tool-call parser, so the flag only makes the server refuse to start without one.
    pub enable_auto_tool_choice: bool,
}

/// The parsers of a running server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatParsers {
    pub tool: Option<ToolParserKind>,
    pub reasoning: Option<ReasoningParserKind>,
    /// Token ids whose text decoding drops but the tool-call parser needs, with that text.
    pub markers: Arc<[(u32, &'static str)]>,
}

impl ChatParsers {
    /// Resolves `options` for a model of `architecture` whose chat template is
    /// `template_source`.
    pub fn resolve(
        options: ParserOptions,
        architecture: &str,
        template_source: Option<&str>,
        tokenizer: &Tokenizer,
    ) -> anyhow::Result<Self> {
        let tool = match options.tool_call_parser {
            ParserChoice::Auto => ToolParserKind::for_architecture(architecture),
            ParserChoice::Off => None,
            ParserChoice::Use(kind) => Some(kind),
        };
        if options.enable_auto_tool_choice && tool.is_none() {
            anyhow::bail!(
                "--enable-auto-tool-choice needs a tool-call parser, and {architecture} has no default one: pass --tool-call-parser (hermes or mistral)"
            );
        }
        let reasoning = match options.reasoning_parser {
            ParserChoice::Auto => template_source.and_then(ReasoningParserKind::for_template),
            ParserChoice::Off => None,
            ParserChoice::Use(kind) => Some(kind),
        };
        let markers = tool
            .map(|kind| special_markers(kind.markers(), tokenizer))
            .unwrap_or_default();
        Ok(Self {
            tool,
            reasoning,
            markers: markers.into(),
        })
    }
}

/// The `markers` that are single tokens whose text decoding drops, with their ids.
fn special_markers(markers: &[&'static str], tokenizer: &Tokenizer) -> Vec<(u32, &'static str)> {
    markers
        .iter()
        .filter_map(|&marker| {
            let id = tokenizer.token_to_id(marker)?;
            let shown = tokenizer.decode(&[id]).ok()?;
            shown.is_empty().then_some((id, marker))
        })
        .collect()
}

/// What applies to one request's replies.
#[derive(Clone, Debug)]
pub struct ReplyParsing {
    pub reasoning: Option<ReasoningParserKind>,
    /// The rendered prompt ends in an open think block.
    pub prompt_opens_reasoning: bool,
    pub tools: ToolMode,
    pub markers: Arc<[(u32, &'static str)]>,
}

impl ReplyParsing {
    pub fn new(parsers: &ChatParsers, tools: ToolMode, prompt: &str) -> Self {
        Self {
            reasoning: parsers.reasoning,
            prompt_opens_reasoning: super::reasoning::prompt_opens_reasoning(prompt),
            tools,
            markers: parsers.markers.clone(),
        }
    }

    /// Whether replies can come out other than as plain content.
    pub fn is_active(&self) -> bool {
        self.reasoning.is_some() || self.tools != ToolMode::Off
    }

    pub fn parser(&self) -> ReplyParser {
        let (reasoning, tools) = match &self.tools {
            ToolMode::Forced(forced) => (
                None,
                ToolState::Forced {
                    forced: forced.clone(),
                    output: String::new(),
                },
            ),
            ToolMode::Parse(kind) => (self.splitter(), ToolState::Parse(kind.parser())),
            ToolMode::Off => (self.splitter(), ToolState::Off),
        };
        ReplyParser {
            reasoning,
            tools,
            num_calls: 0,
        }
    }

    fn splitter(&self) -> Option<ReasoningSplitter> {
        self.reasoning
            .map(|kind| kind.splitter(self.prompt_opens_reasoning))
    }

    /// Markers to put back into the text (only when a tool-call parser reads it).
    fn active_markers(&self) -> Option<Arc<[(u32, &'static str)]>> {
        (matches!(self.tools, ToolMode::Parse(_)) && !self.markers.is_empty())
            .then(|| self.markers.clone())
    }
}

/// A piece of a reply as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Reasoning(String),
    Content(String),
    Call { index: usize, call: ToolCall },
}

#[derive(Debug)]
enum ToolState {
    Off,
    Parse(ToolCallParser),
    Forced { forced: Forced, output: String },
}

/// Parses one reply (see the module doc).
#[derive(Debug)]
pub struct ReplyParser {
    reasoning: Option<ReasoningSplitter>,
    tools: ToolState,
    num_calls: usize,
}

impl ReplyParser {
    /// Reads the next piece of the reply.
    pub fn push(&mut self, text: &str) -> Vec<Part> {
        let splits = match &mut self.reasoning {
            Some(splitter) => splitter.push(text),
            None => vec![Split::Content(text.to_string())],
        };
        let mut parts = Vec::new();
        self.route(splits, &mut parts);
        parts
    }

    /// The reply ended: everything held back, and the calls of a forced tool choice.
    pub fn finish(&mut self) -> Vec<Part> {
        let splits = self
            .reasoning
            .as_mut()
            .map(|s| s.finish())
            .unwrap_or_default();
        let mut parts = Vec::new();
        self.route(splits, &mut parts);
        match &mut self.tools {
            ToolState::Off => {}
            ToolState::Parse(parser) => {
                let outputs = parser.finish();
                self.push_tool_outputs(outputs, &mut parts);
            }
            ToolState::Forced { forced, output } => {
                let output = std::mem::take(output);
                match forced.calls(&output) {
                    Some(calls) => {
                        for call in calls {
                            parts.push(Part::Call {
                                index: self.num_calls,
                                call,
                            });
                            self.num_calls += 1;
                        }
                    }
                    None if output.is_empty() => {}
                    None => parts.push(Part::Content(output)),
                }
            }
        }
        parts
    }

    /// How many calls were handed out.
    pub fn num_calls(&self) -> usize {
        self.num_calls
    }

    fn route(&mut self, splits: Vec<Split>, parts: &mut Vec<Part>) {
        for split in splits {
            match split {
                Split::Reasoning(text) => parts.push(Part::Reasoning(text)),
                Split::Content(text) => match &mut self.tools {
                    ToolState::Off => parts.push(Part::Content(text)),
                    ToolState::Parse(parser) => {
                        let outputs = parser.push(&text);
                        self.push_tool_outputs(outputs, parts);
                    }
                    ToolState::Forced { output, .. } => output.push_str(&text),
                },
            }
        }
    }

    fn push_tool_outputs(&mut self, outputs: Vec<ToolOutput>, parts: &mut Vec<Part>) {
        for output in outputs {
            parts.push(match output {
                ToolOutput::Content(text) => Part::Content(text),
                ToolOutput::Call { index, call } => {
                    self.num_calls = self.num_calls.max(index + 1);
                    Part::Call { index, call }
                }
            });
        }
    }
}

/// A whole reply, as `message` holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub reasoning: Option<String>,
    pub content: String,
    pub calls: Vec<ToolCall>,
}

impl Reply {
    /// Parses a finished reply's `text`.
    pub fn parse(parsing: &ReplyParsing, text: &str) -> Self {
        let mut parser = parsing.parser();
        let mut parts = parser.push(text);
        parts.extend(parser.finish());
        let mut reply = Self::default();
        for part in parts {
            match part {
                Part::Reasoning(t) => reply.reasoning.get_or_insert_with(String::new).push_str(&t),
                Part::Content(t) => reply.content.push_str(&t),
                Part::Call { call, .. } => reply.calls.push(call),
            }
        }
        reply
    }
}

/// OpenAI's `finish_reason` of a reply that made `num_calls` calls and ended as `finish`.
pub fn finish_reason(finish: &'static str, num_calls: usize) -> &'static str {
    if num_calls > 0 && finish == "stop" {
        "tool_calls"
    } else {
        finish
    }
}

/// `events` with each special marker's text put back after the text of the event that
/// carries its token id (whose own text decoding dropped); unchanged when there are none.
pub fn with_markers(
    parsing: Option<&ReplyParsing>,
    mut events: mpsc::UnboundedReceiver<ChoiceEvent>,
) -> mpsc::UnboundedReceiver<ChoiceEvent> {
    let Some(markers) = parsing.and_then(ReplyParsing::active_markers) else {
        return events;
    };
    let (sender, marked) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Ends when the engine sent everything or the handler is gone; dropping `events`
        // then makes the engine drop what is still running.
        while let Some(mut event) = events.recv().await {
            if let SeqEvent::Token { text, token_id, .. } = &mut event.event {
                if let Some((_, marker)) = markers.iter().find(|(id, _)| id == token_id) {
                    text.push_str(marker);
                }
            }
            if sender.send(event).is_err() {
                return;
            }
        }
    });
    marked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::tool_choice::{resolve, ToolFields};
    use serde_json::json;

    fn parsing(reasoning: bool, tools: ToolMode) -> ReplyParsing {
        ReplyParsing {
            reasoning: reasoning.then_some(ReasoningParserKind::Qwen3),
            prompt_opens_reasoning: false,
            tools,
            markers: Arc::from(Vec::new()),
        }
    }

    /// The reply parsed whole must equal the reply streamed in two pieces, at every split.
    fn parse_every_split(parsing: &ReplyParsing, text: &str) -> Reply {
        let whole = Reply::parse(parsing, text);
        for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let mut parser = parsing.parser();
            let mut parts = parser.push(&text[..cut]);
            parts.extend(parser.push(&text[cut..]));
            parts.extend(parser.finish());
            let mut streamed = Reply::default();
            for part in parts {
                match part {
                    Part::Reasoning(t) => streamed
                        .reasoning
                        .get_or_insert_with(String::new)
                        .push_str(&t),
                    Part::Content(t) => streamed.content.push_str(&t),
                    Part::Call { call, .. } => streamed.calls.push(call),
                }
            }
            let names = |r: &Reply| {
                r.calls
                    .iter()
                    .map(|c| (c.name.clone(), c.arguments.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                (&streamed.reasoning, &streamed.content, names(&streamed)),
                (&whole.reasoning, &whole.content, names(&whole)),
                "split at {cut}"
            );
        }
        whole
    }

    /// Qwen3-0.6B with thinking on and a weather tool: reasoning, then a call.
    #[test]
    fn reasoning_then_a_tool_call() {
        let text = "<think>\nThe user wants the weather in Paris. I should call get_weather.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let reply = parse_every_split(
            &parsing(true, ToolMode::Parse(ToolParserKind::Hermes)),
            text,
        );
        assert_eq!(
            reply.reasoning.as_deref(),
            Some("The user wants the weather in Paris. I should call get_weather.\n")
        );
        assert_eq!(reply.content, "");
        assert_eq!(reply.calls.len(), 1);
        assert_eq!(reply.calls[0].arguments, r#"{"city":"Paris"}"#);
    }

    #[test]
    fn without_tools_a_call_is_plain_content() {
        let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
        let reply = parse_every_split(&parsing(false, ToolMode::Off), text);
        assert_eq!(
            reply,
            Reply {
                content: text.into(),
                ..Reply::default()
            }
        );
    }

    #[test]
    fn forced_output_becomes_calls_or_stays_text_when_cut() {
        let fields = ToolFields {
            tools: Some(
                json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
            ),
            tool_choice: Some(json!("required")),
            parallel_tool_calls: None,
        };
        let mode = resolve(&fields, None).unwrap();
        // Reasoning is off for forced output, even with a reasoning parser.
        let p = parsing(true, mode);
        let reply = parse_every_split(&p, r#"[{"name": "f", "parameters": {"a": [1, 2]}}]"#);
        assert_eq!(reply.calls.len(), 1);
        assert_eq!(reply.calls[0].arguments, r#"{"a":[1,2]}"#);
        assert_eq!(reply.content, "");
        let cut = r#"[{"name": "f", "param"#;
        assert_eq!(parse_every_split(&p, cut).content, cut);
    }

    #[test]
    fn finish_reason_is_tool_calls_only_for_a_stop_with_calls() {
        assert_eq!(finish_reason("stop", 1), "tool_calls");
        assert_eq!(finish_reason("stop", 0), "stop");
        assert_eq!(finish_reason("length", 2), "length");
    }

    #[tokio::test]
    async fn markers_are_put_back_after_their_tokens_text() {
        let mut p = parsing(false, ToolMode::Parse(ToolParserKind::Mistral));
        p.markers = Arc::from(vec![(5u32, "[TOOL_CALLS]")]);
        let (tx, rx) = mpsc::unbounded_channel();
        let token = |text: &str, id| ChoiceEvent {
            choice: 0,
            event: SeqEvent::Token {
                text: text.into(),
                token_id: id,
                logprobs: None,
            },
        };
        tx.send(token("Hi", 1)).unwrap();
        tx.send(token("", 5)).unwrap();
        drop(tx);
        let mut rx = with_markers(Some(&p), rx);
        assert_eq!(rx.recv().await.unwrap(), token("Hi", 1));
        assert_eq!(rx.recv().await.unwrap(), token("[TOOL_CALLS]", 5));
        assert!(rx.recv().await.is_none());
    }
}
