//! Quantized weights and FP8 values: formats and their scalar reference math.
//!
//! - [`fp8`]: the e4m3 element type ([`DType::F8E4M3`]), for the FP8 KV cache and FP8
//!   checkpoints.
//! - [`blocks`]: the block-quantized weight dtypes ([`DType::Int8G32`],
//!   [`DType::Int4G32`], [`DType::Fp8G128`]), their byte layouts, and the one-block
//!   quantize / dequantize every kernel is tested against.
//!
//! A quantized weight is a [`Tensor`] of logical shape `[.., K]` with
//! [`crate::CpuStorage::Bytes`] (on a device, the same bytes): `K / block.elems` blocks
//! per row, rows back to back. [`crate::Backend::matmul`] and
//! [`crate::Backend::moe_experts`] accept such weights; nothing else does.
//!
//! [`quantize`] converts a float tensor one block at a time, so quantizing at load time
//! never holds a widened copy of the weight: the only extra memory is one block of f32.

pub mod blocks;
pub mod fp8;

use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::{CpuStorage, Tensor};

pub use blocks::{dequantize_block, quantize_block};
pub use fp8::{e4m3_table, e4m3_to_f32, f32_to_e4m3, E4M3_MAX};

/// `src` (a CPU tensor of f32, bf16 or f16) converted to the byte-backed `dtype`:
/// [`DType::F8E4M3`] element by element (saturating, no scale), or a block-quantized
/// dtype block by block along the last dim, which must be a whole number of blocks.
pub fn quantize(src: &Tensor, dtype: DType) -> Result<Tensor> {
    const OP: &str = "quantize";
    let k = src.shape().last().copied().unwrap_or(0);
    let numel = src.numel();
    let mut bytes = vec![0u8; dtype.storage_bytes(numel)];
    let convert = |start: usize, out: &mut [f32]| -> Result<()> {
        match src.cpu(OP)? {
            CpuStorage::F32(v) => out.copy_from_slice(&v[start..start + out.len()]),
            CpuStorage::BF16(v) => {
                for (o, x) in out.iter_mut().zip(&v[start..]) {
                    *o = x.to_f32();
                }
            }
            CpuStorage::F16(v) => {
                for (o, x) in out.iter_mut().zip(&v[start..]) {
                    *o = x.to_f32();
                }
            }
            other => {
                return Err(KernelError::UnsupportedDType {
                    op: OP,
                    dtype: other.dtype(),
                })
            }
        }
        Ok(())
    };
    match dtype.block() {
        None if dtype == DType::F8E4M3 => {
            let mut chunk = [0f32; 256];
            for (i, out) in bytes.chunks_mut(256).enumerate() {
                let values = &mut chunk[..out.len()];
                convert(i * 256, values)?;
                for (b, &x) in out.iter_mut().zip(values.iter()) {
                    *b = crate::cpu::fp8_encode::f32_to_e4m3_fast(x);
                }
            }
        }
        None => return Err(KernelError::UnsupportedDType { op: OP, dtype }),
        Some(block) => {
            if k % block.elems != 0 {
                return Err(KernelError::Invalid {
                    op: OP,
                    msg: format!(
                        "{dtype} needs the last dim to be a multiple of {}, got shape {:?}",
                        block.elems,
                        src.shape()
                    ),
                });
            }
            let mut values = vec![0f32; block.elems];
            for (i, out) in bytes.chunks_mut(block.bytes).enumerate() {
                convert(i * block.elems, &mut values)?;
                quantize_block(dtype, &values, out);
            }
        }
    }
    Tensor::from_bytes(dtype, bytes, src.shape())
}

/// Every element of a byte-backed buffer as f32 (for tests and host reads; kernels
/// dequantize in registers).
pub fn dequantize(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype.block() {
        Some(block) => {
            let mut out = vec![0f32; dtype.elems_in_bytes(bytes.len())];
            for (src, dst) in bytes
                .chunks_exact(block.bytes)
                .zip(out.chunks_exact_mut(block.elems))
            {
                dequantize_block(dtype, src, dst);
            }
            out
        }
        None => {
            let table = e4m3_table();
            bytes.iter().map(|&b| table[b as usize]).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    /// Round trips stay within each format's worst-case step: half a quantization step
    /// of the block's scale (plus the f16 rounding of the scale itself).
    #[test]
    fn round_trip_error_is_within_half_a_step() {
        let (rows, k) = (3, 256);
        let w = values(rows * k, 7);
        let t = Tensor::from_f32(w.clone(), &[rows, k]).unwrap();
        for dtype in [DType::Int8G32, DType::Int4G32, DType::Fp8G128] {
            let q = quantize(&t, dtype).unwrap();
            assert_eq!(q.shape(), &[rows, k]);
            assert_eq!(q.dtype(), dtype);
            assert_eq!(q.size_in_bytes(), dtype.storage_bytes(rows * k));
            let back = q.to_vec_f32().unwrap();
            let block = dtype.block().unwrap().elems;
            for (src, got) in w.chunks(block).zip(back.chunks(block)) {
                let amax = src.iter().fold(0f32, |a, x| a.max(x.abs()));
                let (lo, hi) = src
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                for (&x, &y) in src.iter().zip(got) {
                    let bound = match dtype {
                        DType::Int8G32 => amax / 127.0 * 0.502 + 1e-7,
                        DType::Int4G32 => (hi - lo) / 15.0 * 0.502 + lo.abs() * 1e-3 + 1e-7,
                        // e4m3 keeps 3 mantissa bits: half an ulp is 2^-4 relative; the
                        // subnormal step is 2^-9 of the scale.
                        _ => x.abs() / 16.0 + amax / 448.0 / 1024.0 + 1e-7,
                    };
                    assert!(
                        (x - y).abs() <= bound,
                        "{dtype}: {x} -> {y} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn zero_blocks_and_bf16_sources() {
        let t = Tensor::from_bf16(vec![half::bf16::ZERO; 64], &[1, 64]).unwrap();
        for dtype in [DType::Int8G32, DType::Int4G32] {
            let q = quantize(&t, dtype).unwrap();
            assert!(q.to_vec_f32().unwrap().iter().all(|&x| x == 0.0));
        }
        let t = Tensor::from_f32(vec![1.0, -2.0, 500.0], &[3]).unwrap();
        let q = quantize(&t, DType::F8E4M3).unwrap();
        assert_eq!(q.to_vec_f32().unwrap(), vec![1.0, -2.0, 448.0]);
    }

    #[test]
    fn a_last_dim_that_cuts_a_block_is_an_error() {
        let t = Tensor::from_f32(vec![0.0; 48], &[1, 48]).unwrap();
        let err = quantize(&t, DType::Int8G32).unwrap_err().to_string();
        assert!(err.contains("multiple of 32"), "{err}");
        assert!(Tensor::from_bytes(DType::Int8G32, vec![0; 33], &[1, 32]).is_err());
        assert!(Tensor::from_bytes(DType::BF16, vec![0; 4], &[2]).is_err());
    }
}
