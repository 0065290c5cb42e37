//! Picks the [`Backend`] an engine (or a tensor-parallel rank) runs on, from
//! [`EngineConfig::device`].

use std::sync::Arc;

use nanovllm_kernels::{Backend, CpuBackend};

use crate::config::{DeviceKind, EngineConfig};
use crate::error::{EngineError, Result};

/// The backend for `config.device`; `local_rank` picks the GPU under tensor parallelism.
pub fn create_backend(config: &EngineConfig, local_rank: usize) -> Result<Arc<dyn Backend>> {
    let _ = local_rank;
    match config.device {
        DeviceKind::Auto | DeviceKind::Cpu => Ok(Arc::new(CpuBackend::new())),
        DeviceKind::Cuda => Err(EngineError::Unsupported {
            what: "device = cuda: this build has no CUDA backend; use device = cpu or auto".into(),
        }),
    }
}
