//! Tensor parallelism: the engine's ranks 1..N (rank 0 is the engine itself).
//!
//! Rank 0 owns the scheduler, the requests' sampling and the tokenizer. Every step it
//! sends the workers the [`ScheduledBatch`] it is about to run
//! ([`WorkerGroup::begin_step`]), runs it on its own shard, and waits for the
//! workers to finish theirs ([`WorkerGroup::end_step`]). Every rank runs the
//! same [`crate::ModelRunner`] on the same batch, so all take part in the
//! same collectives in the same order; only rank 0's sampled tokens are used.
//!
//! Two ways to run the workers ([`TpMode`]):
//! - **threads** ([`threads`]): one thread per rank in this process, with a
//!   shared-memory [`nanovllm_kernels::ThreadCommunicator`] (the CPU default);
//! - **processes** ([`processes`], [`worker`]): one process per rank, this
//!   binary re-executed as `nanovllm worker`, joined through a TCP rendezvous
//!   at `dist_init_addr`; collectives over TCP on the CPU, NCCL on CUDA (the
//!   CUDA default). Hosts beyond the first start their ranks with
//!   `nanovllm worker --nnodes N --node-rank K --dist-init-addr HOST:PORT`.
//!
//! Every rank holds the same number of KV blocks, each with its share of the
//! KV heads: rank 0 sizes the cache, then tells the workers the block count
//! ([`WorkerGroup::init`]).
//!
//! No hang: a failing rank reports why, a dead one closes its connections,
//! and a silent one times out (`tp.timeout_secs`); the step then fails with an
//! error naming the rank, and the group stays broken (later steps fail at once).
//! Between steps [`WorkerGroup::check`] notices a dead worker without a step
//! (a local worker process is reaped at once); the engine's owner decides
//! what to do with a broken group (`nanovllm serve` rebuilds the engine).

pub mod codec;
mod config;
mod processes;
mod rank;
mod rendezvous;
mod threads;
mod worker;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use nanovllm_kernels::{Backend, Communicator};
use nanovllm_scheduler::ScheduledBatch;

pub use config::{TpConfig, TpMode, DEFAULT_DIST_INIT_ADDR};
pub use worker::{run_node, run_worker, NodeOptions, WorkerOptions};

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use processes::ProcessWorkers;
use threads::ThreadWorkers;

/// Ranks 1..N of a tensor-parallel engine, seen from rank 0.
#[derive(Debug)]
pub struct WorkerGroup {
    workers: Workers,
    /// Why the group broke, once it has: every later step fails with it.
    broken: Option<String>,
}

#[derive(Debug)]
enum Workers {
    Threads(ThreadWorkers),
    Processes(ProcessWorkers),
}

impl WorkerGroup {
    /// Starts ranks 1..N as `config.tp.mode` says (they begin loading their shards) and
    /// returns rank 0's communicator with the group. `tensor_parallel_size` must be > 1.
    ///
    /// With `tensor_parallel_size = 1` only the processes mode makes a group (of rank 0
    /// alone): it runs the process path's rendezvous and communicator (NCCL on CUDA) with
    /// world size 1, which is how a single GPU checks that path end to end.
    pub fn start(
        config: &EngineConfig,
        rank0: &Arc<dyn Backend>,
    ) -> Result<(Arc<dyn Communicator>, Self)> {
        if config.tp.node_rank != 0 {
            return Err(EngineError::TensorParallel(format!(
                "node_rank = {}: the engine runs on node 0; start the other nodes' ranks with \
                 `nanovllm worker --nnodes {} --node-rank {} --dist-init-addr {}`",
                config.tp.node_rank,
                config.tp.nnodes,
                config.tp.node_rank,
                config.tp.dist_init_addr
            )));
        }
        let (comm, workers) = match config.tp.mode.resolve(config.device) {
            TpMode::Processes => {
                let (c, w) = ProcessWorkers::start(config, rank0)?;
                (c, Workers::Processes(w))
            }
            TpMode::Threads | TpMode::Auto => {
                let (c, w) = ThreadWorkers::start(config, rank0)?;
                (c, Workers::Threads(w))
            }
        };
        Ok((
            comm,
            Self {
                workers,
                broken: None,
            },
        ))
    }

    /// Waits until every worker has loaded its shard, then has them allocate `num_blocks`
    /// KV blocks (rank 0's count).
    pub fn init(&mut self, num_blocks: usize) -> Result<()> {
        let r = match &mut self.workers {
            Workers::Threads(w) => w.init(num_blocks),
            Workers::Processes(w) => w.init(num_blocks),
        };
        self.note(r)
    }

    /// Sends the workers the batch rank 0 is about to run.
    pub fn begin_step(&mut self, batch: &ScheduledBatch) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(EngineError::TensorParallel(format!(
                "the tensor-parallel group broke earlier and cannot run more steps ({why}); \
                 rebuild the engine"
            )));
        }
        let r = match &mut self.workers {
            Workers::Threads(w) => w.begin_step(batch),
            Workers::Processes(w) => w.begin_step(batch),
        };
        self.note(r)
    }

    /// Waits for the workers to finish the step rank 0 has just run.
    pub fn end_step(&mut self) -> Result<()> {
        let r = match &mut self.workers {
            Workers::Threads(w) => w.end_step(),
            Workers::Processes(w) => w.end_step(),
        };
        self.note(r)
    }

    /// Rank 0 failed the step with `err`: breaks the group (no worker waits for rank 0)
    /// and returns the error, with what is known of dead workers added.
    pub fn fail_step(&mut self, err: EngineError) -> EngineError {
        let why = err.to_string();
        let err = match &mut self.workers {
            Workers::Threads(w) => {
                w.abort(&why);
                err
            }
            Workers::Processes(w) => {
                w.abort(&why);
                let explained = w.explain(why.clone());
                if explained == why {
                    err
                } else {
                    EngineError::TensorParallel(explained)
                }
            }
        };
        self.broken.get_or_insert_with(|| err.to_string());
        err
    }

    /// Between steps, without blocking: checks that every worker is still there (a local
    /// worker process that exited is reaped and named with its exit status) and returns why
    /// the group is broken, now or by an earlier step; `None` while it is whole. A broken
    /// group runs no more steps.
    pub fn check(&mut self) -> Option<&str> {
        match (&mut self.broken, &mut self.workers) {
            (None, Workers::Threads(w)) => self.broken = w.check(),
            (None, Workers::Processes(w)) => self.broken = w.check(),
            // A step that broke the group may have seen the dead worker's sockets close before
            // its exit status existed: reap it now (no zombie) and name its status.
            (Some(why), Workers::Processes(w)) => *why = w.explain(std::mem::take(why)),
            (Some(_), Workers::Threads(_)) => {}
        }
        self.broken.as_deref()
    }

    /// Process ids of the worker processes on this host (empty with threads).
    pub fn local_worker_pids(&self) -> Vec<u32> {
        match &self.workers {
            Workers::Threads(_) => Vec::new(),
            Workers::Processes(w) => w.local_pids(),
        }
    }

    fn note(&mut self, r: Result<()>) -> Result<()> {
        if let Err(e) = &r {
            self.broken.get_or_insert_with(|| e.to_string());
        }
        r
    }
}

/// A worker process's communicator: TCP when rank 0 sent no group id (the CPU), else the
/// device's collective group (NCCL on CUDA; [`Backend::collective_groups`]).
fn make_worker_comm(
    backend: &Arc<dyn Backend>,
    rank: usize,
    world: usize,
    data: TcpStream,
    group_id: &[u8],
    timeout: Duration,
) -> Result<Arc<dyn Communicator>> {
    if group_id.is_empty() {
        return worker::tcp_leaf(rank, world, data, timeout, backend);
    }
    match backend.clone().collective_groups() {
        Some(groups) => Ok(groups.join(rank, world, group_id)?),
        None => Err(EngineError::Unsupported {
            what: format!(
                "rank {rank}: rank 0 set up a device collective group (NCCL) but this worker \
                 runs on {}; run the same build and --device on every node",
                backend.device()
            ),
        }),
    }
}
