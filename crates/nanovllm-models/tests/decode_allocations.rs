//! The decode loop reuses its buffers: once warm, a decode step's forward pass (every
//! layer, attention over the paged cache, the LM head) makes no heap allocation at all,
//! for the dense and the MoE model. Counted by a global allocator wrapper, so the test
//! binary holds this one test (parallel tests would add their allocations to the count).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{build_input, load_fixture, new_cache, run_step, BlockPool, SeqStep};
use nanovllm_kernels::cpu::buffer_pool;

/// Counts allocations (and reallocations) while `COUNTING` is set.
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, so this allocator
// keeps `System`'s guarantees; the counting touches only atomics, never the heap.
unsafe impl GlobalAlloc for CountingAllocator {
    /// # Safety
    /// As [`GlobalAlloc::alloc`]: `layout` has a non-zero size.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
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
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` is a `System` block with `layout` (as in `dealloc`), and the
        // caller guarantees `new_size` is valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Prefills four prompts, then runs decode steps with growing contexts; returns the
/// allocations of each decode step's forward pass (logits dropped inside the count).
fn decode_step_allocations(fixture: &str, steps: usize) -> Vec<usize> {
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
            ALLOCATIONS.store(0, Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            let logits = model.forward(&input, &mut cache);
            drop(logits);
            COUNTING.store(false, Ordering::Relaxed);
            ALLOCATIONS.load(Ordering::Relaxed)
        })
        .collect()
}

/// Asserts that the third and fourth decode steps of `fixture` allocate nothing.
fn assert_warm_steps_allocate_nothing(fixture: &str, pool: &str) {
    let counts = decode_step_allocations(fixture, 4);
    // The first decode step sizes the pool and the per-thread scratch.
    assert!(
        counts[0] > 0,
        "{fixture} ({pool}): the count sees the first step's allocations"
    );
    assert_eq!(
        &counts[2..],
        &[0, 0],
        "{fixture} ({pool}): allocations per decode step {counts:?}"
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
