//! Turning `--prompt` flags or a `--input` JSONL file into requests.
//!
//! `--input` (a file, or `-` for stdin) holds one of two formats, told apart by
//! its first non-blank line ([`open_input`]): the simple one parsed here, or
//! OpenAI's batch format, run by [`crate::run_batch`]. A line of the other
//! format than the first line's is a bad line. A JSONL line that cannot be
//! parsed becomes an error entry for its index; the other lines still run.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use nanovllm_core::{Prompt, SamplingOverrides, SamplingParams};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::args::SamplingArgs;
use crate::serve::sampling::parse_logit_bias;
use crate::serve::structured_output::from_structured_outputs;

/// One request as read from the input, before the engine validates it.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    pub params: SamplingParams,
}

/// One JSONL line. Unknown fields are errors so that a typo never silently runs with defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    prompt: Option<String>,
    prompt_token_ids: Option<Vec<u32>>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    seed: Option<u64>,
    ignore_eos: Option<bool>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    /// `{"token id": bias}`, as the server reads it.
    logit_bias: Option<BTreeMap<String, f32>>,
    /// vLLM's `structured_outputs` object, as the server reads it.
    structured_outputs: Option<Json>,
}

/// Applies the sampling flags over `base` (the model's generation defaults).
pub fn params_from_flags(base: &SamplingParams, flags: &SamplingArgs) -> SamplingParams {
    SamplingOverrides {
        max_tokens: flags.max_tokens,
        temperature: flags.temperature,
        top_p: flags.top_p,
        top_k: flags.top_k,
        min_p: flags.min_p,
        // `--seed` is the engine's (EngineConfig::seed): requests without a seed of their
        // own draw from it and their id.
        seed: None,
        // A switch: it can turn ignore_eos on, never off.
        ignore_eos: flags.ignore_eos.then_some(true),
        stop_token_ids: None,
        ..SamplingOverrides::default()
    }
    .over(base)
}

fn parse_line(text: &str, defaults: &SamplingParams, vocab_size: usize) -> Result<Request, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| {
        if is_batch_line(text) {
            "this line is in the OpenAI batch format, but the input's first line is in the \
             simple format: one input holds one format"
                .to_string()
        } else {
            format!("invalid JSON: {e}")
        }
    })?;
    let prompt = match (line.prompt, line.prompt_token_ids) {
        (Some(p), None) => Prompt::Text(p),
        (None, Some(ids)) => Prompt::TokenIds(ids),
        (Some(_), Some(_)) => {
            return Err("give either \"prompt\" or \"prompt_token_ids\", not both".into())
        }
        (None, None) => return Err("missing \"prompt\" or \"prompt_token_ids\"".into()),
    };
    let params = SamplingOverrides {
        max_tokens: line.max_tokens,
        temperature: line.temperature,
        top_p: line.top_p,
        top_k: line.top_k,
        min_p: line.min_p,
        seed: line.seed,
        ignore_eos: line.ignore_eos,
        stop_token_ids: None,
        presence_penalty: line.presence_penalty,
        frequency_penalty: line.frequency_penalty,
        repetition_penalty: line.repetition_penalty,
        logit_bias: line
            .logit_bias
            .map(|biases| parse_logit_bias(&biases, vocab_size))
            .transpose()
            .map_err(|e| e.to_string())?,
        structured_output: line
            .structured_outputs
            .map(|object| from_structured_outputs(&object))
            .transpose()
            .map_err(|e| e.to_string())?,
        ..SamplingOverrides::default()
    }
    .over(defaults);
    Ok(Request { prompt, params })
}

/// The two formats `--input` reads, told apart by the file's first non-blank line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// `{"prompt": ...}` or `{"prompt_token_ids": [...]}` with sampling fields.
    Simple,
    /// OpenAI's batch format (vLLM's `run-batch`): `{"custom_id", "method", "url", "body"}`.
    OpenAiBatch,
}

/// A non-blank input line and its 1-based line number.
pub type NumberedLine = (usize, String);

/// Lines of `--input`, read lazily.
pub type InputLines = Box<dyn Iterator<Item = anyhow::Result<NumberedLine>> + Send>;

/// `--input`, opened: its format and its non-blank lines (the first one included).
pub struct Input {
    pub format: InputFormat,
    pub lines: InputLines,
}

/// Opens `--input` (`-` is stdin) and reads up to its first non-blank line to tell the
/// format: a line that is a JSON object with a `custom_id`, `url` or `body` field is
/// [`InputFormat::OpenAiBatch`], anything else [`InputFormat::Simple`]. Lines are then read
/// one at a time (see [`non_blank_lines`]).
pub fn open_input(path: &Path) -> anyhow::Result<Input> {
    let (reader, name): (Box<dyn BufRead + Send>, String) = if path == Path::new("-") {
        (
            Box::new(std::io::BufReader::new(std::io::stdin())),
            "- (stdin)".into(),
        )
    } else {
        let file = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot read --input {}: {e}", path.display()))?;
        (
            Box::new(std::io::BufReader::new(file)),
            path.display().to_string(),
        )
    };
    let mut lines = non_blank_lines(reader, name);
    let first = lines.next().transpose()?;
    let format = match &first {
        Some((_, text)) if is_batch_line(text) => InputFormat::OpenAiBatch,
        _ => InputFormat::Simple,
    };
    Ok(Input {
        format,
        lines: Box::new(first.map(Ok).into_iter().chain(lines)),
    })
}

/// Whether `text` is a JSON object holding a field only the OpenAI batch format has.
pub fn is_batch_line(text: &str) -> bool {
    matches!(
        serde_json::from_str::<serde_json::Value>(text),
        Ok(serde_json::Value::Object(fields))
            if ["custom_id", "url", "body"].iter().any(|k| fields.contains_key(*k))
    )
}

/// The simple format's requests of `lines` for a model of `vocab_size` tokens, each a
/// request or the reason it is bad.
pub fn simple_requests(
    lines: InputLines,
    defaults: SamplingParams,
    vocab_size: usize,
) -> impl Iterator<Item = anyhow::Result<Result<Request, String>>> {
    lines.map(move |line| line.map(|(_, text)| parse_line(&text, &defaults, vocab_size)))
}

/// The lines of `reader` that are not blank, numbered from 1, read lazily: only one line is
/// held in memory at a time, so a caller that turns each into a request as it goes never
/// holds the whole input. A UTF-8 byte-order mark before the first line is skipped. An
/// error reading ends the iteration with that error; `name` names the input in it.
pub fn non_blank_lines(
    reader: impl BufRead + Send + 'static,
    name: String,
) -> impl Iterator<Item = anyhow::Result<NumberedLine>> + Send {
    reader
        .lines()
        .enumerate()
        .filter_map(move |(number, line)| match line {
            Err(e) => Some(Err(anyhow::anyhow!(
                "cannot read --input {name} at line {}: {e}",
                number + 1
            ))),
            Ok(line) => {
                let text = match number {
                    0 => line.strip_prefix('\u{feff}').unwrap_or(&line),
                    _ => &line,
                };
                (!text.trim().is_empty()).then(|| Ok((number + 1, text.to_string())))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nanovllm_core::StructuredOutput;

    const VOCAB: usize = 1000;

    #[test]
    fn text_and_token_lines_with_overrides() {
        let d = SamplingParams::greedy(8);
        let r = parse_line(r#"{"prompt": "hi", "max_tokens": 3, "seed": 7}"#, &d, VOCAB).unwrap();
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        assert_eq!(r.params.max_tokens, 3);
        assert_eq!(r.params.seed, Some(7));
        assert_eq!(r.params.temperature, 0.0);
        let r = parse_line(
            r#"{"prompt_token_ids": [1, 2], "temperature": 0.5}"#,
            &d,
            VOCAB,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::TokenIds(vec![1, 2]));
        assert_eq!(r.params.temperature, 0.5);
        assert_eq!(r.params.max_tokens, 8);
    }

    fn parsed(text: &'static str, d: &SamplingParams) -> Vec<Result<Request, String>> {
        let lines: InputLines = Box::new(non_blank_lines(text.as_bytes(), "in.jsonl".into()));
        simple_requests(lines, d.clone(), VOCAB)
            .map(|e| e.unwrap())
            .collect()
    }

    #[test]
    fn jsonl_skips_a_byte_order_mark_and_blank_lines() {
        let d = SamplingParams::greedy(8);
        let text = "\u{feff}{\"prompt\": \"a\"}\n\n  \n{\"prompt\": \"b\"}\n{bad\n";
        let numbers: Vec<usize> = non_blank_lines(text.as_bytes(), "x".into())
            .map(|l| l.unwrap().0)
            .collect();
        assert_eq!(numbers, [1, 4, 5]);
        let entries = parsed(text, &d);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0].as_ref().unwrap().prompt,
            Prompt::Text("a".into())
        );
        assert_eq!(
            entries[1].as_ref().unwrap().prompt,
            Prompt::Text("b".into())
        );
        assert!(entries[2].as_ref().unwrap_err().contains("invalid JSON"));
        // A mark anywhere but the start is not skipped: it is not JSON.
        let text = "{\"prompt\": \"a\"}\n\u{feff}{\"prompt\": \"b\"}\n";
        assert!(parsed(text, &SamplingParams::default())[1].is_err());
    }

    #[test]
    fn the_first_line_tells_the_format() {
        assert!(is_batch_line(
            r#"{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}"#
        ));
        assert!(is_batch_line(r#"{"body": {}}"#));
        assert!(!is_batch_line(r#"{"prompt": "hi"}"#));
        assert!(!is_batch_line("[1]"));
        assert!(!is_batch_line("{not json"));
        // A batch line in a simple input says why it is refused.
        let err = parse_line(
            r#"{"custom_id": "a", "url": "/v1/completions", "body": {}}"#,
            &SamplingParams::default(),
            VOCAB,
        )
        .unwrap_err();
        assert!(err.contains("one input holds one format"), "{err}");
    }

    #[test]
    fn bad_lines_explain_themselves() {
        let d = SamplingParams::default();
        let err = parse_line(r#"{"prompt": "a", "prompt_token_ids": [1]}"#, &d, VOCAB).unwrap_err();
        assert!(err.contains("not both"), "{err}");
        assert!(parse_line("{}", &d, VOCAB).unwrap_err().contains("missing"));
        assert!(parse_line("{not json", &d, VOCAB)
            .unwrap_err()
            .contains("invalid JSON"));
        let err = parse_line(r#"{"prompt": "a", "max_token": 3}"#, &d, VOCAB).unwrap_err();
        assert!(err.contains("max_token"), "{err}");
    }

    #[test]
    fn penalties_biases_and_structured_outputs() {
        let d = SamplingParams::default();
        let r = parse_line(
            r#"{"prompt": "a", "presence_penalty": 0.5, "frequency_penalty": -1,
                "repetition_penalty": 1.3, "logit_bias": {"42": -100, "7": 3},
                "structured_outputs": {"json": {"type": "integer"}}}"#,
            &d,
            VOCAB,
        )
        .unwrap();
        assert_eq!(r.params.presence_penalty, 0.5);
        assert_eq!(r.params.frequency_penalty, -1.0);
        assert_eq!(r.params.repetition_penalty, 1.3);
        assert_eq!(r.params.logit_bias, vec![(7, 3.0), (42, -100.0)]);
        assert_eq!(
            r.params.structured_output,
            Some(StructuredOutput::JsonSchema {
                schema: r#"{"type":"integer"}"#.into(),
                strict: false
            })
        );
        let r = parse_line(
            r#"{"prompt": "a", "structured_outputs": {"choice": ["x", "y"]}}"#,
            &d,
            VOCAB,
        )
        .unwrap();
        assert_eq!(
            r.params.structured_output,
            Some(StructuredOutput::Choice(vec!["x".into(), "y".into()]))
        );
        // The server's messages, for the same mistakes.
        for (line, says) in [
            (
                r#"{"prompt": "a", "logit_bias": {"1000": 1}}"#,
                "out of range",
            ),
            (r#"{"prompt": "a", "logit_bias": {"a": 1}}"#, "token ids"),
            (
                r#"{"prompt": "a", "structured_outputs": {"regex": "a", "choice": ["b"]}}"#,
                "one constraint",
            ),
            (
                r#"{"prompt": "a", "structured_outputs": {"json": "{"}}"#,
                "not the JSON text",
            ),
        ] {
            let err = parse_line(line, &d, VOCAB).unwrap_err();
            assert!(err.contains(says), "{line}: {err}");
        }
    }
}
