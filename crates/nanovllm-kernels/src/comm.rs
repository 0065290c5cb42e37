//! The `Communicator` seam for tensor parallelism.
//!
//! Layers call it where the math needs it: after a row-parallel linear
//! (all-reduce) and to assemble vocab-parallel logits (all-gather). With one
//! rank every call is the identity ([`NoopCommunicator`]).

use crate::error::Result;
use crate::tensor::Tensor;

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
