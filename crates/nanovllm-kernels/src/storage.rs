//! Where a tensor's elements live: [`Storage`], one variant per device.
//!
//! Storage owns what happens to its memory when it is dropped, so that `Tensor` stays
//! device-neutral:
//! - [`Storage::Cpu`] hands its buffer to the CPU backend's buffer pool
//!   (`cpu/buffer_pool.rs`), where the next op's output takes it (this is why a warm
//!   decode step allocates nothing);
//! - `Storage::Cuda` frees its device buffer on the backend's stream (`cuda/storage.rs`).
//!
//! [`CpuStorage`] itself has no drop hook: the pool holds `CpuStorage` values, and evicting
//! one must really free it. To take a vector out, use [`Storage::into_cpu`].

use half::{bf16, f16};

use crate::dtype::DType;

/// Host memory of a CPU tensor, one variant per [`DType`].
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    U32(Vec<u32>),
    I64(Vec<i64>),
    /// The byte-backed dtypes: FP8 elements ([`DType::F8E4M3`]) and whole blocks of a
    /// block-quantized weight dtype ([`DType::is_quantized`], layouts in [`crate::quant`]).
    /// Invariant: `dtype` is one of those and `bytes.len()` is a whole number of blocks.
    Bytes {
        dtype: DType,
        bytes: Vec<u8>,
    },
}

impl Default for CpuStorage {
    /// An empty f32 buffer (no allocation).
    fn default() -> Self {
        CpuStorage::F32(Vec::new())
    }
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::Bytes { dtype, .. } => *dtype,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::U32(v) => v.len(),
            CpuStorage::I64(v) => v.len(),
            CpuStorage::Bytes { dtype, bytes } => dtype.elems_in_bytes(bytes.len()),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn zeros(dtype: DType, len: usize) -> Self {
        match dtype {
            DType::F32 => CpuStorage::F32(vec![0.0; len]),
            // Zeroed allocations (calloc): big buffers start as untouched pages, so advice
            // such as huge pages still applies when they are first written.
            DType::BF16 => CpuStorage::BF16(bytemuck::zeroed_vec(len)),
            DType::F16 => CpuStorage::F16(bytemuck::zeroed_vec(len)),
            DType::U32 => CpuStorage::U32(vec![0; len]),
            DType::I64 => CpuStorage::I64(vec![0; len]),
            // All-zero bytes are +0.0 in e4m3 and a zero scale (all zeros) in every block
            // layout.
            DType::F8E4M3 | DType::Int8G32 | DType::Int4G32 | DType::Fp8G128 => CpuStorage::Bytes {
                dtype,
                bytes: vec![0; dtype.storage_bytes(len)],
            },
        }
    }
}

/// Where a tensor's buffer lives.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    /// Device memory of [`crate::cuda::CudaBackend`]; cloning copies device-to-device.
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaStorage),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.dtype(),
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Where the buffer lives.
    pub fn device(&self) -> crate::backend::Device {
        match self {
            Storage::Cpu(_) => crate::backend::Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => crate::backend::Device::Cuda(s.ordinal()),
        }
    }
}

impl Storage {
    /// The host buffer, when this is one (its drop hook then has nothing left to return).
    pub fn into_cpu(mut self) -> Option<CpuStorage> {
        match &mut self {
            Storage::Cpu(s) => Some(std::mem::take(s)),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => None,
        }
    }
}

impl Drop for Storage {
    // Only CPU storage exists without the `cuda` feature.
    #[allow(irrefutable_let_patterns)]
    fn drop(&mut self) {
        if let Storage::Cpu(storage) = self {
            crate::cpu::give_back_buffer(std::mem::take(storage));
        }
    }
}
