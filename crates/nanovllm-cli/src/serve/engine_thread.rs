//! The engine thread: owns the [`LLMEngine`] and runs continuous batching,
//! while HTTP handlers talk to it through an [`EngineHandle`].
//!
//! Commands (add / abort) arrive on one channel; each request gets its own
//! channel of [`ChoiceEvent`]s back. The loop blocks on the command channel
//! only when the engine has nothing to do; otherwise it drains the queued
//! commands between steps, so requests join the running batch mid-flight.
//!
//! Invariants: every sequence the engine holds is in `tracked` and vice versa,
//! except for a moment inside one loop turn. A sequence leaves both at once:
//! finished by the engine, ended by a stop string (its handler found it and
//! says so), aborted because its handler is gone (its blocks are freed in that
//! same turn), or failed. After every
//! turn the gauges in [`Metrics`] show the engine's queues and KV cache, and every
//! sequence that leaves logs one line ([`Tracked::retire`]); while there is work, a
//! throughput line is logged every ten seconds ([`ThroughputLog`]).
//!
//! Tensor parallelism: every turn checks the worker group (an idle loop wakes
//! every [`TP_CHECK_INTERVAL`] for it), so a worker that dies is noticed and
//! reaped at once, not on the next request. A broken group fails everything in
//! flight, then the engine is rebuilt from its config (new workers, weights
//! loaded again) while the [`RestartBudget`] allows; meanwhile [`Health`] says
//! why and new requests are refused with 503. A spent budget is
//! [`Health::Failed`]: the thread ends and the server exits non-zero.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nanovllm_core::{
    EngineError, LLMEngine, Prompt, RequestError, RequestId, SamplingParams, SchedulerError,
    StepOutputs,
};
use tokio::sync::{mpsc::UnboundedSender, oneshot, watch};

use super::errors::ApiError;
use super::health::{Health, RestartBudget};
use super::metrics::{FinishLabel, Metrics};
use super::stats_log::{Snapshot, ThroughputLog};
use super::tracked::{ends_by_token, AfterToken, ChoiceEvent, Finish, Tracked};

/// One sequence to generate.
#[derive(Clone, Debug)]
pub struct SeqRequest {
    /// Index of the choice this sequence answers (in the response's `choices`).
    pub choice: usize,
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    /// `Some(n)`: logprobs with `n` alternatives for every token.
    pub num_top_logprobs: Option<usize>,
}

enum Command {
    /// Queue all `seqs` or none; events go to `events`.
    Add {
        seqs: Vec<SeqRequest>,
        events: UnboundedSender<ChoiceEvent>,
        reply: oneshot::Sender<Result<Vec<RequestId>, ApiError>>,
    },
    /// The handler is gone: drop these sequences and free their blocks.
    Abort(Vec<RequestId>),
    /// The handler found a stop string: end the sequence (as `stop`) and free its blocks.
    StopStringFound(RequestId),
    /// Cancel everything in flight (each gets `Finished { Abort }`).
    AbortAll,
    /// Cancel everything and stop the thread.
    Shutdown,
}

/// How often an idle engine with tensor-parallel workers checks them: a worker that dies
/// between requests is noticed (and reaped) within this.
const TP_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// The pause before each restart (requests are refused meanwhile): the dead rank's peers
/// exit and the OS frees what it held (a GPU's memory is released asynchronously), so the
/// new group does not fail for want of it.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Limits the engine thread enforces.
#[derive(Clone, Copy, Debug)]
pub struct EngineLimits {
    /// Most sequences waiting to be scheduled; more are refused (503).
    pub max_waiting_requests: usize,
    /// Rebuilds of a broken tensor-parallel group over the server's life.
    pub max_tp_restarts: usize,
}

/// The handlers' side: cheap to clone.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    alive: Arc<AtomicBool>,
    health: watch::Receiver<Health>,
}

impl EngineHandle {
    /// Queues `seqs` atomically; returns their request ids, in order.
    pub async fn add(
        &self,
        seqs: Vec<SeqRequest>,
        events: UnboundedSender<ChoiceEvent>,
    ) -> Result<Vec<RequestId>, ApiError> {
        // Refused here, not on the engine thread: a restart keeps that thread busy.
        if let Some(reason) = self.health().unavailable() {
            return Err(ApiError::EngineUnavailable { reason });
        }
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Add {
                seqs,
                events,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Aborts sequences whose client went away (no events follow).
    pub fn abort(&self, ids: Vec<RequestId>) {
        if !ids.is_empty() {
            let _ = self.commands.send(Command::Abort(ids));
        }
    }

    /// Ends a sequence whose text reached a stop string (no events follow).
    pub fn stop_string_found(&self, id: RequestId) {
        let _ = self.commands.send(Command::StopStringFound(id));
    }

    /// Cancels every sequence in flight.
    pub fn abort_all(&self) {
        let _ = self.commands.send(Command::AbortAll);
    }

    /// Cancels everything and stops the thread.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }

    /// False once the thread has exited (shutdown, a panic, or restarts spent).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// What the engine thread can do now (its last word once it has exited).
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// Resolves once the engine thread has given up (restarts spent) or has ended.
    pub async fn gave_up(&self) {
        let mut health = self.health.clone();
        // An error means the thread is gone: also the end.
        let _ = health
            .wait_for(|h| matches!(h, Health::Failed { .. }))
            .await;
    }
}

fn stopped() -> ApiError {
    ApiError::EngineUnavailable {
        reason:
            "the engine thread has stopped (the server is shutting down or failed; see its log)"
                .into(),
    }
}

/// Starts the engine thread. The engine must have a tokenizer.
pub fn spawn(
    engine: LLMEngine,
    limits: EngineLimits,
    metrics: Arc<Metrics>,
) -> std::io::Result<(EngineHandle, JoinHandle<()>)> {
    // The gauges are right from the start, before the thread first runs.
    let kv = engine.kv_cache_usage();
    metrics.set_engine_gauges(0, 0, kv.num_blocks, kv.num_free_blocks);
    let (commands, receiver) = mpsc::channel();
    let alive = Arc::new(AtomicBool::new(true));
    let (health_tx, health) = watch::channel(Health::Ready);
    let handle = EngineHandle {
        commands,
        alive: alive.clone(),
        health,
    };
    let thread = std::thread::Builder::new()
        .name("nanovllm-engine".into())
        .spawn(move || {
            // Marks the thread dead however it ends, panics included.
            struct Alive(Arc<AtomicBool>);
            impl Drop for Alive {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Relaxed);
                }
            }
            let _alive = Alive(alive);
            let mut engine_loop = EngineLoop {
                throughput: ThroughputLog::new(Instant::now(), engine.stats()),
                engine,
                limits,
                metrics,
                commands: receiver,
                tracked: HashMap::new(),
                health: health_tx,
                budget: RestartBudget::new(limits.max_tp_restarts),
            };
            loop {
                match engine_loop.run() {
                    Ended::Shutdown => {
                        engine_loop.cancel_all(Finish::Abort);
                        engine_loop.publish_gauges();
                        break;
                    }
                    Ended::GroupBroke(reason) => match engine_loop.recover(reason) {
                        Some(rebuilt) => engine_loop = rebuilt,
                        None => break,
                    },
                }
            }
        })?;
    Ok((handle, thread))
}

struct EngineLoop {
    engine: LLMEngine,
    limits: EngineLimits,
    metrics: Arc<Metrics>,
    commands: mpsc::Receiver<Command>,
    tracked: HashMap<RequestId, Tracked>,
    health: watch::Sender<Health>,
    budget: RestartBudget,
    throughput: ThroughputLog,
}

/// Why [`EngineLoop::run`] returned.
enum Ended {
    /// Shut down (or every handle is gone).
    Shutdown,
    /// The tensor-parallel group broke, for this reason.
    GroupBroke(String),
}

/// Whether the loop goes on after a command.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Exit,
}

impl EngineLoop {
    fn run(&mut self) -> Ended {
        let has_workers = self.engine.config().tensor_parallel_size > 1;
        loop {
            self.publish_gauges();
            self.log_throughput();
            // Every turn: a few non-blocking syscalls per worker, nothing next to a step.
            if let Some(reason) = self.engine.check_tp_group() {
                return Ended::GroupBroke(reason);
            }
            if !self.engine.has_unfinished() {
                // Idle: sleep until a command arrives (or every handle is gone); with
                // workers, wake up to check them, since one may die between requests, and
                // wake up for the throughput line the last work still owes.
                let wake_in = match (
                    has_workers.then_some(TP_CHECK_INTERVAL),
                    self.throughput.due_in(Instant::now()),
                ) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let command = if let Some(wake_in) = wake_in {
                    match self.commands.recv_timeout(wake_in) {
                        Ok(command) => command,
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return Ended::Shutdown,
                    }
                } else {
                    match self.commands.recv() {
                        Ok(command) => command,
                        Err(_) => return Ended::Shutdown,
                    }
                };
                if self.handle(command) == Flow::Exit {
                    return Ended::Shutdown;
                }
            }
            let mut exit = false;
            loop {
                match self.commands.try_recv() {
                    Ok(command) => {
                        if self.handle(command) == Flow::Exit {
                            exit = true;
                            break;
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        exit = !self.engine.has_unfinished();
                        break;
                    }
                }
            }
            if exit {
                return Ended::Shutdown;
            }
            if self.engine.has_unfinished() {
                match self.engine.step() {
                    Ok(out) => self.process(out),
                    Err(e) => {
                        // A broken group: `recover` turns /health 503 before it fails the
                        // requests, so no client sees a healthy server after its error.
                        if let Some(reason) = self.engine.check_tp_group() {
                            return Ended::GroupBroke(reason);
                        }
                        self.fail_all(&e);
                    }
                }
            }
        }
    }

    /// The group broke: fails what is left in flight, drops the engine (stopping its
    /// workers and freeing its memory), and builds a new one from the same config while the
    /// budget allows. `None`: no engine (restarts spent, or shut down meanwhile).
    fn recover(mut self, reason: String) -> Option<EngineLoop> {
        tracing::error!("the tensor-parallel group broke: {reason}");
        self.metrics.set_engine_healthy(false);
        let mut attempt = self.budget.take();
        // Unhealthy first, then the requests fail: a client that retries at once is refused.
        self.health.send_replace(match attempt {
            Some(attempt) => Health::Recovering {
                reason: reason.clone(),
                attempt,
                max_restarts: self.budget.max(),
            },
            None => Health::Failed {
                reason: reason.clone(),
                max_restarts: self.budget.max(),
            },
        });
        // Their KV cache lived on the broken group: none can go on.
        self.cancel_all(Finish::Error(format!(
            "the tensor-parallel group broke ({reason}); retry the request"
        )));
        let config = self.engine.config().clone();
        let EngineLoop {
            engine,
            limits,
            metrics,
            commands,
            tracked,
            health,
            mut budget,
            throughput: _,
        } = self;
        drop(engine);
        let mut last_error: Option<String> = None;
        loop {
            let Some(this_attempt) = attempt else {
                let reason = match &last_error {
                    Some(e) => format!("{reason}; the last restart failed: {e}"),
                    None => reason,
                };
                let failed = Health::Failed {
                    reason,
                    max_restarts: budget.max(),
                };
                // Not logged here: the server exits with this as its one-line error.
                health.send_replace(failed);
                refuse_queued(&commands, &health, Duration::ZERO);
                return None;
            };
            health.send_replace(Health::Recovering {
                reason: reason.clone(),
                attempt: this_attempt,
                max_restarts: budget.max(),
            });
            if refuse_queued(&commands, &health, RESTART_PAUSE) == Flow::Exit {
                return None;
            }
            tracing::warn!(
                "restarting the tensor-parallel group (attempt {this_attempt} of {})",
                budget.max()
            );
            match LLMEngine::new(config.clone()) {
                Ok(engine) => {
                    tracing::info!("the tensor-parallel group is back (restart {this_attempt})");
                    metrics.count_tp_restart();
                    metrics.set_engine_healthy(true);
                    health.send_replace(Health::Ready);
                    return Some(EngineLoop {
                        throughput: ThroughputLog::new(Instant::now(), engine.stats()),
                        engine,
                        limits,
                        metrics,
                        commands,
                        tracked,
                        health,
                        budget,
                    });
                }
                Err(e) => {
                    tracing::error!(
                        "restart {this_attempt} of the tensor-parallel group failed: {e}"
                    );
                    last_error = Some(e.to_string());
                    attempt = budget.take();
                }
            }
        }
    }

    fn handle(&mut self, command: Command) -> Flow {
        match command {
            Command::Add {
                seqs,
                events,
                reply,
            } => {
                let result = self.add(seqs, &events);
                if let Ok(ids) = &result {
                    if reply.is_closed() {
                        // The handler went away while waiting for the answer.
                        for id in ids.clone() {
                            self.abort(id, FinishLabel::Abort);
                        }
                        return Flow::Continue;
                    }
                }
                let _ = reply.send(result);
            }
            Command::Abort(ids) => {
                for id in ids {
                    if self.tracked.contains_key(&id) {
                        self.abort(id, FinishLabel::Abort);
                    }
                }
            }
            Command::StopStringFound(id) => {
                // Unless the engine finished it meanwhile (and counted that).
                if self.tracked.contains_key(&id) {
                    self.abort(id, FinishLabel::Stop);
                }
            }
            Command::AbortAll => self.cancel_all(Finish::Abort),
            Command::Shutdown => return Flow::Exit,
        }
        Flow::Continue
    }

    /// Queues every sequence of one request, or none of them.
    fn add(
        &mut self,
        seqs: Vec<SeqRequest>,
        events: &UnboundedSender<ChoiceEvent>,
    ) -> Result<Vec<RequestId>, ApiError> {
        let num_waiting = self.engine.num_waiting();
        if num_waiting + seqs.len() > self.limits.max_waiting_requests {
            return Err(ApiError::Overloaded {
                num_waiting,
                limit: self.limits.max_waiting_requests,
            });
        }
        let mut ids = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let prompt_len = seq.prompt_ids.len();
            let stop_token_ids = seq.params.stop_token_ids.clone();
            let added = self.engine.add_request_with_logprobs(
                Prompt::TokenIds(seq.prompt_ids.clone()),
                seq.params,
                seq.num_top_logprobs,
            );
            match added {
                Ok(id) => {
                    self.metrics.add_prompt_tokens(prompt_len);
                    let tracked =
                        Tracked::new(seq.choice, events.clone(), &seq.prompt_ids, stop_token_ids);
                    self.tracked.insert(id, tracked);
                    ids.push(id);
                }
                Err(e) => {
                    for id in ids {
                        self.tracked.remove(&id);
                        let _ = self.engine.abort(id);
                    }
                    return Err(rejection(e));
                }
            }
        }
        Ok(ids)
    }

    /// Routes one step's tokens and finished sequences to their handlers.
    fn process(&mut self, out: StepOutputs) {
        self.metrics.add_generation_tokens(out.new_tokens.len());
        let finishing: HashMap<RequestId, bool> = out
            .finished
            .iter()
            .map(|f| {
                let stop_ids = self
                    .tracked
                    .get(&f.request_id)
                    .map_or(&[][..], |t| t.stop_token_ids());
                (f.request_id, ends_by_token(f, stop_ids))
            })
            .collect();
        let mut logprobs: HashMap<RequestId, _> = out.logprobs.into_iter().collect();
        let mut ended = Vec::new();
        // Before the tokens: the prompt's logprobs come before or with the first token. (A
        // handler that is gone is noticed at that token.)
        for (id, prompt_logprobs) in out.prompt_logprobs {
            if let Some(tracked) = self.tracked.get(&id) {
                tracked.on_prompt_logprobs(prompt_logprobs);
            }
        }
        if let Some(tokenizer) = self.engine.tokenizer() {
            for (id, token) in out.new_tokens {
                let Some(tracked) = self.tracked.get_mut(&id) else {
                    continue;
                };
                let last = finishing.get(&id).copied().unwrap_or(false);
                match tracked.on_token(tokenizer, token, logprobs.remove(&id), last, &self.metrics)
                {
                    AfterToken::Continue => {}
                    AfterToken::Ended(label) => ended.push((id, label)),
                    AfterToken::Orphaned => ended.push((id, FinishLabel::Abort)),
                }
            }
            for output in &out.finished {
                // Not when it ended on this step's token already (counted below).
                if ended.iter().any(|(id, _)| *id == output.request_id) {
                    continue;
                }
                if let Some(mut tracked) = self.tracked.remove(&output.request_id) {
                    let finish = tracked.on_finished(tokenizer, output);
                    tracked.retire(output.request_id, finish.label(), &self.metrics);
                }
            }
        }
        for (id, label) in ended {
            // Frees its blocks now (a no-op if the engine finished it in this step too).
            let _ = self.engine.abort(id);
            if let Some(tracked) = self.tracked.remove(&id) {
                tracked.retire(id, label, &self.metrics);
            }
        }
    }

    /// Drops one sequence from the engine and from `tracked`, without an event.
    fn abort(&mut self, id: RequestId, label: FinishLabel) {
        let tracked = self.tracked.remove(&id);
        if let Err(e) = self.engine.abort(id) {
            tracing::warn!(request_id = id, "abort failed: {e}");
        }
        match tracked {
            Some(tracked) => tracked.retire(id, label, &self.metrics),
            None => self.metrics.count_finished(label),
        }
    }

    /// Ends every sequence in flight with `finish` and frees its blocks.
    fn cancel_all(&mut self, finish: Finish) {
        let ids: Vec<RequestId> = self.tracked.keys().copied().collect();
        for id in ids {
            let tracked = self.tracked.remove(&id);
            let _ = self.engine.abort(id);
            match tracked {
                Some(mut tracked) => {
                    tracked.finish(String::new(), finish.clone());
                    tracked.retire(id, finish.label(), &self.metrics);
                }
                None => self.metrics.count_finished(finish.label()),
            }
        }
    }

    /// A failed step: every sequence in flight fails with the error.
    fn fail_all(&mut self, error: &EngineError) {
        tracing::error!("engine step failed: {error}");
        self.cancel_all(Finish::Error(error.to_string()));
    }

    /// The periodic throughput line, when one is due.
    fn log_throughput(&mut self) {
        let snapshot = Snapshot {
            stats: self.engine.stats(),
            num_running: self.engine.num_running(),
            num_waiting: self.engine.num_waiting(),
            kv_cache_usage: self.engine.kv_cache_usage().used_fraction(),
        };
        if let Some(line) = self.throughput.tick(Instant::now(), &snapshot) {
            tracing::info!("{line}");
        }
    }

    fn publish_gauges(&self) {
        let kv = self.engine.kv_cache_usage();
        self.metrics.set_engine_gauges(
            self.engine.num_running(),
            self.engine.num_waiting(),
            kv.num_blocks,
            kv.num_free_blocks,
        );
    }
}

/// While there is no engine: answers the commands that arrive within `wait` (at least the
/// ones already queued), refusing every request with the health's reason. `Exit` on
/// `Shutdown` or when every handle is gone.
fn refuse_queued(
    commands: &mpsc::Receiver<Command>,
    health: &watch::Sender<Health>,
    wait: Duration,
) -> Flow {
    let deadline = Instant::now() + wait;
    loop {
        let command = match commands.try_recv() {
            Ok(command) => command,
            Err(mpsc::TryRecvError::Disconnected) => return Flow::Exit,
            Err(mpsc::TryRecvError::Empty) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Flow::Continue;
                }
                match commands.recv_timeout(left) {
                    Ok(command) => command,
                    Err(mpsc::RecvTimeoutError::Timeout) => return Flow::Continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Flow::Exit,
                }
            }
        };
        match command {
            Command::Add { reply, .. } => {
                let reason = health.borrow().unavailable().unwrap_or_else(|| {
                    "the engine is being rebuilt after a tensor-parallel failure".into()
                });
                let _ = reply.send(Err(ApiError::EngineUnavailable { reason }));
            }
            // Nothing is in flight without an engine.
            Command::Abort(_) | Command::AbortAll | Command::StopStringFound(_) => {}
            Command::Shutdown => return Flow::Exit,
        }
    }
}

/// A refused `add_request` as an API error.
fn rejection(e: EngineError) -> ApiError {
    match e {
        EngineError::InvalidRequest { reason, .. } => match reason {
            RequestError::PromptTooLong { .. }
            | RequestError::PromptTextTooLong { .. }
            | RequestError::Rejected(SchedulerError::PromptExceedsCache { .. })
            | RequestError::Rejected(SchedulerError::SequenceExceedsCache { .. }) => {
                ApiError::PromptTooLong {
                    message: reason.to_string(),
                }
            }
            other => ApiError::InvalidField {
                param: None,
                message: other.to_string(),
            },
        },
        other => ApiError::Internal(other.to_string()),
    }
}
