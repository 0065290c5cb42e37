//! The paged KV cache as the CPU kernels see it, and `store_kv`.
//!
//! Layout per layer: `k, v: [num_blocks, block_size, kv_heads, head_dim]`, f32 or bf16
//! (bf16 halves the memory; stores round to nearest, reads widen exactly). Slot `s` is
//! row `s` of the `[num_blocks * block_size, kv_heads * head_dim]` view.

use half::bf16;

use crate::error::{KernelError, Result};
use crate::kv_cache::LayerKvCache;
use crate::tensor::{CpuStorage, Tensor};
use crate::validate;

use super::check;
use super::convert::bf16_bits_to_f32;

/// An element type the KV cache may hold.
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    fn from_f32(x: f32) -> Self;
    /// The row as f32: borrowed when already f32, else widened into `scratch`.
    fn row_f32<'a>(row: &'a [Self], scratch: &'a mut [f32]) -> &'a [f32];
    /// The elements as f32 without copying, where they already are (f32 caches).
    fn as_f32(elems: &[Self]) -> Option<&[f32]>;
    /// Eight elements from `p` as f32 lanes (bf16 widened exactly, in registers: its
    /// bits are the f32's top half), for the AVX2 kernels that read the cache in place.
    ///
    /// # Safety
    /// AVX2 is available and `p` is valid for reading 8 elements.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElem for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn row_f32<'a>(row: &'a [f32], _scratch: &'a mut [f32]) -> &'a [f32] {
        row
    }
    #[inline(always)]
    fn as_f32(elems: &[f32]) -> Option<&[f32]> {
        Some(elems)
    }
    /// # Safety
    /// As [`KvElem::load8`]: AVX2 is available and `p` is valid for reading 8 f32.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees AVX2 (so AVX) and 8 readable f32 at `p`; the load
        // is unaligned, so `p` needs no particular alignment.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl KvElem for bf16 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[inline(always)]
    fn row_f32<'a>(row: &'a [bf16], scratch: &'a mut [f32]) -> &'a [f32] {
        let out = &mut scratch[..row.len()];
        let bits: &[u16] = bytemuck::cast_slice(row);
        for (d, &b) in out.iter_mut().zip(bits) {
            *d = bf16_bits_to_f32(b);
        }
        out
    }
    #[inline(always)]
    fn as_f32(_elems: &[bf16]) -> Option<&[f32]> {
        None
    }
    /// # Safety
    /// As [`KvElem::load8`]: AVX2 is available and `p` is valid for reading 8 bf16.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees AVX2 and 8 readable bf16 at `p`: the 16 bytes the
        // unaligned 128-bit load reads.
        unsafe {
            let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
        }
    }
}

/// Dimensions of one layer's cache, read from (and checked against) its tensors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CacheGeometry {
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl CacheGeometry {
    pub(crate) fn of(op: &'static str, cache: &LayerKvCache) -> Result<Self> {
        let [num_blocks, block_size, kv_heads, head_dim] = validate::kv::cache_dims(op, cache)?;
        if cache.k.dtype() != cache.v.dtype() {
            return Err(KernelError::Invalid {
                op,
                msg: format!(
                    "cache.k is {} but cache.v is {}; both must share one dtype",
                    cache.k.dtype(),
                    cache.v.dtype()
                ),
            });
        }
        Ok(Self {
            num_blocks,
            block_size,
            kv_heads,
            head_dim,
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

/// Typed read access to one layer's K and V buffers.
pub(crate) enum KvBuffers<'a> {
    F32(&'a [f32], &'a [f32]),
    BF16(&'a [bf16], &'a [bf16]),
}

impl<'a> KvBuffers<'a> {
    pub(crate) fn of(op: &'static str, cache: &'a LayerKvCache) -> Result<Self> {
        match (cache.k.cpu(op)?, cache.v.cpu(op)?) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => Ok(KvBuffers::F32(k, v)),
            (CpuStorage::BF16(k), CpuStorage::BF16(v)) => Ok(KvBuffers::BF16(k, v)),
            (k, _) => Err(unsupported_cache(op, k)),
        }
    }
}

fn unsupported_cache(op: &'static str, storage: &CpuStorage) -> KernelError {
    KernelError::WrongDType {
        op,
        arg: "cache",
        expected: "f32 or bf16",
        got: storage.dtype(),
    }
}

const OP: &str = "store_kv";

/// Writes `k, v: f32 [T, kv_heads * head_dim]` into the cache rows named by
/// `slot_mapping: I64 [T]`; −1 writes nothing. All slots are validated before any write,
/// so an error leaves the cache untouched.
pub(crate) fn store_kv(
    k: &Tensor,
    v: &Tensor,
    cache: &mut LayerKvCache,
    slot_mapping: &Tensor,
) -> Result<()> {
    let geometry = CacheGeometry::of(OP, cache)?;
    let width = geometry.row_width();
    validate::kv::store_shapes(OP, k, v, slot_mapping, width)?;
    let ks = check::f32s(OP, "k", k)?;
    let vs = check::f32s(OP, "v", v)?;
    let slots = check::i64s(OP, "slot_mapping", slot_mapping)?;

    let num_slots = geometry.num_slots();
    for (token, &slot) in slots.iter().enumerate() {
        if slot < -1 {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!(
                    "slot_mapping[{token}] = {slot}: slots must be ≥ 0, or −1 for \"write nothing\""
                ),
            });
        }
        if slot >= 0 && slot as u64 >= num_slots as u64 {
            return Err(KernelError::IndexOutOfRange {
                op: OP,
                index: slot as usize,
                size: num_slots,
            });
        }
    }

    let LayerKvCache {
        k: cache_k,
        v: cache_v,
    } = cache;
    match (cache_k.cpu_mut(OP)?, cache_v.cpu_mut(OP)?) {
        (CpuStorage::F32(dk), CpuStorage::F32(dv)) => {
            write_rows(ks, dk, slots, width);
            write_rows(vs, dv, slots, width);
        }
        (CpuStorage::BF16(dk), CpuStorage::BF16(dv)) => {
            write_rows(ks, dk, slots, width);
            write_rows(vs, dv, slots, width);
        }
        (dk, _) => return Err(unsupported_cache(OP, dk)),
    }
    Ok(())
}

/// Copies row `t` of `src` to row `slots[t]` of `dst` (slots already validated).
fn write_rows<T: KvElem>(src: &[f32], dst: &mut [T], slots: &[i64], width: usize) {
    for (t, &slot) in slots.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let dst_row = &mut dst[slot as usize * width..(slot as usize + 1) * width];
        for (d, &s) in dst_row.iter_mut().zip(&src[t * width..(t + 1) * width]) {
            *d = T::from_f32(s);
        }
    }
}
