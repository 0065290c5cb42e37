//! The decode loop reuses its buffers: once warm, a decode step's forward pass (every
//! layer, attention over the paged cache, the LM head) makes no heap allocation of its own,
//! for the dense and the MoE model. Counted by a global allocator wrapper, so the test
//! binary holds this one test (parallel tests would add their allocations to the count).
//!
//! The one exception is rayon's scheduler: its work queues (crossbeam's deques and the
//! shared injector, whose blocks hold 63 jobs each) grow, shrink and retire blocks as jobs
//! are pushed and stolen, at moments that depend on thread timing — a few percent of steps
//! see one such allocation. Each counted allocation's backtrace is kept, and the ones made
//! inside `crossbeam_deque` / `crossbeam_epoch` are reported apart and not held against the
//! forward pass; everything else must be zero.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use common::{build_input, load_fixture, new_cache, run_step, BlockPool, SeqStep};
use nanovllm_kernels::cpu::buffer_pool;

/// Records the backtrace of every allocation (and reallocation) while `COUNTING` is set.
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// The backtraces of the allocations counted since the last [`take_recorded`].
static RECORDED: Mutex<Vec<Backtrace>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread records: capturing and storing a backtrace allocate too, and
    /// those allocations go straight to the system allocator, uncounted.
    static RECORDING: Cell<bool> = const { Cell::new(false) };
}

/// Counts one allocation of this thread, unless it is the recording's own.
fn record() {
    // A thread whose locals are gone cannot record; nor can a nested call.
    let Ok(false) = RECORDING.try_with(|r| r.replace(true)) else {
        return;
    };
    let backtrace = Backtrace::force_capture();
    RECORDED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(backtrace);
    let _ = RECORDING.try_with(|r| r.set(false));
}

fn take_recorded() -> Vec<Backtrace> {
    std::mem::take(&mut *RECORDED.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Whether an allocation was made by rayon's work queues (crossbeam), not by the model.
fn is_scheduler_allocation(backtrace: &Backtrace) -> bool {
    let frames = backtrace.to_string();
    frames.contains("crossbeam_deque") || frames.contains("crossbeam_epoch")
}

// SAFETY: every call is forwarded unchanged to the system allocator, so this allocator
// keeps `System`'s guarantees. Recording allocates through this same allocator; the
// thread-local `RECORDING` flag stops that from recursing (nested calls only forward).
unsafe impl GlobalAlloc for CountingAllocator {
    /// # Safety
    /// As [`GlobalAlloc::alloc`]: `layout` has a non-zero size.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            record();
        }
        // SAFETY: the caller's layout has a non-zero size, as `System.alloc` requires.
        unsafe { System.alloc(layout) }
    }
    /// # Safety
    /// As [`GlobalAlloc::dealloc`]: `ptr` was allocated by this allocator with `layout`.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: this allocator's blocks are `System`'s, so `ptr` came from `System`
        // with this layout (the caller's guarantee).
        unsafe { System.dealloc(ptr, layout) }
    }
    /// # Safety
    /// As [`GlobalAlloc::realloc`]: `ptr` was allocated by this allocator with `layout`,
    /// and `new_size` is non-zero and does not overflow `isize` once rounded up to
    /// `layout.align()`.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            record();
        }
        // SAFETY: `ptr` is a `System` block with `layout` (as in `dealloc`), and the
        // caller guarantees `new_size` is valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// One decode step's allocations: the model's own, and rayon's work queues'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StepAllocations {
    model: usize,
    scheduler: usize,
}

/// Prefills four prompts, then runs decode steps with growing contexts; returns the
/// allocations of each decode step's forward pass (logits dropped inside the count).
fn decode_step_allocations(fixture: &str, steps: usize) -> Vec<StepAllocations> {
    let (config, model) = load_fixture(fixture);
    let backend = common::cpu_context().backend;
    let block_size = 4;
    let prompts: Vec<Vec<u32>> = (0..4)
        .map(|s| {
            (0..5 + 3 * s)
                .map(|i| ((i * 7 + s) % config.vocab_size) as u32)
                .collect()
        })
        .collect();
    // Room for every prompt plus the decode steps, each sequence in its own blocks.
    let blocks_per_seq = (prompts.last().map_or(0, Vec::len) + steps).div_ceil(block_size);
    let num_blocks = prompts.len() * blocks_per_seq;
    let mut pool = BlockPool::identity(num_blocks);
    let tables: Vec<Vec<u32>> = prompts.iter().map(|_| pool.take(blocks_per_seq)).collect();
    let mut cache = new_cache(backend.as_ref(), model.as_ref(), num_blocks, block_size);
    let prefill: Vec<SeqStep> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| SeqStep::prefill(t, p))
        .collect();
    run_step(
        model.as_ref(),
        backend.as_ref(),
        &mut cache,
        block_size,
        true,
        &prefill,
    );

    let next_token = [3u32];
    (0..steps)
        .map(|step| {
            let decode: Vec<SeqStep> = prompts
                .iter()
                .zip(&tables)
                .map(|(p, t)| SeqStep {
                    block_table: t,
                    num_cached: p.len() + step,
                    new_tokens: &next_token,
                })
                .collect();
            let input = build_input(backend.as_ref(), block_size, false, &decode);
            take_recorded();
            COUNTING.store(true, Ordering::Relaxed);
            let logits = model.forward(&input, &mut cache);
            drop(logits);
            COUNTING.store(false, Ordering::Relaxed);
            let recorded = take_recorded();
            let scheduler = recorded
                .iter()
                .filter(|b| is_scheduler_allocation(b))
                .count();
            StepAllocations {
                model: recorded.len() - scheduler,
                scheduler,
            }
        })
        .collect()
}

/// Asserts that the third and fourth decode steps of `fixture` allocate nothing.
fn assert_warm_steps_allocate_nothing(fixture: &str, pool: &str) {
    let steps = decode_step_allocations(fixture, 4);
    let counts: Vec<usize> = steps.iter().map(|s| s.model).collect();
    // The first decode step sizes the pool and the per-thread scratch.
    assert!(
        counts[0] > 0,
        "{fixture} ({pool}): the count sees the first step's allocations"
    );
    assert_eq!(
        &counts[2..],
        &[0, 0],
        "{fixture} ({pool}): the model's allocations per decode step {counts:?} \
         (all: {steps:?})"
    );
}

#[test]
fn warm_decode_steps_allocate_nothing() {
    // bf16 weights: the engine's CPU kernels throughout (f32 weights go through the
    // `gemm` crate, which allocates its own packing buffers per call).
    let fixtures = ["qwen3-tiny-bf16", "mixtral-tiny-bf16"];
    // On a worker of the global pool, as the engine's CPU runner runs its forward passes
    // (`run_forward_on_pool`): called from outside the pool, every parallel op would push
    // its job onto rayon's shared queue, whose blocks (crossbeam's `Injector`, 63 jobs
    // each) are allocated as it goes — rayon's allocations, not the forward pass's.
    rayon::scope(|_| {
        for fixture in fixtures {
            assert_warm_steps_allocate_nothing(fixture, "global pool");
        }
    });
    // Four decode tokens routed top-2 over mixtral-tiny's 4 experts: some expert always
    // gets two or more rows, every step (multi-row expert tiles once went through the
    // `gemm` crate, which allocated). On one thread every work item runs on the thread
    // that started the step, so whatever an item allocates shows on every step, not only
    // when a worker meets a case it has not seen.
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread rayon pool");
    one_thread.install(|| {
        for fixture in fixtures {
            assert_warm_steps_allocate_nothing(fixture, "one-thread pool");
        }
    });
    let stats = buffer_pool::stats();
    assert!(stats.reused > 0, "op outputs came from the pool: {stats:?}");
}
