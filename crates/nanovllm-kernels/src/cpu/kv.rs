//! The paged KV cache as the CPU kernels see it, and `store_kv`.
//!
//! Layout per layer: `k, v: [num_blocks, block_size, kv_heads, head_dim]`, f32, bf16 or
//! FP8 e4m3 (bf16 halves the memory, e4m3 quarters it; stores round to nearest even,
//! reads widen exactly). Slot `s` is row `s` of the `[num_blocks * block_size, kv_heads *
//! head_dim]` view. An e4m3 cache stores `e4m3(x / scale)` with the layer's
//! [`KvScales`](crate::KvScales); its elements read back as the e4m3 values times 2⁻⁸
//! ([`E4m3::READ_UNIT`], the cheapest exact widening), and the attention kernels apply
//! the scales and the 2⁸ outside the loops (`k_scale` folded into the softmax scale,
//! `v_scale` into the output).

use half::bf16;

use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::kv_cache::LayerKvCache;
use crate::tensor::{CpuStorage, Tensor};
use crate::validate;

use super::check;
use super::convert::bf16_bits_to_f32;
use super::fp8_encode::f32_to_e4m3_fast;

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

/// One FP8 e4m3 element of the cache: its byte (see [`crate::quant::fp8`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub(crate) struct E4m3(pub u8);

impl E4m3 {
    /// What [`KvElem::row_f32`] and [`KvElem::load8`] of an e4m3 cache return, per unit of
    /// the stored value: `value · 2⁻⁸`, exactly (every e4m3 value times 2⁻⁸ is an f16, the
    /// form F16C widens). The attention kernels multiply the 2⁸ back together with the
    /// layer's scales, outside the loops.
    pub(crate) const READ_UNIT: f32 = 1.0 / 256.0;
}

impl KvElem for E4m3 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        E4m3(f32_to_e4m3_fast(x))
    }
    /// `value · 2⁻⁸` ([`E4m3::READ_UNIT`]) by branch-free bit arithmetic the compiler
    /// vectorises (a table lookup would not be): a normal code's exponent and mantissa
    /// bits, shifted into an f32 and rebiased, are its value; a subnormal code `m` is
    /// `m · 2⁻⁹`; magnitude `0x7f` is NaN.
    #[inline(always)]
    fn row_f32<'a>(row: &'a [E4m3], scratch: &'a mut [f32]) -> &'a [f32] {
        let out = &mut scratch[..row.len()];
        for (d, &E4m3(b)) in out.iter_mut().zip(row) {
            let magnitude = (b & 0x7f) as u32;
            // Bias 127 - 7 for the value, 8 less for the unit.
            let normal = f32::from_bits((magnitude << 20) + ((127 - 7 - 8) << 23));
            let subnormal = magnitude as f32 * (E4m3::READ_UNIT / 512.0);
            let value = if magnitude == 0x7f {
                f32::NAN
            } else if magnitude >= 8 {
                normal
            } else {
                subnormal
            };
            *d = f32::from_bits(value.to_bits() | ((b & 0x80) as u32) << 24);
        }
        out
    }
    #[inline(always)]
    fn as_f32(_elems: &[E4m3]) -> Option<&[f32]> {
        None
    }
    /// `value · 2⁻⁸` ([`E4m3::READ_UNIT`]), exact, NaN included: the byte sign-extended
    /// to 16 bits and shifted left by 7 puts its sign in bit 15 and its exponent and
    /// mantissa in bits 13..7 (bit 14, a copy of the sign, is cleared): `s 0eeee mmm0000000`
    /// is the f16 of the value · 2⁻⁸ (the exponent biases differ by 8, subnormals line up
    /// too), widened by F16C. The NaN codes (magnitude `0x7f`) would land on a finite f16,
    /// so bit 14 is set for them (an all-ones exponent). Six vector operations.
    ///
    /// # Safety
    /// As [`KvElem::load8`], and F16C is available too ([`has_avx2_fma_f16c`]).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const E4m3) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees AVX2, F16C and 8 readable bytes at `p`: the 64-bit
        // unaligned load reads exactly those.
        unsafe {
            let bytes = _mm_cvtepi8_epi16(_mm_loadl_epi64(p.cast()));
            let half = _mm_and_si128(_mm_slli_epi16::<7>(bytes), _mm_set1_epi16(0xbf80u16 as i16));
            let nan = _mm_cmpeq_epi16(
                _mm_and_si128(bytes, _mm_set1_epi16(0x7f)),
                _mm_set1_epi16(0x7f),
            );
            _mm256_cvtph_ps(_mm_or_si128(
                half,
                _mm_and_si128(nan, _mm_set1_epi16(0x4000)),
            ))
        }
    }
}

/// Whether the CPU has AVX2, FMA and F16C: what the in-place AVX2 attention kernels need
/// (F16C widens an e4m3 cache; every AVX2 CPU has it).
pub(crate) fn has_avx2_fma_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
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
    E4M3(&'a [E4m3], &'a [E4m3]),
}

impl<'a> KvBuffers<'a> {
    pub(crate) fn of(op: &'static str, cache: &'a LayerKvCache) -> Result<Self> {
        match (cache.k.cpu(op)?, cache.v.cpu(op)?) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => Ok(KvBuffers::F32(k, v)),
            (CpuStorage::BF16(k), CpuStorage::BF16(v)) => Ok(KvBuffers::BF16(k, v)),
            (
                CpuStorage::Bytes {
                    dtype: DType::F8E4M3,
                    bytes: k,
                },
                CpuStorage::Bytes {
                    dtype: DType::F8E4M3,
                    bytes: v,
                },
            ) => Ok(KvBuffers::E4M3(
                bytemuck::cast_slice(k),
                bytemuck::cast_slice(v),
            )),
            (k, _) => Err(unsupported_cache(op, k)),
        }
    }
}

fn unsupported_cache(op: &'static str, storage: &CpuStorage) -> KernelError {
    KernelError::WrongDType {
        op,
        arg: "cache",
        expected: "f32, bf16 or f8_e4m3",
        got: storage.dtype(),
    }
}

const OP: &str = "store_kv";

/// Writes `k, v: f32 [T, kv_heads * head_dim]` into the cache rows named by
/// `slot_mapping: I64 [T]`; −1 writes nothing. An e4m3 cache stores `e4m3(k / k_scale)`
/// and `e4m3(v / v_scale)` (round to nearest even, saturating at ±448). All slots are
/// validated before any write, so an error leaves the cache untouched.
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

    let scales = cache.effective_scales();
    let LayerKvCache {
        k: cache_k,
        v: cache_v,
        ..
    } = cache;
    match (cache_k.cpu_mut(OP)?, cache_v.cpu_mut(OP)?) {
        (CpuStorage::F32(dk), CpuStorage::F32(dv)) => {
            write_rows(ks, dk, slots, width, 1.0);
            write_rows(vs, dv, slots, width, 1.0);
        }
        (CpuStorage::BF16(dk), CpuStorage::BF16(dv)) => {
            write_rows(ks, dk, slots, width, 1.0);
            write_rows(vs, dv, slots, width, 1.0);
        }
        (
            CpuStorage::Bytes {
                dtype: DType::F8E4M3,
                bytes: dk,
            },
            CpuStorage::Bytes {
                dtype: DType::F8E4M3,
                bytes: dv,
            },
        ) => {
            write_rows::<E4m3>(ks, bytemuck::cast_slice_mut(dk), slots, width, scales.k);
            write_rows::<E4m3>(vs, bytemuck::cast_slice_mut(dv), slots, width, scales.v);
        }
        (dk, _) => return Err(unsupported_cache(OP, dk)),
    }
    Ok(())
}

/// Stores row `t` of `src`, divided by `scale`, as row `slots[t]` of `dst` (slots already
/// validated). A true division, not a multiplication by the reciprocal: every backend
/// stores exactly `e4m3(x / scale)`.
fn write_rows<T: KvElem>(src: &[f32], dst: &mut [T], slots: &[i64], width: usize, scale: f32) {
    for (t, &slot) in slots.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let dst_row = &mut dst[slot as usize * width..(slot as usize + 1) * width];
        let src_row = &src[t * width..(t + 1) * width];
        if scale == 1.0 {
            // x / 1 = x exactly: the same values without a division per element.
            for (d, &s) in dst_row.iter_mut().zip(src_row) {
                *d = T::from_f32(s);
            }
        } else {
            for (d, &s) in dst_row.iter_mut().zip(src_row) {
                *d = T::from_f32(s / scale);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::fp8::e4m3_to_f32;

    /// All 256 bytes, through the AVX2 widening and the portable row widening: bit for
    /// bit the reference value times [`E4m3::READ_UNIT`] (NaN for the two NaN codes).
    #[test]
    fn e4m3_widening_is_exact_for_every_byte() {
        let bytes: Vec<E4m3> = (0..=255u8).map(E4m3).collect();
        let check = |got: &[f32], how: &str| {
            for (b, &x) in got.iter().enumerate() {
                let want = e4m3_to_f32(b as u8) * E4m3::READ_UNIT;
                assert!(
                    x.to_bits() == want.to_bits() || (x.is_nan() && want.is_nan()),
                    "{how}: byte {b:#04x} gave {x}, want {want}"
                );
            }
        };
        let mut scratch = vec![0.0f32; 256];
        check(E4m3::row_f32(&bytes, &mut scratch), "row_f32");
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            let mut got = vec![0.0f32; 256];
            for (src, dst) in bytes.chunks_exact(8).zip(got.chunks_exact_mut(8)) {
                // SAFETY: AVX2 and F16C checked above; `src` holds the 8 bytes read and
                // `dst` the 8 floats written.
                unsafe {
                    std::arch::x86_64::_mm256_storeu_ps(dst.as_mut_ptr(), E4m3::load8(src.as_ptr()))
                };
            }
            check(&got, "load8");
        }
    }
}
