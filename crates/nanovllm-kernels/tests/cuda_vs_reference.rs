//! The CUDA backend against naive references: the shared op suite
//! (`nanovllm_kernels::testing`, the same bodies the CPU backend runs), then what only the
//! CUDA backend does to its inputs (bf16 weights from `upload_weight`, a bf16 rope table,
//! f32 activations into matmul, ids written by a kernel validated by reading them back).
//!
//! Without a GPU every test prints `skipped: <test>: <reason>` and passes, unless
//! `NANOVLLM_REQUIRE_GPU=1` (`nanovllm_kernels::testing::gpu`).
#![cfg(feature = "cuda")]

use half::bf16;
use nanovllm_kernels::testing::check::{
    activation, assert_close, assert_close_scaled, host_f32, upload_float, upload_u32, Tol,
};
use nanovllm_kernels::testing::gpu::with_gpu;
use nanovllm_kernels::testing::reference;
use nanovllm_kernels::testing::rng::Rng;
use nanovllm_kernels::{Backend, DType, KernelError, Tensor};

nanovllm_kernels::backend_test_suite!(with: with_gpu);

/// Float weights are stored as bf16, rounded to nearest; integers are untouched.
#[test]
fn upload_weight_stores_bf16() {
    with_gpu(|be| {
        let mut rng = Rng::new(100);
        let data = rng.vec(1000, 3.0);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let host = Tensor::from_f32(data.clone(), &[10, 100])
                .and_then(|t| t.to_dtype_cpu(dtype))
                .unwrap_or_else(|e| panic!("{e}"));
            let want: Vec<f32> = host
                .to_vec_f32()
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|&x| bf16::from_f32(x).to_f32())
                .collect();
            let w = be.upload_weight(host).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(w.dtype(), DType::BF16);
            assert_eq!(w.shape(), &[10, 100]);
            assert_eq!(host_f32(be, &w), want, "{dtype} weights");
        }
        let ids = Tensor::from_u32(vec![1, 2, 3], &[3]).unwrap_or_else(|e| panic!("{e}"));
        let ids = be.upload_weight(ids).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids.dtype(), DType::U32);
    });
}

/// A bf16 cos/sin table works like the f32 one with its values rounded (the suite covers
/// f32). Tolerance as the suite's rope test: 1e-6 absolute + 1e-6 relative, widened by
/// the bf16 output rounding.
#[test]
fn rope_accepts_bf16_table() {
    with_gpu(|be| {
        let (heads, head_dim, tokens, max_positions) = (4, 64, 33, 128);
        let width = heads * head_dim;
        let mut rng = Rng::new(105);
        let table = reference::rope_table(max_positions, head_dim, 10_000.0);
        let table_bf16: Vec<f32> = table.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let positions: Vec<u32> = (0..tokens)
            .map(|_| rng.below(max_positions) as u32)
            .collect();
        let (mut x, x_ref) = activation(be, &rng.vec(tokens * width, 2.0), &[tokens, width]);
        be.rope(
            &mut x,
            &upload_u32(be, &positions, &[tokens]),
            &upload_float(be, &table, &[max_positions, head_dim], DType::BF16),
            head_dim,
        )
        .unwrap_or_else(|e| panic!("rope: {e}"));
        assert_close(
            "rope with a bf16 table",
            &host_f32(be, &x),
            &reference::rope(&x_ref, &positions, &table_bf16, width, head_dim),
            Tol::for_backend(be, 1e-6, 1e-6, 2.0),
        );
    });
}

/// f32 activations take matmul's exact f32 path: the suite's tolerance, 1e-5·Σ|x·w| plus
/// one bf16 rounding of the output.
#[test]
fn matmul_accepts_f32_activations() {
    with_gpu(|be| {
        let mut rng = Rng::new(106);
        let (m, k, n) = (17, 259, 131);
        let x = rng.vec(m * k, 1.0);
        let w = rng.vec(n * k, 1.0);
        let out = be
            .matmul(
                &upload_float(be, &x, &[m, k], DType::F32),
                &upload_float(be, &w, &[n, k], DType::BF16),
            )
            .unwrap_or_else(|e| panic!("matmul: {e}"));
        assert_eq!(out.dtype(), DType::BF16);
        let w_ref: Vec<f32> = w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let (want, magnitude) = reference::matmul(&x, &w_ref, m, k, n);
        assert_close_scaled(
            "matmul f32 x, bf16 w",
            &host_f32(be, &out),
            &want,
            &magnitude,
            1e-5,
            Tol::for_backend(be, 0.0, 0.0, 0.0),
        );
    });
}

/// Block-quantized weights multiply bf16 activations only (the suite covers bf16): f32
/// activations are a `WrongDType` error, not a silent rounding.
#[test]
fn quantized_matmul_needs_bf16_activations() {
    with_gpu(|be| {
        let w = Tensor::from_f32(vec![0.5; 4 * 128], &[4, 128])
            .and_then(|t| nanovllm_kernels::quant::quantize(&t, DType::Int8G32))
            .and_then(|t| be.upload_weight(t))
            .unwrap_or_else(|e| panic!("{e}"));
        let x = upload_float(be, &[1.0; 2 * 128], &[2, 128], DType::F32);
        match be.matmul(&x, &w) {
            Err(KernelError::WrongDType { arg: "x", .. }) => {}
            other => panic!("expected WrongDType for f32 x, got {other:?}"),
        }
    });
}

/// The CUDA MoE GEMMs read bf16 expert weights only: quantized ones are refused by name.
#[test]
fn moe_experts_refuses_quantized_weights() {
    with_gpu(|be| {
        let (tokens, hidden, experts, intermediate) = (3, 64, 2, 32);
        let quantized = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            Tensor::from_f32(vec![0.25; n], shape)
                .and_then(|t| nanovllm_kernels::quant::quantize(&t, DType::Int8G32))
                .and_then(|t| be.upload_weight(t))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let w13 = quantized(&[experts, 2 * intermediate, hidden]);
        let w2 = quantized(&[experts, hidden, intermediate]);
        let (x, _) = activation(be, &vec![0.5; tokens * hidden], &[tokens, hidden]);
        let ids = upload_u32(be, &[0, 1, 0], &[tokens, 1]);
        let weights = upload_float(be, &[1.0; 3], &[tokens, 1], DType::F32);
        match be.moe_experts(&x, &w13, &w2, &ids, &weights) {
            Err(KernelError::UnsupportedDType {
                dtype: DType::Int8G32,
                ..
            }) => {}
            other => panic!("expected UnsupportedDType for int8_g32 experts, got {other:?}"),
        }
    });
}

/// Ids written by a kernel (no value range recorded from the host) are still validated,
/// by reading them back: index_rows on a u32 tensor produces such a tensor.
#[test]
fn index_checks_read_back_device_written_ids() {
    with_gpu(|be| {
        let vocab = 10;
        let table = upload_float(be, &[1.0; 40], &[vocab, 4], DType::BF16);
        let ids_2d = upload_u32(be, &[3, 12, 7], &[3, 1]);
        let gather = |rows: &[u32]| {
            be.index_rows(&ids_2d, &upload_u32(be, rows, &[rows.len()]))
                .and_then(|t| t.reshape(&[rows.len()]))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let good = gather(&[0, 2, 0]);
        let out = be
            .embedding(&good, &table)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host_f32(be, &out), vec![1.0; 12]);
        let bad = gather(&[2, 1]);
        match be.embedding(&bad, &table) {
            Err(KernelError::IndexOutOfRange {
                index: 12,
                size: 10,
                ..
            }) => {}
            other => panic!("expected id 12 out of range, got {other:?}"),
        }
    });
}
