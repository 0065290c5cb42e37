//! [`HostCopy`]: the values of a small u32 device tensor as they were last written from
//! the host, kept next to its device buffer.
//!
//! Why: attention checks its metadata *values* (offsets, lengths, block ids) before a
//! launch, in every build. Reading them back from the device would synchronise with the
//! host at every layer; the runner writes them with `copy_from_host` from host vectors
//! anyway, so the backend keeps that copy and checks it instead (no device access).
//!
//! Invariants (the same as `CudaStorage::known_range`, which this extends from
//! `(min, max)` to the values): set by a host write (`copy_from_host`, `upload`) or by a
//! device copy from a tensor that has one, outside graph capture; forgotten by every
//! other write (any mutable buffer access) and by a captured copy, whose replay writes
//! other data. Kept only for u32 tensors of at most [`MAX_LEN`] elements: larger ones
//! are read back when needed.
//!
//! No per-step allocation: a forgotten or dropped copy's buffer goes back to a small
//! process-wide pool and the next host write reuses it, so a warm engine that uploads
//! metadata every step recycles the same few vectors.

use std::sync::Mutex;

/// Longest tensor (elements) that keeps a host copy: a decode graph's block table of
/// 512 sequences × 8192 blocks; anything longer is not step metadata.
pub(crate) const MAX_LEN: usize = 1 << 22;
/// Buffers the pool keeps (the runner has ~6 small u32 inputs per step).
const POOL_BUFFERS: usize = 64;
/// Largest buffer (capacity, elements) the pool keeps; larger ones are freed, so the
/// pool holds at most `POOL_BUFFERS × POOL_CAPACITY × 4` bytes = 16 MiB.
const POOL_CAPACITY: usize = 1 << 16;

/// A recycling stack of vectors (see the module docs).
pub(crate) struct Pool {
    buffers: Mutex<Vec<Vec<u32>>>,
}

impl Pool {
    pub(crate) const fn new() -> Self {
        Self {
            buffers: Mutex::new(Vec::new()),
        }
    }

    /// A cleared vector, recycled when one is pooled (else empty: no allocation yet).
    fn take(&self) -> Vec<u32> {
        // A poisoned lock only means another thread panicked mid-push; the stack is
        // still a valid Vec, so keep using it.
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        buffers.pop().unwrap_or_default()
    }

    /// Keeps `v` for reuse, unless it is unallocated, too large or the pool is full.
    fn give(&self, mut v: Vec<u32>) {
        if v.capacity() == 0 || v.capacity() > POOL_CAPACITY {
            return;
        }
        v.clear();
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        if buffers.len() < POOL_BUFFERS {
            buffers.push(v);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buffers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The pool every device tensor's host copy draws from.
static POOL: Pool = Pool::new();

/// The host copy of one tensor's values, or nothing known.
#[derive(Debug, Default)]
pub(crate) struct HostCopy(Option<Vec<u32>>);

impl HostCopy {
    pub(crate) fn get(&self) -> Option<&[u32]> {
        self.0.as_deref()
    }

    /// Records `values` (`None`, or more than [`MAX_LEN`]: nothing known), reusing this
    /// copy's buffer or a pooled one.
    pub(crate) fn set(&mut self, values: Option<&[u32]>) {
        self.set_in(&POOL, values)
    }

    /// Forgets the values (the device buffer is about to be written by other means).
    pub(crate) fn forget(&mut self) {
        self.forget_in(&POOL)
    }

    fn set_in(&mut self, pool: &Pool, values: Option<&[u32]>) {
        match values {
            Some(values) if values.len() <= MAX_LEN => {
                let mut v = self.0.take().unwrap_or_else(|| pool.take());
                v.clear();
                v.extend_from_slice(values);
                self.0 = Some(v);
            }
            _ => self.forget_in(pool),
        }
    }

    fn forget_in(&mut self, pool: &Pool) {
        if let Some(v) = self.0.take() {
            pool.give(v);
        }
    }
}

impl Drop for HostCopy {
    fn drop(&mut self) {
        self.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy bound to a test's own pool (the global one is shared by parallel tests).
    struct Local<'a> {
        pool: &'a Pool,
        copy: HostCopy,
    }

    impl Local<'_> {
        fn set(&mut self, values: Option<&[u32]>) {
            self.copy.set_in(self.pool, values)
        }
        fn forget(&mut self) {
            self.copy.forget_in(self.pool)
        }
    }

    #[test]
    fn values_are_kept_until_forgotten() {
        let pool = Pool::new();
        let mut t = Local {
            pool: &pool,
            copy: HostCopy::default(),
        };
        assert_eq!(t.copy.get(), None);
        t.set(Some(&[3, 1, 4]));
        assert_eq!(t.copy.get(), Some(&[3, 1, 4][..]));
        // A second host write replaces the values, even with fewer of them.
        t.set(Some(&[7]));
        assert_eq!(t.copy.get(), Some(&[7][..]));
        // An empty tensor's values are known: there are none.
        t.set(Some(&[]));
        assert_eq!(t.copy.get(), Some(&[][..]));
        t.forget();
        assert_eq!(t.copy.get(), None);
        t.set(Some(&[1, 2]));
        t.set(None);
        assert_eq!(t.copy.get(), None, "an unknown write forgets");
    }

    #[test]
    fn buffers_are_recycled_through_the_pool() {
        let pool = Pool::new();
        let mut a = Local {
            pool: &pool,
            copy: HostCopy::default(),
        };
        a.set(Some(&[1; 100]));
        let buffer = a.copy.get().map(<[u32]>::as_ptr);
        a.forget();
        assert_eq!(pool.len(), 1, "the forgotten buffer is pooled");
        // The next write (another tensor) reuses that very allocation.
        let mut b = Local {
            pool: &pool,
            copy: HostCopy::default(),
        };
        b.set(Some(&[2; 50]));
        assert_eq!(b.copy.get().map(<[u32]>::as_ptr), buffer);
        assert_eq!(pool.len(), 0);
        // Rewriting a tensor that has a copy reuses its own buffer.
        b.set(Some(&[5; 80]));
        assert_eq!(b.copy.get().map(<[u32]>::as_ptr), buffer);
    }

    #[test]
    fn the_pool_is_bounded() {
        let pool = Pool::new();
        for _ in 0..POOL_BUFFERS + 5 {
            pool.give(vec![0; 4]);
        }
        assert_eq!(pool.len(), POOL_BUFFERS);
        // Too large, or never allocated: not kept.
        let pool = Pool::new();
        pool.give(vec![0; POOL_CAPACITY + 1]);
        pool.give(Vec::new());
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn long_tensors_keep_no_copy() {
        let pool = Pool::new();
        let mut t = Local {
            pool: &pool,
            copy: HostCopy::default(),
        };
        t.set(Some(&[1, 2, 3]));
        let long = vec![0u32; MAX_LEN + 1];
        t.set(Some(&long));
        assert_eq!(t.copy.get(), None);
        t.set(Some(&long[..MAX_LEN]));
        assert_eq!(t.copy.get().map(<[u32]>::len), Some(MAX_LEN));
    }
}
