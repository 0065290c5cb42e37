//! Bookkeeping of a persistent staging ring for asynchronous host-to-device copies, kept
//! apart from any device so that it is tested without one (the CUDA backend's pinned
//! staging, `cuda/pinned.rs`, is this ring over page-locked memory and CUDA events).
//!
//! A copy from page-locked (pinned) host memory is truly asynchronous: the call returns at
//! once and the device reads the host bytes later, when the copy's turn on the stream comes.
//! So the host must not rewrite those bytes until the copy has run. The ring guarantees it
//! with one fence per segment:
//!
//! - The ring is cut into `n ≥ 2` equal segments, used one after the other. A reservation
//!   never spans two segments; one larger than a segment is refused (`None`: copy directly).
//! - When a reservation does not fit in the rest of the current segment, the ring leaves it:
//!   it **records** the segment's fence (queued after every copy from that segment, since
//!   those were queued before), then moves to the next segment and **waits** for that
//!   segment's fence, recorded when the ring last left it, a full lap ago.
//!
//! Invariant: the host writes a byte of segment `s` only while `s` is current, and it became
//! current only after the copies queued from it during its previous turn ran (the wait);
//! copies queued during this turn read bytes that later reservations of the same turn do not
//! overlap (each reservation starts where the last ended). So no queued copy ever reads a
//! byte the host is rewriting. This needs a single, in-order queue (the CUDA backend's one
//! stream) and every copy queued right after its reservation, before the next one (the
//! caller holds the ring mutably across both).
//!
//! In steady state the wait is free: a decode step's inputs are a few tens of KiB, so a lap
//! of a 4 × 1 MiB ring spans well over a hundred steps, each of which waited for its own
//! sampled tokens, and with them for every copy queued before.

use crate::error::Result;

/// Alignment of every reservation (a cache line: no two copies share one).
pub(crate) const STAGING_ALIGN: usize = 64;

/// A point in the device's queue (a CUDA event).
pub(crate) trait Fence {
    /// Marks the current end of the queue: everything queued so far comes before it.
    fn record(&mut self) -> Result<()>;
    /// Blocks until everything before the last `record` ran; at once if never recorded.
    fn wait(&mut self) -> Result<()>;
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct StagingRing<F> {
    segment_bytes: usize,
    /// One per segment.
    fences: Vec<F>,
    current: usize,
    /// Bytes of the current segment handed out.
    used: usize,
}

impl<F: Fence> StagingRing<F> {
    /// A ring of `fences.len()` segments of `segment_bytes` each (a multiple of
    /// [`STAGING_ALIGN`]); at least two segments, or a wait would stall on the copies of the
    /// step being staged.
    pub(crate) fn new(segment_bytes: usize, fences: Vec<F>) -> Self {
        assert!(
            fences.len() >= 2,
            "a staging ring needs two segments or more"
        );
        assert!(
            segment_bytes > 0 && segment_bytes % STAGING_ALIGN == 0,
            "segments hold whole aligned reservations"
        );
        Self {
            segment_bytes,
            fences,
            current: 0,
            used: 0,
        }
    }

    /// Bytes of the whole ring.
    pub(crate) fn capacity(&self) -> usize {
        self.segment_bytes * self.fences.len()
    }

    /// The offset in the ring of `len` bytes the host may write now, which the caller must
    /// queue its copy from before the next call; `None` when `len` exceeds a segment (the
    /// caller copies without staging). May wait for copies queued a lap ago.
    pub(crate) fn reserve(&mut self, len: usize) -> Result<Option<usize>> {
        if len > self.segment_bytes {
            return Ok(None);
        }
        if self.used + len > self.segment_bytes {
            self.fences[self.current].record()?;
            self.current = (self.current + 1) % self.fences.len();
            self.fences[self.current].wait()?;
            self.used = 0;
        }
        let offset = self.current * self.segment_bytes + self.used;
        self.used = (self.used + len.next_multiple_of(STAGING_ALIGN)).min(self.segment_bytes);
        Ok(Some(offset))
    }

    /// Waits for every copy queued so far (before the staging memory is freed).
    pub(crate) fn drain(&mut self) -> Result<()> {
        let fence = &mut self.fences[self.current];
        fence.record()?;
        fence.wait()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::ops::Range;
    use std::rc::Rc;

    use super::*;

    /// An in-order device queue: copies (ring byte ranges) and fence marks, run only when
    /// a fence is waited for.
    #[derive(Default)]
    struct Queue {
        /// Queued copies not yet run: (position in the queue, bytes read).
        pending: Vec<(usize, Range<usize>)>,
        next_position: usize,
        waits: usize,
    }

    impl Queue {
        fn push_copy(&mut self, bytes: Range<usize>) {
            self.pending.push((self.next_position, bytes));
            self.next_position += 1;
        }
        fn run_until(&mut self, position: usize) {
            self.pending.retain(|(p, _)| *p >= position);
        }
    }

    struct FakeFence {
        queue: Rc<RefCell<Queue>>,
        recorded_at: Option<usize>,
    }

    impl Fence for FakeFence {
        fn record(&mut self) -> Result<()> {
            let mut q = self.queue.borrow_mut();
            self.recorded_at = Some(q.next_position);
            q.next_position += 1;
            Ok(())
        }
        fn wait(&mut self) -> Result<()> {
            if let Some(position) = self.recorded_at {
                let mut q = self.queue.borrow_mut();
                q.run_until(position);
                q.waits += 1;
            }
            Ok(())
        }
    }

    fn ring(segments: usize, segment_bytes: usize) -> (StagingRing<FakeFence>, Rc<RefCell<Queue>>) {
        let queue = Rc::new(RefCell::new(Queue::default()));
        let fences = (0..segments)
            .map(|_| FakeFence {
                queue: queue.clone(),
                recorded_at: None,
            })
            .collect();
        (StagingRing::new(segment_bytes, fences), queue)
    }

    fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
        a.start < b.end && b.start < a.end
    }

    #[test]
    fn no_reservation_overlaps_a_copy_still_queued() {
        let (mut ring, queue) = ring(4, 1024);
        // Lengths of a few steps' inputs, irregular, some a whole segment.
        let lengths = (0..5000u64).map(|i| ((i * 2_654_435_761) % 1100) as usize + 1);
        let mut staged = 0;
        for len in lengths {
            let Some(offset) = ring.reserve(len).unwrap() else {
                assert!(len > 1024, "{len} bytes fit a segment");
                continue;
            };
            let bytes = offset..offset + len;
            assert!(bytes.end <= ring.capacity());
            assert!(
                bytes.start / 1024 == (bytes.end - 1) / 1024,
                "{bytes:?} spans two segments"
            );
            let q = queue.borrow();
            for (_, queued) in &q.pending {
                assert!(
                    !overlaps(queued, &bytes),
                    "{bytes:?} is rewritten while a copy of {queued:?} is queued"
                );
            }
            drop(q);
            queue.borrow_mut().push_copy(bytes);
            staged += 1;
        }
        assert!(staged > 4000);
        // Segments were reused many times over, each after a wait.
        assert!(queue.borrow().waits > 100);
    }

    #[test]
    fn a_step_sized_workload_reuses_the_same_memory() {
        let (mut ring, _queue) = ring(4, 1 << 20);
        // A decode step's graph inputs at 256 sequences: ids, positions, context lengths,
        // slots, a 16-wide block table.
        let step = [1024, 1024, 1024, 2048, 16 * 1024];
        let mut highest = 0;
        for _ in 0..10_000 {
            for len in step {
                let offset = ring.reserve(len).unwrap().unwrap();
                assert_eq!(offset % STAGING_ALIGN, 0);
                highest = highest.max(offset + len);
            }
        }
        // 10,000 steps of ~21 KiB went through 4 MiB: the ring wrapped, never grew.
        assert!(highest <= ring.capacity());
        assert_eq!(ring.capacity(), 4 << 20);
    }

    #[test]
    fn oversized_copies_are_not_staged_and_drain_waits_for_everything() {
        let (mut ring, queue) = ring(2, 128);
        assert_eq!(ring.reserve(129).unwrap(), None);
        assert_eq!(ring.reserve(128).unwrap(), Some(0));
        queue.borrow_mut().push_copy(0..128);
        assert_eq!(ring.reserve(1).unwrap(), Some(128));
        queue.borrow_mut().push_copy(128..129);
        ring.drain().unwrap();
        assert!(queue.borrow().pending.is_empty());
    }
}
