//! [`ProcessWorkers`]: ranks 1..N as processes (this binary re-executed as
//! `nanovllm worker`), seen from rank 0.
//!
//! Rank 0 listens at `dist_init_addr`, starts the worker processes of its own
//! node (other nodes start theirs with `nanovllm worker --node-rank K`), and
//! accepts a control and a data connection from every rank. It sends each its
//! engine config (and, with NCCL, the unique id); collectives then run on the
//! data connections ([`TcpCommunicator`]) or NCCL, and every step's batch goes
//! out on the control connections.
//!
//! Failure: a worker that dies closes its connections, so the collective or
//! control read that needed it fails at once, naming the rank (and, for a
//! local worker, its exit status). Rank 0's death closes the connections
//! from the other end; workers exit. Between steps [`ProcessWorkers::check`]
//! notices a dead worker without waiting for the next step: it reaps a local
//! worker that exited (no zombie stays) and sees any rank's control connection
//! close. Dropping the group sends `Shutdown`,
//! waits briefly, then kills and reaps any local worker still running: no
//! process is left behind.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nanovllm_kernels::{Backend, Communicator, TcpCommunicator};
use nanovllm_scheduler::ScheduledBatch;

use super::codec::{encode_step, read_msg, write_frame, write_msg, Msg};
use super::rendezvous::{accept_ranks, listen};
use crate::config::EngineConfig;
use crate::error::{EngineError, Result};

/// How long a worker gets to exit after `Shutdown` before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A local worker process.
#[derive(Debug)]
struct LocalWorker {
    rank: usize,
    child: Child,
}

pub(crate) struct ProcessWorkers {
    /// `control[i]` leads to rank `i + 1`.
    control: Vec<TcpStream>,
    local: Vec<LocalWorker>,
    /// Breaks rank 0's communicator when rank 0 fails outside a collective.
    abort_comm: Box<dyn Fn(&str) + Send + Sync>,
    timeout: Duration,
}

impl std::fmt::Debug for ProcessWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessWorkers")
            .field("world_size", &(self.control.len() + 1))
            .field("local", &self.local)
            .finish()
    }
}

impl ProcessWorkers {
    /// Listens, starts this node's workers, waits for every rank and sends each its config.
    /// Returns rank 0's communicator and the group.
    pub(crate) fn start(
        config: &EngineConfig,
        rank0: &Arc<dyn Backend>,
    ) -> Result<(Arc<dyn Communicator>, Self)> {
        let tp = &config.tp;
        let world = config.tensor_parallel_size;
        let timeout = tp.timeout();
        let listener = listen(&tp.dist_init_addr)?;
        let addr = listener
            .local_addr()
            .map_err(|e| EngineError::TensorParallel(format!("rendezvous address: {e}")))?;
        let mut group = Self {
            control: Vec::new(),
            local: Vec::new(),
            abort_comm: Box::new(|_| {}),
            timeout,
        };
        let exe = match &tp.worker_exe {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| {
                EngineError::TensorParallel(format!(
                    "cannot find this executable to start workers: {e}"
                ))
            })?,
        };
        for rank in 1..tp.ranks_per_node(world) {
            group.local.push(spawn_worker(
                &exe,
                rank,
                &addr.to_string(),
                tp.timeout_secs,
            )?);
        }
        let deadline = Instant::now() + timeout;
        let joined = accept_ranks(&listener, world, deadline, || group.check_local_alive())?;
        group.control = joined.control;
        for s in &group.control {
            s.set_nodelay(true).map_err(io_err)?;
            s.set_read_timeout(Some(timeout)).map_err(io_err)?;
            s.set_write_timeout(Some(timeout)).map_err(io_err)?;
        }
        let engine_json = serde_json::to_string(config)
            .map_err(|e| EngineError::Internal(format!("serializing the engine config: {e}")))?;
        if let Some(groups) = rank0.clone().collective_groups() {
            // The device's collectives (NCCL): every rank joins with rank 0's id; the data
            // connections stay unused.
            let id = groups.new_group_id()?;
            for rank in 1..world {
                let msg = Msg::Config {
                    engine_json: engine_json.clone(),
                    nccl_id: id.clone(),
                };
                group.send(rank, &msg)?;
            }
            group.collect(&Msg::Joined, "opening its device")?;
            let comm = groups.join(0, world, &id)?;
            return Ok((comm, group));
        }
        for rank in 1..world {
            let msg = Msg::Config {
                engine_json: engine_json.clone(),
                nccl_id: Vec::new(),
            };
            group.send(rank, &msg)?;
        }
        group.collect(&Msg::Joined, "opening its device")?;
        let comm =
            Arc::new(TcpCommunicator::root(joined.data, timeout)?.with_backend(rank0.clone()));
        let abort = comm.clone();
        group.abort_comm = Box::new(move |why| abort.abort(why));
        Ok((comm, group))
    }

    /// Waits for every shard to load, hands out the KV block count, waits until all are ready.
    pub(crate) fn init(&mut self, num_blocks: usize) -> Result<()> {
        self.collect(&Msg::Loaded, "loading its shard of the model")?;
        for rank in 1..=self.control.len() {
            self.send(
                rank,
                &Msg::Init {
                    num_blocks: num_blocks as u64,
                },
            )?;
        }
        self.collect(&Msg::Ready, "allocating its KV cache")
    }

    /// Sends every worker the batch rank 0 is about to run.
    pub(crate) fn begin_step(&mut self, batch: &ScheduledBatch) -> Result<()> {
        let frame = encode_step(batch)
            .map_err(|e| EngineError::Internal(format!("encoding a step: {e}")))?;
        for rank in 1..=self.control.len() {
            if let Err(e) = write_frame(&mut self.control[rank - 1], &frame) {
                let why = self.explain(format!("cannot reach rank {rank}: {e}"));
                (self.abort_comm)(&why);
                return Err(EngineError::TensorParallel(why));
            }
        }
        Ok(())
    }

    /// Waits for every worker to finish the step.
    pub(crate) fn end_step(&mut self) -> Result<()> {
        self.collect(&Msg::Done, "running the step")
    }

    /// Rank 0 failed: breaks the communicator so that no worker waits for rank 0.
    pub(crate) fn abort(&mut self, reason: &str) {
        (self.abort_comm)(reason);
    }

    /// Process ids of this node's worker processes.
    pub(crate) fn local_pids(&self) -> Vec<u32> {
        self.local.iter().map(|w| w.child.id()).collect()
    }

    /// Between steps, without blocking: why a worker is gone, if one is. A local worker
    /// that exited is reaped and named with its exit status; any rank (remote ones too)
    /// whose control connection closed is named. The communicator is aborted then, so
    /// the next collective fails at once instead of waiting for the dead rank.
    pub(crate) fn check(&mut self) -> Option<String> {
        let why = self.exited_local().or_else(|| {
            (1..=self.control.len()).find_map(|rank| {
                probe_idle(&self.control[rank - 1]).map(|what| format!("rank {rank} {what}"))
            })
        })?;
        let why = self.explain(why);
        (self.abort_comm)(&why);
        Some(why)
    }

    fn exited_local(&mut self) -> Option<String> {
        self.local
            .iter_mut()
            .find_map(|w| match w.child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "worker rank {} (pid {}) exited: {status}",
                    w.rank,
                    w.child.id()
                )),
                _ => None,
            })
    }

    /// `why`, plus the exit status of any local worker that has exited (and that `why` does
    /// not name yet: a broken group's reason is explained again as its workers are reaped).
    pub(crate) fn explain(&mut self, why: String) -> String {
        let mut exits = Vec::new();
        for w in &mut self.local {
            if let Ok(Some(status)) = w.child.try_wait() {
                let exit = format!(
                    "worker rank {} (pid {}) exited: {status}",
                    w.rank,
                    w.child.id()
                );
                if !why.contains(&exit) {
                    exits.push(exit);
                }
            }
        }
        if exits.is_empty() {
            why
        } else {
            format!("{why} [{}]", exits.join("; "))
        }
    }

    fn check_local_alive(&mut self) -> Result<()> {
        for w in &mut self.local {
            if let Ok(Some(status)) = w.child.try_wait() {
                return Err(EngineError::TensorParallel(format!(
                    "worker rank {} (pid {}) exited before joining: {status}; its stderr above \
                     says why",
                    w.rank,
                    w.child.id()
                )));
            }
        }
        Ok(())
    }

    fn send(&mut self, rank: usize, msg: &Msg) -> Result<()> {
        let stream = &mut self.control[rank - 1];
        if let Err(e) = write_msg(stream, msg) {
            let why = self.explain(format!("cannot reach rank {rank}: {e}"));
            (self.abort_comm)(&why);
            return Err(EngineError::TensorParallel(why));
        }
        Ok(())
    }

    /// Reads `expected` from every worker; a `Failed` report, a closed connection or the
    /// timeout is the error, naming the rank.
    fn collect(&mut self, expected: &Msg, doing: &str) -> Result<()> {
        for rank in 1..=self.control.len() {
            let got = read_msg(&mut self.control[rank - 1]);
            let why = match got {
                Ok(ref m) if m == expected => continue,
                Ok(Msg::Failed(why)) => why,
                Ok(other) => format!("rank {rank} sent {other:?} while {doing}"),
                Err(e) => match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                        "rank {rank} did not finish {doing} within {:?}",
                        self.timeout
                    ),
                    _ => format!(
                        "rank {rank} closed its connection while {doing} (did its process die?)"
                    ),
                },
            };
            let why = self.explain(why);
            (self.abort_comm)(&why);
            return Err(EngineError::TensorParallel(why));
        }
        Ok(())
    }
}

impl Drop for ProcessWorkers {
    fn drop(&mut self) {
        for s in &mut self.control {
            let _ = write_msg(s, &Msg::Shutdown);
        }
        (self.abort_comm)("the engine is shutting down");
        // Workers that never joined cannot hear `Shutdown`: no grace for them.
        let grace = if self.control.is_empty() {
            Duration::ZERO
        } else {
            SHUTDOWN_GRACE
        };
        let deadline = Instant::now() + grace;
        for w in &mut self.local {
            loop {
                match w.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = w.child.kill();
                        let _ = w.child.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// What is wrong with an idle worker's control connection, if anything. Between steps a
/// worker sends nothing, so readable bytes are a protocol error and a readable end of file
/// means its process is gone.
fn probe_idle(stream: &TcpStream) -> Option<&'static str> {
    if stream.set_nonblocking(true).is_err() {
        return Some("has an unusable control connection");
    }
    let mut byte = [0u8; 1];
    let seen = stream.peek(&mut byte);
    // Blocking again for the next step's reads (with their timeouts).
    if stream.set_nonblocking(false).is_err() {
        return Some("has an unusable control connection");
    }
    match seen {
        Ok(0) => Some("closed its control connection (did its process die?)"),
        Ok(_) => Some("sent a message while idle (a protocol error)"),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
        Err(_) => Some("lost its control connection (did its process die?)"),
    }
}

fn io_err(e: std::io::Error) -> EngineError {
    EngineError::TensorParallel(format!("configuring a worker connection: {e}"))
}

/// Starts `exe worker --rank R --dist-init-addr ADDR` (stdout closed, stderr shared).
fn spawn_worker(exe: &PathBuf, rank: usize, addr: &str, timeout_secs: u64) -> Result<LocalWorker> {
    let child = Command::new(exe)
        .arg("worker")
        .arg("--rank")
        .arg(rank.to_string())
        .arg("--dist-init-addr")
        .arg(addr)
        .arg("--timeout-secs")
        .arg(timeout_secs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            EngineError::TensorParallel(format!(
                "cannot start worker rank {rank} ({}): {e}; set tp.worker_exe to the nanovllm binary",
                exe.display()
            ))
        })?;
    Ok(LocalWorker { rank, child })
}
