//! [`ThreadCommunicator`]: tensor parallelism inside one process, one thread per rank.
//!
//! Every collective is one *exchange*: each rank posts a host copy of its
//! tensor into a shared slot; the last to arrive publishes all slots (in rank
//! order) as one generation and wakes the others; each rank then computes the
//! result from the same published tensors, so all ranks agree bit for bit.
//! A published generation stays readable until every rank has posted again,
//! which cannot happen before every rank has read it (each rank reads before
//! its next post).
//!
//! A waiting rank gives up when the group is aborted ([`ThreadCommunicator::abort`],
//! called by a rank that failed outside a collective) or after the group's
//! timeout; either breaks the group for good, so no rank ever waits forever.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::reduce::{concat_last_dim, sum_in_rank_order};
use super::{Communicator, HostStaging};
use crate::backend::Backend;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

/// How long a rank waits for the others in one collective before the group breaks.
pub const DEFAULT_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(600);

/// One rank of an in-process group; build the whole group with [`ThreadCommunicator::group`].
#[derive(Debug)]
pub struct ThreadCommunicator {
    rank: usize,
    shared: Arc<Shared>,
    staging: HostStaging,
}

#[derive(Debug)]
struct Shared {
    world_size: usize,
    timeout: Duration,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug)]
struct State {
    /// Completed exchanges so far.
    generation: u64,
    /// Ranks that posted into the exchange under way.
    arrived: usize,
    slots: Vec<Option<Tensor>>,
    /// Every rank's tensor of the last completed exchange, in rank order.
    published: Arc<Vec<Tensor>>,
    /// Why the group broke, once it has.
    broken: Option<String>,
}

impl ThreadCommunicator {
    /// `world_size` connected ranks (index = rank) with the default timeout.
    pub fn group(world_size: usize) -> Vec<ThreadCommunicator> {
        Self::group_with_timeout(world_size, DEFAULT_COLLECTIVE_TIMEOUT)
    }

    /// `world_size` connected ranks; a rank waiting longer than `timeout` in one collective
    /// breaks the group.
    pub fn group_with_timeout(world_size: usize, timeout: Duration) -> Vec<ThreadCommunicator> {
        let shared = Arc::new(Shared {
            world_size,
            timeout,
            state: Mutex::new(State {
                generation: 0,
                arrived: 0,
                slots: vec![None; world_size],
                published: Arc::new(Vec::new()),
                broken: None,
            }),
            wake: Condvar::new(),
        });
        (0..world_size)
            .map(|rank| ThreadCommunicator {
                rank,
                shared: shared.clone(),
                staging: HostStaging::default(),
            })
            .collect()
    }

    /// Lets this rank reduce tensors that live on `backend`'s device (staged through the host).
    pub fn with_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.staging = HostStaging::new(Some(backend));
        self
    }

    /// Breaks the group: every rank waiting in, or later entering, a collective gets an
    /// error carrying `reason`. Call it when this rank fails outside a collective so
    /// that its peers do not wait for it.
    pub fn abort(&self, reason: &str) {
        let mut state = match self.shared.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.broken.is_none() {
            state.broken = Some(format!("rank {} aborted the group: {reason}", self.rank));
        }
        self.shared.wake.notify_all();
    }

    /// Why the group broke, if it has.
    pub fn broken(&self) -> Option<String> {
        self.lock().ok().and_then(|s| s.broken.clone())
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.shared.state.lock().map_err(|_| {
            KernelError::Comm(format!(
                "rank {}: a rank panicked inside a collective; the group is unusable",
                self.rank
            ))
        })
    }

    /// Posts `x`; returns every rank's tensor in rank order once all have posted.
    fn exchange(&self, op: &str, x: Tensor) -> Result<Arc<Vec<Tensor>>> {
        let world = self.shared.world_size;
        let mut state = self.lock()?;
        if let Some(why) = &state.broken {
            return Err(broken(self.rank, op, why));
        }
        state.slots[self.rank] = Some(x);
        state.arrived += 1;
        let generation = state.generation;
        if state.arrived == world {
            let all: Option<Vec<Tensor>> = state.slots.iter_mut().map(Option::take).collect();
            let Some(all) = all else {
                return Err(KernelError::Comm(format!(
                    "{op}: {world} ranks arrived but a slot is empty (a rank posted twice?)"
                )));
            };
            state.published = Arc::new(all);
            state.arrived = 0;
            state.generation += 1;
            self.shared.wake.notify_all();
            return Ok(state.published.clone());
        }
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            if state.generation != generation {
                return Ok(state.published.clone());
            }
            if let Some(why) = &state.broken {
                return Err(broken(self.rank, op, why));
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> =
                    (0..world).filter(|&r| state.slots[r].is_none()).collect();
                let why = format!(
                    "rank {} waited {:?} in {op} for ranks {missing:?}, which never arrived",
                    self.rank, self.shared.timeout
                );
                state.broken = Some(why.clone());
                self.shared.wake.notify_all();
                return Err(KernelError::Comm(why));
            }
            state = match self.shared.wake.wait_timeout(state, deadline - now) {
                Ok((s, _)) => s,
                Err(_) => return Err(broken(self.rank, op, "a rank panicked")),
            };
        }
    }
}

fn broken(rank: usize, op: &str, why: &str) -> KernelError {
    KernelError::Comm(format!(
        "rank {rank}: {op} failed, the tensor-parallel group is broken: {why}"
    ))
}

impl Communicator for ThreadCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world_size
    }
    fn all_reduce_sum(&self, x: &mut Tensor) -> Result<()> {
        const OP: &str = "all_reduce_sum";
        let all = self.exchange(OP, self.staging.to_host(OP, x)?)?;
        let sum = sum_in_rank_order(&all)?;
        *x = self.staging.like(OP, x, sum)?;
        Ok(())
    }
    fn all_gather_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "all_gather_last_dim";
        let all = self.exchange(OP, self.staging.to_host(OP, x)?)?;
        let gathered = concat_last_dim(&all)?;
        self.staging.like(OP, x, gathered)
    }
    fn broadcast(&self, x: &mut Tensor, root: usize) -> Result<()> {
        const OP: &str = "broadcast";
        if root >= self.shared.world_size {
            return Err(KernelError::IndexOutOfRange {
                op: OP,
                index: root,
                size: self.shared.world_size,
            });
        }
        let all = self.exchange(OP, self.staging.to_host(OP, x)?)?;
        if root != self.rank {
            *x = self.staging.like(OP, x, all[root].clone())?;
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", Tensor::zeros_cpu(&[0], crate::DType::F32))?;
        Ok(())
    }
}
