//! # nanovllm-scheduler
//!
//! Owns the bookkeeping of an inference engine: [`Sequence`]s and their
//! [`SamplingParams`], the paged KV-cache [`BlockManager`] with hash-chained
//! prefix caching, and the continuous-batching [`Scheduler`].
//!
//! It is plain Rust: it must never depend on tensors, a GPU, the kernels or
//! the models crate. Its output, a [`ScheduledBatch`], is plain data (token
//! ids, positions, block tables, slot mapping) that a runner on any backend
//! executes without calling back into the scheduler.

mod batch;
mod block_hash;
mod block_manager;
mod error;
mod free_list;
mod params;
mod scheduler;
mod sequence;
mod u64_hasher;

#[cfg(test)]
mod tests;

pub use batch::{BatchKind, ScheduledBatch, ScheduledSeq};
pub use block_hash::chained_block_hash;
pub use block_manager::{BlockManager, BlockManagerStats};
pub use error::SchedulerError;
pub use params::{SamplingOverrides, SamplingParams, StructuredOutput};
pub use scheduler::{FinishedSeq, Scheduler, SchedulerConfig, StepOutput};
pub use sequence::{FinishReason, SeqId, Sequence, SequenceStatus};
