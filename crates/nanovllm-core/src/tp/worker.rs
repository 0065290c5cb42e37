//! The worker side of the process path: what `nanovllm worker` runs.
//!
//! [`run_worker`] is one rank: it joins rank 0's rendezvous, takes its engine
//! config from rank 0, loads its shard, and runs every step it is sent until
//! rank 0 says `Shutdown` or goes away (its connection closes). Any failure is
//! reported to rank 0 before the process exits with an error.
//!
//! [`run_node`] starts the ranks of one node of a multi-host group (node
//! `node_rank` runs ranks `node_rank * T / nnodes ..`), each as its own
//! process, and waits for them; if one fails, it stops the others.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nanovllm_kernels::{Backend, Communicator, TcpCommunicator};

use super::codec::{read_msg, write_msg, Channel, Msg};
use super::rank::{load_rank_model, mirror_kv_sizing, rank_device, RankRunner};
use super::rendezvous::connect;
use crate::config::EngineConfig;
use crate::error::{EngineError, Result};

/// One worker rank's command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerOptions {
    pub rank: usize,
    /// Rank 0's rendezvous `host:port`.
    pub dist_init_addr: String,
    /// Seconds to wait for rank 0 (connecting, loading) and for peers in a collective.
    pub timeout_secs: u64,
}

/// Runs one worker rank until rank 0 shuts it down (`Ok`) or something fails (`Err`,
/// also reported to rank 0 when the connection still stands).
pub fn run_worker(opts: &WorkerOptions) -> Result<()> {
    let rank = opts.rank;
    if rank == 0 {
        return Err(EngineError::TensorParallel(
            "rank 0 is the engine itself (`nanovllm generate|serve|chat`), not a worker: \
             workers have ranks >= 1"
                .into(),
        ));
    }
    let timeout = Duration::from_secs(opts.timeout_secs.max(1));
    let deadline = Instant::now() + timeout;
    let mut control = connect(&opts.dist_init_addr, rank, Channel::Control, deadline)?;
    let data = connect(&opts.dist_init_addr, rank, Channel::Data, deadline)?;
    let io = |what: &str, e: std::io::Error| {
        EngineError::TensorParallel(format!("rank {rank}: {what}: {e}"))
    };
    control
        .set_read_timeout(Some(timeout))
        .map_err(|e| io("configuring the control connection", e))?;
    let (engine_json, nccl_id) = match read_msg(&mut control) {
        Ok(Msg::Config {
            engine_json,
            nccl_id,
        }) => (engine_json, nccl_id),
        Ok(other) => {
            return Err(EngineError::TensorParallel(format!(
                "rank {rank}: rank 0 sent {other:?} instead of the engine config"
            )))
        }
        Err(e) => return Err(io("waiting for the engine config from rank 0", e)),
    };
    let outcome = serve_steps(rank, &mut control, data, &engine_json, &nccl_id, timeout);
    if let Err(e) = &outcome {
        // Tell rank 0 why (it may already know, if the failure came from a collective).
        let _ = write_msg(&mut control, &Msg::Failed(format!("rank {rank}: {e}")));
    }
    outcome
}

fn serve_steps(
    rank: usize,
    control: &mut TcpStream,
    data: TcpStream,
    engine_json: &str,
    nccl_id: &[u8],
    timeout: Duration,
) -> Result<()> {
    let config: EngineConfig = serde_json::from_str(engine_json).map_err(|e| {
        EngineError::TensorParallel(format!(
            "rank {rank}: rank 0 sent an unreadable config: {e}"
        ))
    })?;
    // A worker process sizes its own CPU pool as rank 0 did.
    crate::threads::configure_pool(config.threads)?;
    let world = config.tensor_parallel_size;
    let backend = rank_device(&config, rank)?;
    send(control, rank, &Msg::Joined)?;
    let comm: Arc<dyn Communicator> =
        super::make_worker_comm(&backend, rank, world, data, nccl_id, timeout)?;
    let model = load_rank_model(&config, rank, backend.clone(), comm)?;
    mirror_kv_sizing(&config, backend.as_ref(), model.as_ref())?;
    send(control, rank, &Msg::Loaded)?;
    let num_blocks = match recv(control, rank)? {
        Msg::Init { num_blocks } => usize::try_from(num_blocks).map_err(|_| {
            EngineError::TensorParallel(format!("rank {rank}: {num_blocks} KV blocks overflow"))
        })?,
        Msg::Shutdown => return Ok(()),
        other => return Err(unexpected(rank, &other, "its KV cache size")),
    };
    let mut runner = RankRunner::new(&config, backend, model, num_blocks)?;
    send(control, rank, &Msg::Ready)?;
    // Idle between requests is normal (a server): wait for steps without a timeout.
    // Rank 0's death still ends the wait: its end of the connection closes.
    control.set_read_timeout(None).map_err(|e| {
        EngineError::TensorParallel(format!(
            "rank {rank}: configuring the control connection: {e}"
        ))
    })?;
    loop {
        match recv(control, rank)? {
            Msg::Step(batch) => {
                runner.step(&batch)?;
                send(control, rank, &Msg::Done)?;
            }
            Msg::Shutdown => return Ok(()),
            other => return Err(unexpected(rank, &other, "a step")),
        }
    }
}

fn send(control: &mut TcpStream, rank: usize, msg: &Msg) -> Result<()> {
    write_msg(control, msg).map_err(|e| {
        EngineError::TensorParallel(format!("rank {rank}: cannot reach rank 0 ({e}); exiting"))
    })
}

fn recv(control: &mut TcpStream, rank: usize) -> Result<Msg> {
    read_msg(control).map_err(|e| {
        EngineError::TensorParallel(format!(
            "rank {rank}: lost rank 0 ({e}); the engine stopped or died, exiting"
        ))
    })
}

fn unexpected(rank: usize, got: &Msg, wanted: &str) -> EngineError {
    EngineError::TensorParallel(format!(
        "rank {rank}: rank 0 sent {got:?} while it waited for {wanted}"
    ))
}

/// One node of a multi-host group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    pub tensor_parallel_size: usize,
    pub nnodes: usize,
    /// ≥ 1: node 0 is the engine (`nanovllm generate|serve|chat --node-rank 0`).
    pub node_rank: usize,
    pub dist_init_addr: String,
    pub timeout_secs: u64,
}

impl NodeOptions {
    /// The ranks this node runs.
    pub fn ranks(&self) -> Result<std::ops::Range<usize>> {
        let (t, n, k) = (self.tensor_parallel_size, self.nnodes, self.node_rank);
        if t.checked_rem(n) != Some(0) {
            return Err(EngineError::TensorParallel(format!(
                "--nnodes {n} does not divide --tensor-parallel-size {t}: every node runs the \
                 same number of ranks"
            )));
        }
        if k == 0 || k >= n {
            return Err(EngineError::TensorParallel(format!(
                "--node-rank {k}: a worker node has a rank in 1..{n} (node 0 runs the engine)"
            )));
        }
        let per = t / n;
        Ok(k * per..(k + 1) * per)
    }
}

/// Starts this node's ranks as `exe worker --rank R` processes and waits for all of them.
/// The first to fail stops the others; the error names it.
pub fn run_node(exe: &Path, opts: &NodeOptions) -> Result<()> {
    let ranks = opts.ranks()?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for rank in ranks {
        let child = Command::new(exe)
            .arg("worker")
            .arg("--rank")
            .arg(rank.to_string())
            .arg("--dist-init-addr")
            .arg(&opts.dist_init_addr)
            .arg("--timeout-secs")
            .arg(opts.timeout_secs.to_string())
            .stdin(Stdio::null())
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop_all(&mut children);
                return Err(EngineError::TensorParallel(format!(
                    "cannot start worker rank {rank} ({}): {e}",
                    exe.display()
                )));
            }
        }
    }
    loop {
        let mut running = 0;
        for i in 0..children.len() {
            let (rank, child) = &mut children[i];
            match child.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    let rank = *rank;
                    stop_all(&mut children);
                    return Err(EngineError::TensorParallel(format!(
                        "worker rank {rank} failed ({status}); stopped this node's other ranks"
                    )));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => running += 1,
            }
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_all(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The TCP leaf communicator of a CPU worker (device groups are joined in `super::make_worker_comm`).
pub(crate) fn tcp_leaf(
    rank: usize,
    world: usize,
    data: TcpStream,
    timeout: Duration,
    backend: &Arc<dyn Backend>,
) -> Result<Arc<dyn Communicator>> {
    Ok(Arc::new(
        TcpCommunicator::leaf(rank, world, data, timeout)?.with_backend(backend.clone()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ranks_split_the_world_evenly() {
        let node = |t, n, k| NodeOptions {
            tensor_parallel_size: t,
            nnodes: n,
            node_rank: k,
            dist_init_addr: "127.0.0.1:2333".into(),
            timeout_secs: 1,
        };
        assert_eq!(node(8, 2, 1).ranks().unwrap(), 4..8);
        assert_eq!(node(6, 3, 2).ranks().unwrap(), 4..6);
        assert!(node(6, 4, 1).ranks().is_err());
        assert!(node(8, 2, 0).ranks().is_err());
        assert!(node(8, 2, 2).ranks().is_err());
    }
}
