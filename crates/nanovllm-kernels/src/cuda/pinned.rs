//! Pinned staging of host-to-device copies: the [`crate::staging::StagingRing`] over
//! page-locked host memory, with a CUDA event per segment as its fence.
//!
//! A copy from pageable memory (a `Vec`) makes the driver copy the bytes into its own
//! page-locked buffer first, inside the call, and may wait for that buffer to free up; a
//! copy from page-locked memory is queued as a DMA and returns at once. Every small
//! `copy_from_host` (a step's inputs, a graph's static inputs) therefore goes through this
//! persistent ring: one `memcpy` of a few KiB into pinned memory, then an asynchronous
//! copy from there. Copies larger than a segment (weights) go directly, as before.
//!
//! Safety of the asynchronous copies rests on the ring's invariant (see `staging.rs`): the
//! host never rewrites pinned bytes a queued copy has yet to read, because every segment is
//! reused only after waiting for the event recorded, on the backend's single stream, after
//! the last copy from it. The memory itself outlives every copy: [`PinnedStaging`] drains
//! the stream's copies before freeing it, and it is dropped before the stream and context
//! (field order of [`super::CudaBackend`]).

use std::sync::Arc;

use cudarc::driver::{result, CudaEvent, CudaSlice, CudaStream, DevicePtrMut, PinnedHostSlice};

use super::launch::cuda_err;
use crate::error::Result;
use crate::staging::{Fence, StagingRing};

/// Segments of the ring and their size: 4 MiB of pinned memory in all; a copy of up to
/// 1 MiB is staged (a decode step's inputs at 512 sequences are ~40 KiB, a 16,384-token
/// prefill's under 300 KiB).
const SEGMENTS: usize = 4;
const SEGMENT_BYTES: usize = 1 << 20;

/// A segment's fence: an event on the backend's stream.
struct EventFence {
    event: CudaEvent,
    stream: Arc<CudaStream>,
}

impl Fence for EventFence {
    fn record(&mut self) -> Result<()> {
        self.event
            .record(&self.stream)
            .map_err(cuda_err("pinned staging (record)"))
    }
    fn wait(&mut self) -> Result<()> {
        // An event never recorded completes at once.
        self.event
            .synchronize()
            .map_err(cuda_err("pinned staging (wait)"))
    }
}

/// See the module docs.
pub(crate) struct PinnedStaging {
    ring: StagingRing<EventFence>,
    /// Start of `memory`'s bytes (kept so that no call goes through its own event).
    ptr: *mut u8,
    stream: Arc<CudaStream>,
    /// Owns the page-locked bytes; freed after `Drop` drained the copies.
    memory: PinnedHostSlice<u8>,
}

// SAFETY: `ptr` points into `memory`, which the struct owns; the bytes are only touched
// through `&mut self` (the backend keeps the staging in a mutex), so moving the struct to
// another thread moves the only access to them.
unsafe impl Send for PinnedStaging {}

impl PinnedStaging {
    /// Allocates the ring's pinned memory and events on `stream`'s context.
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context();
        // SAFETY: the bytes are uninitialised; they are only read by copies of ranges the
        // host wrote first (`copy`).
        let mut memory = unsafe { ctx.alloc_pinned::<u8>(SEGMENTS * SEGMENT_BYTES) }
            .map_err(cuda_err("pinned staging (allocate)"))?;
        // Write-combined memory (cudarc's default) is fast to fill and to DMA from, slow to
        // read: the host only ever writes it.
        let ptr = memory
            .as_mut_ptr()
            .map_err(cuda_err("pinned staging (allocate)"))?;
        let fences = (0..SEGMENTS)
            .map(|_| {
                Ok(EventFence {
                    event: ctx
                        .new_event(None)
                        .map_err(cuda_err("pinned staging (events)"))?,
                    stream: stream.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            ring: StagingRing::new(SEGMENT_BYTES, fences),
            ptr,
            stream: stream.clone(),
            memory,
        })
    }

    /// Queues a copy of `bytes` into the start of `dst` (at least as long) through the ring.
    /// Returns `false`, having done nothing, when `bytes` is too long to stage.
    pub(crate) fn copy(&mut self, bytes: &[u8], dst: &mut CudaSlice<u8>) -> Result<bool> {
        assert!(
            dst.len() >= bytes.len(),
            "staged copy overruns its destination"
        );
        let Some(offset) = self.ring.reserve(bytes.len())? else {
            return Ok(false);
        };
        debug_assert!(offset + bytes.len() <= self.ring.capacity());
        debug_assert_eq!(self.ring.capacity(), self.memory.len());
        // SAFETY: `offset..offset + len` lies inside `memory` (the ring hands out ranges of
        // its capacity, which is `memory`'s length), no queued copy reads it (the ring's
        // invariant), and this is the only reference to it (`&mut self`).
        let staged = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), bytes.len()) };
        staged.copy_from_slice(bytes);
        self.stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("copy_from_host"))?;
        let (dst_ptr, _record) = dst.device_ptr_mut(&self.stream);
        // SAFETY: `dst_ptr` is valid for `bytes.len()` bytes (asserted above) and stays
        // allocated until the copy ran (device memory is freed stream-ordered, after it).
        // `staged` stays valid and unwritten until the copy ran: the ring's invariant, and
        // `Drop` drains the stream before the memory is freed.
        unsafe { result::memcpy_htod_async(dst_ptr, staged, self.stream.cu_stream()) }
            .map_err(cuda_err("copy_from_host"))?;
        Ok(true)
    }
}

impl Drop for PinnedStaging {
    fn drop(&mut self) {
        // The pinned memory must not be freed under a queued copy. A failure here means the
        // context is broken, and no queued copy will run any more.
        let _ = self.ring.drain();
    }
}
