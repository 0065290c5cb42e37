//! `nanovllm bench serve`: load on a running OpenAI-compatible server, ours or any
//! other, measured like `vllm bench serve`.
//!
//! The run: random-token prompts ([`workload`]) are sent at their arrival offsets (all
//! at once, or a Poisson process at `--request-rate`), at most `--max-concurrency` in
//! flight, each as a streamed request timed chunk by chunk ([`client`]); the figures
//! ([`report`]) are printed, and written as JSON with `--json`.
//!
//! A first request is sent alone before the measured run, so that a wrong URL, model
//! name or key fails at once with the server's answer instead of as N failures. The
//! client runs on one thread: on a small machine shared with the server under test it
//! takes as little CPU as it can.

mod client;
mod report;
mod workload;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use nanovllm_core::Tokenizer;
use tokio::sync::Semaphore;

use crate::args::BenchServeArgs;
use client::{request_body, Api, Endpoint, PromptForm};
use report::{RunInfo, ServeBenchReport};
use workload::{arrival_offsets, BenchRequest, WorkloadShape};

/// Runs the benchmark; `Ok(false)` when some requests failed (the report counts them).
pub fn run(args: BenchServeArgs) -> anyhow::Result<bool> {
    let api = Api::of_path(&args.endpoint)?;
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("OPENAI_API_KEY").ok());
    let endpoint = Endpoint::parse(&args.base_url, api_key)?;
    let tokenizer = match &args.tokenizer {
        Some(dir) => Some(Tokenizer::from_dir(dir)?),
        None => None,
    };
    if api == Api::ChatCompletions && tokenizer.is_none() {
        anyhow::bail!(
            "--endpoint {} needs text prompts: give --tokenizer DIR (the model's tokenizer.json)",
            args.endpoint
        );
    }
    if args.request_rate.is_nan() || args.request_rate <= 0.0 {
        anyhow::bail!(
            "--request-rate is {}: give requests per second > 0, or inf for all at once",
            args.request_rate
        );
    }
    if args.max_concurrency == Some(0) {
        anyhow::bail!("--max-concurrency is 0: give at least 1, or leave it out for no limit");
    }
    let shape = WorkloadShape {
        num_prompts: args.num_prompts,
        prefix_len: args.random_prefix_len,
        input_len: args.random_input_len,
        output_len: args.random_output_len,
        range_ratio: args.random_range_ratio,
        vocab_size: tokenizer
            .as_ref()
            .map_or(args.vocab_size, Tokenizer::vocab_size),
        seed: args.seed,
    };
    shape.validate()?;
    let prompts = shape
        .requests()
        .into_iter()
        .map(|request| prompt_form(request, tokenizer.as_ref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(measure(&args, api, endpoint, prompts))?;
    print!("{report}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write --json {}", path.display()))?;
    }
    Ok(report.failed == 0)
}

/// A request with its prompt in the form it is sent.
struct Prepared {
    prompt: PromptForm,
    prompt_tokens: usize,
    max_tokens: usize,
}

fn prompt_form(request: BenchRequest, tokenizer: Option<&Tokenizer>) -> anyhow::Result<Prepared> {
    let prompt_tokens = request.prompt_token_ids.len();
    let prompt = match tokenizer {
        // The server re-tokenizes the text: its usage gives the true prompt length.
        Some(t) => PromptForm::Text(t.decode(&request.prompt_token_ids)?),
        None => PromptForm::TokenIds(request.prompt_token_ids),
    };
    Ok(Prepared {
        prompt,
        prompt_tokens,
        max_tokens: request.max_tokens,
    })
}

async fn measure(
    args: &BenchServeArgs,
    api: Api,
    endpoint: Endpoint,
    prompts: Vec<Prepared>,
) -> anyhow::Result<ServeBenchReport> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => served_model(&endpoint).await?,
    };
    let bodies = prompts
        .into_iter()
        .map(|p| {
            let body = request_body(
                api,
                &model,
                p.prompt,
                p.max_tokens,
                args.temperature,
                args.ignore_eos,
            )?;
            Ok((body, p.prompt_tokens))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let (first_body, first_tokens) = bodies[0].clone();
    let test = endpoint
        .run(&args.endpoint, api, first_body, first_tokens)
        .await;
    if let Some(err) = test.error {
        anyhow::bail!(
            "the first request failed, so the benchmark did not start: {err} \
             (check --base-url, --endpoint and --model)"
        );
    }

    let progress = progress_bar(bodies.len() as u64);
    let offsets = arrival_offsets(bodies.len(), args.request_rate, args.seed);
    let limit = Arc::new(Semaphore::new(
        args.max_concurrency.unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let endpoint = Arc::new(endpoint);
    let start = Instant::now();
    let t0 = tokio::time::Instant::now();
    let tasks: Vec<_> = bodies
        .into_iter()
        .zip(offsets)
        .map(|((body, prompt_tokens), offset)| {
            let (endpoint, limit, progress) = (endpoint.clone(), limit.clone(), progress.clone());
            let path = args.endpoint.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(t0 + offset).await;
                let _permit = limit
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let outcome = endpoint.run(&path, api, body, prompt_tokens).await;
                progress.inc(1);
                outcome
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.context("a request task panicked")?);
    }
    let duration = start.elapsed();
    progress.finish_and_clear();
    let finite_rate = args.request_rate.is_finite().then_some(args.request_rate);
    let info = RunInfo {
        base_url: args.base_url.clone(),
        endpoint: args.endpoint.clone(),
        model,
        request_rate: finite_rate,
        max_concurrency: args.max_concurrency,
    };
    Ok(ServeBenchReport::new(info, &outcomes, duration))
}

/// The first model the server lists (`GET /v1/models`).
async fn served_model(endpoint: &Endpoint) -> anyhow::Result<String> {
    let models = endpoint
        .get_json("/v1/models")
        .await
        .context("cannot ask the server for its model (or give --model NAME)")?;
    models["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .context("the server's /v1/models lists no model: give --model NAME")
}

/// Requests done, on stderr when it is a terminal.
fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests {elapsed}")
            .expect("a valid template"),
    );
    bar
}
