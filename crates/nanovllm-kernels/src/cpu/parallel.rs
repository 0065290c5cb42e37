//! When to go parallel.
//!
//! All CPU ops use rayon's global pool (no per-call threads). Work below [`PAR_GRAIN`]
//! scalar operations runs on the calling thread, since a rayon split costs microseconds;
//! above it, each rayon task gets at least [`PAR_GRAIN`] work.

use std::cell::RefCell;
use std::thread::LocalKey;

use rayon::prelude::*;

/// Runs `f` on the calling thread's buffer in `key`, taken out of the thread-local for
/// the call rather than borrowed, for buffers held across a parallel loop. A rayon worker
/// waiting for its loop's tasks steals other jobs — the engine runs its forward pass on
/// a worker, so another model's forward pass among them — and a nested call must not
/// find the buffer borrowed: it gets an empty one of its own (dropped when the outer call
/// puts its buffer back).
pub(crate) fn with_taken<T: Default, R>(
    key: &'static LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut buffer = key.take();
    let result = f(&mut buffer);
    key.set(buffer);
    result
}

/// An output buffer shared by parallel tasks that each write their own disjoint
/// elements (the callers' tilings guarantee it); the buffer outlives the tasks.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: see the type's docs: no element is written by two tasks, none is read while
// tasks run, and the buffer outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: tasks sharing `&OutPtr` only copy the pointer out, and what
// they write through it is disjoint.
unsafe impl Sync for OutPtr {}
impl OutPtr {
    /// A method (not field access) so closures capture the whole `Send + Sync` wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Scalar operations worth one rayon task.
pub(crate) const PAR_GRAIN: usize = 1 << 15;

/// Whether `total_cost` scalar operations are worth splitting across threads.
pub(crate) fn worth_parallel(total_cost: usize) -> bool {
    total_cost >= 2 * PAR_GRAIN && rayon::current_num_threads() > 1
}

/// Items per rayon task so that each task does at least [`PAR_GRAIN`] work.
pub(crate) fn min_items(cost_per_item: usize) -> usize {
    PAR_GRAIN.div_ceil(cost_per_item.max(1))
}

/// Runs `f(row_index, row)` over `out` split into rows of `row_len` elements, in
/// parallel when the total work (`cost_per_row` per row) is large enough.
pub(crate) fn for_each_row<T, F>(out: &mut [T], row_len: usize, cost_per_row: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Send + Sync,
{
    if row_len == 0 {
        return;
    }
    let rows = out.len() / row_len;
    if worth_parallel(rows.saturating_mul(cost_per_row)) {
        out.par_chunks_exact_mut(row_len)
            .enumerate()
            .with_min_len(min_items(cost_per_row))
            .for_each(|(i, row)| f(i, row));
    } else {
        out.chunks_exact_mut(row_len)
            .enumerate()
            .for_each(|(i, row)| f(i, row));
    }
}

/// Runs `f(block)` for `block in 0..blocks`, in parallel when `total_cost` is worth it, each
/// rayon task taking at least enough blocks to cover the parallelism threshold at
/// `cost_per_block` (the W-row blocks of the small-M matmul kernels).
pub(crate) fn for_each_block<F>(blocks: usize, cost_per_block: usize, total_cost: usize, f: F)
where
    F: Fn(usize) + Send + Sync,
{
    if worth_parallel(total_cost) {
        (0..blocks)
            .into_par_iter()
            .with_min_len(min_items(cost_per_block))
            .for_each(f);
    } else {
        (0..blocks).for_each(f);
    }
}
