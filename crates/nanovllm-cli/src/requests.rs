//! Turning `--prompt` flags or a `--input` JSONL file into requests.
//!
//! A JSONL line that cannot be parsed becomes an error entry for its index;
//! the other lines still run.

use std::io::BufRead;
use std::path::Path;

use nanovllm_core::{Prompt, SamplingOverrides, SamplingParams};
use serde::Deserialize;

use crate::args::SamplingArgs;

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
    }
    .over(base)
}

fn parse_line(text: &str, defaults: &SamplingParams) -> Result<Request, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
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
    }
    .over(defaults);
    Ok(Request { prompt, params })
}

/// Reads a JSONL file lazily, one entry per non-blank line, each a request or the reason it is
/// bad: only one line is held in memory at a time, so a caller that turns each request into
/// token ids as it goes never holds the whole file. A UTF-8 byte-order mark before the
/// first line is skipped. An error reading the file ends the iteration with that error.
pub fn read_jsonl(
    path: &Path,
    defaults: &SamplingParams,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Result<Request, String>>>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read --input {}: {e}", path.display()))?;
    Ok(parse_jsonl(
        std::io::BufReader::new(file),
        defaults.clone(),
        path.display().to_string(),
    ))
}

/// [`read_jsonl`] over any reader; `name` names the source in errors.
fn parse_jsonl(
    reader: impl BufRead,
    defaults: SamplingParams,
    name: String,
) -> impl Iterator<Item = anyhow::Result<Result<Request, String>>> {
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
                (!text.trim().is_empty()).then(|| Ok(parse_line(text, &defaults)))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_token_lines_with_overrides() {
        let d = SamplingParams::greedy(8);
        let r = parse_line(r#"{"prompt": "hi", "max_tokens": 3, "seed": 7}"#, &d).unwrap();
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        assert_eq!(r.params.max_tokens, 3);
        assert_eq!(r.params.seed, Some(7));
        assert_eq!(r.params.temperature, 0.0);
        let r = parse_line(r#"{"prompt_token_ids": [1, 2], "temperature": 0.5}"#, &d).unwrap();
        assert_eq!(r.prompt, Prompt::TokenIds(vec![1, 2]));
        assert_eq!(r.params.temperature, 0.5);
        assert_eq!(r.params.max_tokens, 8);
    }

    #[test]
    fn jsonl_skips_a_byte_order_mark_and_blank_lines() {
        let d = SamplingParams::greedy(8);
        let text = "\u{feff}{\"prompt\": \"a\"}\n\n  \n{\"prompt\": \"b\"}\n{bad\n";
        let entries: Vec<_> = parse_jsonl(text.as_bytes(), d, "in.jsonl".into())
            .map(|e| e.unwrap())
            .collect();
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
        let entries: Vec<_> = parse_jsonl(text.as_bytes(), SamplingParams::default(), "x".into())
            .map(|e| e.unwrap())
            .collect();
        assert!(entries[1].is_err());
    }

    #[test]
    fn bad_lines_explain_themselves() {
        let d = SamplingParams::default();
        let err = parse_line(r#"{"prompt": "a", "prompt_token_ids": [1]}"#, &d).unwrap_err();
        assert!(err.contains("not both"), "{err}");
        assert!(parse_line("{}", &d).unwrap_err().contains("missing"));
        assert!(parse_line("{not json", &d)
            .unwrap_err()
            .contains("invalid JSON"));
        let err = parse_line(r#"{"prompt": "a", "max_token": 3}"#, &d).unwrap_err();
        assert!(err.contains("max_token"), "{err}");
    }
}
