//! `nanovllm generate`: run prompts from flags or a JSONL file to completion.
//!
//! Every request is validated before the model runs. With `--prompt`, one bad
//! prompt is a fatal one-line error. With `--input`, a bad line becomes an
//! `{"index", "error"}` entry while the good lines still complete, and the
//! exit code is then 1.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use nanovllm_core::{LLMEngine, Prompt, RequestOutput};
use serde_json::json;

use crate::args::GenerateArgs;
use crate::requests::{params_from_flags, read_jsonl, Request};

/// How one request ended, in input order.
enum Outcome {
    Done(RequestOutput),
    Failed(String),
}

/// Runs the command; `Ok(true)` when every request succeeded.
pub fn run(args: GenerateArgs) -> anyhow::Result<bool> {
    if args.prompts.is_empty() && args.input.is_none() {
        anyhow::bail!("no prompts: pass --prompt TEXT (repeatable) or --input FILE.jsonl");
    }
    let config = args.engine.to_engine_config()?;
    let mut engine = LLMEngine::new(config)?;
    let defaults = params_from_flags(&engine.default_sampling_params(), &args.sampling);
    defaults.validate().context("invalid sampling flags")?;

    // Read lazily: each request becomes token ids (or its error) as it is read, so a large
    // input file is never held in memory as text.
    let requests: Box<dyn Iterator<Item = anyhow::Result<Result<Request, String>>>> =
        match &args.input {
            Some(path) => Box::new(read_jsonl(path, &defaults)?),
            None => Box::new(args.prompts.iter().map(|p| {
                Ok(Ok(Request {
                    prompt: Prompt::Text(p.clone()),
                    params: defaults.clone(),
                }))
            })),
        };
    let lenient = args.input.is_some();

    // Validate everything before the model runs.
    let mut outcomes: Vec<Option<Outcome>> = Vec::new();
    let mut valid = Vec::new();
    for (index, request) in requests.enumerate() {
        outcomes.push(None);
        let checked = request?.and_then(|r| {
            engine
                .validate_request(r.prompt, &r.params)
                .map(|ids| (ids, r.params))
                .map_err(|e| e.to_string())
        });
        match checked {
            Ok(ok) => valid.push((index, ok)),
            Err(msg) if lenient => outcomes[index] = Some(Outcome::Failed(msg)),
            Err(msg) => anyhow::bail!("prompt {index}: {msg}"),
        }
    }

    let mut index_of = HashMap::new();
    for (index, (ids, params)) in valid {
        let id = engine.add_request(Prompt::TokenIds(ids), params)?;
        index_of.insert(id, index);
    }

    let progress = progress_bar(args.quiet, index_of.len());
    while engine.has_unfinished() {
        let out = engine.step()?;
        for finished in out.finished {
            if let Some(&index) = index_of.get(&finished.request_id) {
                progress.inc(1);
                outcomes[index] = Some(match &finished.error {
                    Some(e) => Outcome::Failed(e.clone()),
                    None => Outcome::Done(finished),
                });
            }
        }
        let stats = engine.stats();
        progress.set_message(format!(
            "prefill {:.0} tok/s, decode {:.0} tok/s",
            stats.prefill_tokens_per_s(),
            stats.decode_tokens_per_s()
        ));
    }
    progress.finish_and_clear();

    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Failed("request was lost by the engine".into())))
        .collect();
    let all_ok = outcomes.iter().all(|o| matches!(o, Outcome::Done(_)));
    match args.output.as_deref() {
        Some("-") => write_jsonl(&mut std::io::stdout().lock(), &outcomes)?,
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create --output {path}"))?;
            let mut w = std::io::BufWriter::new(file);
            write_jsonl(&mut w, &outcomes)?;
            w.flush()?;
        }
        None => write_text(&mut std::io::stdout().lock(), &outcomes)?,
    }
    Ok(all_ok)
}

/// A progress line on stderr with prefill/decode tok/s, hidden when stderr is
/// not a terminal or with `--quiet`.
fn progress_bar(quiet: bool, total: usize) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("Generating {bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn write_jsonl(w: &mut impl Write, outcomes: &[Outcome]) -> anyhow::Result<()> {
    for (index, outcome) in outcomes.iter().enumerate() {
        let line = match outcome {
            Outcome::Done(o) => json!({
                "index": index,
                "text": o.text,
                "token_ids": o.token_ids,
                "finish_reason": o.finish_reason.as_openai_str(),
            }),
            Outcome::Failed(error) => json!({ "index": index, "error": error }),
        };
        writeln!(w, "{line}")?;
    }
    Ok(())
}

fn write_text(w: &mut impl Write, outcomes: &[Outcome]) -> anyhow::Result<()> {
    for (index, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Outcome::Done(o) => writeln!(
                w,
                "[{index}] ({} tokens, finish: {})\n{}\n",
                o.token_ids.len(),
                o.finish_reason.as_openai_str(),
                o.text
            )?,
            Outcome::Failed(error) => writeln!(w, "[{index}] error: {error}\n")?,
        }
    }
    Ok(())
}
