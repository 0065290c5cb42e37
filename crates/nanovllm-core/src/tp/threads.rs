//! [`ThreadWorkers`]: ranks 1..N as threads of this process, with a [`ThreadCommunicator`].
//!
//! Rank 0 is the engine's own thread. Each worker thread loads its shard,
//! then waits for the KV block count (rank 0 sizes the cache), then runs every
//! batch it is sent. A worker that fails aborts the communicator (so no rank
//! waits for it in a collective) and reports why; rank 0 turns that into the
//! step's error. Dropping the group stops and joins every thread.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nanovllm_kernels::{Backend, Communicator, ThreadCommunicator};
use nanovllm_scheduler::ScheduledBatch;

use super::rank::{load_rank_model, mirror_kv_sizing, rank_device, RankRunner};
use crate::config::EngineConfig;
use crate::error::{EngineError, Result};

enum ToWorker {
    Init { num_blocks: usize },
    Step(Arc<ScheduledBatch>),
    Shutdown,
}

#[derive(Debug, PartialEq)]
enum FromWorker {
    Loaded,
    Ready,
    Done,
    Failed(String),
}

#[derive(Debug)]
pub(crate) struct ThreadWorkers {
    /// `to_workers[i]` leads to rank `i + 1`.
    to_workers: Vec<Sender<ToWorker>>,
    from_workers: Receiver<(usize, FromWorker)>,
    handles: Vec<JoinHandle<()>>,
    /// Rank 0's end of the group, to abort it when rank 0 fails.
    comm: Arc<ThreadCommunicator>,
    timeout: Duration,
}

impl std::fmt::Debug for ToWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ToWorker::Init { .. } => "Init",
            ToWorker::Step(_) => "Step",
            ToWorker::Shutdown => "Shutdown",
        })
    }
}

impl ThreadWorkers {
    /// Starts ranks 1..N loading their shards; returns rank 0's communicator and the group.
    pub(crate) fn start(
        config: &EngineConfig,
        rank0_backend: &Arc<dyn Backend>,
    ) -> Result<(Arc<dyn Communicator>, Self)> {
        let timeout = config.tp.timeout();
        let mut comms =
            ThreadCommunicator::group_with_timeout(config.tensor_parallel_size, timeout)
                .into_iter();
        let rank0 = match comms.next() {
            Some(c) => Arc::new(c.with_backend(rank0_backend.clone())),
            None => return Err(EngineError::Internal("a thread group of no ranks".into())),
        };
        let (report, from_workers) = channel();
        let mut to_workers = Vec::new();
        let mut handles = Vec::new();
        for (i, comm) in comms.enumerate() {
            let rank = i + 1;
            let (tx, rx) = channel();
            let (config, report) = (config.clone(), report.clone());
            let handle = std::thread::Builder::new()
                .name(format!("tp-rank-{rank}"))
                .spawn(move || worker_thread(rank, config, comm, rx, report))
                .map_err(|e| {
                    EngineError::TensorParallel(format!(
                        "cannot start the thread of rank {rank}: {e}"
                    ))
                })?;
            to_workers.push(tx);
            handles.push(handle);
        }
        let group = Self {
            to_workers,
            from_workers,
            handles,
            comm: rank0.clone(),
            timeout,
        };
        Ok((rank0, group))
    }

    /// Waits for every shard to load, hands out the KV block count, waits until all are ready.
    pub(crate) fn init(&mut self, num_blocks: usize) -> Result<()> {
        self.collect(FromWorker::Loaded, "loading its shard of the model")?;
        self.send_all(|| ToWorker::Init { num_blocks })?;
        self.collect(FromWorker::Ready, "allocating its KV cache")
    }

    /// Sends every worker the batch rank 0 is about to run.
    pub(crate) fn begin_step(&mut self, batch: &ScheduledBatch) -> Result<()> {
        let batch = Arc::new(batch.clone());
        self.send_all(|| ToWorker::Step(batch.clone()))
    }

    /// Waits for every worker to finish the step.
    pub(crate) fn end_step(&mut self) -> Result<()> {
        self.collect(FromWorker::Done, "running the step")
    }

    /// Rank 0 failed the step: breaks the group so that no worker waits for rank 0.
    pub(crate) fn abort(&mut self, reason: &str) {
        self.comm.abort(reason);
    }

    /// Between steps: why a worker thread has ended, if one has (a thread only ends on
    /// `Shutdown`, so any that did is dead); `None` while all run.
    pub(crate) fn check(&mut self) -> Option<String> {
        let rank = self.handles.iter().position(|h| h.is_finished())? + 1;
        let why = self.failure_of(rank);
        self.comm.abort(&why);
        Some(why)
    }

    fn send_all(&mut self, msg: impl Fn() -> ToWorker) -> Result<()> {
        for (i, tx) in self.to_workers.iter().enumerate() {
            if tx.send(msg()).is_err() {
                let why = self.failure_of(i + 1);
                self.comm.abort(&why);
                return Err(EngineError::TensorParallel(why));
            }
        }
        Ok(())
    }

    /// Why rank `rank`'s thread is gone, from its last report if it made one.
    fn failure_of(&self, rank: usize) -> String {
        while let Ok((r, msg)) = self.from_workers.try_recv() {
            if let (true, FromWorker::Failed(why)) = (r == rank, msg) {
                return why;
            }
        }
        format!("rank {rank}'s thread has stopped")
    }

    /// Waits for `expected` from every worker; the first failure (or the timeout) is the error.
    fn collect(&mut self, expected: FromWorker, doing: &str) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut pending = vec![true; self.to_workers.len()];
        while pending.iter().any(|&p| p) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_workers.recv_timeout(left) {
                Ok((rank, msg)) if msg == expected => pending[rank - 1] = false,
                Ok((_, FromWorker::Failed(why))) => {
                    self.comm.abort(&why);
                    return Err(EngineError::TensorParallel(why));
                }
                Ok((rank, other)) => {
                    return Err(EngineError::Internal(format!(
                        "rank {rank} sent {other:?} while rank 0 expected {expected:?}"
                    )))
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    let silent: Vec<usize> =
                        (1..=pending.len()).filter(|r| pending[r - 1]).collect();
                    let why = format!(
                        "ranks {silent:?} did not finish {doing} within {:?}",
                        self.timeout
                    );
                    self.comm.abort(&why);
                    return Err(EngineError::TensorParallel(why));
                }
            }
        }
        Ok(())
    }
}

impl Drop for ThreadWorkers {
    fn drop(&mut self) {
        for tx in &self.to_workers {
            let _ = tx.send(ToWorker::Shutdown);
        }
        // Wakes a worker stuck in a collective that rank 0 will never enter.
        self.comm.abort("the engine is shutting down");
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker_thread(
    rank: usize,
    config: EngineConfig,
    comm: ThreadCommunicator,
    rx: Receiver<ToWorker>,
    report: Sender<(usize, FromWorker)>,
) {
    let backend = match rank_device(&config, rank) {
        Ok(b) => b,
        Err(e) => {
            let why = format!("rank {rank}: {e}");
            comm.abort(&why);
            let _ = report.send((rank, FromWorker::Failed(why)));
            return;
        }
    };
    let comm = Arc::new(comm.with_backend(backend.clone()));
    let run = || -> Result<()> {
        let model = load_rank_model(&config, rank, backend.clone(), comm.clone())?;
        mirror_kv_sizing(&config, backend.as_ref(), model.as_ref())?;
        let _ = report.send((rank, FromWorker::Loaded));
        let num_blocks = match rx.recv() {
            Ok(ToWorker::Init { num_blocks }) => num_blocks,
            Ok(ToWorker::Shutdown) | Err(_) => return Ok(()),
            Ok(other) => {
                return Err(EngineError::Internal(format!(
                    "rank {rank} got {other:?} before its KV cache size"
                )))
            }
        };
        let mut runner = RankRunner::new(&config, backend.clone(), model, num_blocks)?;
        let _ = report.send((rank, FromWorker::Ready));
        loop {
            match rx.recv() {
                Ok(ToWorker::Step(batch)) => {
                    runner.step(&batch)?;
                    let _ = report.send((rank, FromWorker::Done));
                }
                Ok(ToWorker::Shutdown) | Err(_) => return Ok(()),
                Ok(other) => {
                    return Err(EngineError::Internal(format!(
                        "rank {rank} got {other:?} while running steps"
                    )))
                }
            }
        }
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
    let why = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(e)) => format!("rank {rank}: {e}"),
        Err(panic) => format!("rank {rank} panicked: {}", panic_message(&panic)),
    };
    comm.abort(&why);
    let _ = report.send((rank, FromWorker::Failed(why)));
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}
