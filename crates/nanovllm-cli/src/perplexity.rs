//! `nanovllm perplexity --model M --input FILE.jsonl [--json]`: the perplexity of a JSONL
//! file of token ids or texts under the model, scored with prompt logprobs through the
//! normal engine path ([`nanovllm_core::perplexity`], which defines the figures: the first
//! token of each line is not scored). Every engine flag applies (`--quantization`,
//! `--kv-cache-dtype`, `--max-num-batched-tokens`, ...).
//!
//! Input: one `{"prompt_token_ids": [...]}` or `{"text": "..."}` per non-blank line (`-`:
//! stdin); other fields are ignored (an eval set may name each line's source). Texts are
//! tokenized by the model's tokenizer with its default special tokens (HF's
//! `add_special_tokens=True`, as the `tokenizers` library's `encode(text)`: a BOS for
//! Llama-style tokenizers, nothing for Qwen's). Every line is checked before any is scored:
//! malformed JSON before the model loads, then each line as a request; the bad lines are
//! listed together by line number and nothing runs.
//!
//! Output on stdout: `perplexity 126.4366 over 5585 tokens (24 lines)`, or with `--json` one
//! object: `perplexity`, `tokens` (scored), `lines`, `nll_sum` and `line_scores` (per line:
//! its input `line` number, `tokens` and `nll_sum`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use nanovllm_core::perplexity::{self, PerplexityError, PerplexityReport};
use nanovllm_core::Prompt;
use serde::Deserialize;
use serde_json::json;

use crate::args::EngineArgs;
use crate::generate::progress_bar;
use crate::load_progress::build_engine;
use crate::logging::Verbosity;
use crate::requests::{open_input, NumberedLine};

/// At most this many bad lines are named in the error (then a count of the rest).
const MAX_BAD_LINES_SHOWN: usize = 10;

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// JSONL (`-`: stdin): one `{"prompt_token_ids": [...]}` or `{"text": "..."}` per line.
    /// Texts are tokenized with the tokenizer's default special tokens.
    #[arg(long, value_name = "FILE.jsonl|-")]
    pub input: PathBuf,
    /// Print one JSON object (perplexity, tokens, lines, nll_sum, line_scores) instead of
    /// the text line.
    #[arg(long)]
    pub json: bool,
}

/// One input line. Unknown fields are ignored: there is no default they could be a typo of.
#[derive(Debug, Deserialize)]
struct Line {
    prompt_token_ids: Option<Vec<u32>>,
    text: Option<String>,
}

/// Runs the command; `Ok(true)` on success (any failure is an error, exit code 2).
pub fn run(args: PerplexityArgs, verbosity: Verbosity) -> anyhow::Result<bool> {
    let input_name = args.input.display().to_string();
    let mut numbered = Vec::new();
    let mut bad = Vec::new();
    for line in open_input(&args.input)?.lines {
        let (number, text) = line?;
        match parse_line(&text) {
            Ok(prompt) => numbered.push((number, prompt)),
            Err(msg) => bad.push((number, msg)),
        }
    }
    refuse_bad_lines(&input_name, &bad)?;
    if numbered.is_empty() {
        anyhow::bail!("--input {input_name} holds no line to score");
    }

    let mut engine = build_engine(args.engine.to_engine_config()?, verbosity)?;
    let mut lines = Vec::with_capacity(numbered.len());
    let mut line_numbers = Vec::with_capacity(numbered.len());
    for (number, prompt) in numbered {
        match perplexity::prepare_line(&engine, prompt) {
            Ok(ids) => {
                lines.push(ids);
                line_numbers.push(number);
            }
            Err(e) => bad.push((number, e.to_string())),
        }
    }
    refuse_bad_lines(&input_name, &bad)?;

    let started = Instant::now();
    let stats_before = engine.stats();
    let progress = progress_bar(verbosity, Some(lines.len()));
    let report = perplexity::score(&mut engine, lines, &mut |done| {
        progress.set_position(done as u64)
    })
    .map_err(|e| match e {
        PerplexityError::Line { index, source } => {
            anyhow::anyhow!("line {}: {source}", line_numbers[index])
        }
        PerplexityError::NotScored { index, reason } => {
            anyhow::anyhow!("line {} was not scored: {reason}", line_numbers[index])
        }
        PerplexityError::Engine(e) => e.into(),
    })?;
    progress.finish_and_clear();
    let run = engine.stats().since(&stats_before);
    tracing::info!(
        "perplexity done: lines {}, tokens scored {}, time {:.2} s, prefill {:.1} tok/s",
        report.lines,
        report.tokens,
        started.elapsed().as_secs_f64(),
        run.prefill_tokens_per_s()
    );
    let text = match args.json {
        true => report_json(&report, &line_numbers).to_string(),
        false => report_line(&report),
    };
    // Not println!: a closed stdout (`| head`) is an error to report, not a panic.
    writeln!(std::io::stdout().lock(), "{text}")?;
    Ok(true)
}

/// A line's prompt, or why it is not one.
fn parse_line(text: &str) -> Result<Prompt, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    match (line.prompt_token_ids, line.text) {
        (Some(ids), None) => Ok(Prompt::TokenIds(ids)),
        (None, Some(text)) => Ok(Prompt::Text(text)),
        (Some(_), Some(_)) => Err("give either \"prompt_token_ids\" or \"text\", not both".into()),
        (None, None) => {
            Err("missing \"prompt_token_ids\" (a list of token ids) or \"text\"".into())
        }
    }
}

/// An error naming every bad line (the first [`MAX_BAD_LINES_SHOWN`], then a count), or
/// `Ok` when there is none.
fn refuse_bad_lines(input: &str, bad: &[NumberedLine]) -> anyhow::Result<()> {
    if bad.is_empty() {
        return Ok(());
    }
    let mut shown: Vec<String> = bad
        .iter()
        .take(MAX_BAD_LINES_SHOWN)
        .map(|(number, msg)| format!("line {number}: {msg}"))
        .collect();
    if bad.len() > MAX_BAD_LINES_SHOWN {
        shown.push(format!("and {} more", bad.len() - MAX_BAD_LINES_SHOWN));
    }
    anyhow::bail!(
        "--input {input}: {} bad line(s), nothing was scored; fix or remove them: {}",
        bad.len(),
        shown.join("; ")
    )
}

/// The text report.
fn report_line(report: &PerplexityReport) -> String {
    format!(
        "perplexity {:.4} over {} tokens ({} lines)",
        report.perplexity, report.tokens, report.lines
    )
}

/// The `--json` report; `line_numbers[i]` is line `i`'s number in the input.
fn report_json(report: &PerplexityReport, line_numbers: &[usize]) -> serde_json::Value {
    let line_scores: Vec<serde_json::Value> = report
        .line_scores
        .iter()
        .zip(line_numbers)
        .map(
            |(score, line)| json!({"line": line, "tokens": score.tokens, "nll_sum": score.nll_sum}),
        )
        .collect();
    json!({
        "perplexity": report.perplexity,
        "tokens": report.tokens,
        "lines": report.lines,
        "nll_sum": report.nll_sum,
        "line_scores": line_scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nanovllm_core::perplexity::LineScore;

    #[test]
    fn lines_hold_token_ids_or_a_text() {
        assert_eq!(
            parse_line(r#"{"prompt_token_ids": [1, 2], "file": "a.md"}"#).unwrap(),
            Prompt::TokenIds(vec![1, 2])
        );
        assert_eq!(
            parse_line(r#"{"text": "hi"}"#).unwrap(),
            Prompt::Text("hi".into())
        );
        let both = parse_line(r#"{"text": "hi", "prompt_token_ids": [1]}"#).unwrap_err();
        assert!(both.contains("not both"), "{both}");
        let none = parse_line(r#"{"prompt": "hi"}"#).unwrap_err();
        assert!(none.contains("missing"), "{none}");
        assert!(parse_line("[1, 2]").unwrap_err().contains("invalid JSON"));
        assert!(parse_line(r#"{"prompt_token_ids": [-1]}"#)
            .unwrap_err()
            .contains("invalid JSON"));
    }

    #[test]
    fn bad_lines_are_named_together_then_counted() {
        assert!(refuse_bad_lines("in.jsonl", &[]).is_ok());
        let bad: Vec<NumberedLine> = (1..=12).map(|n| (n, format!("bad {n}"))).collect();
        let err = refuse_bad_lines("in.jsonl", &bad).unwrap_err().to_string();
        assert!(err.starts_with("--input in.jsonl: 12 bad line(s)"), "{err}");
        assert!(err.contains("line 10: bad 10; and 2 more"), "{err}");
        assert!(!err.contains("line 11"), "{err}");
    }

    #[test]
    fn reports_as_text_and_json() {
        let report = PerplexityReport::from_lines(vec![
            LineScore {
                tokens: 3,
                nll_sum: 2.0,
            },
            LineScore {
                tokens: 2,
                nll_sum: 1.0,
            },
        ]);
        assert_eq!(
            report_line(&report),
            format!("perplexity {:.4} over 3 tokens (2 lines)", 1.0f64.exp())
        );
        let json = report_json(&report, &[1, 4]);
        assert_eq!(json["tokens"], 3);
        assert_eq!(json["lines"], 2);
        assert_eq!(json["nll_sum"], 3.0);
        assert_eq!(json["line_scores"][1]["line"], 4);
        assert_eq!(json["line_scores"][1]["tokens"], 2);
        assert_eq!(json["line_scores"][0]["nll_sum"], 2.0);
    }
}
