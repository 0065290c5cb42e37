//! The paged KV cache on the device, and `store_kv` (`store_kv_*`).
//!
//! Layout per layer: `k, v: [num_blocks, block_size, kv_heads, head_dim]`, bf16, f32 or
//! FP8 e4m3; slot `s` is row `s` of the `[num_blocks * block_size, kv_heads * head_dim]`
//! view. An e4m3 cache stores `e4m3(x / scale)` with the layer's scales
//! (`store_kv_fp8` in attention.cu; the division is correctly rounded, the encoding
//! rounds to nearest even and saturates, as the CPU's).
//! Slots are checked before any write (through their known value range,
//! `CudaBackend::index_range`) unless a graph is being captured, so a rejected call leaves
//! the cache untouched; the kernel itself skips −1 (padding) and any slot outside the
//! cache.

use cudarc::driver::PushKernelArg;

use super::check::expect_dtype;
use super::device::{device_buf, CudaBackend};
use super::launch::{as_i32, cuda_err, elementwise};
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::kv_cache::LayerKvCache;
use crate::tensor::Tensor;
use crate::validate;

/// Dimensions of one layer's cache, read from (and checked against) its tensors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CacheGeometry {
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
}

impl CacheGeometry {
    pub(crate) fn of(op: &'static str, cache: &LayerKvCache) -> Result<Self> {
        let [num_blocks, block_size, kv_heads, head_dim] = validate::kv::cache_dims(op, cache)?;
        let dtype = cache.k.dtype();
        if cache.v.dtype() != dtype || !matches!(dtype, DType::BF16 | DType::F32 | DType::F8E4M3) {
            return Err(KernelError::Invalid {
                op,
                msg: format!(
                    "cache.k is {} and cache.v is {}; both must be bf16, both f32 or both f8_e4m3",
                    dtype,
                    cache.v.dtype()
                ),
            });
        }
        Ok(Self {
            num_blocks,
            block_size,
            kv_heads,
            head_dim,
            dtype,
        })
    }

    /// Elements per slot: `kv_heads * head_dim`.
    pub(crate) fn row_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    pub(crate) fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
}

pub(crate) fn store_kv(
    be: &CudaBackend,
    k: &Tensor,
    v: &Tensor,
    cache: &mut LayerKvCache,
    slot_mapping: &Tensor,
) -> Result<()> {
    const OP: &str = "store_kv";
    let geometry = CacheGeometry::of(OP, cache)?;
    let width = geometry.row_width();
    let num_tokens = validate::kv::store_shapes(OP, k, v, slot_mapping, width)?;
    expect_dtype(OP, "k", k, DType::BF16)?;
    expect_dtype(OP, "v", v, DType::BF16)?;
    expect_dtype(OP, "slot_mapping", slot_mapping, DType::I64)?;
    let num_slots = geometry.num_slots();
    if let Some((min, max)) = be.index_range(slot_mapping, OP)? {
        if min < -1 {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!("slot {min} is negative; only -1 (write nothing) is allowed"),
            });
        }
        if max >= 0 && max as usize >= num_slots {
            return Err(KernelError::IndexOutOfRange {
                op: OP,
                index: max as usize,
                size: num_slots,
            });
        }
    }
    if num_tokens == 0 {
        return Ok(());
    }
    let num_tokens_i = num_tokens as i64;
    let width_i = as_i32(OP, "kv_heads * head_dim", width)?;
    let num_slots_i = num_slots as i64;
    let name = match geometry.dtype {
        DType::F32 => "store_kv_f32",
        DType::F8E4M3 => "store_kv_fp8",
        _ => "store_kv_bf16",
    };
    let scales = cache.effective_scales();
    let f = be.function(name)?;
    let mut launch = be.stream().launch_builder(&f);
    launch
        .arg(device_buf(&cache.k, OP)?)
        .arg(device_buf(&cache.v, OP)?)
        .arg(device_buf(k, OP)?)
        .arg(device_buf(v, OP)?)
        .arg(device_buf(slot_mapping, OP)?)
        .arg(&num_tokens_i)
        .arg(&width_i)
        .arg(&num_slots_i);
    if geometry.dtype == DType::F8E4M3 {
        launch.arg(&scales.k).arg(&scales.v);
    }
    // SAFETY: matches `store_kv_*` (`store_kv_fp8` also takes the two scales); the kernel
    // skips slots outside 0..num_slots.
    unsafe { launch.launch(elementwise(num_tokens * width)) }.map_err(cuda_err(OP))?;
    Ok(())
}
