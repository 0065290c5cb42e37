//! What the CPU MoE ops promise beyond the shared suite (`crate::testing::moe`, run in
//! `cpu::tests`): feature sizes with vector tails, and expert ids checked on every call.

use crate::testing::check::{activation, upload_float, upload_u32, weight};
use crate::testing::moe::{experts_match_reference, ExpertDims};
use crate::{Backend, CpuBackend, DType, KernelError, Tensor};

/// Feature sizes that are not multiples of 8 leave tails after every SIMD chunk of the
/// dot products and GEMMs (the suite sticks to multiples of 8, which CUDA requires).
/// Tolerance: the suite's, `1e-5 · Σ|terms|` against the f64 reference.
const ODD_DIMS: [ExpertDims; 3] = [(67, 45, 8, 2), (130, 24, 3, 3), (259, 136, 5, 2)];

#[test]
fn experts_odd_sizes_f32_weights() {
    experts_match_reference(&CpuBackend::new(), DType::F32, 41, &ODD_DIMS);
}

#[test]
fn experts_odd_sizes_bf16_weights() {
    experts_match_reference(&CpuBackend::new(), DType::BF16, 42, &ODD_DIMS);
}

#[test]
fn experts_odd_sizes_f16_weights() {
    experts_match_reference(&CpuBackend::new(), DType::F16, 43, &ODD_DIMS);
}

/// An expert id ≥ E is an error naming it, never an out-of-bounds read (the CPU checks
/// on every call; CUDA in debug builds only, so this is not a suite test).
#[test]
fn experts_reject_an_expert_id_out_of_range() {
    let backend = CpuBackend::new();
    let (hidden, intermediate, experts, k, tokens) = (8, 4, 4, 2, 3);
    let (xt, _) = activation(&backend, &[0.1; 24], &[tokens, hidden]);
    let (w13, _) = weight(
        &backend,
        &[0.5; 4 * 8 * 8],
        &[experts, 2 * intermediate, hidden],
        DType::F32,
    );
    let (w2, _) = weight(
        &backend,
        &[0.5; 4 * 8 * 4],
        &[experts, hidden, intermediate],
        DType::F32,
    );
    let weights = upload_float(&backend, &[0.5; 6], &[tokens, k], DType::F32);
    let good_ids = upload_u32(&backend, &[0, 1, 2, 3, 1, 0], &[tokens, k]);
    if let Err(e) = backend.moe_experts(&xt, &w13, &w2, &good_ids, &weights) {
        panic!("the valid baseline call failed: {e}");
    }
    let bad_ids = upload_u32(&backend, &[0, 1, 2, 4, 1, 0], &[tokens, k]);
    match backend.moe_experts(&xt, &w13, &w2, &bad_ids, &weights) {
        Err(KernelError::IndexOutOfRange { op, index, size }) => {
            assert_eq!((op, index, size), ("moe_experts", 4, 4))
        }
        other => panic!("expected IndexOutOfRange, got {other:?}"),
    }
}

/// `moe_experts` with block-quantized `w13` / `w2` is, expert by expert, the dense
/// quantized matmul on that expert's rows (in token order), `silu_mul`, then the
/// weighted sum in `j` order — bit for bit: the quantized matmul's result for a row does
/// not depend on the other rows of the call beyond their count, which is the same here
/// (the per-expert path, register-tiled or packed, is picked by that count). With a bf16
/// `w2` the grouped float path sums in its own order: both it and the dense bf16 matmul
/// are within `1e-5 · Σ|act·w2|` of the exact product, so the outputs are within
/// `2e-5 · Σ_j |gate_j| · Σ|act·w2|` plus the f32 rounding of the gated sum. Covers every
/// dtype, decode (1 token) and experts on both sides of the 32-row switch (T = 300 over
/// 4 experts). The quantized matmul's own numerics are tested against the f64 reference
/// in `cpu::quant_matmul::tests`.
#[test]
fn experts_with_quantized_weights_are_per_expert_quantized_matmuls() {
    use super::super::matmul_check::values;
    use crate::quant::quantize;
    use crate::tensor::CpuStorage;
    let backend = CpuBackend::new();
    let (hidden, intermediate, experts, k) = (256, 128, 4, 2);
    let mut seed = 0;
    let mut floats = |len: usize| {
        seed += 1;
        values(seed, len)
    };
    // Expert `e` of a stacked `[E, n, k]` weight, as a dense `[n, k]` one.
    let expert = |w: &Tensor, e: usize| -> Tensor {
        let (n, k) = (w.shape()[1], w.shape()[2]);
        match w.cpu("test").unwrap() {
            CpuStorage::Bytes { dtype, bytes } => {
                let len = dtype.storage_bytes(n * k);
                Tensor::from_bytes(*dtype, bytes[e * len..(e + 1) * len].to_vec(), &[n, k])
            }
            CpuStorage::BF16(v) => {
                Tensor::from_bf16(v[e * n * k..(e + 1) * n * k].to_vec(), &[n, k])
            }
            other => panic!("{:?}", other.dtype()),
        }
        .unwrap()
    };
    let w13_f = Tensor::from_f32(
        floats(experts * 2 * intermediate * hidden),
        &[experts, 2 * intermediate, hidden],
    )
    .unwrap();
    let w2_f = Tensor::from_f32(
        floats(experts * hidden * intermediate),
        &[experts, hidden, intermediate],
    )
    .unwrap();
    for dtype in [DType::Int8G32, DType::Int4G32, DType::Fp8G128] {
        let w13 = quantize(&w13_f, dtype).unwrap();
        for w2 in [
            quantize(&w2_f, dtype).unwrap(),
            w2_f.to_dtype_cpu(DType::BF16).unwrap(),
        ] {
            for tokens in [1, 300] {
                let x = floats(tokens * hidden);
                let ids: Vec<u32> = (0..tokens * k)
                    .map(|i| ((i * 7 + i / 3) % experts) as u32)
                    .collect();
                let gates = floats(tokens * k);
                let out = backend
                    .moe_experts(
                        &Tensor::from_f32(x.clone(), &[tokens, hidden]).unwrap(),
                        &w13,
                        &w2,
                        &Tensor::from_u32(ids.clone(), &[tokens, k]).unwrap(),
                        &Tensor::from_f32(gates.clone(), &[tokens, k]).unwrap(),
                    )
                    .unwrap()
                    .to_vec_f32()
                    .unwrap();
                let mut want = vec![0f32; tokens * hidden];
                let mut ys = vec![vec![0f32; hidden]; tokens * k];
                // Per pair and output feature, Σ|act·w2| (float w2 only).
                let mut magnitude = vec![vec![0f64; hidden]; tokens * k];
                let float_w2 = w2.dtype() == DType::BF16;
                for e in 0..experts {
                    let pairs: Vec<usize> =
                        (0..tokens * k).filter(|&p| ids[p] as usize == e).collect();
                    if pairs.is_empty() {
                        continue;
                    }
                    let rows: Vec<f32> = pairs
                        .iter()
                        .flat_map(|&p| x[p / k * hidden..(p / k + 1) * hidden].to_vec())
                        .collect();
                    let rows = Tensor::from_f32(rows, &[pairs.len(), hidden]).unwrap();
                    let gu = backend.matmul(&rows, &expert(&w13, e)).unwrap();
                    let act = backend.silu_mul(&gu).unwrap();
                    let w2_e = expert(&w2, e);
                    let y = backend.matmul(&act, &w2_e).unwrap().to_vec_f32().unwrap();
                    let (act, w2_v) = (act.to_vec_f32().unwrap(), w2_e.to_vec_f32().unwrap());
                    for (slot, &p) in pairs.iter().enumerate() {
                        ys[p].copy_from_slice(&y[slot * hidden..(slot + 1) * hidden]);
                        if float_w2 {
                            let a = &act[slot * intermediate..(slot + 1) * intermediate];
                            for (h, m) in magnitude[p].iter_mut().enumerate() {
                                let w = &w2_v[h * intermediate..(h + 1) * intermediate];
                                *m = a
                                    .iter()
                                    .zip(w)
                                    .map(|(&a, &w)| (a as f64 * w as f64).abs())
                                    .sum();
                            }
                        }
                    }
                }
                for t in 0..tokens {
                    for j in 0..k {
                        for (o, &y) in want[t * hidden..(t + 1) * hidden]
                            .iter_mut()
                            .zip(&ys[t * k + j])
                        {
                            *o += gates[t * k + j] * y;
                        }
                    }
                }
                if !float_w2 {
                    assert_eq!(out, want, "{dtype} w13, {} w2, T={tokens}", w2.dtype());
                    continue;
                }
                for t in 0..tokens {
                    for h in 0..hidden {
                        let (mut tol, mut sum) = (0f64, 0f64);
                        for j in 0..k {
                            let g = gates[t * k + j].abs() as f64;
                            tol += 2e-5 * g * magnitude[t * k + j][h];
                            sum += g * ys[t * k + j][h].abs() as f64;
                        }
                        // The gated sum of k terms in f32: k ulps of the magnitude.
                        tol += sum * k as f64 * f32::EPSILON as f64;
                        let (got, exp) = (out[t * hidden + h], want[t * hidden + h]);
                        assert!(
                            ((got - exp) as f64).abs() <= tol,
                            "{dtype} w13, bf16 w2, T={tokens} ({t},{h}): {got} vs {exp} (tol {tol})"
                        );
                    }
                }
            }
        }
    }
}
