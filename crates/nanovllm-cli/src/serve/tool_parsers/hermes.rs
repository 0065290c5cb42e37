//! The Hermes / Qwen format: each call is a JSON object `{"name": …, "arguments": {…}}`
//! between `<tool_call>` and `</tool_call>`, any number of them, text around them allowed.
//!
//! A block whose body is not such an object is text (markers included). A block still open
//! when the reply ends (the model stopped before `</tool_call>`) is a call if its body is
//! a complete valid call, else text.

use super::{call_of_object, partial_marker_len, Found};

pub const START: &str = "<tool_call>";
pub const END: &str = "</tool_call>";

#[derive(Debug, Default)]
pub struct HermesParser {
    /// Text not handed out yet: a possible partial `<tool_call>` outside a block, or the
    /// body so far inside one.
    buf: String,
    in_call: bool,
}

impl HermesParser {
    pub fn push(&mut self, text: &str) -> Vec<Found> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.buf.find(END) else { break };
                out.push(block(&self.buf[..end], true));
                self.buf.drain(..end + END.len());
                self.in_call = false;
            } else if let Some(start) = self.buf.find(START) {
                if start > 0 {
                    out.push(Found::Text(self.buf[..start].to_string()));
                }
                self.buf.drain(..start + START.len());
                self.in_call = true;
            } else {
                let keep = partial_marker_len(&self.buf, START);
                let text: String = self.buf.drain(..self.buf.len() - keep).collect();
                if !text.is_empty() {
                    out.push(Found::Text(text));
                }
                break;
            }
        }
        out
    }

    pub fn finish(&mut self) -> Vec<Found> {
        let rest = std::mem::take(&mut self.buf);
        if self.in_call {
            self.in_call = false;
            vec![block(&rest, false)]
        } else if rest.is_empty() {
            Vec::new()
        } else {
            vec![Found::Text(rest)]
        }
    }
}

/// A block's body → its call, or the block's text when it is not a valid call.
fn block(body: &str, closed: bool) -> Found {
    let call = serde_json::from_str(body.trim())
        .ok()
        .and_then(|v| call_of_object(&v));
    match call {
        Some((name, arguments)) => Found::Call { name, arguments },
        None => Found::Text(format!("{START}{body}{}", if closed { END } else { "" })),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse_every_split;
    use super::super::ToolParserKind::Hermes;

    fn call(name: &str, arguments: &str) -> (String, String) {
        (name.to_string(), arguments.to_string())
    }

    /// Qwen3-0.6B's reply to "What's the weather in Paris and in Tokyo?" with a
    /// get_weather tool, after its thinking (which the reasoning parser takes first).
    const QWEN3_TWO_CALLS: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Tokyo\", \"unit\": \"celsius\"}}\n</tool_call>";

    #[test]
    fn qwen3_parallel_calls_at_every_split() {
        let (content, calls) = parse_every_split(Hermes, QWEN3_TWO_CALLS);
        assert_eq!(content, "");
        assert_eq!(
            calls,
            vec![
                call("get_weather", r#"{"city":"Paris","unit":"celsius"}"#),
                call("get_weather", r#"{"city":"Tokyo","unit":"celsius"}"#),
            ]
        );
    }

    #[test]
    fn text_before_and_after_a_call_is_content() {
        let text = "Sure, let me look that up.\n\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"café <b> é\"}}\n</tool_call>\nOne moment.";
        let (content, calls) = parse_every_split(Hermes, text);
        assert_eq!(content, "Sure, let me look that up.One moment.");
        assert_eq!(calls, vec![call("search", r#"{"query":"café <b> é"}"#)]);
    }

    #[test]
    fn text_without_calls_is_unchanged_even_with_lookalike_tags() {
        for text in [
            "Plain answer.\n",
            "A <tool_ tag that is not one, and a < sign",
            "ends with <tool_call",
            "",
        ] {
            let (content, calls) = parse_every_split(Hermes, text);
            assert_eq!(content, text);
            assert!(calls.is_empty());
        }
    }

    #[test]
    fn invalid_blocks_are_content_verbatim() {
        let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call>";
        let (content, calls) = parse_every_split(Hermes, text);
        assert_eq!(content, text);
        assert!(calls.is_empty());
        // A JSON value that is not a call object.
        let text = "<tool_call>[1, 2]</tool_call>";
        assert_eq!(parse_every_split(Hermes, text), (text.to_string(), vec![]));
    }

    #[test]
    fn an_unclosed_block_is_a_call_when_complete_else_content() {
        let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n";
        assert_eq!(
            parse_every_split(Hermes, text),
            (String::new(), vec![call("f", r#"{"a":1}"#)])
        );
        // Cut by max_tokens in the middle of the arguments.
        let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": ";
        assert_eq!(parse_every_split(Hermes, text), (text.to_string(), vec![]));
    }

    #[test]
    fn string_arguments_are_accepted() {
        let text =
            "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": [1, 2]}\"}</tool_call>";
        assert_eq!(
            parse_every_split(Hermes, text),
            (String::new(), vec![call("f", r#"{"x":[1,2]}"#)])
        );
    }
}
