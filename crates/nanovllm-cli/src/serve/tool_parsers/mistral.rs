//! Mistral's format: text, then `[TOOL_CALLS]` and the calls up to the end of the reply,
//! either as a JSON array `[{"name": …, "arguments": {…}}, …]` (tokenizer v3, Mistral 7B
//! v0.3, Mixtral 8x22B) or as `name[ARGS]{…}` per call, each after its own `[TOOL_CALLS]`
//! (tokenizer v11 and later).
//!
//! Everything after the first `[TOOL_CALLS]` is calls, so it is held until the reply ends
//! and parsed whole; if it does not parse, it is text, marker included.

use serde_json::Value as Json;

use super::{call_of_object, partial_marker_len, Found};

pub const TOOL_CALLS: &str = "[TOOL_CALLS]";
pub const ARGS: &str = "[ARGS]";

#[derive(Debug, Default)]
pub struct MistralParser {
    buf: String,
    in_calls: bool,
}

impl MistralParser {
    pub fn push(&mut self, text: &str) -> Vec<Found> {
        self.buf.push_str(text);
        if self.in_calls {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some(start) = self.buf.find(TOOL_CALLS) {
            if start > 0 {
                out.push(Found::Text(self.buf[..start].to_string()));
            }
            self.buf.drain(..start + TOOL_CALLS.len());
            self.in_calls = true;
        } else {
            let keep = partial_marker_len(&self.buf, TOOL_CALLS);
            let text: String = self.buf.drain(..self.buf.len() - keep).collect();
            if !text.is_empty() {
                out.push(Found::Text(text));
            }
        }
        out
    }

    pub fn finish(&mut self) -> Vec<Found> {
        let rest = std::mem::take(&mut self.buf);
        if !std::mem::take(&mut self.in_calls) {
            return if rest.is_empty() {
                Vec::new()
            } else {
                vec![Found::Text(rest)]
            };
        }
        match calls(&rest) {
            Some(calls) => calls
                .into_iter()
                .map(|(name, arguments)| Found::Call { name, arguments })
                .collect(),
            None => vec![Found::Text(format!("{TOOL_CALLS}{rest}"))],
        }
    }
}

/// The calls after the first `[TOOL_CALLS]`, or `None` when they do not parse.
fn calls(text: &str) -> Option<Vec<(String, String)>> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        let items = match serde_json::from_str::<Json>(trimmed).ok()? {
            Json::Array(items) => items,
            object => vec![object],
        };
        if items.is_empty() {
            return None;
        }
        return items.iter().map(call_of_object).collect();
    }
    text.split(TOOL_CALLS)
        .map(|segment| {
            let (name, arguments) = segment.split_once(ARGS)?;
            let name = name.trim();
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
            let arguments: Json = serde_json::from_str(arguments.trim()).ok()?;
            (valid_name && arguments.is_object()).then(|| (name.to_string(), arguments.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse_every_split;
    use super::super::ToolParserKind::Mistral;

    fn call(name: &str, arguments: &str) -> (String, String) {
        (name.to_string(), arguments.to_string())
    }

    /// Mistral-7B-Instruct-v0.3's reply (the marker put back by the chat path; the JSON's
    /// leading space is how the SentencePiece decoder renders the token after it).
    const V3_TWO_CALLS: &str = "[TOOL_CALLS] [{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Paris, France\", \"format\": \"celsius\"}}, {\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Tokyo, Japan\", \"format\": \"celsius\"}}]";

    #[test]
    fn v3_json_array_at_every_split() {
        assert_eq!(
            parse_every_split(Mistral, V3_TWO_CALLS),
            (
                String::new(),
                vec![
                    call(
                        "get_current_weather",
                        r#"{"location":"Paris, France","format":"celsius"}"#
                    ),
                    call(
                        "get_current_weather",
                        r#"{"location":"Tokyo, Japan","format":"celsius"}"#
                    ),
                ]
            )
        );
    }

    /// Mistral-Small-3.2's format (tokenizer v11): name, `[ARGS]`, arguments, per call.
    #[test]
    fn v11_name_args_calls_at_every_split() {
        let text = "I'll check both.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{}";
        assert_eq!(
            parse_every_split(Mistral, text),
            (
                "I'll check both.".to_string(),
                vec![
                    call("get_weather", r#"{"city":"Paris"}"#),
                    call("get_time", "{}")
                ]
            )
        );
    }

    #[test]
    fn text_without_the_marker_is_unchanged() {
        for text in ["Hello [TOOL", "The answer is [1, 2].", "[TOOL_CALLS"] {
            assert_eq!(parse_every_split(Mistral, text), (text.to_string(), vec![]));
        }
    }

    #[test]
    fn unparsable_calls_are_content_with_the_marker() {
        for text in [
            "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"a\": 1",
            "[TOOL_CALLS] []",
            "[TOOL_CALLS]f[ARGS][1]",
            "[TOOL_CALLS]no args here",
        ] {
            assert_eq!(parse_every_split(Mistral, text), (text.to_string(), vec![]));
        }
    }
}
