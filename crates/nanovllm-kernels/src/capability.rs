//! Optional capabilities of a [`crate::Backend`]: what some devices can do beyond the op set.
//!
//! The engine never names a concrete backend. It asks the backend instead:
//! - [`crate::Backend::device_memory`]: a device with its own memory (a GPU) reports free and
//!   total bytes and the bytes it allocated, so the KV cache can fill what is left;
//! - [`crate::Backend::graph_capture`]: a device that can record a step's kernels once and
//!   replay them (CUDA graphs) cuts the launch cost of decode steps;
//! - [`crate::Backend::collective_groups`]: a device with its own collective library (NCCL)
//!   forms tensor-parallel groups across processes and hosts.
//!
//! Each returns `None` by default, which is what the CPU backend does: the engine then sizes
//! the KV cache from its host budget, runs every step eagerly and uses its TCP communicator.
//! A new backend (ROCm, Metal) opts in by overriding the methods, with no edit to the engine.

use std::sync::Arc;

use crate::comm::Communicator;
use crate::error::Result;
use crate::tensor::Tensor;

/// Bytes allocated through one backend: now, and the peak since the last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes currently allocated through the backend.
    pub in_use_bytes: usize,
    /// Largest `in_use_bytes` seen since creation or the last reset.
    pub peak_bytes: usize,
}

/// A device with memory of its own, which the engine divides between weights,
/// activations and the KV cache.
pub trait DeviceMemory: Send + Sync {
    /// `(free, total)` device bytes as the driver sees them (every process). Memory this
    /// backend freed but still caches for reuse counts as free.
    fn mem_info(&self) -> Result<(usize, usize)>;
    /// Bytes allocated through this backend (short-lived temporaries included in the peak).
    fn memory_stats(&self) -> MemoryStats;
    /// Restarts the peak from the bytes in use now.
    fn reset_peak_memory(&self);
}

/// Recording a stream of ops into a graph that replays them with new data.
///
/// Between [`GraphCapture::begin_capture`] and [`GraphCapture::end_capture`] the backend's
/// ops are recorded, not run; host copies and synchronisation are not allowed, and every
/// buffer allocated inside must be dropped before the end (copy results into static
/// buffers with [`GraphCapture::copy_device`]).
pub trait GraphCapture: Send + Sync {
    /// Starts recording; an error when a capture is already running.
    fn begin_capture(&self) -> Result<()>;
    /// Stops recording and instantiates the graph; an error when none was started.
    fn end_capture(&self) -> Result<Box<dyn CapturedGraph>>;
    /// Whether a capture is running (to end it on an error path).
    fn is_capturing(&self) -> bool;
    /// Device-to-device copy of `src` into `dst` (same shape and dtype), keeping `dst`'s
    /// buffer; allowed while capturing.
    fn copy_device(&self, src: &Tensor, dst: &mut Tensor) -> Result<()>;
    /// A tensor of the first `rows` rows of `buffer` (shape `[rows, buffer.shape[1..]]`) that
    /// shares `buffer`'s memory: a graph's static output handed to an op that takes its input
    /// by value (e.g. [`crate::Backend::sample`]), or one buffer shared by several graphs'
    /// outputs, with no copy and no allocation. Dropping the alias frees nothing, and it is
    /// not counted in [`DeviceMemory::memory_stats`]. An error when `rows` exceeds `buffer`'s
    /// first dimension, or when the backend cannot alias (the default): the caller then
    /// copies instead.
    ///
    /// # Safety
    /// The alias is a second handle on `buffer`'s memory that the borrow checker does not
    /// see. The caller must drop it before `buffer` is dropped, and must treat `buffer`
    /// and the alias as one buffer: ops queued through either (a graph replay writing
    /// `buffer`, an op editing the alias in place) see each other's writes in stream order,
    /// so the alias's contents are only meaningful until the next write through `buffer`.
    unsafe fn alias_rows(&self, buffer: &Tensor, rows: usize) -> Result<Tensor> {
        let _ = (buffer, rows);
        Err(crate::error::KernelError::Invalid {
            op: "alias_rows",
            msg: "this backend cannot alias device buffers".to_string(),
        })
    }
}

/// A recorded graph: each launch replays the same kernels on the same buffers.
pub trait CapturedGraph: Send + std::fmt::Debug {
    /// Queues one replay (asynchronous, like any op).
    fn launch(&self) -> Result<()>;
}

/// Forming tensor-parallel groups with a device's own collective library. Rank 0 makes a
/// group id and sends it to the other ranks (over the engine's TCP rendezvous); every rank
/// then joins with it.
pub trait CollectiveGroups: Send + Sync + std::fmt::Debug {
    /// A fresh group id, as bytes to send to the other ranks.
    fn new_group_id(&self) -> Result<Vec<u8>>;
    /// Joins group `id` as `rank` of `world_size`; blocks until every rank has joined.
    fn join(&self, rank: usize, world_size: usize, id: &[u8]) -> Result<Arc<dyn Communicator>>;
}
