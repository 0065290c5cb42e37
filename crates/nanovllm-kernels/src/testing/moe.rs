//! Mixture-of-experts ops against naive references: `moe_route` (softmax, top-k,
//! renormalised or not) and `moe_experts` (the grouped expert computation). Both run at
//! Qwen3-MoE's expert count and top-k (E = 128, k = 8) too, with small feature sizes.
//!
//! Expert weights go through [`Backend::upload_weight`], as a model's do, and the
//! reference reads back what the backend holds (CUDA stores every float weight as bf16).
//! Feature sizes are multiples of 8, which every backend accepts (CUDA's expert GEMMs copy
//! 16-byte row chunks), and not multiples of the usual 16/32/64 tiles; the CPU backend
//! also runs [`experts_match_reference`] on sizes that are not (its own tests).

use crate::{Backend, DType, KernelError, Tensor, TopKWeights};

use super::check::{
    activation, assert_close, assert_close_scaled, host_f32, host_u32, rounding_step, upload_float,
    upload_u32, weight, Tol,
};
use super::reference::{self, ExpertWeights};
use super::rng::Rng;

// ---- moe_route -------------------------------------------------------------------

/// The tolerance of the routing weights (F32 on every backend): 1e-6 absolute for an f32
/// softmax and renormalisation of values ≤ 1, widened like every suite test on backends
/// with narrower activations (one rounding step of a value of size 1).
fn route_tol(backend: &dyn Backend) -> Tol {
    Tol::for_backend(backend, 1e-6, 0.0, 1.0)
}

/// Both weightings of the top-k probabilities.
const WEIGHTINGS: [TopKWeights; 2] = [TopKWeights::Renormalized, TopKWeights::Probabilities];

/// Ids exact; weights within [`route_tol`], descending, each row's summing to 1 (renormalised)
/// or to at most 1 (probabilities) within the same absolute tolerance. Logits are rounded
/// to the activation dtype before the reference sees them.
pub fn route_matches_reference(backend: &dyn Backend) {
    let mut rng = Rng::new(21);
    let tol = route_tol(backend);
    let cases = [
        (1, 8, 2),
        (37, 8, 2),
        (300, 4, 2),
        (16, 8, 1),
        (9, 8, 8),
        (7, 128, 8),
        (2, 128, 128),
    ];
    for (tokens, experts, k) in cases {
        // Spread-out logits: the seeded draw has no near-ties (checked below).
        let (lt, logits) = activation(backend, &rng.vec(tokens * experts, 4.0), &[tokens, experts]);
        for weighting in WEIGHTINGS {
            let (want_ids, want_weights, min_gap) =
                reference::moe_route(&logits, experts, k, weighting);
            let what = format!("moe_route {weighting:?} T={tokens} E={experts} k={k}");
            assert!(
                min_gap > 1e-4,
                "{what}: test data near a tie: gap {min_gap}"
            );
            let (ids, weights) = backend
                .moe_route(&lt, k, weighting)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(ids.shape(), &[tokens, k]);
            assert_eq!(weights.shape(), &[tokens, k]);
            assert_eq!(ids.dtype(), DType::U32);
            assert_eq!(weights.dtype(), DType::F32);
            assert_eq!(host_u32(backend, &ids), want_ids, "{what}");
            let got = host_f32(backend, &weights);
            assert_close(&format!("{what} weights"), &got, &want_weights, tol);
            for row in got.chunks_exact(k) {
                let sum: f32 = row.iter().sum();
                let off = match weighting {
                    TopKWeights::Renormalized => (sum as f64 - 1.0).abs(),
                    TopKWeights::Probabilities => sum as f64 - 1.0,
                };
                assert!(
                    off <= tol.abs,
                    "{what}: weights {row:?} sum to {sum} (tolerance {tol:?})"
                );
                assert!(
                    row.windows(2).all(|w| w[0] >= w[1]),
                    "{what}: not descending: {row:?}"
                );
            }
        }
    }
}

/// Hand-picked rows (exact in every float dtype): the chosen experts are known exactly,
/// the weights within [`route_tol`], in both weightings.
pub fn route_picks_largest_and_breaks_ties_by_lower_id(backend: &dyn Backend) {
    let logits = [
        1.0, 1.0, 1.0, 1.0, // all equal → 0, 1
        0.0, 5.0, 5.0, 2.0, // tie at the top → 1, 2
        3.0, -1.0, 3.0, 3.0, // three-way tie → 0, 2
        -2.0, 0.0, 7.0, 0.0, // one clear winner, then a tie for second → 2, 1
    ];
    let (lt, _) = activation(backend, &logits, &[4, 4]);
    // Each row's chosen probabilities, from the exact logits.
    let probs: Vec<f64> = logits
        .chunks_exact(4)
        .zip([[0, 1], [1, 2], [0, 2], [2, 1]])
        .flat_map(|(row, chosen)| {
            let sum: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
            chosen.map(|e| (row[e] as f64).exp() / sum)
        })
        .collect();
    for weighting in WEIGHTINGS {
        let (ids, weights) = backend
            .moe_route(&lt, 2, weighting)
            .unwrap_or_else(|e| panic!("moe_route {weighting:?}: {e}"));
        assert_eq!(host_u32(backend, &ids), [0, 1, 1, 2, 0, 2, 2, 1]);
        let want: Vec<f64> = match weighting {
            // Row 3: p2 / (p2 + p1) = 1 / (1 + e^-7); the others split evenly.
            TopKWeights::Renormalized => {
                let top = 1.0 / (1.0 + (-7.0f64).exp());
                vec![0.5, 0.5, 0.5, 0.5, 0.5, 0.5, top, 1.0 - top]
            }
            TopKWeights::Probabilities => probs.clone(),
        };
        assert_close(
            &format!("moe_route {weighting:?} hand-picked weights"),
            &host_f32(backend, &weights),
            &want,
            route_tol(backend),
        );
    }
}

pub fn route_rejects_bad_inputs(backend: &dyn Backend) {
    let (lt, _) = activation(backend, &[0.0; 8], &[2, 4]);
    for k in [0, 5] {
        match backend.moe_route(&lt, k, TopKWeights::Renormalized) {
            Err(KernelError::Invalid { op, msg }) => {
                assert_eq!(op, "moe_route");
                assert!(msg.contains("top_k"), "{msg}");
            }
            other => panic!("top_k {k}: expected Invalid, got {other:?}"),
        }
    }
    let (flat, _) = activation(backend, &[0.0; 8], &[8]);
    assert!(matches!(
        backend.moe_route(&flat, 2, TopKWeights::Probabilities),
        Err(KernelError::WrongRank { .. })
    ));
}

// ---- moe_experts -----------------------------------------------------------------

/// `(hidden, intermediate, experts, top_k)` of a MoE layer.
pub type ExpertDims = (usize, usize, usize, usize);

/// Sizes every backend accepts: odd numbers of 8-element chunks, a block of 32/64, and
/// Qwen3-MoE's 128 experts with top-8 (few rows per expert even at 300 tokens).
const EXPERT_DIMS: [ExpertDims; 4] = [
    (72, 40, 8, 2),
    (32, 64, 4, 2),
    (136, 24, 3, 3),
    (40, 24, 128, 8),
];

/// The relative error bound of `moe_experts` per unit of the reference's propagated
/// `Σ|terms|` (see [`reference::moe_experts`]): 1e-5 for f32 arithmetic (as the matmul
/// tests), plus two rounding steps of the activation dtype for a backend that keeps the
/// gate/up products and the silu·mul activations in it (each rounds once, relative to
/// the terms it feeds on). The output's own rounding is [`Tol::for_backend`]'s part.
fn experts_terms_rel(backend: &dyn Backend) -> f64 {
    1e-5 + 2.0 * rounding_step(backend.activation_dtype())
}

/// A random MoE problem: `x [T, H]`, the weights of `experts` experts, and a routing.
struct Problem {
    x: Vec<f32>,
    w13: Vec<f32>,
    w2: Vec<f32>,
    ids: Vec<u32>,
    weights: Vec<f32>,
}

fn problem(rng: &mut Rng, tokens: usize, dims: ExpertDims) -> Problem {
    let (hidden, intermediate, experts, k) = dims;
    let logits = rng.vec(tokens * experts, 3.0);
    let (ids, weights, _) = reference::moe_route(&logits, experts, k, TopKWeights::Renormalized);
    Problem {
        x: rng.vec(tokens * hidden, 1.0),
        w13: rng.vec(experts * 2 * intermediate * hidden, 0.5),
        w2: rng.vec(experts * hidden * intermediate, 0.5),
        ids,
        weights: weights.iter().map(|&w| w as f32).collect(),
    }
}

/// Runs `moe_experts` on `p` with weights given in `dtype` and checks it against the
/// reference on the inputs as the backend holds them, within `1e-5 · Σ|terms|` on f32
/// arithmetic ([`experts_terms_rel`] on narrower activations) plus one output rounding.
fn check_experts(backend: &dyn Backend, p: &Problem, dims: ExpertDims, dtype: DType, what: &str) {
    let (hidden, intermediate, experts, k) = dims;
    let tokens = p.ids.len() / k;
    let (xt, x_ref) = activation(backend, &p.x, &[tokens, hidden]);
    let (w13, w13_ref) = weight(backend, &p.w13, &[experts, 2 * intermediate, hidden], dtype);
    let (w2, w2_ref) = weight(backend, &p.w2, &[experts, hidden, intermediate], dtype);
    let ids = upload_u32(backend, &p.ids, &[tokens, k]);
    let weights = upload_float(backend, &p.weights, &[tokens, k], DType::F32);
    let out = backend
        .moe_experts(&xt, &w13, &w2, &ids, &weights)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(out.shape(), &[tokens, hidden], "{what}");
    let got = host_f32(backend, &out);
    let held = ExpertWeights {
        w13: &w13_ref,
        w2: &w2_ref,
        hidden,
        intermediate,
    };
    let (want, scale) = reference::moe_experts(&x_ref, &held, &p.ids, &p.weights, k);
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: a non-finite output (was an unpicked expert read?)"
    );
    assert_close_scaled(
        what,
        &got,
        &want,
        &scale,
        experts_terms_rel(backend),
        Tol::for_backend(backend, 0.0, 0.0, 0.0),
    );
}

/// Token counts around the dot-product/GEMM switch (an expert gets ≤ 16 or more rows) on
/// each of `dims`, weights given in `dtype`. Tolerance: see [`check_experts`].
pub fn experts_match_reference(
    backend: &dyn Backend,
    dtype: DType,
    seed: u64,
    dims: &[ExpertDims],
) {
    let mut rng = Rng::new(seed);
    for &d in dims {
        for tokens in [1, 3, 17, 64, 300] {
            let p = problem(&mut rng, tokens, d);
            let what = format!("moe_experts {dtype} weights, T={tokens} dims={d:?}");
            check_experts(backend, &p, d, dtype, &what);
        }
    }
}

pub fn experts_f32_weights(backend: &dyn Backend) {
    experts_match_reference(backend, DType::F32, 31, &EXPERT_DIMS);
}

pub fn experts_bf16_weights(backend: &dyn Backend) {
    experts_match_reference(backend, DType::BF16, 32, &EXPERT_DIMS);
}

pub fn experts_f16_weights(backend: &dyn Backend) {
    experts_match_reference(backend, DType::F16, 33, &EXPERT_DIMS);
}

/// Experts no token picked are never read: their weights are NaN here, which a dense
/// computation (every expert, gate weight 0) would spread into the output (`0 · NaN`).
/// Covers decode (one token) and a batch that leaves experts unused. Tolerance: see
/// [`check_experts`].
pub fn experts_skip_unpicked_experts(backend: &dyn Backend) {
    let mut rng = Rng::new(34);
    let dims @ (hidden, intermediate, experts, _) = (40, 24, 8, 2);
    for (tokens, ids) in [(1, vec![5u32, 2]), (3, vec![1, 6, 6, 1, 1, 6])] {
        let mut p = problem(&mut rng, tokens, dims);
        p.ids = ids;
        for e in (0..experts as u32).filter(|e| !p.ids.contains(e)) {
            let e = e as usize;
            let w13_len = 2 * intermediate * hidden;
            p.w13[e * w13_len..(e + 1) * w13_len].fill(f32::NAN);
            p.w2[e * hidden * intermediate..(e + 1) * hidden * intermediate].fill(f32::NAN);
        }
        let what = format!("moe_experts, T={tokens}, unpicked experts NaN");
        check_experts(backend, &p, dims, DType::BF16, &what);
    }
}

/// Zero tokens give an empty `[0, H]` output.
pub fn experts_zero_tokens(backend: &dyn Backend) {
    let (hidden, intermediate, experts, k) = (8, 8, 4, 2);
    let (xt, _) = activation(backend, &[], &[0, hidden]);
    let (w13, _) = weight(
        backend,
        &[0.5; 4 * 16 * 8],
        &[experts, 2 * intermediate, hidden],
        DType::F32,
    );
    let (w2, _) = weight(
        backend,
        &[0.5; 4 * 8 * 8],
        &[experts, hidden, intermediate],
        DType::F32,
    );
    let ids = upload_u32(backend, &[], &[0, k]);
    let weights = upload_float(backend, &[], &[0, k], DType::F32);
    let out = backend
        .moe_experts(&xt, &w13, &w2, &ids, &weights)
        .unwrap_or_else(|e| panic!("moe_experts with zero tokens: {e}"));
    assert_eq!(out.shape(), &[0, hidden]);
}

/// Shapes and dtypes every backend rejects. (An expert id ≥ E is a caller error that the
/// CPU backend always reports and CUDA only in debug builds, so it is the CPU's test.)
pub fn experts_reject_bad_inputs(backend: &dyn Backend) {
    let (hidden, intermediate, experts, k, tokens) = (8, 8, 4, 2, 3);
    let (xt, _) = activation(backend, &[0.1; 24], &[tokens, hidden]);
    let w = |data: &[f32], shape: &[usize]| weight(backend, data, shape, DType::F32).0;
    let w13 = w(&[0.5; 4 * 16 * 8], &[experts, 2 * intermediate, hidden]);
    let w2 = w(&[0.5; 4 * 8 * 8], &[experts, hidden, intermediate]);
    let ids = upload_u32(backend, &[0, 1, 2, 3, 1, 0], &[tokens, k]);
    let f = |data: &[f32], shape: &[usize]| upload_float(backend, data, shape, DType::F32);
    let weights = f(&[0.5; 6], &[tokens, k]);
    if let Err(e) = backend.moe_experts(&xt, &w13, &w2, &ids, &weights) {
        panic!("the valid baseline call failed: {e}");
    }

    // w13 with an odd row count, or a hidden size that is not x's.
    let odd = w(&[0.5; 4 * 15 * 8], &[experts, 15, hidden]);
    let narrow = w(&[0.5; 4 * 16 * 7], &[experts, 16, 7]);
    for bad in [&odd, &narrow] {
        assert!(matches!(
            backend.moe_experts(&xt, bad, &w2, &ids, &weights),
            Err(KernelError::Invalid { .. })
        ));
    }
    // w2 with another expert count or intermediate size.
    let w2_bad = w(&[0.5; 3 * 8 * 8], &[3, hidden, intermediate]);
    assert!(matches!(
        backend.moe_experts(&xt, &w13, &w2_bad, &ids, &weights),
        Err(KernelError::ShapeMismatch { .. })
    ));
    // Routing for another token count, weights of another shape, 2-d w13.
    let ids_short = upload_u32(backend, &[0, 1], &[1, k]);
    let weights_k1 = f(&[1.0; 3], &[tokens, 1]);
    let w13_flat = w(&[0.5; 4 * 16 * 8], &[experts * 2 * intermediate, hidden]);
    assert!(matches!(
        backend.moe_experts(&xt, &w13, &w2, &ids_short, &weights),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        backend.moe_experts(&xt, &w13, &w2, &ids, &weights_k1),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        backend.moe_experts(&xt, &w13_flat, &w2, &ids, &weights),
        Err(KernelError::WrongRank { .. })
    ));
    // Float ids, integer weights.
    let float_ids = f(&[0.0; 6], &[tokens, k]);
    assert!(matches!(
        backend.moe_experts(&xt, &w13, &w2, &float_ids, &weights),
        Err(KernelError::WrongDType { .. })
    ));
    let int_w13 = Tensor::from_u32(vec![0; 4 * 16 * 8], &[experts, 2 * intermediate, hidden])
        .and_then(|t| backend.upload(t))
        .unwrap_or_else(|e| panic!("uploading a u32 tensor: {e}"));
    assert!(matches!(
        backend.moe_experts(&xt, &int_w13, &w2, &ids, &weights),
        Err(KernelError::WrongDType { .. })
    ));
}
