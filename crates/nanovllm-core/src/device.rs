//! Picks the [`Backend`] an engine (or a tensor-parallel rank) runs on, from
//! [`EngineConfig::device`].
//!
//! The decision is a pure function ([`choose_device`]) of what was asked, whether this
//! build has the CUDA backend and how many GPUs the machine shows, so that it is tested
//! without a GPU. Rules:
//! - `cpu` is the CPU.
//! - `auto` is GPU `local_rank` when the build has CUDA and the machine a device, else the
//!   CPU; a CUDA build falling back logs one warning (a CPU-only build stays quiet:
//!   the CPU is all it can do).
//! - `cuda` without the CUDA backend, or without a device, is an [`EngineError`]; never a
//!   silent fallback.
//!
//! `CudaContext::new` panics without libcuda, so the GPU count comes from
//! `nanovllm_kernels::cuda::device_count`, which probes the library first.

use std::sync::Arc;

use nanovllm_kernels::{Backend, CpuBackend};

use crate::config::{DeviceKind, EngineConfig};
use crate::error::{EngineError, Result};

/// Where a rank runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    /// `auto` in a CUDA build without a usable GPU: the CPU, after a notice.
    CpuFallback,
    /// GPU `ordinal`.
    Cuda {
        ordinal: usize,
    },
}

/// What runs `requested` on rank `local_rank` given the build (`cuda_built`) and machine
/// (`num_gpus` visible devices).
pub fn choose_device(
    requested: DeviceKind,
    cuda_built: bool,
    num_gpus: usize,
    local_rank: usize,
) -> Result<DeviceChoice> {
    let cuda = || {
        if local_rank < num_gpus {
            Ok(DeviceChoice::Cuda {
                ordinal: local_rank,
            })
        } else {
            Err(EngineError::Unsupported {
                what: format!(
                    "rank {local_rank} runs on GPU {local_rank}, but only {num_gpus} GPU(s) are \
                     visible: lower tensor_parallel_size or check CUDA_VISIBLE_DEVICES"
                ),
            })
        }
    };
    match requested {
        DeviceKind::Cpu => Ok(DeviceChoice::Cpu),
        DeviceKind::Auto if !cuda_built => Ok(DeviceChoice::Cpu),
        DeviceKind::Auto if num_gpus == 0 => Ok(DeviceChoice::CpuFallback),
        DeviceKind::Auto => cuda(),
        DeviceKind::Cuda if !cuda_built => Err(EngineError::Unsupported {
            what: "device = cuda: this build has no CUDA backend; rebuild with `--features cuda` \
                   (or use device = cpu or auto)"
                .into(),
        }),
        DeviceKind::Cuda if num_gpus == 0 => Err(EngineError::Unsupported {
            what: "device = cuda: no CUDA device found (no libcuda, or no GPU visible); \
                   use device = cpu or auto, or check the driver and CUDA_VISIBLE_DEVICES"
                .into(),
        }),
        DeviceKind::Cuda => cuda(),
    }
}

/// The number of GPUs this build can use on this machine: 0 without the CUDA backend.
pub fn visible_gpu_count() -> usize {
    #[cfg(feature = "cuda")]
    return nanovllm_kernels::cuda::device_count();
    #[cfg(not(feature = "cuda"))]
    0
}

/// The backend for `config.device`; `local_rank` picks the GPU under tensor parallelism.
/// What the engine does with it beyond the op set (GPU memory sizing, graph capture, NCCL)
/// it asks the backend ([`Backend::device_memory`] and the other capabilities).
pub fn create_backend(config: &EngineConfig, local_rank: usize) -> Result<Arc<dyn Backend>> {
    let cuda_built = cfg!(feature = "cuda");
    match choose_device(config.device, cuda_built, visible_gpu_count(), local_rank)? {
        DeviceChoice::Cpu => Ok(cpu_backend()),
        DeviceChoice::CpuFallback => {
            if local_rank == 0 {
                tracing::warn!(
                    "no CUDA device (no libcuda, or no GPU visible); running on the CPU"
                );
            }
            Ok(cpu_backend())
        }
        DeviceChoice::Cuda { ordinal } => open_cuda(ordinal),
    }
}

/// The CPU backend, after the process-wide allocator tuning it relies on
/// ([`nanovllm_kernels::cpu::configure_process`]).
fn cpu_backend() -> Arc<dyn Backend> {
    nanovllm_kernels::cpu::configure_process();
    Arc::new(CpuBackend::new())
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(nanovllm_kernels::cuda::CudaBackend::new(ordinal)?))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Arc<dyn Backend>> {
    Err(EngineError::Internal(format!(
        "GPU {ordinal} chosen in a build without the CUDA backend"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn what(err: EngineError) -> String {
        match err {
            EngineError::Unsupported { what } => what,
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn cpu_is_always_the_cpu() {
        for (built, gpus) in [(false, 0), (true, 0), (true, 8)] {
            assert_eq!(
                choose_device(DeviceKind::Cpu, built, gpus, 0).unwrap(),
                DeviceChoice::Cpu
            );
        }
    }

    #[test]
    fn auto_prefers_the_gpu_and_falls_back_with_a_notice() {
        use DeviceChoice::*;
        let auto = |built, gpus, rank| choose_device(DeviceKind::Auto, built, gpus, rank);
        assert_eq!(auto(false, 0, 0).unwrap(), Cpu);
        // A CPU-only build never looks at GPUs.
        assert_eq!(auto(false, 2, 0).unwrap(), Cpu);
        assert_eq!(auto(true, 0, 0).unwrap(), CpuFallback);
        assert_eq!(auto(true, 1, 0).unwrap(), Cuda { ordinal: 0 });
        assert_eq!(auto(true, 4, 3).unwrap(), Cuda { ordinal: 3 });
        assert!(what(auto(true, 2, 2).unwrap_err()).contains("only 2 GPU(s)"));
    }

    #[test]
    fn cuda_without_backend_or_device_is_a_clear_error() {
        let cuda = |built, gpus, rank| choose_device(DeviceKind::Cuda, built, gpus, rank);
        let msg = what(cuda(false, 1, 0).unwrap_err());
        assert!(
            msg.contains("no CUDA backend") && msg.contains("--features cuda"),
            "{msg}"
        );
        let msg = what(cuda(true, 0, 0).unwrap_err());
        assert!(msg.contains("no CUDA device found"), "{msg}");
        assert_eq!(cuda(true, 2, 1).unwrap(), DeviceChoice::Cuda { ordinal: 1 });
        assert!(what(cuda(true, 1, 1).unwrap_err()).contains("GPU 1"));
    }

    #[test]
    fn the_cpu_device_builds_a_cpu_backend() {
        let config = EngineConfig {
            device: DeviceKind::Cpu,
            ..EngineConfig::new("m")
        };
        let backend = create_backend(&config, 0).unwrap();
        assert_eq!(backend.device(), nanovllm_kernels::Device::Cpu);
        assert!(backend.device_memory().is_none() && backend.graph_capture().is_none());
    }
}
