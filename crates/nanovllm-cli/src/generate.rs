//! `nanovllm generate`: run prompts from flags or a JSONL file to completion.
//!
//! An `--input` in OpenAI's batch format goes to [`crate::run_batch`]; what
//! follows is about `--prompt` and the simple format.
//!
//! Every request is validated before the model runs. With `--prompt`, one bad
//! prompt is a fatal one-line error. With `--input`, a bad line becomes an
//! `{"index", "error"}` entry while the good lines still complete, and the
//! exit code is then 1.
//!
//! On stderr: the engine's start-up block, the concurrency at these requests' average
//! length, a progress bar while generating (on a terminal, without `-q`), and one summary
//! line at the end (requests, tokens in and out, time, prefill and decode tok/s).

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use nanovllm_core::startup_log::concurrency_line;
use nanovllm_core::{EngineStats, LLMEngine, Prompt, RequestOutput};
use serde_json::json;

use crate::args::GenerateArgs;
use crate::load_progress::build_engine;
use crate::logging::{progress_hidden, Verbosity};
use crate::requests::{
    open_input, params_from_flags, simple_requests, Input, InputFormat, Request,
};
use crate::run_batch;
use crate::serve::load_chat_template;

/// How one request ended, in input order.
enum Outcome {
    Done(RequestOutput),
    Failed(String),
}

/// Runs the command; `Ok(true)` when every request succeeded.
pub fn run(args: GenerateArgs, verbosity: Verbosity) -> anyhow::Result<bool> {
    if args.prompts.is_empty() && args.input.is_none() {
        anyhow::bail!("no prompts: pass --prompt TEXT (repeatable) or --input FILE.jsonl");
    }
    // Opened (and its format told) before the model loads, so a missing file fails at once.
    let input = args.input.as_deref().map(open_input).transpose()?;
    let config = args.engine.to_engine_config()?;
    let chat_template = match &input {
        Some(input) if input.format == InputFormat::OpenAiBatch => {
            load_chat_template(&config, args.chat_template.as_deref())?
        }
        _ => None,
    };
    let mut engine = build_engine(config, verbosity)?;
    if let Some(Input {
        format: InputFormat::OpenAiBatch,
        lines,
    }) = input
    {
        return run_batch::run(engine, &args, verbosity, chat_template, lines);
    }
    let defaults = params_from_flags(&engine.default_sampling_params(), &args.sampling);
    defaults.validate().context("invalid sampling flags")?;

    // Read lazily: each request becomes token ids (or its error) as it is read, so a large
    // input file is never held in memory as text.
    let requests: Box<dyn Iterator<Item = anyhow::Result<Result<Request, String>>>> = match input {
        Some(input) => Box::new(simple_requests(
            input.lines,
            defaults.clone(),
            engine.model_config().vocab_size,
        )),
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

    log_concurrency_at_average(&engine, &valid);
    let mut index_of = HashMap::new();
    let mut prompt_tokens = 0;
    for (index, (ids, params)) in valid {
        prompt_tokens += ids.len();
        let id = engine.add_request(Prompt::TokenIds(ids), params)?;
        index_of.insert(id, index);
    }

    let progress = progress_bar(verbosity, Some(index_of.len()));
    let started = Instant::now();
    let stats_before = engine.stats();
    let mut output_tokens = 0;
    while engine.has_unfinished() {
        let out = engine.step()?;
        output_tokens += out.new_tokens.len();
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
    tracing::info!(
        "{}",
        summary_line(
            index_of.len(),
            prompt_tokens,
            output_tokens,
            started.elapsed(),
            &engine.stats().since(&stats_before)
        )
    );

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

/// The start-up block's concurrency line at these requests' average length (prompt and
/// `max_tokens`, within `max_model_len`), which is what decides how many run at once.
fn log_concurrency_at_average(
    engine: &LLMEngine,
    requests: &[(usize, (Vec<u32>, nanovllm_core::SamplingParams))],
) {
    if requests.is_empty() {
        return;
    }
    let max_model_len = engine.max_model_len();
    let total: usize = requests
        .iter()
        .map(|(_, (ids, params))| (ids.len().saturating_add(params.max_tokens)).min(max_model_len))
        .sum();
    let tokens = total.div_ceil(requests.len());
    tracing::info!(
        "{} (these requests' average prompt + max_tokens)",
        concurrency_line(tokens, engine.max_concurrency(tokens))
    );
}

/// The last line: what ran and how fast (`run`: the engine's counters over the run).
fn summary_line(
    requests: usize,
    prompt_tokens: usize,
    output_tokens: usize,
    elapsed: Duration,
    run: &EngineStats,
) -> String {
    format!(
        "generate done: requests {requests}, prompt tokens {prompt_tokens}, output tokens \
         {output_tokens}, time {:.2} s, prefill {:.1} tok/s, decode {:.1} tok/s",
        elapsed.as_secs_f64(),
        run.prefill_tokens_per_s(),
        run.decode_tokens_per_s()
    )
}

/// A progress line on stderr over `total` requests (a count alone when the total is not
/// known) with prefill/decode tok/s, hidden when stderr is not a terminal or with `-q`.
pub fn progress_bar(verbosity: Verbosity, total: Option<usize>) -> ProgressBar {
    if progress_hidden(verbosity) {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::new(total as u64),
            "Generating {bar:30} {pos}/{len} [{elapsed_precise}] {msg}",
        ),
        None => (
            ProgressBar::no_length(),
            "Generating: {pos} done [{elapsed_precise}] {msg}",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
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
