//! The optional [`crate::capability`] traits on [`CudaBackend`]: device memory, graph capture
//! and NCCL groups, each a thin forward to the backend's own methods.

use std::sync::Arc;

use super::device::CudaBackend;
use super::graph::CudaGraph;
use crate::capability::{CapturedGraph, CollectiveGroups, DeviceMemory, GraphCapture, MemoryStats};
use crate::comm::{Communicator, NcclCommunicator, NcclUniqueId};
use crate::error::Result;
use crate::tensor::Tensor;

impl DeviceMemory for CudaBackend {
    fn mem_info(&self) -> Result<(usize, usize)> {
        CudaBackend::mem_info(self)
    }
    fn memory_stats(&self) -> MemoryStats {
        CudaBackend::memory_stats(self)
    }
    fn reset_peak_memory(&self) {
        CudaBackend::reset_peak_memory(self)
    }
}

impl GraphCapture for CudaBackend {
    fn begin_capture(&self) -> Result<()> {
        CudaBackend::begin_capture(self)
    }
    fn end_capture(&self) -> Result<Box<dyn CapturedGraph>> {
        Ok(Box::new(CudaBackend::end_capture(self)?))
    }
    fn is_capturing(&self) -> bool {
        CudaBackend::is_capturing(self)
    }
    fn copy_device(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        CudaBackend::copy_device(self, src, dst)
    }
    unsafe fn alias_rows(&self, buffer: &Tensor, rows: usize) -> Result<Tensor> {
        // SAFETY: the caller upholds the trait method's contract, which is this one's.
        unsafe { CudaBackend::alias_rows(self, buffer, rows) }
    }
}

impl CapturedGraph for CudaGraph {
    fn launch(&self) -> Result<()> {
        CudaGraph::launch(self)
    }
}

/// NCCL groups on one GPU: the communicator keeps the backend (its context and stream).
#[derive(Debug)]
pub(crate) struct NcclGroups {
    pub(crate) backend: Arc<CudaBackend>,
}

impl CollectiveGroups for NcclGroups {
    fn new_group_id(&self) -> Result<Vec<u8>> {
        Ok(NcclUniqueId::new()?.as_bytes().to_vec())
    }
    fn join(&self, rank: usize, world_size: usize, id: &[u8]) -> Result<Arc<dyn Communicator>> {
        let id = NcclUniqueId::from_bytes(id)?;
        let comm = NcclCommunicator::new(self.backend.clone(), rank, world_size, id)?;
        Ok(Arc::new(comm))
    }
}
