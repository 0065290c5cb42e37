//! The quantized matmul paths against an f64 product of `x` and the dequantized weights
//! ([`crate::quant::dequantize`], the reference math).
//!
//! Tolerance per output, derived:
//! - f32 accumulation in any order: `1e-5 · Σ|x̃·w|`, where `x̃` is x as the kernel sees it
//!   (`|x̃| ≤ |x| + d_x` for quantized activations) and for Int4G32 `|w|` also counts the
//!   block minimum, which is multiplied separately (`|d·q| + |m|`);
//! - the integer paths quantize x per 32-block: `|x − d_x·q_x| ≤ d_x/2 + |x|·2⁻²²` (the
//!   f32 rounding of `x·(1/d_x)`), against the weights' `d_w·q_w` part only (the Int4G32
//!   minimum term uses the exact `Σx`): `Σ_blocks Σ_i (d_x/2 + |x_i|·2⁻²²)·|d_w·q_w,i|`.

use super::super::matmul_check::values;
use super::*;
use crate::quant::dequantize;
use crate::tensor::Tensor;

const DTYPES: [DType; 3] = [DType::Int8G32, DType::Int4G32, DType::Fp8G128];

/// Whether the path under test quantizes the activations.
#[derive(Clone, Copy, PartialEq)]
enum Act {
    Exact,
    Quantized,
}

/// `w[n, k]` quantized to `dtype` from values spread over a few magnitudes per row.
fn weights(dtype: DType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut w = values(seed, n * k);
    for (i, v) in w.iter_mut().enumerate() {
        *v *= [0.02, 0.5, 3.0][i / 64 % 3];
    }
    let t = Tensor::from_f32(w, &[n, k]).unwrap();
    match crate::quant::quantize(&t, dtype)
        .unwrap()
        .cpu("test")
        .unwrap()
    {
        crate::tensor::CpuStorage::Bytes { bytes, .. } => bytes.clone(),
        other => panic!("{:?}", other.dtype()),
    }
}

/// Asserts `got[m, n]` is `x · dequantize(w)ᵀ` within the tolerance of the module docs.
fn assert_close(dtype: DType, act: Act, x: &[f32], w: &[u8], m: usize, k: usize, got: &[f32]) {
    let n = got.len() / m;
    let wf = dequantize(dtype, w);
    let block = dtype.block().unwrap();
    // The Int4G32 minimum of every block, else 0.
    let minimum = |j: usize, kk: usize| -> f64 {
        if dtype != DType::Int4G32 {
            return 0.0;
        }
        let b = (j * k + kk) / 32 * block.bytes;
        half::f16::from_le_bytes([w[b + 2], w[b + 3]]).to_f64()
    };
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let (mut want, mut magnitude, mut act_bound) = (0.0f64, 0.0f64, 0.0f64);
            for (b, xb) in row.chunks(32).enumerate() {
                let d_x = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                for (t, &xv) in xb.iter().enumerate() {
                    let kk = b * 32 + t;
                    let (xv, wv) = (xv as f64, wf[j * k + kk] as f64);
                    let m_w = minimum(j, kk);
                    want += xv * wv;
                    let x_seen = if act == Act::Quantized {
                        xv.abs() + d_x
                    } else {
                        xv.abs()
                    };
                    magnitude += x_seen * ((wv - m_w).abs() + m_w.abs());
                    if act == Act::Quantized {
                        act_bound += (d_x / 2.0 + xv.abs() * 2.4e-7) * (wv - m_w).abs();
                    }
                }
            }
            let tol = 1e-5 * magnitude + act_bound + 1e-30;
            let err = (got[i * n + j] as f64 - want).abs();
            assert!(
                err <= tol,
                "{dtype} m={m} k={k} n={n} ({i},{j}): got {} want {want} (tol {tol})",
                got[i * n + j]
            );
        }
    }
}

/// K: one, two and many blocks of each dtype.
fn ks(dtype: DType) -> [usize; 3] {
    let elems = dtype.block().unwrap().elems;
    [
        elems,
        2 * elems,
        if elems == 32 { 33 * 32 } else { 9 * 128 },
    ]
}

#[test]
fn dispatched_matmul_matches_reference_for_every_m() {
    for dtype in DTYPES {
        for k in ks(dtype) {
            for n in [1, 3, 7, 45] {
                let w = weights(dtype, n, k, (n * 7 + k) as u64);
                for m in 1..=40 {
                    let x = values((m * 31 + k) as u64, m * k);
                    let mut got = vec![f32::NAN; m * n];
                    matmul(&x, dtype, &w, m, k, n, &mut got);
                    let act = if cfg!(target_arch = "x86_64")
                        && m <= SMALL_M
                        && dtype != DType::Fp8G128
                        && avx2::available()
                    {
                        Act::Quantized
                    } else {
                        Act::Exact
                    };
                    assert_close(dtype, act, &x, &w, m, k, &got);
                }
            }
        }
    }
}

#[test]
fn portable_path_matches_reference() {
    for dtype in DTYPES {
        for k in ks(dtype) {
            for (m, n) in [(1, 1), (3, 7), (33, 5)] {
                let w = weights(dtype, n, k, (n + k) as u64);
                let x = values((m + k) as u64, m * k);
                let mut got = vec![f32::NAN; m * n];
                portable::matmul(&x, dtype, &w, m, k, n, &mut got);
                assert_close(dtype, Act::Exact, &x, &w, m, k, &got);
            }
        }
    }
}

/// The small-M kernels on many W blocks per call (several tasks, ragged last block) and
/// the packed path on ragged tiles in every dimension, several K slices.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_paths_match_reference_on_larger_shapes() {
    if !avx2::available() || !packed_gemm::available() {
        eprintln!("skipped: no AVX2+FMA+F16C");
        return;
    }
    for dtype in DTYPES {
        for (m, n, k) in [(1, 301, 1024), (5, 130, 768), (32, 77, 512), (97, 45, 768)] {
            let w = weights(dtype, n, k, (m + n + k) as u64);
            let x = values((m * 3 + k) as u64, m * k);
            let mut got = vec![f32::NAN; m * n];
            if m <= SMALL_M {
                small_m(&x, dtype, &w, m, k, n, &mut got);
                let act = if dtype == DType::Fp8G128 {
                    Act::Exact
                } else {
                    Act::Quantized
                };
                assert_close(dtype, act, &x, &w, m, k, &got);
            }
            let ws = WeightRows::Quant { dtype, bytes: &w };
            packed_gemm::matmul_packed(&x, ws, m, k, n, &mut got);
            assert_close(dtype, Act::Exact, &x, &w, m, k, &got);
        }
    }
}

/// Extreme codes: Int8G32 ±127 (the `vpmaddubsw` pair sums closest to saturation),
/// Int4G32 0 and 15, every e4m3 code but NaN (subnormals, ±448), zero blocks.
#[cfg(target_arch = "x86_64")]
#[test]
fn extreme_codes_match_reference() {
    if !avx2::available() {
        return;
    }
    let (m, k, n) = (2, 256, 6);
    let mut x = values(5, m * k);
    x[..32].fill(1.0);
    x[32..64].fill(-1.0);
    for dtype in DTYPES {
        let block = dtype.block().unwrap();
        let mut w = vec![0u8; n * k / block.elems * block.bytes];
        for (b, bytes) in w.chunks_exact_mut(block.bytes).enumerate() {
            match dtype {
                DType::Int8G32 => {
                    bytes[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                    for (i, q) in bytes[2..].iter_mut().enumerate() {
                        *q = if (i + b) % 3 == 0 {
                            127
                        } else {
                            (-127i8) as u8
                        };
                    }
                }
                DType::Int4G32 => {
                    bytes[..2].copy_from_slice(&half::f16::from_f32(0.1).to_le_bytes());
                    bytes[2..4].copy_from_slice(&half::f16::from_f32(-0.75).to_le_bytes());
                    for (i, q) in bytes[4..].iter_mut().enumerate() {
                        *q = if (i + b) % 2 == 0 { 0xf0 } else { 0x0f };
                    }
                }
                _ => {
                    bytes[..4].copy_from_slice(&0.003f32.to_le_bytes());
                    for (i, q) in bytes[4..].iter_mut().enumerate() {
                        let code = ((i + 128 * b) % 256) as u8;
                        *q = if code & 0x7f == 0x7f { 0x7e } else { code };
                    }
                }
            }
        }
        // The last row all zeros (zero scales).
        let row_bytes = w.len() / n;
        w[(n - 1) * row_bytes..].fill(0);
        let mut got = vec![f32::NAN; m * n];
        small_m(&x, dtype, &w, m, k, n, &mut got);
        let act = if dtype == DType::Fp8G128 {
            Act::Exact
        } else {
            Act::Quantized
        };
        assert_close(dtype, act, &x, &w, m, k, &got);
        assert_eq!(&got[n - 1..n], &[0.0]);
    }
}

/// Same inputs, same bits, whatever the thread count (tasks split W rows only).
#[test]
fn results_do_not_depend_on_thread_count() {
    for dtype in DTYPES {
        for m in [1, 16, 40] {
            let (n, k) = (200, 512);
            let w = weights(dtype, n, k, 9);
            let x = values(10, m * k);
            let run = |threads: usize| {
                let mut out = vec![0.0; m * n];
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool")
                    .install(|| matmul(&x, dtype, &w, m, k, n, &mut out));
                out
            };
            assert_eq!(run(1), run(3), "{dtype} m={m}");
        }
    }
}
