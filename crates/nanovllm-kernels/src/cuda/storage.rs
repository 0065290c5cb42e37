//! Device memory of a CUDA tensor: raw bytes plus the dtype and element count that
//! give them meaning.
//!
//! Invariants: `buf` holds at least `dtype.storage_bytes(len)` bytes (it is never
//! empty: a zero-element tensor still owns a 1-byte allocation so that every tensor has a
//! valid pointer), and those bytes were counted in `tracker` when allocated; `Drop`
//! uncounts them. The buffer is freed stream-ordered on the backend's stream.
//!
//! An *alias* ([`CudaStorage::alias_prefix`], behind `GraphCapture::alias_rows`) is the
//! exception: it views a prefix of another storage's buffer (a captured graph's static
//! output), owns nothing, counts nothing and frees nothing. Its creator guarantees that it is
//! dropped before the storage it views.
//!
//! `known_range` caches `(min, max)` of an integer tensor's values when they were last
//! written from the host (`upload`, `copy_from_host`) or copied from a tensor with a known
//! range, so index validation (ids, positions, slots, rows) needs no device-to-host copy.
//! Any other write must clear it: it is reset by every mutable buffer access
//! ([`super::device_buf_mut`]), and fresh allocations start without one. Caveat: a
//! buffer written both from the host and by a replayed CUDA graph keeps the host range
//! after a replay; kernels bounds-check every index, so a stale range can only change
//! which error is reported, never cause an out-of-bounds access.
//!
//! `host_copy` goes one step further for small u32 tensors: their values as last written
//! from the host ([`HostCopy`]), under the same rules as `known_range`, so attention can
//! check its metadata without a device read.

use std::mem::ManuallyDrop;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::host_copy::HostCopy;
use super::memory::MemoryTracker;
use crate::dtype::DType;
use crate::error::{KernelError, Result};

pub struct CudaStorage {
    /// Dropped by hand (`Drop`): freed when owned, handed back unfreed when an alias.
    pub(crate) buf: ManuallyDrop<CudaSlice<u8>>,
    pub(crate) dtype: DType,
    pub(crate) len: usize,
    pub(crate) tracker: Arc<MemoryTracker>,
    pub(crate) known_range: Option<(i64, i64)>,
    pub(crate) host_copy: HostCopy,
    /// False for an alias (see the module docs).
    owned: bool,
}

/// Bytes actually allocated for `len` elements of `dtype` (at least one, see module docs):
/// whole blocks for a block-quantized dtype.
pub(crate) fn alloc_bytes(len: usize, dtype: DType) -> usize {
    dtype.storage_bytes(len).max(1)
}

impl CudaStorage {
    /// Allocates uninitialised memory for `len` elements on `stream` and counts it.
    pub(crate) fn alloc(
        stream: &Arc<CudaStream>,
        tracker: &Arc<MemoryTracker>,
        len: usize,
        dtype: DType,
    ) -> Result<Self> {
        let bytes = alloc_bytes(len, dtype);
        // SAFETY: the memory is uninitialised; callers write it before any read
        // (kernels that fill every element, a memset or a copy).
        let buf = unsafe { stream.alloc::<u8>(bytes) }.map_err(|e| KernelError::Cuda {
            op: "alloc",
            msg: format!("allocating {bytes} bytes failed: {e} (out of device memory?)"),
        })?;
        tracker.allocated(bytes);
        Ok(Self {
            buf: ManuallyDrop::new(buf),
            dtype,
            len,
            tracker: tracker.clone(),
            known_range: None,
            host_copy: HostCopy::default(),
            owned: true,
        })
    }

    /// A storage of the first `len` elements of this one's buffer, sharing it: no copy, no
    /// allocation, nothing counted; dropping it frees nothing. An error when `len` exceeds
    /// this storage's length.
    ///
    /// # Safety
    /// The alias must be dropped before this storage's buffer is freed (see
    /// `GraphCapture::alias_rows`).
    pub(crate) unsafe fn alias_prefix(&self, len: usize) -> Result<Self> {
        if len > self.len {
            return Err(KernelError::Invalid {
                op: "alias_rows",
                msg: format!(
                    "an alias of {len} elements of a {}-element buffer",
                    self.len
                ),
            });
        }
        let stream = self.stream().clone();
        let (ptr, _sync) = self.buf.device_ptr(&stream);
        // `alloc_bytes` is monotonic in `len`, so this is within `buf`, never empty.
        let bytes = alloc_bytes(len, self.dtype);
        // SAFETY: `ptr` is the start of a live allocation of at least `bytes` bytes. The
        // slice made from it is never freed (`Drop` leaks an alias's slice), and the caller
        // keeps the allocation alive for as long as the alias exists.
        let buf = unsafe { stream.upgrade_device_ptr::<u8>(ptr, bytes) };
        Ok(Self {
            buf: ManuallyDrop::new(buf),
            dtype: self.dtype,
            len,
            tracker: self.tracker.clone(),
            known_range: None,
            host_copy: HostCopy::default(),
            owned: false,
        })
    }

    /// Whether this storage owns its buffer (false for an alias).
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes the elements occupy (the allocation may be one byte larger when empty).
    pub fn num_bytes(&self) -> usize {
        self.dtype.storage_bytes(self.len)
    }
    pub fn ordinal(&self) -> usize {
        self.buf.ordinal()
    }
    /// The stream the buffer was allocated on (the backend's only stream).
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        self.buf.stream()
    }

    /// A device-to-device copy into a new buffer on the same stream.
    pub fn try_clone(&self) -> Result<Self> {
        let mut out = Self::alloc(self.stream(), &self.tracker, self.len, self.dtype)?;
        let stream = self.stream().clone();
        stream
            .memcpy_dtod(&*self.buf, &mut *out.buf)
            .map_err(|e| KernelError::Cuda {
                op: "clone",
                msg: e.to_string(),
            })?;
        out.known_range = self.known_range;
        out.host_copy.set(self.host_copy.get());
        Ok(out)
    }
}

impl Clone for CudaStorage {
    /// `Tensor: Clone` needs an infallible clone; a device copy fails only when the GPU is
    /// out of memory or broken, which no caller could recover from here. Prefer
    /// [`CudaStorage::try_clone`] where an error can be returned.
    fn clone(&self) -> Self {
        match self.try_clone() {
            Ok(s) => s,
            Err(e) => panic!("cloning a cuda tensor failed: {e}"),
        }
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        // SAFETY: `buf` is taken once, here, and never used again.
        let buf = unsafe { ManuallyDrop::take(&mut self.buf) };
        if self.owned {
            self.tracker.freed(buf.len());
            drop(buf);
        } else {
            // An alias: the memory belongs to the storage it views.
            let _ = buf.leak();
        }
    }
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage {{ cuda:{}, {} x {} }}",
            self.ordinal(),
            self.len,
            self.dtype
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tensors_still_own_a_byte() {
        assert_eq!(alloc_bytes(0, DType::F32), 1);
        assert_eq!(alloc_bytes(3, DType::BF16), 6);
        assert_eq!(alloc_bytes(2, DType::I64), 16);
    }

    #[test]
    fn byte_backed_dtypes_allocate_their_storage_bytes() {
        assert_eq!(alloc_bytes(10, DType::F8E4M3), 10);
        assert_eq!(alloc_bytes(64, DType::Int8G32), 68);
        assert_eq!(alloc_bytes(64, DType::Int4G32), 40);
        assert_eq!(alloc_bytes(256, DType::Fp8G128), 264);
        assert_eq!(alloc_bytes(0, DType::Int4G32), 1);
    }
}
