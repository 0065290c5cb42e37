//! `nanovllm serve`: an OpenAI-compatible HTTP server (axum on tokio).
//!
//! Shape: the engine runs on its own thread ([`engine_thread`]) with
//! continuous batching; HTTP handlers tokenize, validate, submit sequences
//! through an [`EngineHandle`] and receive their tokens on a per-request
//! channel, answering in one JSON body or as server-sent events
//! ([`streaming`]). A client that goes away drops its handler or stream,
//! which aborts its sequences and frees their KV blocks.
//!
//! Shutdown: the first Ctrl-C (or SIGTERM) stops accepting connections and
//! lets the requests in flight finish (a connection still sending its request
//! head gives up after `--http-header-timeout-s`, see [`http`]); a second one
//! cancels them (each ends with `finish_reason: "abort"`) and exits at once,
//! waiting at most [`ABORT_FLUSH`] for clients to read that last chunk, so a
//! client that stopped reading cannot hold the process. Then the engine thread
//! stops and the process exits.
//!
//! Tensor-parallel failures ([`health`]): a broken worker group turns
//! `/health` 503 and is rebuilt up to `--tp-max-restarts` times; then the
//! server stops by itself (as on a first signal). It exits non-zero when it
//! stops with the group broken (given up, or a signal during a restart), so a
//! supervisor sees it.

pub mod chat_completions;
pub mod chat_output;
pub mod completions;
mod cpu_pool;
mod echo;
pub mod engine_thread;
pub mod errors;
mod generation;
pub mod health;
pub mod http;
mod logprobs_format;
pub mod metrics;
pub mod openai_types;
pub mod reasoning;
mod request_body;
pub mod routes;
pub(crate) mod sampling;
pub mod state;
mod stats_log;
mod stop_strings;
mod streaming;
pub(crate) mod structured_output;
pub mod tokenize;
pub mod tool_choice;
pub mod tool_parsers;
pub mod tracked;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use nanovllm_core::{ChatTemplate, EngineConfig, LLMEngine, SamplingParams};

use crate::args::{SamplingArgs, ServeArgs};
use crate::requests::params_from_flags;
use chat_output::{ChatParsers, ParserOptions};
use engine_thread::{EngineHandle, EngineLimits};
use health::Health;
use http::HttpOptions;
use metrics::Metrics;
use state::{AppState, ServerLimits};

/// Everything about the server that is not the engine.
#[derive(Debug)]
pub struct ServerOptions {
    pub model_name: String,
    pub limits: ServerLimits,
    pub max_waiting_requests: usize,
    pub chat_template: Option<ChatTemplate>,
    /// Sampling of a request that sets nothing; `None`: the engine's defaults.
    pub defaults: Option<SamplingParams>,
    pub default_max_tokens: Option<usize>,
    /// Rebuilds of a broken tensor-parallel group before the server gives up.
    pub max_tp_restarts: usize,
    /// How the reasoning and tool-call parsers of chat replies are chosen.
    pub parsers: ParserOptions,
}

/// Starts the engine thread and builds the handlers' shared state.
pub fn start(
    engine: LLMEngine,
    options: ServerOptions,
) -> anyhow::Result<(Arc<AppState>, JoinHandle<()>)> {
    let tokenizer = engine.tokenizer().cloned().context(
        "serve needs a tokenizer: the model directory has no tokenizer.json; pass --tokenizer DIR",
    )?;
    let defaults = options
        .defaults
        .unwrap_or_else(|| engine.default_sampling_params());
    let max_model_len = engine.max_model_len();
    let vocab_size = engine.model_config().vocab_size;
    let max_prompt_bytes = tokenizer.max_text_bytes(max_model_len);
    let template_source = match &options.chat_template {
        Some(template) => Some(template.source()),
        None => tokenizer.chat_template(),
    };
    let chat_parsers = ChatParsers::resolve(
        options.parsers,
        &engine.model_config().architecture,
        template_source,
        &tokenizer,
    )?;
    if chat_parsers.tool.is_some() || chat_parsers.reasoning.is_some() {
        tracing::info!(
            tool_call_parser = ?chat_parsers.tool,
            reasoning_parser = ?chat_parsers.reasoning,
            "chat reply parsers"
        );
    }
    let metrics = Arc::new(Metrics::new(&options.model_name));
    let limits = EngineLimits {
        max_waiting_requests: options.max_waiting_requests,
        max_tp_restarts: options.max_tp_restarts,
    };
    let (handle, thread): (EngineHandle, _) = engine_thread::spawn(engine, limits, metrics.clone())
        .context("cannot start the engine thread")?;
    let state = AppState {
        engine: handle,
        metrics,
        tokenizer: Arc::new(tokenizer),
        chat_template: options.chat_template.map(Arc::new),
        chat_parsers,
        model_name: options.model_name,
        max_model_len,
        max_prompt_bytes,
        cpu: cpu_pool::CpuPool::for_this_machine(),
        vocab_size,
        defaults,
        default_max_tokens: options.default_max_tokens,
        limits: options.limits,
        started_at: openai_types::unix_now(),
    };
    Ok((Arc::new(state), thread))
}

/// The chat template of `file` (`--chat-template`), else the tokenizer's; `None`, with a
/// warning, when there is neither: chat requests are then refused.
pub fn load_chat_template(
    config: &EngineConfig,
    file: Option<&Path>,
) -> anyhow::Result<Option<ChatTemplate>> {
    let tokenizer_dir = config
        .tokenizer
        .clone()
        .unwrap_or_else(|| config.model_dir());
    let chat_template = match file {
        Some(file) => Some(ChatTemplate::from_file(file, &tokenizer_dir)?),
        None => ChatTemplate::from_tokenizer_dir(&tokenizer_dir)?,
    };
    if chat_template.is_none() {
        tracing::warn!(
            "no chat template in {}: /v1/chat/completions will refuse requests (pass --chat-template FILE)",
            tokenizer_dir.display()
        );
    }
    Ok(chat_template)
}

/// What a request that sets nothing gets: the model's generation config overlaid with the
/// sampling flags, and the flag's or the generation config's `max_tokens` (`None`: all the
/// context left).
pub fn request_defaults(
    engine: &LLMEngine,
    flags: &SamplingArgs,
) -> anyhow::Result<(SamplingParams, Option<usize>)> {
    let defaults = params_from_flags(&engine.default_sampling_params(), flags);
    defaults.validate().context("invalid sampling flags")?;
    let default_max_tokens = flags
        .max_tokens
        .or(engine.generation_config().max_new_tokens);
    Ok((defaults, default_max_tokens))
}

/// Runs the command until shut down.
pub fn run(args: ServeArgs, verbosity: crate::logging::Verbosity) -> anyhow::Result<bool> {
    let config = args.to_engine_config()?;
    let model_name = match &args.served_model_name {
        Some(name) => name.clone(),
        None => served_name(&config.model_dir()),
    };
    let chat_template = load_chat_template(&config, args.chat_template.as_deref())?;
    let engine = crate::load_progress::build_engine(config, verbosity)?;
    let (defaults, default_max_tokens) = request_defaults(&engine, &args.sampling)?;
    let options = ServerOptions {
        model_name,
        limits: ServerLimits {
            max_body_bytes: args.max_body_bytes,
            max_tokens_cap: args.max_tokens_cap,
            api_key: args.api_key.clone(),
        },
        max_waiting_requests: args.max_waiting_requests,
        chat_template,
        defaults: Some(defaults),
        default_max_tokens,
        max_tp_restarts: args.tp_max_restarts,
        parsers: args.parser_options(),
    };
    let (state, engine_thread) = start(engine, options)?;
    let http = HttpOptions {
        header_timeout: Duration::from_secs(args.http_header_timeout_s),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(serve(&args.host, args.port, http, state.clone()));
    // Connections still open (a client that stopped reading) and tokenizing still under way
    // are dropped, not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    served?;
    // As the server stopped: a broken group makes the exit non-zero, whatever stopped it.
    let health = state.engine.health();
    state.engine.shutdown();
    join_engine(engine_thread, &health)?;
    match health {
        Health::Ready => Ok(true),
        Health::Recovering { reason, .. } => anyhow::bail!(
            "stopped while the tensor-parallel group was broken ({reason}) and before a \
             restart brought it back"
        ),
        failed @ Health::Failed { .. } => {
            anyhow::bail!("{}", failed.unavailable().unwrap_or_default())
        }
    }
}

/// How long a stopping server waits for an engine thread that is rebuilding its group (a
/// rebuild may wait up to --tp-timeout-secs for a rank that never comes).
const RESTART_JOIN_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// Joins the engine thread; during a restart, at most [`RESTART_JOIN_BOUND`] (the process
/// exit then ends it, and its new workers exit when rank 0's connections close).
fn join_engine(thread: JoinHandle<()>, health: &Health) -> anyhow::Result<()> {
    if matches!(health, Health::Recovering { .. }) {
        let deadline = std::time::Instant::now() + RESTART_JOIN_BOUND;
        while !thread.is_finished() {
            if std::time::Instant::now() >= deadline {
                tracing::warn!("the engine thread is still restarting its group; exiting anyway");
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    if thread.join().is_err() {
        anyhow::bail!("the engine thread panicked; see the log above");
    }
    Ok(())
}

/// How long, after the second signal cancelled every request, clients get to read their
/// last (`finish_reason: "abort"`) chunk before the server stops waiting for them.
pub const ABORT_FLUSH: Duration = Duration::from_millis(500);

/// Binds, prints the address on stdout, and serves until shut down (see the module doc).
async fn serve(
    host: &str,
    port: u16,
    http: HttpOptions,
    state: Arc<AppState>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr = listener.local_addr()?;
    // On stdout, so that scripts (and the tests) can read the bound port.
    println!(
        "nanovllm serve: listening on http://{addr} (model `{}`)",
        state.model_name
    );
    tracing::info!(%addr, model = %state.model_name, "listening");
    let engine = state.engine.clone();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    // Signals are awaited in their own task, so both are seen whatever the server is doing.
    tokio::spawn(async move {
        signal().await;
        tracing::info!(
            "shutting down: finishing the requests in flight (press Ctrl-C again to cancel them)"
        );
        let _ = first_tx.send(());
        signal().await;
        let _ = second_tx.send(());
    });
    // The first signal, or the engine thread giving up (restarts spent) or ending, stops
    // accepting and lets what is in flight finish.
    let gave_up = state.engine.clone();
    let graceful = async move {
        tokio::select! {
            _ = first_rx => {}
            () = gave_up.gave_up() => tracing::error!("the engine has stopped: stopping the server"),
        }
    };
    let mut server = std::pin::pin!(http::serve(listener, routes::router(state), http, graceful));
    tokio::select! {
        () = server.as_mut() => {
            tracing::info!("all requests finished; stopping");
            return Ok(());
        }
        Ok(()) = second_rx => {}
    }
    tracing::warn!("cancelling the requests in flight");
    engine.abort_all();
    if tokio::time::timeout(ABORT_FLUSH, server).await.is_err() {
        tracing::warn!("closing the connections whose clients are not reading");
    }
    Ok(())
}

async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

/// The model directory's name (e.g. `Qwen3-0.6B`), the default `model` clients must send;
/// the hub id (e.g. `Qwen/Qwen3-0.6B`, as vLLM serves it) for a snapshot in the HF cache.
pub fn served_name(model_dir: &std::path::Path) -> String {
    if let Some(repo) = nanovllm_core::hub::cache::repo_id_of_snapshot(model_dir) {
        return repo.to_string();
    }
    let canonical = model_dir
        .canonicalize()
        .unwrap_or_else(|_| model_dir.to_path_buf());
    canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

#[cfg(test)]
mod served_name_tests {
    use super::served_name;
    use std::path::Path;

    #[test]
    fn a_directory_is_served_by_its_name_and_a_hub_snapshot_by_its_id() {
        assert_eq!(served_name(Path::new("/no/such/Qwen3-0.6B")), "Qwen3-0.6B");
        let snapshot = Path::new("/hf/hub/models--Qwen--Qwen3-0.6B/snapshots/0123abcd");
        assert_eq!(served_name(snapshot), "Qwen/Qwen3-0.6B");
    }
}
