//! Recycled host buffers for CPU op outputs: the decode loop reuses last step's
//! activations instead of allocating new ones.
//!
//! Every CPU op returns a new tensor, so a step would otherwise allocate (and zero) one
//! buffer per op per layer. Instead a CPU tensor hands its buffer to the process-wide
//! pool when it is dropped ([`give_back`], from `Storage`'s `Drop`), and ops take their
//! output buffers from it ([`take_for_overwrite`], [`take_zeroed`]). A decode step asks for the same
//! sizes as the step before, so from the second step on every request is served from
//! the pool ([`stats`] counts the ones that were not).
//!
//! Invariants:
//! - A request for `len` elements is served by the free buffer of that dtype with the
//!   smallest capacity in `len ..= 2·len` (so a small output never pins a big buffer);
//!   failing that, by a new allocation, counted in [`PoolStats::fresh`].
//! - Cost: one uncontended lock and a scan of at most [`MAX_FREE_BUFFERS`] entries per
//!   take and per give-back; no zeroing unless asked for ([`take_zeroed`]).
//! - A taken buffer holds unspecified (but initialised) values: ops that use
//!   [`take_for_overwrite`] write every element.
//! - Retention is bounded: at most [`MAX_RETAINED_BYTES`] and [`MAX_FREE_BUFFERS`]
//!   buffers; giving back past either evicts the oldest free buffers first. Empty
//!   buffers and ones larger than the whole budget (weights when a model is dropped) are
//!   left to the allocator; every other size is pooled, down to one token's routing ids.
//! - Every dtype is served ([`PoolElem`]); a buffer only serves requests of its own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::tensor::CpuStorage;

/// Most bytes the pool holds. A decode step of Qwen3-0.6B at 32 sequences keeps ≈ 24 MB
/// in flight (the 19 MB of logits included); prefill chunks' larger buffers are kept
/// while they fit.
pub const MAX_RETAINED_BYTES: usize = 256 << 20;
/// Most free buffers held: a layer's worth of distinct sizes with room to spare.
pub const MAX_FREE_BUFFERS: usize = 64;

/// What the pool has served since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests served from a free buffer.
    pub reused: u64,
    /// Requests that needed a new allocation (no free buffer of a fitting size).
    pub fresh: u64,
}

static REUSED: AtomicU64 = AtomicU64::new(0);
static FRESH: AtomicU64 = AtomicU64::new(0);
static POOL: Mutex<BufferPool> = Mutex::new(BufferPool::new(MAX_RETAINED_BYTES, MAX_FREE_BUFFERS));

/// Counts of pooled requests so far (process-wide).
pub fn stats() -> PoolStats {
    PoolStats {
        reused: REUSED.load(Ordering::Relaxed),
        fresh: FRESH.load(Ordering::Relaxed),
    }
}

/// Free buffers, oldest first, and their total size.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: VecDeque<CpuStorage>,
    retained_bytes: usize,
    max_bytes: usize,
    max_buffers: usize,
}

fn capacity_bytes(s: &CpuStorage) -> usize {
    match s {
        CpuStorage::F32(v) => v.capacity() * 4,
        CpuStorage::BF16(v) => v.capacity() * 2,
        CpuStorage::F16(v) => v.capacity() * 2,
        CpuStorage::U32(v) => v.capacity() * 4,
        CpuStorage::I64(v) => v.capacity() * 8,
        CpuStorage::Bytes { bytes, .. } => bytes.capacity(),
    }
}

/// Element types the pool serves.
pub(crate) trait PoolElem: Copy + Default + Sized {
    fn unwrap_storage(s: CpuStorage) -> Result<Vec<Self>, CpuStorage>;
    fn matches(s: &CpuStorage) -> Option<usize>;
}

macro_rules! pool_elem {
    ($t:ty, $variant:ident) => {
        impl PoolElem for $t {
            fn unwrap_storage(s: CpuStorage) -> Result<Vec<Self>, CpuStorage> {
                match s {
                    CpuStorage::$variant(v) => Ok(v),
                    other => Err(other),
                }
            }
            fn matches(s: &CpuStorage) -> Option<usize> {
                match s {
                    CpuStorage::$variant(v) => Some(v.capacity()),
                    _ => None,
                }
            }
        }
    };
}
pool_elem!(f32, F32);
pool_elem!(half::bf16, BF16);
pool_elem!(half::f16, F16);
pool_elem!(u32, U32);
pool_elem!(i64, I64);

impl BufferPool {
    pub(crate) const fn new(max_bytes: usize, max_buffers: usize) -> Self {
        Self {
            free: VecDeque::new(),
            retained_bytes: 0,
            max_bytes,
            max_buffers,
        }
    }

    /// The best-fitting free buffer for `len` elements of `T`, if any (see the module docs).
    pub(crate) fn take<T: PoolElem>(&mut self, len: usize) -> Option<Vec<T>> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter_map(|(i, s)| T::matches(s).map(|cap| (i, cap)))
            .filter(|&(_, cap)| cap >= len && cap <= len.saturating_mul(2))
            .min_by_key(|&(_, cap)| cap)?
            .0;
        let storage = self.free.remove(best)?;
        self.retained_bytes -= capacity_bytes(&storage);
        T::unwrap_storage(storage).ok()
    }

    /// Keeps `storage` for reuse, evicting the oldest buffers to stay within budget.
    pub(crate) fn give_back(&mut self, storage: CpuStorage) {
        let bytes = capacity_bytes(&storage);
        if bytes == 0 || bytes > self.max_bytes || self.max_buffers == 0 {
            return;
        }
        while self.retained_bytes + bytes > self.max_bytes || self.free.len() >= self.max_buffers {
            match self.free.pop_front() {
                Some(old) => self.retained_bytes -= capacity_bytes(&old),
                None => break,
            }
        }
        self.retained_bytes += bytes;
        self.free.push_back(storage);
    }

    /// Frees every held buffer (they go back to the allocator).
    pub(crate) fn clear(&mut self) {
        self.free.clear();
        self.retained_bytes = 0;
    }

    #[cfg(test)]
    pub(crate) fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }
}

/// Hands a dropped tensor's buffer to the pool (called from `Storage`'s `Drop`).
pub(crate) fn give_back(storage: CpuStorage) {
    if capacity_bytes(&storage) == 0 {
        return;
    }
    // A poisoned lock only means another thread panicked mid-call; the list is still
    // consistent (every mutation completes before the guard drops).
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.give_back(storage);
}

/// A buffer of exactly `len` elements, from the pool when one fits.
fn take<T: PoolElem>(len: usize, zeroed: bool) -> Vec<T> {
    if len > 0 {
        let reused = POOL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take::<T>(len);
        if let Some(mut v) = reused {
            REUSED.fetch_add(1, Ordering::Relaxed);
            if zeroed {
                v.clear();
            }
            // Elements past the old length are new (and zero); the ones kept are the
            // previous user's values, which callers of the unzeroed takes overwrite.
            v.resize(len, T::default());
            return v;
        }
        FRESH.fetch_add(1, Ordering::Relaxed);
    }
    vec![T::default(); len]
}

/// `len` elements with unspecified values, for an op that writes every element.
pub(crate) fn take_for_overwrite<T: PoolElem>(len: usize) -> Vec<T> {
    take(len, false)
}

/// `len` zeroed elements, for an op that accumulates into its output or leaves parts zero.
pub(crate) fn take_zeroed<T: PoolElem>(len: usize) -> Vec<T> {
    take(len, true)
}

/// Frees every buffer the pool holds (the engine does this when it goes idle: between bursts
/// nothing is worth keeping). The next step allocates afresh and refills the pool.
pub(crate) fn clear() {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Returns an op's scratch buffer (one that no tensor owns) to the pool.
pub(crate) fn recycle_f32(buffer: Vec<f32>) {
    give_back(CpuStorage::F32(buffer));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(len: usize, value: f32) -> CpuStorage {
        CpuStorage::F32(vec![value; len])
    }

    #[test]
    fn takes_the_smallest_fitting_buffer_of_the_right_dtype() {
        let mut pool = BufferPool::new(1 << 20, 8);
        pool.give_back(f32s(1000, 1.0));
        pool.give_back(f32s(300, 2.0));
        pool.give_back(CpuStorage::U32(vec![7; 300]));
        // 300 fits 250 (≤ 2×); 1000 would too large a waste.
        let v: Vec<f32> = pool.take(250).expect("a fitting buffer");
        assert_eq!((v.capacity(), v[0]), (300, 2.0));
        // Only the u32 buffer is left at 200..=400 elements, and it is the wrong dtype.
        assert!(pool.take::<f32>(200).is_none());
        let u: Vec<u32> = pool.take(200).expect("the u32 buffer");
        assert_eq!(u.capacity(), 300);
        // 1000 is more than twice 400: no fit.
        assert!(pool.take::<f32>(400).is_none());
        let v: Vec<f32> = pool.take(600).expect("the 1000 buffer");
        assert_eq!(v.capacity(), 1000);
        assert_eq!(pool.retained_bytes(), 0);
    }

    #[test]
    fn budget_evicts_oldest_first_and_skips_small_and_huge_buffers() {
        let mut pool = BufferPool::new(4000 * 4, 3);
        pool.give_back(f32s(0, 0.0)); // empty: not kept
        pool.give_back(f32s(5000, 0.0)); // over the whole budget: not kept
        assert_eq!(pool.retained_bytes(), 0);
        pool.give_back(f32s(1000, 1.0));
        pool.give_back(f32s(1500, 2.0));
        pool.give_back(f32s(1200, 3.0));
        assert_eq!(pool.retained_bytes(), 3700 * 4);
        let mut cleared = BufferPool::new(4000 * 4, 3);
        cleared.give_back(f32s(1000, 1.0));
        cleared.clear();
        assert_eq!(cleared.retained_bytes(), 0);
        assert!(cleared.take::<f32>(1000).is_none());
        // Bytes: 3700 + 800 > 4000 evicts the oldest (1000).
        pool.give_back(f32s(800, 4.0));
        assert_eq!(pool.retained_bytes(), 3500 * 4);
        assert!(pool.take::<f32>(1000).is_some_and(|v| v[0] == 3.0));
        // Count: a fourth buffer evicts the oldest (1500).
        pool.give_back(f32s(600, 5.0));
        pool.give_back(f32s(700, 6.0));
        assert!(pool.take::<f32>(1500).is_none());
        assert_eq!(pool.retained_bytes(), 2100 * 4);
    }

    #[test]
    fn taken_buffers_have_the_asked_length_and_zeroed_ones_are_zero() {
        give_back(f32s(4096, 9.0));
        let v: Vec<f32> = take_zeroed(4000);
        assert_eq!(v.len(), 4000);
        assert!(v.iter().all(|&x| x == 0.0));
        let w: Vec<f32> = take_for_overwrite(5000);
        assert_eq!(w.len(), 5000);
    }
}
