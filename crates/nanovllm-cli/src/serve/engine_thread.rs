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
//! turn the gauges in [`Metrics`] show the engine's queues and KV cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use nanovllm_core::{
    EngineError, LLMEngine, Prompt, RequestError, RequestId, SamplingParams, SchedulerError,
    StepOutputs,
};
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use super::errors::ApiError;
use super::metrics::{FinishLabel, Metrics};
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

/// Limits the engine thread enforces.
#[derive(Clone, Copy, Debug)]
pub struct EngineLimits {
    /// Most sequences waiting to be scheduled; more are refused (503).
    pub max_waiting_requests: usize,
}

/// The handlers' side: cheap to clone.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    alive: Arc<AtomicBool>,
}

impl EngineHandle {
    /// Queues `seqs` atomically; returns their request ids, in order.
    pub async fn add(
        &self,
        seqs: Vec<SeqRequest>,
        events: UnboundedSender<ChoiceEvent>,
    ) -> Result<Vec<RequestId>, ApiError> {
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

    /// False once the thread has exited (shutdown, or a panic).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
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
    let handle = EngineHandle {
        commands,
        alive: alive.clone(),
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
            EngineLoop {
                engine,
                limits,
                metrics,
                commands: receiver,
                tracked: HashMap::new(),
            }
            .run();
        })?;
    Ok((handle, thread))
}

struct EngineLoop {
    engine: LLMEngine,
    limits: EngineLimits,
    metrics: Arc<Metrics>,
    commands: mpsc::Receiver<Command>,
    tracked: HashMap<RequestId, Tracked>,
}

/// Whether the loop goes on after a command.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Exit,
}

impl EngineLoop {
    fn run(mut self) {
        loop {
            self.publish_gauges();
            if !self.engine.has_unfinished() {
                // Idle: sleep until a command arrives (or every handle is gone).
                match self.commands.recv() {
                    Ok(command) => {
                        if self.handle(command) == Flow::Exit {
                            break;
                        }
                    }
                    Err(_) => break,
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
                break;
            }
            if self.engine.has_unfinished() {
                match self.engine.step() {
                    Ok(out) => self.process(out),
                    Err(e) => self.fail_all(&e),
                }
            }
        }
        self.cancel_all(Finish::Abort);
        self.publish_gauges();
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
            let added = self.engine.add_request_with_logprobs(
                Prompt::TokenIds(seq.prompt_ids.clone()),
                seq.params,
                seq.num_top_logprobs,
            );
            match added {
                Ok(id) => {
                    self.metrics.add_prompt_tokens(prompt_len);
                    let tracked = Tracked::new(seq.choice, events.clone(), &seq.prompt_ids);
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
            .map(|f| (f.request_id, ends_by_token(f.finish_reason)))
            .collect();
        let mut logprobs: HashMap<RequestId, _> = out.logprobs.into_iter().collect();
        let mut ended = Vec::new();
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
            for (id, _) in &ended {
                self.tracked.remove(id);
            }
            for output in &out.finished {
                if let Some(tracked) = self.tracked.remove(&output.request_id) {
                    let finish = tracked.on_finished(tokenizer, output);
                    self.metrics.count_finished(finish.label());
                }
            }
        }
        for (id, label) in ended {
            // Frees its blocks now (a no-op if the engine finished it in this step too).
            let _ = self.engine.abort(id);
            self.metrics.count_finished(label);
        }
    }

    /// Drops one sequence from the engine and from `tracked`, without an event.
    fn abort(&mut self, id: RequestId, label: FinishLabel) {
        self.tracked.remove(&id);
        if let Err(e) = self.engine.abort(id) {
            tracing::warn!(request_id = id, "abort failed: {e}");
        }
        self.metrics.count_finished(label);
    }

    /// Ends every sequence in flight with `finish` and frees its blocks.
    fn cancel_all(&mut self, finish: Finish) {
        let ids: Vec<RequestId> = self.tracked.keys().copied().collect();
        for id in ids {
            if let Some(mut tracked) = self.tracked.remove(&id) {
                tracked.finish(String::new(), finish.clone());
            }
            let _ = self.engine.abort(id);
            self.metrics.count_finished(finish.label());
        }
    }

    /// A failed step: every sequence in flight fails with the error.
    fn fail_all(&mut self, error: &EngineError) {
        tracing::error!("engine step failed: {error}");
        self.cancel_all(Finish::Error(error.to_string()));
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
