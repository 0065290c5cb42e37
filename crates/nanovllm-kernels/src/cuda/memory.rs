//! Bytes allocated through one [`super::CudaBackend`]: current and peak.
//!
//! Every device buffer the backend hands out is counted here when it is allocated and
//! uncounted when its [`super::CudaStorage`] drops. The runner sizes the KV cache from
//! the peak after a warm-up prefill, so the peak must include short-lived temporaries.
//! Counters are atomics (relaxed): a buffer may drop on any thread.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::capability::MemoryStats;

#[derive(Debug, Default)]
pub struct MemoryTracker {
    in_use: AtomicUsize,
    peak: AtomicUsize,
}

impl MemoryTracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn allocated(&self, bytes: usize) {
        let now = self.in_use.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub fn freed(&self, bytes: usize) {
        // Saturating: a mismatched free must not wrap the counter around.
        let _ = self
            .in_use
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
    }

    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            in_use_bytes: self.in_use.load(Ordering::Relaxed),
            peak_bytes: self.peak.load(Ordering::Relaxed),
        }
    }

    /// Restarts the peak from the bytes in use now.
    pub fn reset_peak(&self) {
        self.peak
            .store(self.in_use.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_current_and_peak() {
        let t = MemoryTracker::new();
        t.allocated(100);
        t.allocated(50);
        t.freed(100);
        assert_eq!(
            t.stats(),
            MemoryStats {
                in_use_bytes: 50,
                peak_bytes: 150
            }
        );
        t.reset_peak();
        assert_eq!(t.stats().peak_bytes, 50);
        t.allocated(10);
        assert_eq!(t.stats().peak_bytes, 60);
    }

    #[test]
    fn over_free_saturates_at_zero() {
        let t = MemoryTracker::new();
        t.allocated(8);
        t.freed(16);
        assert_eq!(t.stats().in_use_bytes, 0);
        assert_eq!(t.stats().peak_bytes, 8);
    }
}
