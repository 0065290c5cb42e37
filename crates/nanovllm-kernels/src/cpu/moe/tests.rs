//! What the CPU MoE ops promise beyond the shared suite (`crate::testing::moe`, run in
//! `cpu::tests`): feature sizes with vector tails, and expert ids checked on every call.

use crate::testing::check::{activation, upload_float, upload_u32, weight};
use crate::testing::moe::{experts_match_reference, ExpertDims};
use crate::{Backend, CpuBackend, DType, KernelError};

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
