//! Reasoning parsers: split a thinking model's reply into its reasoning
//! (`reasoning_content`, vLLM's field) and its answer (`content`).
//!
//! Qwen3 ([`ReasoningParserKind::Qwen3`]) thinks in `<think>…</think>` at the start of
//! its reply. A [`ReasoningSplitter`] reads the reply one piece at a time, so a full reply
//! and a stream split the same way however the text is cut:
//! - the reply is reasoning from a leading `<think>` (after whitespace) to `</think>`;
//!   when the prompt itself ends in an open `<think>` (templates that start the thinking
//!   for the model), from the first character;
//! - a reply that does not start that way is all content: with `enable_thinking: false`
//!   Qwen3's template closes an empty think block in the prompt, so the reply is content;
//! - reasoning still open when the reply ends (cut by `max_tokens`) stays reasoning, as
//!   it was already streamed as such;
//! - the tags themselves, a partial tag held back between pieces, and the whitespace
//!   right after either tag are never shown.

use super::tool_parsers::partial_marker_len;

/// The reasoning formats this server splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningParserKind {
    /// `<think>…</think>` (Qwen3, QwQ, DeepSeek-R1 distills).
    Qwen3,
}

pub const THINK_START: &str = "<think>";
pub const THINK_END: &str = "</think>";

impl ReasoningParserKind {
    /// The parser a chat template implies: Qwen3's for a template that writes `<think>`.
    pub fn for_template(source: &str) -> Option<Self> {
        source.contains(THINK_START).then_some(Self::Qwen3)
    }

    /// A splitter for one reply; `starts_in_reasoning` when the prompt ends in an open
    /// think block ([`prompt_opens_reasoning`]).
    pub fn splitter(self, starts_in_reasoning: bool) -> ReasoningSplitter {
        ReasoningSplitter {
            state: if starts_in_reasoning {
                State::Reasoning { started: false }
            } else {
                State::Start
            },
            buf: String::new(),
        }
    }
}

/// Whether the rendered `prompt` ends in an open `<think>` (only whitespace after it), so
/// that the reply starts inside the reasoning.
pub fn prompt_opens_reasoning(prompt: &str) -> bool {
    prompt
        .rfind(THINK_START)
        .is_some_and(|start| prompt[start + THINK_START.len()..].trim().is_empty())
}

/// A piece of the reply, as reasoning or content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Split {
    Reasoning(String),
    Content(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing decided yet: is there a leading `<think>`?
    Start,
    /// In the reasoning; `started` once non-whitespace reasoning was seen.
    Reasoning { started: bool },
    /// In the answer; `started` once non-whitespace content was seen after `</think>`.
    Content { started: bool },
}

/// Splits one reply (see the module doc).
#[derive(Debug)]
pub struct ReasoningSplitter {
    state: State,
    /// Held back: the reply so far in `Start`, a possible partial `</think>` in `Reasoning`.
    buf: String,
}

impl ReasoningSplitter {
    pub fn push(&mut self, text: &str) -> Vec<Split> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let head = self.buf.trim_start();
                    if let Some(rest) = head.strip_prefix(THINK_START) {
                        self.buf = rest.to_string();
                        self.state = State::Reasoning { started: false };
                    } else if THINK_START.starts_with(head) {
                        break; // all whitespace or a partial `<think>`: wait
                    } else {
                        self.state = State::Content { started: true };
                    }
                }
                State::Reasoning { started } => {
                    let closed = self.buf.find(THINK_END);
                    // Up to the tag, or all but a possible partial tag.
                    let upto = closed.unwrap_or_else(|| {
                        self.buf.len() - partial_marker_len(&self.buf, THINK_END)
                    });
                    let reasoning = self.buf[..upto].to_string();
                    let reasoning = if started {
                        &reasoning[..]
                    } else {
                        reasoning.trim_start()
                    };
                    if !reasoning.is_empty() {
                        out.push(Split::Reasoning(reasoning.to_string()));
                    }
                    let started = started || !reasoning.is_empty();
                    match closed {
                        Some(end) => {
                            self.buf.drain(..end + THINK_END.len());
                            self.state = State::Content { started: false };
                        }
                        None => {
                            self.buf.drain(..upto);
                            self.state = State::Reasoning { started };
                            break;
                        }
                    }
                }
                State::Content { started } => {
                    let text = std::mem::take(&mut self.buf);
                    let text = if started {
                        &text[..]
                    } else {
                        text.trim_start()
                    };
                    if !text.is_empty() {
                        out.push(Split::Content(text.to_string()));
                        self.state = State::Content { started: true };
                    }
                    break;
                }
            }
        }
        out
    }

    pub fn finish(&mut self) -> Vec<Split> {
        let rest = std::mem::take(&mut self.buf);
        if rest.is_empty() {
            return Vec::new();
        }
        match self.state {
            // A reply that is only whitespace or a partial `<think>`: content as is.
            State::Start => vec![Split::Content(rest)],
            State::Reasoning { .. } => vec![Split::Reasoning(rest)],
            State::Content { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (reasoning, content) of `text` pieces, `None` for an absent part.
    fn split(prompt: &str, pieces: &[&str]) -> (Option<String>, Option<String>) {
        let mut s = ReasoningParserKind::Qwen3.splitter(prompt_opens_reasoning(prompt));
        let mut parts: Vec<Split> = pieces.iter().flat_map(|p| s.push(p)).collect();
        parts.extend(s.finish());
        let (mut reasoning, mut content) = (None::<String>, None::<String>);
        for part in parts {
            let (slot, text) = match part {
                Split::Reasoning(t) => (&mut reasoning, t),
                Split::Content(t) => (&mut content, t),
            };
            assert!(!text.is_empty(), "empty part");
            slot.get_or_insert_with(String::new).push_str(&text);
        }
        (reasoning, content)
    }

    /// Splits `text` whole and at every split point into two pieces; all must agree.
    fn split_everywhere(prompt: &str, text: &str) -> (Option<String>, Option<String>) {
        let whole = split(prompt, &[text]);
        for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            assert_eq!(
                split(prompt, &[&text[..cut], &text[cut..]]),
                whole,
                "split at byte {cut} of {text:?}"
            );
        }
        whole
    }

    const PROMPT: &str = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";

    /// Qwen3-0.6B's reply to "What is 2+2?", thinking on.
    #[test]
    fn qwen3_thinking_reply() {
        let text = "<think>\nOkay, the user asks for 2+2. That is 4.\n</think>\n\n2 + 2 = **4**.";
        assert_eq!(
            split_everywhere(PROMPT, text),
            (
                Some("Okay, the user asks for 2+2. That is 4.\n".into()),
                Some("2 + 2 = **4**.".into())
            )
        );
    }

    #[test]
    fn thinking_off_means_all_content() {
        let prompt = format!("{PROMPT}<think>\n\n</think>\n\n");
        let text = "2 + 2 = 4. I did not <think> about it.";
        assert_eq!(split_everywhere(&prompt, text), (None, Some(text.into())));
        // No think block at all.
        assert_eq!(
            split_everywhere(PROMPT, "Hello!"),
            (None, Some("Hello!".into()))
        );
    }

    #[test]
    fn a_prompt_that_opens_the_think_block_starts_in_reasoning() {
        let prompt = format!("{PROMPT}<think>\n");
        let text = "Let me see.</think>\n\nFour.";
        assert_eq!(
            split_everywhere(&prompt, text),
            (Some("Let me see.".into()), Some("Four.".into()))
        );
    }

    #[test]
    fn unclosed_reasoning_stays_reasoning_and_empty_blocks_vanish() {
        assert_eq!(
            split_everywhere(PROMPT, "<think>\nStill thinking </thi"),
            (Some("Still thinking </thi".into()), None)
        );
        assert_eq!(
            split_everywhere(PROMPT, "<think>\n\n</think>\n\nHi."),
            (None, Some("Hi.".into()))
        );
        assert_eq!(
            split_everywhere(PROMPT, "  <thi"),
            (None, Some("  <thi".into()))
        );
        assert_eq!(split_everywhere(PROMPT, ""), (None, None));
    }

    #[test]
    fn tool_calls_after_the_reasoning_are_content() {
        let text = "<think>\nI need the weather tool.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let (reasoning, content) = split_everywhere(PROMPT, text);
        assert_eq!(reasoning.as_deref(), Some("I need the weather tool.\n"));
        assert!(content.unwrap().starts_with("<tool_call>\n{"));
    }
}
