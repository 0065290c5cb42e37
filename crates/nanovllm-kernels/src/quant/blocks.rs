//! The block layouts of the quantized weight dtypes and their scalar reference math.
//! Every block covers consecutive elements along K of one weight row; a row of `K`
//! weights is `K / elems` blocks back to back, and rows follow each other.
//!
//! - [`DType::Int8G32`], 34 bytes: `d: f16` (little endian), then 32 × `q: i8`;
//!   `w = d · q`. Quantized with `d = max|w| / 127` (rounded to f16 first), `q = round(w / d)`.
//! - [`DType::Int4G32`], 20 bytes: `d: f16`, `m: f16`, then 16 bytes whose byte `i`
//!   holds `q[i]` in its low nibble and `q[i + 16]` in its high nibble; `w = d · q + m`,
//!   `q ∈ 0..=15`. Quantized with `m = min w`, `d = (max w − min w) / 15` (both rounded to
//!   f16 first), `q = round((w − m) / d)` clamped to `0..=15`.
//! - [`DType::Fp8G128`], 132 bytes: `s: f32` (little endian), then 128 e4m3 bytes;
//!   `w = s · e4m3(q)`. Quantized with `s = max|w| / 448`, `q = e4m3(w / s)`.
//!
//! A block whose weights are all zero has a zero scale and zero codes.

use half::f16;

use super::fp8::{e4m3_table, E4M3_MAX};
// The bit-arithmetic encoder: the same byte as `fp8::f32_to_e4m3` for every f32 (tested
// there), without its log2/powi, which made quantizing a model to fp8 take seconds.
use crate::cpu::fp8_encode::f32_to_e4m3_fast as f32_to_e4m3;
use crate::dtype::DType;

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Quantizes one block: `src.len()` is the dtype's block elems, `dst.len()` its bytes.
/// `dtype` must be block-quantized.
pub fn quantize_block(dtype: DType, src: &[f32], dst: &mut [u8]) {
    match dtype {
        DType::Int8G32 => {
            let amax = src.iter().fold(0f32, |a, &x| a.max(x.abs()));
            let d = f16::from_f32(amax / 127.0);
            dst[..2].copy_from_slice(&d.to_le_bytes());
            let d = d.to_f32();
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (q, &x) in dst[2..34].iter_mut().zip(src) {
                *q = ((x * inv).round().clamp(-127.0, 127.0) as i8) as u8;
            }
        }
        DType::Int4G32 => {
            let (lo, hi) = src
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                    (lo.min(x), hi.max(x))
                });
            let d = f16::from_f32((hi - lo) / 15.0);
            let m = f16::from_f32(lo);
            dst[..2].copy_from_slice(&d.to_le_bytes());
            dst[2..4].copy_from_slice(&m.to_le_bytes());
            let (d, m) = (d.to_f32(), m.to_f32());
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let code = |x: f32| ((x - m) * inv).round().clamp(0.0, 15.0) as u8;
            for i in 0..16 {
                dst[4 + i] = code(src[i]) | (code(src[i + 16]) << 4);
            }
        }
        DType::Fp8G128 => {
            let amax = src.iter().fold(0f32, |a, &x| a.max(x.abs()));
            let s = amax / E4M3_MAX;
            dst[..4].copy_from_slice(&s.to_le_bytes());
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            for (q, &x) in dst[4..132].iter_mut().zip(src) {
                *q = f32_to_e4m3(x * inv);
            }
        }
        other => unreachable!("quantize_block: {other} is not block-quantized"),
    }
}

/// Dequantizes one block: `src.len()` is the dtype's block bytes, `dst.len()` its elems.
/// `dtype` must be block-quantized.
pub fn dequantize_block(dtype: DType, src: &[u8], dst: &mut [f32]) {
    match dtype {
        DType::Int8G32 => {
            let d = f16_at(src, 0);
            for (w, &q) in dst.iter_mut().zip(&src[2..34]) {
                *w = d * (q as i8) as f32;
            }
        }
        DType::Int4G32 => {
            let (d, m) = (f16_at(src, 0), f16_at(src, 2));
            for i in 0..16 {
                let byte = src[4 + i];
                dst[i] = d * (byte & 0x0f) as f32 + m;
                dst[i + 16] = d * (byte >> 4) as f32 + m;
            }
        }
        DType::Fp8G128 => {
            let s = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
            let table = e4m3_table();
            for (w, &q) in dst.iter_mut().zip(&src[4..132]) {
                *w = s * table[q as usize];
            }
        }
        other => unreachable!("dequantize_block: {other} is not block-quantized"),
    }
}
