//! [`TcpCommunicator`]: tensor parallelism across processes (or hosts) over TCP.
//!
//! A star through rank 0: in every collective each other rank sends rank 0 its
//! tensor ([`super::wire`] frames, tagged with the collective), rank 0 combines
//! them in rank order with the same math as [`super::ThreadCommunicator`] and
//! sends every rank the result. Simple and deterministic; the bandwidth is
//! rank 0's, which is fine for the CPU path it serves (GPUs use NCCL).
//!
//! Connections are made by the caller (the engine's rendezvous) and handed in
//! already connected: rank 0 gets one stream per other rank, in rank order.
//!
//! Failure: a peer that closes its connection (its process died) or stays
//! silent past the timeout fails the collective with an error naming it. The
//! communicator is then broken; rank 0 also shuts every connection down so
//! that the surviving ranks fail at once instead of waiting for their timeout.

use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::reduce::{concat_last_dim, sum_in_rank_order};
use super::wire::{io_error, read_frame, write_frame};
use super::{Communicator, HostStaging};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

const OP_ALL_REDUCE: u8 = 1;
const OP_ALL_GATHER: u8 = 2;
const OP_BROADCAST: u8 = 3;
const OP_BARRIER: u8 = 4;

fn op_name(op: u8) -> &'static str {
    match op {
        OP_ALL_REDUCE => "all_reduce_sum",
        OP_ALL_GATHER => "all_gather_last_dim",
        OP_BROADCAST => "broadcast",
        OP_BARRIER => "barrier",
        _ => "an unknown collective",
    }
}

#[derive(Debug)]
enum Links {
    /// Rank 0: `streams[i]` leads to rank `i + 1`.
    Root(Vec<TcpStream>),
    /// Any other rank: the stream to rank 0.
    Leaf(TcpStream),
}

/// One rank of a TCP group.
#[derive(Debug)]
pub struct TcpCommunicator {
    rank: usize,
    world_size: usize,
    timeout: Duration,
    links: Mutex<Links>,
    /// Why the group broke, once it has.
    broken: Mutex<Option<String>>,
    staging: HostStaging,
}

impl TcpCommunicator {
    /// Rank 0 of a group of `streams.len() + 1` ranks; `streams[i]` is connected to rank `i + 1`.
    pub fn root(streams: Vec<TcpStream>, timeout: Duration) -> Result<Self> {
        for s in &streams {
            configure(s, timeout)?;
        }
        Ok(Self {
            rank: 0,
            world_size: streams.len() + 1,
            timeout,
            links: Mutex::new(Links::Root(streams)),
            broken: Mutex::new(None),
            staging: HostStaging::default(),
        })
    }

    /// Rank `rank` (≥ 1) of a group of `world_size`, connected to rank 0 by `stream`.
    pub fn leaf(
        rank: usize,
        world_size: usize,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<Self> {
        if rank == 0 || rank >= world_size {
            return Err(KernelError::Comm(format!(
                "a TCP leaf must have a rank in 1..{world_size}, got {rank}"
            )));
        }
        configure(&stream, timeout)?;
        Ok(Self {
            rank,
            world_size,
            timeout,
            links: Mutex::new(Links::Leaf(stream)),
            broken: Mutex::new(None),
            staging: HostStaging::default(),
        })
    }

    /// Lets this rank reduce tensors that live on `backend`'s device (staged through the host).
    pub fn with_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.staging = HostStaging::new(Some(backend));
        self
    }

    /// Why the group broke, if it has.
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().ok().and_then(|b| b.clone())
    }

    /// Breaks the group: later calls here fail with `reason`, and the peers' pending and
    /// later collectives fail as soon as they notice the closed connections. Call it when
    /// this rank fails outside a collective.
    pub fn abort(&self, reason: &str) {
        if let Ok(mut b) = self.broken.lock() {
            b.get_or_insert_with(|| format!("rank {} aborted the group: {reason}", self.rank));
        }
        // Not `self.links()`: a collective in flight holds that lock; `try_lock` never blocks,
        // and a rank in a collective fails on its own when its peers close their ends.
        if let Ok(links) = self.links.try_lock() {
            shutdown_all(&links);
        }
    }

    fn links(&self) -> Result<MutexGuard<'_, Links>> {
        self.links
            .lock()
            .map_err(|_| KernelError::Comm(format!("rank {}: a collective panicked", self.rank)))
    }

    /// Runs one collective: sends `x` tagged `op`; rank 0 combines every rank's tensor with
    /// `combine` and returns (and sends) the result.
    fn collective(
        &self,
        op: u8,
        x: &Tensor,
        combine: impl FnOnce(Vec<Tensor>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if let Some(why) = self.broken() {
            return Err(KernelError::Comm(format!(
                "rank {}: {} failed, the tensor-parallel group is broken: {why}",
                self.rank,
                op_name(op)
            )));
        }
        let mut links = self.links()?;
        let result = match &mut *links {
            Links::Root(streams) => self.root_round(streams, op, x, combine),
            Links::Leaf(stream) => self.leaf_round(stream, op, x),
        };
        if let Err(e) = &result {
            if let Ok(mut b) = self.broken.lock() {
                b.get_or_insert_with(|| e.to_string());
            }
            // Wake every peer now rather than at its timeout.
            shutdown_all(&links);
        }
        result
    }

    fn root_round(
        &self,
        streams: &mut [TcpStream],
        op: u8,
        x: &Tensor,
        combine: impl FnOnce(Vec<Tensor>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let name = op_name(op);
        let mut all = Vec::with_capacity(self.world_size);
        all.push(x.clone());
        for (i, s) in streams.iter_mut().enumerate() {
            let peer = i + 1;
            let (got, t) = read_frame(s).map_err(|e| io_error(0, peer, name, self.timeout, &e))?;
            if got != op {
                return Err(KernelError::Comm(format!(
                    "rank 0 is in {name} but rank {peer} is in {}: every rank must run the \
                     same collectives in the same order",
                    op_name(got)
                )));
            }
            all.push(t);
        }
        let result = combine(all)?;
        for (i, s) in streams.iter_mut().enumerate() {
            write_frame(s, op, &result).map_err(|e| io_error(0, i + 1, name, self.timeout, &e))?;
        }
        Ok(result)
    }

    fn leaf_round(&self, stream: &mut TcpStream, op: u8, x: &Tensor) -> Result<Tensor> {
        let name = op_name(op);
        let me = self.rank;
        write_frame(stream, op, x).map_err(|e| io_error(me, 0, name, self.timeout, &e))?;
        let (got, t) = read_frame(stream).map_err(|e| io_error(me, 0, name, self.timeout, &e))?;
        if got != op {
            return Err(KernelError::Comm(format!(
                "rank {me} is in {name} but rank 0 answered {}",
                op_name(got)
            )));
        }
        Ok(t)
    }
}

fn shutdown_all(links: &Links) {
    match links {
        Links::Root(streams) => streams.iter().for_each(|s| {
            let _ = s.shutdown(Shutdown::Both);
        }),
        Links::Leaf(s) => {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn configure(s: &TcpStream, timeout: Duration) -> Result<()> {
    let io = |e: std::io::Error| KernelError::Comm(format!("configuring a TCP link: {e}"));
    s.set_nodelay(true).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    Ok(())
}

fn empty() -> Tensor {
    Tensor::zeros_cpu(&[0], DType::F32)
}

impl Communicator for TcpCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn all_reduce_sum(&self, x: &mut Tensor) -> Result<()> {
        const OP: &str = "all_reduce_sum";
        let host = self.staging.to_host(OP, x)?;
        let sum = self.collective(OP_ALL_REDUCE, &host, |all| sum_in_rank_order(&all))?;
        *x = self.staging.like(OP, x, sum)?;
        Ok(())
    }
    fn all_gather_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "all_gather_last_dim";
        let host = self.staging.to_host(OP, x)?;
        let gathered = self.collective(OP_ALL_GATHER, &host, |all| concat_last_dim(&all))?;
        self.staging.like(OP, x, gathered)
    }
    fn broadcast(&self, x: &mut Tensor, root: usize) -> Result<()> {
        const OP: &str = "broadcast";
        super::check_root(root, self.world_size)?;
        // Only the root's tensor travels up; the others send an empty frame.
        let mine = if self.rank == root {
            self.staging.to_host(OP, x)?
        } else {
            empty()
        };
        let value = self.collective(OP_BROADCAST, &mine, |mut all| Ok(all.swap_remove(root)))?;
        if self.rank != root {
            *x = self.staging.like(OP, x, value)?;
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.collective(OP_BARRIER, &empty(), |_| Ok(empty()))?;
        Ok(())
    }
}
