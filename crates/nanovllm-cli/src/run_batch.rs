//! `nanovllm generate --input` in OpenAI's batch format, as vLLM's `run-batch`
//! reads and writes it.
//!
//! Input: one request per line, `{"custom_id": "...", "method": "POST", "url":
//! "/v1/completions" | "/v1/chat/completions", "body": {...}}`, where `body` is
//! what the server's endpoint takes. Output: one line per input line, in input
//! order, `{"id": "batch_req_...", "custom_id", "response", "error"}`:
//!
//! - success: `response` is `{"status_code": 200, "request_id", "body"}` with the
//!   endpoint's `text_completion` or `chat.completion` object (with `usage`),
//!   `request_id` its `id`, and `error` is null;
//! - refused by the endpoint (a bad field, a prompt too long, a failure while
//!   generating): `response` is `{"status_code": 4xx/5xx, "request_id", "body":
//!   {"error": {...}}}` with the server's error object, and `error` is
//!   `{"code", "message"}` too (the error's `code`, else its `type`);
//! - a line that never reaches an endpoint (not JSON, a field missing or of the
//!   wrong type, a `custom_id` seen before, a method other than POST, another
//!   url, a simple-format line): `response` is null and `error` is `{"code",
//!   "message"}`, the message starting with the input line's number.
//!
//! So `error` is null exactly when the line succeeded; any failed line makes
//! the exit code 1, and never stops the others.
//!
//! Each line runs through the server's own handlers
//! ([`completions::handle`], [`chat_completions::handle`]) on the server's engine
//! thread, so bodies are checked, templated and answered exactly as `serve`
//! does; the sampling flags are the defaults under each body, as for `serve`.
//! `stream: true` is refused (a batch answers in one body). Lines are read
//! lazily and at most [`in_flight_limit`] of them run at once; answers that
//! finish early wait in memory until the lines before them are written.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use nanovllm_core::{ChatTemplate, LLMEngine};
use serde::Serialize;
use serde_json::Value as Json;
use tokio::sync::{mpsc, Semaphore};

use crate::args::GenerateArgs;
use crate::generate::progress_bar;
use crate::logging::Verbosity;
use crate::requests::{InputLines, NumberedLine};
use crate::serve::chat_output::ParserOptions;
use crate::serve::errors::ApiError;
use crate::serve::openai_types::{response_id, unique_suffix};
use crate::serve::state::{AppState, ServerLimits};
use crate::serve::{
    chat_completions, completions, request_defaults, served_name, start, ServerOptions,
};

/// Why a line never reached an endpoint; each has OpenAI's batch error `code`.
#[derive(Debug, thiserror::Error)]
enum LineError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("this line is in the simple format, but the input's first line is in the OpenAI batch format: one input holds one format")]
    SimpleFormat,
    #[error("a batch line must be a JSON object {{\"custom_id\", \"method\", \"url\", \"body\"}}, got {0}")]
    NotAnObject(String),
    #[error("missing `{0}`: a batch line is {{\"custom_id\", \"method\", \"url\", \"body\"}}")]
    Missing(&'static str),
    #[error("`{field}` must be {what}, got {value}")]
    WrongType {
        field: &'static str,
        what: &'static str,
        value: String,
    },
    #[error("unknown field `{0}`: a batch line holds only custom_id, method, url and body")]
    UnknownField(String),
    #[error("custom_id `{0}` was already used by an earlier line: give every line its own")]
    DuplicateCustomId(String),
    #[error("method `{0}` is not supported: batch requests are POST")]
    Method(String),
    #[error("url `{0}` is not supported: use /v1/completions or /v1/chat/completions")]
    Url(String),
}

impl LineError {
    fn code(&self) -> &'static str {
        match self {
            LineError::InvalidJson(_) | LineError::SimpleFormat | LineError::NotAnObject(_) => {
                "invalid_json_line"
            }
            LineError::Missing(_) => "missing_required_parameter",
            LineError::WrongType { .. } | LineError::UnknownField(_) => "invalid_request",
            LineError::DuplicateCustomId(_) => "duplicate_custom_id",
            LineError::Method(_) => "invalid_method",
            LineError::Url(_) => "invalid_url",
        }
    }
}

/// The endpoints a line may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Completions,
    ChatCompletions,
}

/// A line that passed the envelope checks.
#[derive(Debug)]
struct BatchRequest {
    custom_id: String,
    endpoint: Endpoint,
    body: Json,
}

/// Checks the envelope of a line (everything but the body, which its endpoint checks).
/// On error, also returns the line's `custom_id` when it has a string one.
fn parse_line(text: &str) -> Result<BatchRequest, (Option<String>, LineError)> {
    let value: Json =
        serde_json::from_str(text).map_err(|e| (None, LineError::InvalidJson(e.to_string())))?;
    let Json::Object(mut fields) = value else {
        return Err((None, LineError::NotAnObject(value.to_string())));
    };
    let custom_id = match fields.remove("custom_id") {
        Some(Json::String(id)) => Some(id),
        _ if !fields.contains_key("url") && !fields.contains_key("body") => {
            return Err((None, LineError::SimpleFormat));
        }
        None => None,
        Some(other) => {
            return Err((
                None,
                LineError::WrongType {
                    field: "custom_id",
                    what: "a string",
                    value: other.to_string(),
                },
            ))
        }
    };
    let fail = |e: LineError| -> Result<BatchRequest, (Option<String>, LineError)> {
        Err((custom_id.clone(), e))
    };
    let Some(id) = custom_id.clone() else {
        return fail(LineError::Missing("custom_id"));
    };
    let mut string = |field: &'static str| match fields.remove(field) {
        None => Err(LineError::Missing(field)),
        Some(Json::String(s)) => Ok(s),
        Some(other) => Err(LineError::WrongType {
            field,
            what: "a string",
            value: other.to_string(),
        }),
    };
    let method = match string("method") {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let url = match string("url") {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    let body = match fields.remove("body") {
        None => return fail(LineError::Missing("body")),
        Some(body @ Json::Object(_)) => body,
        Some(other) => {
            return fail(LineError::WrongType {
                field: "body",
                what: "a JSON object (the endpoint's request)",
                value: other.to_string(),
            })
        }
    };
    if let Some(unknown) = fields.keys().next() {
        return fail(LineError::UnknownField(unknown.clone()));
    }
    if !method.eq_ignore_ascii_case("POST") {
        return fail(LineError::Method(method));
    }
    let endpoint = match url.as_str() {
        "/v1/completions" => Endpoint::Completions,
        "/v1/chat/completions" => Endpoint::ChatCompletions,
        _ => return fail(LineError::Url(url)),
    };
    Ok(BatchRequest {
        custom_id: id,
        endpoint,
        body,
    })
}

/// One output line; fields in the order OpenAI and vLLM write them.
#[derive(Debug, Serialize)]
struct OutputLine {
    id: String,
    custom_id: Option<String>,
    response: Option<ResponseData>,
    /// `None` exactly when the line succeeded.
    error: Option<ErrorData>,
}

#[derive(Debug, Serialize)]
struct ResponseData {
    status_code: u16,
    request_id: Json,
    body: Json,
}

#[derive(Debug, Serialize)]
struct ErrorData {
    code: Json,
    message: Json,
}

fn batch_request_id() -> String {
    format!("batch_req_{}", unique_suffix())
}

/// The output line of a request the endpoint answered.
fn answered(custom_id: String, body: Json) -> OutputLine {
    OutputLine {
        id: batch_request_id(),
        custom_id: Some(custom_id),
        response: Some(ResponseData {
            status_code: 200,
            request_id: body.get("id").cloned().unwrap_or(Json::Null),
            body,
        }),
        error: None,
    }
}

/// The output line of a request the endpoint refused (`status`, `body` its error body).
fn refused(custom_id: String, status: u16, body: Json) -> OutputLine {
    let error = &body["error"];
    let code = match &error["code"] {
        Json::Null => error["type"].clone(),
        code => code.clone(),
    };
    let message = error["message"].clone();
    OutputLine {
        id: batch_request_id(),
        custom_id: Some(custom_id),
        response: Some(ResponseData {
            status_code: status,
            request_id: Json::String(response_id("batch")),
            body,
        }),
        error: Some(ErrorData { code, message }),
    }
}

/// The output line of a line that never reached an endpoint.
fn bad_line(number: usize, custom_id: Option<String>, error: &LineError) -> OutputLine {
    OutputLine {
        id: batch_request_id(),
        custom_id,
        response: None,
        error: Some(ErrorData {
            code: error.code().into(),
            message: format!("line {number}: {error}").into(),
        }),
    }
}

/// Lines running at once: enough to keep every batch slot busy while finished lines are
/// replaced, as vLLM's run-batch (twice `max_num_seqs`).
fn in_flight_limit(max_num_seqs: usize) -> usize {
    max_num_seqs.saturating_mul(2).max(1)
}

/// Runs the batch-format `lines` on `engine`; `Ok(true)` when every line succeeded.
pub fn run(
    engine: LLMEngine,
    args: &GenerateArgs,
    verbosity: Verbosity,
    chat_template: Option<ChatTemplate>,
    lines: InputLines,
) -> anyhow::Result<bool> {
    let (defaults, default_max_tokens) = request_defaults(&engine, &args.sampling)?;
    let in_flight = in_flight_limit(engine.config().max_num_seqs);
    let options = ServerOptions {
        model_name: served_name(&engine.config().model_dir()),
        limits: ServerLimits {
            max_body_bytes: usize::MAX,
            max_tokens_cap: None,
            api_key: None,
        },
        // Lines in flight are bounded here instead (`in_flight`): a batch waits, never
        // refuses.
        max_waiting_requests: usize::MAX,
        chat_template,
        defaults: Some(defaults),
        default_max_tokens,
        max_tp_restarts: 0,
        parsers: ParserOptions::default(),
    };
    let (state, engine_thread) = start(engine, options)?;
    let mut out: Box<dyn Write> = match args.output.as_deref() {
        Some("-") | None => Box::new(std::io::stdout().lock()),
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create --output {path}"))?,
        )),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let progress = progress_bar(verbosity, None);
    let started = std::time::Instant::now();
    let result = runtime.block_on(run_lines(&state, lines, in_flight, &mut out, &progress));
    progress.finish_and_clear();
    if let Ok((_, written)) = &result {
        let (prompt_tokens, output_tokens) = state.metrics.token_totals();
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            "generate done: lines {written}, prompt tokens {prompt_tokens}, output tokens \
             {output_tokens}, time {secs:.2} s, output {:.1} tok/s",
            output_tokens as f64 / secs.max(f64::MIN_POSITIVE)
        );
    }
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    state.engine.shutdown();
    let joined = engine_thread.join();
    let (all_ok, _) = result?;
    out.flush().context("cannot write the output")?;
    if joined.is_err() {
        anyhow::bail!("the engine thread panicked; see the log above");
    }
    Ok(all_ok)
}

/// Feeds the lines to the endpoints, at most `in_flight` at once, and writes their output
/// lines in input order as they become ready. `Ok((true, _))` when every line succeeded;
/// the count is of the lines written.
async fn run_lines(
    state: &Arc<AppState>,
    lines: InputLines,
    in_flight: usize,
    out: &mut dyn Write,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(bool, usize)> {
    // Reading may block (a pipe), so it runs on its own thread.
    let (line_tx, mut line_rx) = mpsc::channel::<anyhow::Result<NumberedLine>>(in_flight);
    std::thread::spawn(move || {
        for line in lines {
            let failed = line.is_err();
            if line_tx.blocking_send(line).is_err() || failed {
                return;
            }
        }
    });
    let (result_tx, mut result_rx) = mpsc::unbounded_channel::<(usize, OutputLine)>();
    let feeder = {
        let state = state.clone();
        async move {
            let permits = Arc::new(Semaphore::new(in_flight));
            let mut seen_ids = HashSet::new();
            let mut index = 0;
            while let Some(line) = line_rx.recv().await {
                if result_tx.is_closed() {
                    // The writer failed (its error is reported): run nothing more.
                    break;
                }
                let (number, text) = line?;
                let permit = permits.clone().acquire_owned().await?;
                let output = match parse_line(&text) {
                    Err((custom_id, e)) => Some(bad_line(number, custom_id, &e)),
                    Ok(request) if !seen_ids.insert(request.custom_id.clone()) => {
                        let e = LineError::DuplicateCustomId(request.custom_id.clone());
                        Some(bad_line(number, Some(request.custom_id), &e))
                    }
                    Ok(request) => {
                        let (state, results) = (state.clone(), result_tx.clone());
                        tokio::spawn(async move {
                            let output = run_request(state, request).await;
                            drop(permit);
                            let _ = results.send((index, output));
                        });
                        None
                    }
                };
                if let Some(output) = output {
                    let _ = result_tx.send((index, output));
                }
                index += 1;
            }
            drop(result_tx);
            anyhow::Ok(())
        }
    };
    let writer = async {
        let mut pending = BTreeMap::new();
        let mut next = 0;
        let mut all_ok = true;
        while let Some((index, output)) = result_rx.recv().await {
            progress.inc(1);
            pending.insert(index, output);
            while let Some(output) = pending.remove(&next) {
                all_ok &= output.error.is_none();
                let line = serde_json::to_string(&output)?;
                writeln!(out, "{line}").context("cannot write the output")?;
                next += 1;
            }
        }
        anyhow::Ok((all_ok, next))
    };
    let (fed, written) = tokio::join!(feeder, writer);
    // Every line read was answered and written before a read error is reported.
    let written = written?;
    fed?;
    Ok(written)
}

/// Runs one request through its endpoint's handler and shapes the output line.
async fn run_request(state: Arc<AppState>, request: BatchRequest) -> OutputLine {
    let BatchRequest {
        custom_id,
        endpoint,
        body,
    } = request;
    if body.get("stream").and_then(Json::as_bool) == Some(true) {
        let e = ApiError::invalid(
            "stream",
            "stream is not supported in a batch (each line is answered in one body): leave it out or set it to false",
        );
        return refused(custom_id, e.status().as_u16(), e.body());
    }
    let bytes = Bytes::from(body.to_string());
    let handled = match endpoint {
        Endpoint::Completions => completions::handle(State(state), Ok(bytes)).await,
        Endpoint::ChatCompletions => chat_completions::handle(State(state), Ok(bytes)).await,
    };
    match handled {
        Ok(response) => match response_json(response).await {
            (200, body) => answered(custom_id, body),
            (status, body) => refused(custom_id, status, body),
        },
        Err(e) => refused(custom_id, e.status().as_u16(), e.body()),
    }
}

/// A handler's response as (status, JSON body).
async fn response_json(response: Response) -> (u16, Json) {
    let status = response.status().as_u16();
    match axum::body::to_bytes(response.into_body(), usize::MAX).await {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(body) => (status, body),
            Err(e) => internal(format!(
                "the endpoint answered with a body that is not JSON: {e}"
            )),
        },
        Err(e) => internal(format!("cannot read the endpoint's answer: {e}")),
    }
}

fn internal(message: String) -> (u16, Json) {
    let e = ApiError::Internal(message);
    (e.status().as_u16(), e.body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line_error(text: &str) -> (Option<String>, &'static str) {
        let (id, e) = parse_line(text).unwrap_err();
        (id, e.code())
    }

    #[test]
    fn a_good_line_names_its_endpoint() {
        let r = parse_line(
            r#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}"#,
        )
        .unwrap();
        assert_eq!(r.custom_id, "a");
        assert_eq!(r.endpoint, Endpoint::ChatCompletions);
        assert_eq!(r.body, json!({"messages": []}));
        let r = parse_line(
            r#"{"custom_id": "b", "method": "post", "url": "/v1/completions", "body": {}}"#,
        )
        .unwrap();
        assert_eq!(r.endpoint, Endpoint::Completions);
    }

    #[test]
    fn bad_envelopes_have_openai_codes() {
        let ok = r#""method": "POST", "url": "/v1/completions", "body": {}"#;
        for (text, id, code) in [
            ("{not json".to_string(), None, "invalid_json_line"),
            ("[1]".into(), None, "invalid_json_line"),
            (r#"{"prompt": "hi"}"#.into(), None, "invalid_json_line"),
            (format!("{{{ok}}}"), None, "missing_required_parameter"),
            (
                format!(r#"{{"custom_id": 5, {ok}}}"#),
                None,
                "invalid_request",
            ),
            (
                r#"{"custom_id": "a", "url": "/v1/completions", "body": {}}"#.into(),
                Some("a"),
                "missing_required_parameter",
            ),
            (
                r#"{"custom_id": "a", "method": "GET", "url": "/v1/completions", "body": {}}"#
                    .into(),
                Some("a"),
                "invalid_method",
            ),
            (
                r#"{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}"#
                    .into(),
                Some("a"),
                "invalid_url",
            ),
            (
                r#"{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": "x"}"#
                    .into(),
                Some("a"),
                "invalid_request",
            ),
            (
                format!(r#"{{"custom_id": "a", {ok}, "extra": 1}}"#),
                Some("a"),
                "invalid_request",
            ),
        ] {
            assert_eq!(line_error(&text), (id.map(str::to_string), code), "{text}");
        }
    }

    #[test]
    fn output_lines_have_the_batch_shape() {
        let as_json = |line: OutputLine| serde_json::to_value(line).unwrap();
        let line = answered(
            "a".into(),
            json!({"id": "cmpl-1", "object": "text_completion"}),
        );
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.starts_with(r#"{"id":"batch_req_"#), "{text}");
        let line = as_json(line);
        assert_eq!(line["custom_id"], "a");
        assert_eq!(line["response"]["status_code"], 200);
        assert_eq!(line["response"]["request_id"], "cmpl-1");
        assert_eq!(line["response"]["body"]["object"], "text_completion");
        assert!(line["error"].is_null());

        let e = ApiError::invalid("temperature", "temperature must be in [0, 2], got 9");
        let line = as_json(refused("b".into(), e.status().as_u16(), e.body()));
        assert_eq!(line["response"]["status_code"], 400);
        assert_eq!(line["response"]["body"], e.body());
        assert_eq!(line["error"]["code"], "invalid_request_error");
        assert_eq!(
            line["error"]["message"],
            "temperature must be in [0, 2], got 9"
        );
        let e = ApiError::PromptTooLong {
            message: "too long".into(),
        };
        let line = as_json(refused("b".into(), e.status().as_u16(), e.body()));
        assert_eq!(line["error"]["code"], "context_length_exceeded");

        let line = as_json(bad_line(7, None, &LineError::Missing("custom_id")));
        assert!(line["response"].is_null() && line["custom_id"].is_null());
        assert_eq!(line["error"]["code"], "missing_required_parameter");
        assert!(line["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 7: missing `custom_id`"));
    }
}
