//! An owned, contiguous, row-major tensor.
//!
//! A `Tensor` owns its buffer: cloning copies it, and `reshape` moves it.
//! Views and strides are deliberately absent; ops that would need a view
//! (splitting fused projections, picking rows) are backend ops that produce
//! new tensors. This keeps every op's memory contract obvious.
//!
//! Creating and dropping tensors allocates nothing in steady state: the shape is
//! stored inline (up to [`INLINE_DIMS`] dimensions), and the buffer is a [`Storage`], which
//! decides itself where its memory goes when dropped (`storage.rs`).

use half::{bf16, f16};
use smallvec::SmallVec;

use crate::dtype::DType;
use crate::error::{KernelError, Result};
pub use crate::storage::{CpuStorage, Storage};

/// Dimensions a shape holds without a heap allocation (more spill to the heap).
pub const INLINE_DIMS: usize = 4;
type Shape = SmallVec<[usize; INLINE_DIMS]>;
/// The parts of a split tensor (`Backend::split_last_dim`), inline up to four.
pub type TensorParts = SmallVec<[Tensor; 4]>;

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Shape,
    storage: Storage,
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    if shape.iter().product::<usize>() != len {
        return Err(KernelError::ElementCount {
            op,
            len,
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

impl Tensor {
    /// Wraps storage with a shape; the element count must match.
    pub fn new(storage: Storage, shape: &[usize]) -> Result<Self> {
        let len = storage.len();
        check_len("Tensor::new", len, shape)?;
        Ok(Self {
            shape: Shape::from_slice(shape),
            storage,
        })
    }
    pub fn from_cpu(storage: CpuStorage, shape: &[usize]) -> Result<Self> {
        Self::new(Storage::Cpu(storage), shape)
    }
    pub fn from_f32(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        Self::from_cpu(CpuStorage::F32(data), shape)
    }
    pub fn from_bf16(data: Vec<bf16>, shape: &[usize]) -> Result<Self> {
        Self::from_cpu(CpuStorage::BF16(data), shape)
    }
    pub fn from_u32(data: Vec<u32>, shape: &[usize]) -> Result<Self> {
        Self::from_cpu(CpuStorage::U32(data), shape)
    }
    pub fn from_i64(data: Vec<i64>, shape: &[usize]) -> Result<Self> {
        Self::from_cpu(CpuStorage::I64(data), shape)
    }
    /// A tensor of a byte-backed dtype ([`DType::F8E4M3`] or a block-quantized one) from
    /// its raw bytes. For a block dtype the last dim must be a whole number of blocks and
    /// `bytes` must hold exactly the blocks of `shape`.
    pub fn from_bytes(dtype: DType, bytes: Vec<u8>, shape: &[usize]) -> Result<Self> {
        let numel: usize = shape.iter().product();
        let byte_backed = dtype == DType::F8E4M3 || dtype.is_quantized();
        let whole_blocks = match (dtype.block(), shape.last()) {
            (Some(block), Some(&k)) => k % block.elems == 0,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if !byte_backed || !whole_blocks || bytes.len() != dtype.storage_bytes(numel) {
            return Err(KernelError::Invalid {
                op: "Tensor::from_bytes",
                msg: format!(
                    "{} bytes cannot hold a {dtype} tensor of shape {shape:?} (needs a byte-backed \
                     dtype, a last dim in whole blocks and {} bytes)",
                    bytes.len(),
                    dtype.storage_bytes(numel)
                ),
            });
        }
        Self::from_cpu(CpuStorage::Bytes { dtype, bytes }, shape)
    }
    /// A zero-filled CPU tensor.
    pub fn zeros_cpu(shape: &[usize], dtype: DType) -> Self {
        let len = shape.iter().product();
        Self {
            shape: Shape::from_slice(shape),
            storage: Storage::Cpu(CpuStorage::zeros(dtype, len)),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self.shape[..] {
            [a, b] => Ok((a, b)),
            _ => Err(KernelError::Invalid {
                op: "dims2",
                msg: format!("expected a 2-d tensor, got shape {:?}", self.shape),
            }),
        }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    /// The device the buffer lives on.
    pub fn device(&self) -> crate::backend::Device {
        self.storage.device()
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    /// Crate-private: replacing the buffer could break `shape`'s element count, which the
    /// kernels' raw-pointer loops trust.
    pub(crate) fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }
    pub fn into_storage(self) -> Storage {
        self.storage
    }
    pub fn is_cpu(&self) -> bool {
        matches!(self.storage, Storage::Cpu(_))
    }
    pub fn size_in_bytes(&self) -> usize {
        self.dtype().storage_bytes(self.numel())
    }

    /// Same buffer, new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        check_len("reshape", self.numel(), shape)?;
        self.shape = Shape::from_slice(shape);
        Ok(self)
    }

    /// The CPU buffer, or an error naming the op when the tensor is on another device.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub fn cpu(&self, op: &'static str) -> Result<&CpuStorage> {
        match &self.storage {
            Storage::Cpu(s) => Ok(s),
            #[cfg(feature = "cuda")]
            other => Err(KernelError::NotOnHost {
                op,
                device: other.device().to_string(),
            }),
        }
    }
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    /// Crate-private for the same reason as [`Self::storage_mut`].
    pub(crate) fn cpu_mut(&mut self, op: &'static str) -> Result<&mut CpuStorage> {
        match &mut self.storage {
            Storage::Cpu(s) => Ok(s),
            #[cfg(feature = "cuda")]
            other => Err(KernelError::NotOnHost {
                op,
                device: other.device().to_string(),
            }),
        }
    }

    /// Host copy as f32, converting from any float dtype (and from integers).
    /// Only for CPU tensors; use [`crate::Backend::to_host`] first for device tensors.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(match self.cpu("to_vec_f32")? {
            CpuStorage::F32(v) => v.clone(),
            CpuStorage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            CpuStorage::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            CpuStorage::U32(v) => v.iter().map(|&x| x as f32).collect(),
            CpuStorage::I64(v) => v.iter().map(|&x| x as f32).collect(),
            CpuStorage::Bytes { dtype, bytes } => crate::quant::dequantize(*dtype, bytes),
        })
    }
    pub fn as_f32_slice(&self) -> Result<&[f32]> {
        match self.cpu("as_f32_slice")? {
            CpuStorage::F32(v) => Ok(v),
            s => Err(KernelError::UnsupportedDType {
                op: "as_f32_slice",
                dtype: s.dtype(),
            }),
        }
    }
    pub fn as_f32_slice_mut(&mut self) -> Result<&mut [f32]> {
        match self.cpu_mut("as_f32_slice_mut")? {
            CpuStorage::F32(v) => Ok(v),
            s => Err(KernelError::UnsupportedDType {
                op: "as_f32_slice_mut",
                dtype: s.dtype(),
            }),
        }
    }
    pub fn as_u32_slice(&self) -> Result<&[u32]> {
        match self.cpu("as_u32_slice")? {
            CpuStorage::U32(v) => Ok(v),
            s => Err(KernelError::UnsupportedDType {
                op: "as_u32_slice",
                dtype: s.dtype(),
            }),
        }
    }
    pub fn as_i64_slice(&self) -> Result<&[i64]> {
        match self.cpu("as_i64_slice")? {
            CpuStorage::I64(v) => Ok(v),
            s => Err(KernelError::UnsupportedDType {
                op: "as_i64_slice",
                dtype: s.dtype(),
            }),
        }
    }

    /// A copy converted to `dtype` on the CPU: float ↔ float, or a float tensor quantized
    /// to a byte-backed dtype ([`crate::quant::quantize`], one block at a time).
    pub fn to_dtype_cpu(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        if dtype == DType::F8E4M3 || dtype.is_quantized() {
            return crate::quant::quantize(self, dtype);
        }
        let f = self.to_vec_f32()?;
        let storage = match dtype {
            DType::F32 => CpuStorage::F32(f),
            DType::BF16 => CpuStorage::BF16(f.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => CpuStorage::F16(f.iter().map(|&x| f16::from_f32(x)).collect()),
            other => {
                return Err(KernelError::UnsupportedDType {
                    op: "to_dtype_cpu",
                    dtype: other,
                })
            }
        };
        Tensor::from_cpu(storage, &self.shape)
    }
}
