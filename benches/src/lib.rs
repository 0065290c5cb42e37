//! Criterion benchmarks live in `benches/benches/`; this library only holds
//! shared workload builders for them. Run `cargo bench -p benches`.

use nanovllm_scheduler::{SamplingParams, Scheduler, SchedulerConfig, SchedulerError};

/// `num_seqs` sequences with distinct prompts of `prompt_len_min..prompt_len_min + spread`
/// tokens, all prefilled (running), ready for decode steps: `ignore_eos` and `max_tokens`
/// large, so nothing finishes. The cache has `num_blocks` blocks of `block_size` tokens.
pub fn running_decode_scheduler(
    num_seqs: usize,
    prompt_len_min: usize,
    spread: usize,
    block_size: usize,
    num_blocks: usize,
) -> Result<Scheduler, SchedulerError> {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_num_seqs: num_seqs,
        max_num_batched_tokens: 16384,
        max_model_len: 1 << 20,
        block_size,
        num_blocks,
        eos_token_ids: vec![0],
    })?;
    let params = SamplingParams {
        ignore_eos: true,
        max_tokens: 1 << 19,
        ..SamplingParams::greedy(1)
    };
    for i in 0..num_seqs {
        let len = prompt_len_min + (i * 37) % spread.max(1);
        let first = (i * 100_000) as u32 + 1;
        sched.add((first..first + len as u32).collect(), params.clone())?;
    }
    // Prefill steps until every sequence runs.
    while sched.num_waiting() > 0 {
        let Some(batch) = sched.schedule()? else {
            break;
        };
        let sampled = vec![1; batch.num_seqs()];
        sched.postprocess(batch, &sampled)?;
    }
    Ok(sched)
}
