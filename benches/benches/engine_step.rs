//! The host side of one decode step at 256 sequences: the real engine loop
//! (`LLMEngine::step`: scheduling, the runner building its inputs, postprocessing) with
//! the forward pass out of the way ([`benches::NullModel`] on the CPU backend).
//!
//! Each figure is the time per decode step of one part of [`nanovllm_core::StepTimes`],
//! as the engine measures it on every step:
//! - `host`: schedule + inputs + postprocess, everything the host adds to a step on any
//!   device (the target is under 1 ms);
//! - `schedule`, `inputs`, `postprocess`: its parts;
//! - `forward`: the null model's forward pass and sampling 256 rows of a 1024-entry
//!   vocabulary on the host; not host overhead, reported for scale (a GPU replaces it with
//!   the device's time).
//!
//! The workload is bench.py's 256 prompts (100–1024 tokens) in 256-token KV blocks, all
//! decoding; it is rebuilt (untimed) every `STEPS_PER_BUILD` steps, over which contexts grow
//! as in a real run.
//!
//! Run: `cargo bench -p benches --bench engine_step`.

use std::hint::black_box;
use std::time::Duration;

use benches::running_decode_engine;
use criterion::{criterion_group, criterion_main, Criterion};
use nanovllm_core::{BatchKind, StepTimes};

const NUM_SEQS: usize = 256;
const STEPS_PER_BUILD: u64 = 256;

/// Picks one part of a step's times.
type Part = fn(&StepTimes) -> Duration;

/// Runs `iters` decode steps of 256 sequences; returns the part `part` picks, summed.
fn timed_steps(iters: u64, part: Part) -> Duration {
    let mut timed = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let mut engine =
            running_decode_engine(STEPS_PER_BUILD as usize).expect("building the decode workload");
        let steps = (iters - done).min(STEPS_PER_BUILD);
        for _ in 0..steps {
            let out = engine.step().expect("decode step");
            assert_eq!(out.kind, Some(BatchKind::Decode));
            assert_eq!(out.num_tokens, NUM_SEQS);
            timed += part(&out.times);
            black_box(out);
        }
        done += steps;
    }
    timed
}

fn decode_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_step");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    let parts: [(&str, Part); 5] = [
        ("host_256_seqs", StepTimes::host),
        ("schedule_256_seqs", |t| t.schedule),
        ("inputs_256_seqs", |t| t.inputs),
        ("postprocess_256_seqs", |t| t.postprocess),
        ("forward_256_seqs", |t| t.forward),
    ];
    for (name, part) in parts {
        group.bench_function(name, |b| b.iter_custom(|iters| timed_steps(iters, part)));
    }
    group.finish();
}

criterion_group!(benches, decode_step);
criterion_main!(benches);
