//! The `Communicator` seam for tensor parallelism.
//!
//! Layers call it where the math needs it: after a row-parallel linear
//! (all-reduce) and to assemble vocab-parallel logits (all-gather). With one
//! rank every call is the identity ([`NoopCommunicator`]).
//!
//! Implementations:
//! - [`NoopCommunicator`]: world size 1.
//! - [`ThreadCommunicator`]: one thread per rank in one process (CPU TP).
//! - [`TcpCommunicator`]: one process per rank, star over TCP through rank 0
//!   (CPU TP across processes or hosts; the path the fault tests exercise).
//! - `NcclCommunicator` (feature `cuda`): NCCL across GPUs, processes and hosts.
//!
//! Invariants every implementation keeps:
//! - **Determinism:** the CPU implementations sum in f32 in rank order
//!   (`0 + x_0 + x_1 + ...`), so every rank ends with bit-identical results and
//!   a run with threads equals a run with processes.
//! - **No hang:** a collective either completes, or fails with
//!   [`KernelError::Comm`] naming the rank that failed — because a peer
//!   reported an error ([`ThreadCommunicator::abort`]), closed its connection
//!   (process death), or did not answer within the group's timeout. After a
//!   failure the communicator is *broken*: every later call fails at once with
//!   the first error.

#[cfg(feature = "cuda")]
mod nccl;
mod reduce;
mod tcp;
mod thread;
mod wire;

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

pub use tcp::TcpCommunicator;
pub use thread::ThreadCommunicator;

#[cfg(feature = "cuda")]
pub use nccl::{NcclCommunicator, NcclUniqueId, NCCL_UNIQUE_ID_BYTES};

pub trait Communicator: Send + Sync + std::fmt::Debug {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Elementwise sum across ranks, in place; every rank ends with the sum.
    fn all_reduce_sum(&self, x: &mut Tensor) -> Result<()>;
    /// Concatenates each rank's `x: [M, N_r]` along the last dim, in rank order.
    fn all_gather_last_dim(&self, x: &Tensor) -> Result<Tensor>;
    /// Rank `root`'s `x` overwrites every other rank's.
    fn broadcast(&self, x: &mut Tensor, root: usize) -> Result<()>;
    fn barrier(&self) -> Result<()>;
}

/// World size 1: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopCommunicator;

impl Communicator for NoopCommunicator {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _x: &mut Tensor) -> Result<()> {
        Ok(())
    }
    fn all_gather_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn broadcast(&self, _x: &mut Tensor, _root: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Moves tensors between a rank's device and the host for the host-side
/// communicators: CPU tensors pass through; device tensors need the backend.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostStaging {
    backend: Option<Arc<dyn Backend>>,
}

impl HostStaging {
    pub(crate) fn new(backend: Option<Arc<dyn Backend>>) -> Self {
        Self { backend }
    }

    /// A host copy of `x` (a clone for CPU tensors).
    pub(crate) fn to_host(&self, op: &'static str, x: &Tensor) -> Result<Tensor> {
        if x.is_cpu() {
            return Ok(x.clone());
        }
        match &self.backend {
            Some(b) => b.to_host(x),
            None => Err(no_backend(op)),
        }
    }

    /// `host` on the device `like` lives on.
    pub(crate) fn like(&self, op: &'static str, like: &Tensor, host: Tensor) -> Result<Tensor> {
        if like.is_cpu() {
            return Ok(host);
        }
        match &self.backend {
            Some(b) => b.upload(host),
            None => Err(no_backend(op)),
        }
    }
}

/// `broadcast`'s `root` must be a rank of the group.
pub(crate) fn check_root(root: usize, world_size: usize) -> Result<()> {
    if root >= world_size {
        return Err(KernelError::IndexOutOfRange {
            op: "broadcast",
            index: root,
            size: world_size,
        });
    }
    Ok(())
}

fn no_backend(op: &'static str) -> KernelError {
    KernelError::WrongDevice {
        op,
        expected: "cpu (this communicator was built without a backend: pass one with \
                   `with_backend` to reduce device tensors)"
            .into(),
        found: "a device tensor".into(),
    }
}

#[cfg(test)]
mod tests;
