//! One decode step of the scheduler: `schedule()` + `postprocess()` with 512 running
//! sequences (256-token blocks, prompts of 200..400 tokens, nothing finishes).
//!
//! Sequences grow by one token per step, so the workload is rebuilt (untimed) every
//! `STEPS_PER_BUILD` steps; about one step in 256 per sequence fills a block and hashes it,
//! as in a real run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::running_decode_scheduler;
use criterion::{criterion_group, criterion_main, Criterion};

const NUM_SEQS: usize = 512;
const STEPS_PER_BUILD: u64 = 512;

fn decode_step(c: &mut Criterion) {
    let sampled = vec![1u32; NUM_SEQS];
    c.bench_function("scheduler_step/decode_512_seqs", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                // 512 seqs * ceil((400 + 512) / 256) blocks = 2048 at most.
                let mut sched = running_decode_scheduler(NUM_SEQS, 200, 200, 256, 2304)
                    .expect("building the decode workload");
                assert_eq!(sched.num_running(), NUM_SEQS);
                let steps = (iters - done).min(STEPS_PER_BUILD);
                let start = Instant::now();
                for _ in 0..steps {
                    let batch = sched
                        .schedule()
                        .expect("schedule")
                        .expect("512 sequences are running");
                    black_box(sched.postprocess(batch, &sampled).expect("postprocess"));
                }
                timed += start.elapsed();
                done += steps;
            }
            timed
        })
    });
}

criterion_group!(benches, decode_step);
criterion_main!(benches);
