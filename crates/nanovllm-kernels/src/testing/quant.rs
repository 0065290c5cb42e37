//! Block-quantized weights ([`crate::quant`]): `upload_weight` keeps their bytes, and
//! `matmul` with them matches an f64 reference over the dequantized weights.
//!
//! The reference is `Σ_k x[i, k] · w[j, k]` in f64, `x` as the backend holds it (rounded to
//! its activation dtype) and `w` from [`quant::dequantize`] of the very bytes uploaded, so
//! the tolerance covers only the kernel's own arithmetic, per output element:
//!
//! - `(1e-5 + step) · Σ_k |x·w|`: f32 accumulation in any order (as the dense matmul
//!   tests), plus `step` = the activation dtype's rounding step (2⁻⁸ for bf16, 0 for f32),
//!   twice the largest relative error of rounding each dequantized weight to the activation
//!   dtype, which a tensor-core GEMM does before multiplying;
//! - `(1 + 2⁻¹⁰)/254 · Σ_blocks max|x_block| · Σ_block |w − m|` for Int8G32 and Int4G32
//!   (`m` the Int4G32 block minimum, 0 for Int8G32): a backend may quantize `x` per
//!   32-block to int8 with scale `max|x|/127` for integer dot products, as llama.cpp's Q8_0
//!   path does (the CPU's AVX2 kernels do): each `x` moves by at most half a step, and the
//!   Int4G32 minimum multiplies the exact `Σx`; 2⁻¹⁰ of it covers the f32 rounding of that
//!   quantization. Fp8G128 is multiplied in floats everywhere: no such term;
//! - one rounding of the output to the activation dtype ([`Tol::for_backend`]).

use half::f16;

use crate::quant::{self, dequantize};
use crate::{Backend, CpuStorage, DType, Tensor};

use super::check::{activation, host_f32, rounding_step, upload_float, Tol};
use super::rng::Rng;

/// Rows of `x`: decode (1), small batches up to and past the CUDA GEMV limit (8), a
/// partial, a whole and several GEMM tiles of 64; and none.
const QUANT_M: [usize; 7] = [0, 1, 3, 8, 17, 64, 300];
/// K: one Fp8G128 block and four 32-blocks, a realistic width, and a K that is not a
/// power of two (9 Fp8G128 blocks).
const QUANT_K: [usize; 3] = [128, 512, 1024 + 128];
/// N: odd (a partial tile of every kind) and even (whole 64-wide tiles).
const QUANT_N: [usize; 2] = [67, 128];

/// A quantized `[n, k]` weight of `values` through `upload_weight`, and its bytes.
fn quantized_weight(
    backend: &dyn Backend,
    values: &[f32],
    n: usize,
    k: usize,
    dtype: DType,
) -> (Tensor, Vec<u8>) {
    let host = Tensor::from_f32(values.to_vec(), &[n, k])
        .and_then(|t| quant::quantize(&t, dtype))
        .unwrap_or_else(|e| panic!("quantizing a {dtype} [{n}, {k}] weight: {e}"));
    let bytes = match host.cpu("test") {
        Ok(CpuStorage::Bytes { bytes, .. }) => bytes.clone(),
        other => panic!("quantize gave {other:?}, not bytes"),
    };
    let held = backend
        .upload_weight(host)
        .unwrap_or_else(|e| panic!("upload_weight of {dtype}: {e}"));
    assert_eq!(
        held.dtype(),
        dtype,
        "upload_weight must keep {dtype} weights"
    );
    assert_eq!(held.shape(), &[n, k]);
    (held, bytes)
}

/// Per Int4G32 block of 32, its minimum `m` (the f16 at byte 2); zeros for other dtypes.
fn block_minimums(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        DType::Int4G32 => bytes
            .chunks_exact(20)
            .map(|b| f16::from_le_bytes([b[2], b[3]]).to_f64())
            .collect(),
        _ => vec![0.0; bytes.len()],
    }
}

/// What a product may differ from the reference by (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct QuantBounds {
    /// Relative rounding of each dequantized weight to the activation dtype (its step).
    pub weight_step: f64,
    /// Factor of `Σ_blocks max|x_block| · Σ_block |w − m|` (activation quantization).
    pub act_quant: f64,
    /// One output rounding, as a tolerance on `|want|`.
    pub out: Tol,
}

impl QuantBounds {
    /// The bounds any backend must meet: it may quantize activations per 32-block to int8
    /// for Int8G32 and Int4G32 weights.
    pub fn for_backend(backend: &dyn Backend, dtype: DType) -> Self {
        QuantBounds {
            weight_step: rounding_step(backend.activation_dtype()),
            act_quant: match dtype {
                DType::Int8G32 | DType::Int4G32 => (1.0 + 2f64.powi(-10)) / 254.0,
                _ => 0.0,
            },
            out: Tol::for_backend(backend, 0.0, 0.0, 0.0),
        }
    }
}

/// Panics with the first element of `got` (`[m, n]`) farther than `bounds` from the f64
/// product of `x_ref` (`[m, k]`, the activations as held) and the weights that `bytes`
/// (`[n, k]` of `dtype`) dequantize to.
pub fn assert_quantized_product(
    what: &str,
    dtype: DType,
    bytes: &[u8],
    x_ref: &[f32],
    got: &[f32],
    (m, n, k): (usize, usize, usize),
    bounds: QuantBounds,
) {
    assert_eq!(got.len(), m * n, "{what}: output length");
    let w_ref = dequantize(dtype, bytes);
    let mins = block_minimums(dtype, bytes);
    for i in 0..m {
        let xs = &x_ref[i * k..(i + 1) * k];
        for j in 0..n {
            let ws = &w_ref[j * k..(j + 1) * k];
            let (mut want, mut terms, mut act_terms) = (0f64, 0f64, 0f64);
            for (b, (xb, wb)) in xs.chunks(32).zip(ws.chunks(32)).enumerate() {
                let m_b = mins[j * k / 32 + b];
                let x_max = xb.iter().fold(0f64, |a, &v| a.max((v as f64).abs()));
                for (&xv, &wv) in xb.iter().zip(wb) {
                    let (xv, wv) = (xv as f64, wv as f64);
                    want += xv * wv;
                    terms += (xv * wv).abs();
                    act_terms += x_max * (wv - m_b).abs();
                }
            }
            let allowed = (1e-5 + bounds.weight_step) * terms
                + bounds.act_quant * act_terms
                + bounds.out.abs
                + bounds.out.rel * want.abs();
            let g = got[i * n + j] as f64;
            assert!(
                (g - want).abs() <= allowed,
                "{what}: out[{i}, {j}] = {g}, reference {want} (error {:e} > allowed \
                 {allowed:e}: Σ|x·w| {terms}, activation term {act_terms}, {bounds:?})",
                (g - want).abs()
            );
        }
    }
}

/// `[n, k]` weights whose rows differ in scale and whose 32-blocks differ in offset, so
/// blocks differ in scale and (for Int4G32) in minimum.
pub fn test_weights(rng: &mut Rng, n: usize, k: usize) -> Vec<f32> {
    (0..n * k)
        .map(|i| {
            let row_scale = 0.05 + (i / k % 7) as f32 * 0.1;
            row_scale * (rng.uniform() + 0.3 * ((i / 32) % 3) as f32 - 0.3)
        })
        .collect()
}

fn matmul_quantized(backend: &dyn Backend, dtype: DType, seed: u64) {
    let mut rng = Rng::new(seed);
    let bounds = QuantBounds::for_backend(backend, dtype);
    for k in QUANT_K {
        for n in QUANT_N {
            let w = test_weights(&mut rng, n, k);
            let (wt, bytes) = quantized_weight(backend, &w, n, k, dtype);
            for m in QUANT_M {
                let x = rng.vec(m * k, 1.0);
                let (xt, x_ref) = activation(backend, &x, &[m, k]);
                let out = backend
                    .matmul(&xt, &wt)
                    .unwrap_or_else(|e| panic!("{dtype} matmul m={m} k={k} n={n}: {e}"));
                assert_eq!(out.shape(), &[m, n]);
                assert_quantized_product(
                    &format!("{dtype} matmul m={m} k={k} n={n}"),
                    dtype,
                    &bytes,
                    &x_ref,
                    &host_f32(backend, &out),
                    (m, n, k),
                    bounds,
                );
            }
        }
    }
}

pub fn matmul_int8_g32_weights(backend: &dyn Backend) {
    matmul_quantized(backend, DType::Int8G32, 180);
}

pub fn matmul_int4_g32_weights(backend: &dyn Backend) {
    matmul_quantized(backend, DType::Int4G32, 181);
}

pub fn matmul_fp8_g128_weights(backend: &dyn Backend) {
    matmul_quantized(backend, DType::Fp8G128, 182);
}

/// Byte-backed tensors (FP8 elements and every block dtype) survive `upload_weight`,
/// `upload` and `to_host` bit for bit, and `zeros` of them is all-zero bytes.
pub fn byte_backed_tensors_round_trip(backend: &dyn Backend) {
    let mut rng = Rng::new(183);
    let (n, k) = (5, 256);
    let values = rng.vec(n * k, 2.0);
    let host_f32 = Tensor::from_f32(values, &[n, k]).unwrap_or_else(|e| panic!("{e}"));
    for dtype in [
        DType::F8E4M3,
        DType::Int8G32,
        DType::Int4G32,
        DType::Fp8G128,
    ] {
        let host = quant::quantize(&host_f32, dtype).unwrap_or_else(|e| panic!("{dtype}: {e}"));
        let bytes = |t: &Tensor| match t.cpu("test") {
            Ok(CpuStorage::Bytes { bytes, .. }) => bytes.clone(),
            other => panic!("{dtype}: expected bytes, got {other:?}"),
        };
        let want = bytes(&host);
        for held in [
            backend.upload_weight(host.clone()),
            backend.upload(host.clone()),
        ] {
            let held = held.unwrap_or_else(|e| panic!("uploading {dtype}: {e}"));
            assert_eq!((held.dtype(), held.shape()), (dtype, &[n, k][..]));
            let back = backend
                .to_host(&held)
                .unwrap_or_else(|e| panic!("reading back {dtype}: {e}"));
            assert_eq!(back.shape(), &[n, k]);
            assert!(bytes(&back) == want, "{dtype} bytes changed on the way");
        }
        let zeros = backend
            .zeros(&[n, k], dtype)
            .and_then(|z| backend.to_host(&z))
            .unwrap_or_else(|e| panic!("zeros of {dtype}: {e}"));
        let zero_bytes = bytes(&zeros);
        assert_eq!(zero_bytes.len(), dtype.storage_bytes(n * k));
        assert!(zero_bytes.iter().all(|&b| b == 0), "zeros of {dtype}");
    }
}

/// Errors, not panics: K differing between x and a quantized w, and FP8 *element* weights
/// (no block scale: only block-quantized dtypes are matmul weights).
pub fn matmul_rejects_bad_quantized_weights(backend: &dyn Backend) {
    let (x, _) = activation(backend, &[0.5; 3 * 64], &[3, 64]);
    let w = Tensor::from_f32(vec![0.25; 4 * 128], &[4, 128]).unwrap_or_else(|e| panic!("{e}"));
    for dtype in [DType::Int8G32, DType::Int4G32, DType::Fp8G128] {
        let wq = quant::quantize(&w, dtype)
            .and_then(|t| backend.upload_weight(t))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            backend.matmul(&x, &wq).is_err(),
            "{dtype}: K 64 against K 128 must be an error"
        );
    }
    let fp8 = quant::quantize(&w, DType::F8E4M3)
        .and_then(|t| backend.upload_weight(t))
        .unwrap_or_else(|e| panic!("{e}"));
    let (x128, _) = activation(backend, &[0.5; 2 * 128], &[2, 128]);
    assert!(
        backend.matmul(&x128, &fp8).is_err(),
        "f8_e4m3 element weights must be an error"
    );
    // A float weight still works next to them (the checks do not leak).
    let wf = upload_float(backend, &[0.25; 4 * 128], &[4, 128], DType::BF16);
    let out = backend
        .matmul(&x128, &wf)
        .unwrap_or_else(|e| panic!("bf16 matmul: {e}"));
    assert_eq!(host_f32(backend, &out), vec![16.0; 8]);
}
