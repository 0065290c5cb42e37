//! A captured, instantiated CUDA graph on the backend's stream.

use super::launch::cuda_err;
use crate::error::Result;

/// Replays the work captured between [`super::CudaBackend::begin_capture`] and
/// [`super::CudaBackend::end_capture`]: same kernels, same buffers, same launch
/// parameters; the data in those buffers is whatever the caller copied in since.
pub struct CudaGraph {
    graph: cudarc::driver::CudaGraph,
}

// SAFETY: a graph may move between threads; it is not `Sync` because CUDA forbids
// concurrent calls on one graph, and `launch` takes `&self`.
unsafe impl Send for CudaGraph {}

impl CudaGraph {
    pub(crate) fn new(graph: cudarc::driver::CudaGraph) -> Self {
        Self { graph }
    }

    /// Queues one replay on the backend's stream (asynchronous, like any op).
    pub fn launch(&self) -> Result<()> {
        self.graph.launch().map_err(cuda_err("CudaGraph::launch"))
    }
}

impl std::fmt::Debug for CudaGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CudaGraph")
    }
}
