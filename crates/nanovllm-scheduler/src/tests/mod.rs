//! Crate tests: block manager rules, scheduler rules, the named regressions, and
//! property tests driving random workloads.

mod block_manager;
mod regressions;
mod scheduler;
mod workload;

use crate::{SamplingParams, ScheduledBatch, Scheduler, SchedulerConfig, StepOutput};

/// End-of-sequence token of every test config.
pub(crate) const EOS: u32 = 0;

/// `n` distinct tokens starting at `first` (never EOS when `first > 0`).
pub(crate) fn tokens(first: u32, n: usize) -> Vec<u32> {
    (first..first + n as u32).collect()
}

/// A small config: 16-token blocks, room for 8 sequences and 1024 tokens per step.
pub(crate) fn config(num_blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 1024,
        max_model_len: 1024,
        block_size: 16,
        num_blocks,
        eos_token_ids: vec![EOS],
        enable_prefix_caching: true,
    }
}

/// Greedy, at most `max_tokens`, stops on EOS.
pub(crate) fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams::greedy(max_tokens)
}

/// Schedules one step, checks the batch, feeds `token` to every entry, checks the scheduler.
pub(crate) fn step(sched: &mut Scheduler, token: u32) -> (ScheduledBatch, StepOutput) {
    let batch = sched
        .schedule()
        .expect("schedule failed")
        .expect("nothing to schedule");
    batch.check_invariants().expect("batch invariants");
    let sampled = vec![token; batch.num_seqs()];
    let out = sched
        .postprocess(batch.clone(), &sampled)
        .expect("postprocess failed");
    sched.check_invariants().expect("scheduler invariants");
    (batch, out)
}
