//! Progress of a weight load, for a caller's progress bar: [`LoadProgress`] after every
//! tensor (or slice of one) read from the checkpoint.
//!
//! The loader reports through a plain callback ([`LoadProgressFn`]) so that this crate
//! draws nothing itself: the command line turns it into a bar, a library user into
//! whatever it likes, or ignores it ([`load_model`](crate::load_model) passes a no-op).
//! [`ProgressSource`] wraps any [`WeightSource`] and counts the bytes each read appends;
//! reads may come from several threads, so the count is atomic and the callback `Sync`.

use std::sync::atomic::{AtomicU64, Ordering};

use nanovllm_kernels::{CpuStorage, DType};

use crate::error::ModelError;
use crate::loader::{Slice, WeightSource};

/// Bytes of the checkpoint read so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadProgress {
    pub bytes_read: u64,
    /// What this rank will read in all, where known: the whole checkpoint's tensor bytes
    /// when one rank loads it all. `None` for a tensor-parallel shard (each rank reads a
    /// share that only the architecture knows) and for generated (dummy) weights.
    pub total_bytes: Option<u64>,
}

/// Called after each read with the running totals.
pub type LoadProgressFn<'a> = &'a (dyn Fn(LoadProgress) + Sync);

/// A [`WeightSource`] that reports every read to a [`LoadProgressFn`].
pub struct ProgressSource<'a> {
    inner: &'a dyn WeightSource,
    total_bytes: Option<u64>,
    bytes_read: AtomicU64,
    report: LoadProgressFn<'a>,
}

impl<'a> ProgressSource<'a> {
    /// Wraps `inner`; `whole` says this rank reads every tensor whole (no sharding), so
    /// that the source's total is this load's total.
    pub fn new(inner: &'a dyn WeightSource, whole: bool, report: LoadProgressFn<'a>) -> Self {
        Self {
            inner,
            total_bytes: inner.total_bytes().filter(|_| whole),
            bytes_read: AtomicU64::new(0),
            report,
        }
    }
}

impl WeightSource for ProgressSource<'_> {
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn names(&self) -> Vec<&str> {
        self.inner.names()
    }

    fn dtype(&self, name: &str) -> Result<DType, ModelError> {
        self.inner.dtype(name)
    }

    fn total_bytes(&self) -> Option<u64> {
        self.inner.total_bytes()
    }

    fn read_into(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        out: &mut CpuStorage,
    ) -> Result<(), ModelError> {
        self.inner.read_into(name, shape, slice, out)?;
        let elements: usize = slice.out_shape(name, shape)?.iter().product();
        let bytes = self.inner.dtype(name)?.storage_bytes(elements) as u64;
        let bytes_read = self.bytes_read.fetch_add(bytes, Ordering::Relaxed) + bytes;
        (self.report)(LoadProgress {
            bytes_read,
            total_bytes: self.total_bytes,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::DummySource;

    #[test]
    fn every_read_is_reported_with_its_bytes() {
        let dummy = DummySource::new(DType::BF16, 0);
        let seen = Mutex::new(Vec::new());
        let report = |p: LoadProgress| seen.lock().unwrap().push(p);
        let source = ProgressSource::new(&dummy, true, &report);
        source.read("a", &[4, 8], &Slice::Full).unwrap();
        source.read("b", &[4, 8], &Slice::Rows(1..3)).unwrap();
        let seen = seen.into_inner().unwrap();
        // 32 bf16 elements, then 2 rows of 8: 64 bytes, then 32 more.
        assert_eq!(
            seen,
            vec![
                LoadProgress {
                    bytes_read: 64,
                    total_bytes: None
                },
                LoadProgress {
                    bytes_read: 96,
                    total_bytes: None
                },
            ]
        );
    }
}
