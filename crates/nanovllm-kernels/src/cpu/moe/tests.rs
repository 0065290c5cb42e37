//! MoE ops against naive references. The bodies take `&dyn Backend` (like
//! `crate::testing`), so another backend can run them too; here they run on the CPU.

use crate::testing::check::{
    activation, assert_close, assert_close_scaled, host_f32, host_u32, rounded, upload_float,
    upload_u32, Tol,
};
use crate::testing::rng::Rng;
use crate::{Backend, CpuBackend, DType, KernelError, Tensor};

// ---- references ------------------------------------------------------------------

/// Routing in f64: softmax, experts sorted by descending probability (ties: lower id
/// first), the first `k` renormalised. Also returns the gap between the k-th and
/// (k+1)-th probability, so a test can insist its inputs are not near a tie.
fn route_reference(logits: &[f32], experts: usize, k: usize) -> (Vec<u32>, Vec<f64>, f64) {
    let (mut ids, mut weights, mut min_gap) = (Vec::new(), Vec::new(), f64::INFINITY);
    for row in logits.chunks_exact(experts) {
        let max = row
            .iter()
            .map(|&l| l as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = row.iter().map(|&l| (l as f64 - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        let mut order: Vec<usize> = (0..experts).collect();
        // Stable sort: equal probabilities keep ascending ids.
        order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]));
        let chosen: f64 = order[..k].iter().map(|&e| exps[e] / sum).sum();
        ids.extend(order[..k].iter().map(|&e| e as u32));
        weights.extend(order[..k].iter().map(|&e| exps[e] / sum / chosen));
        if k < experts {
            min_gap = min_gap.min((exps[order[k - 1]] - exps[order[k]]) / sum);
        }
    }
    (ids, weights, min_gap)
}

/// Dense per-token reference of `moe_experts` in f64, with a bound on the rounding error
/// of an f32 computation: each matmul output may be off by `ε·Σ|terms|`; that error is
/// carried through silu·mul (`|silu'| ≤ 1.1`) and the down projection. Returns
/// `(out, scale)` where `scale[t, h]` is the propagated `Σ|terms|`.
struct ExpertWeights<'a> {
    w13: &'a [f32],
    w2: &'a [f32],
    hidden: usize,
    intermediate: usize,
}

fn experts_reference(
    x: &[f32],
    w: &ExpertWeights,
    ids: &[u32],
    weights: &[f32],
    k: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (h, i_size) = (w.hidden, w.intermediate);
    let tokens = x.len() / h;
    let mut out = vec![0f64; tokens * h];
    let mut scale = vec![0f64; tokens * h];
    let dot = |a: &[f32], b: &[f32]| -> (f64, f64) {
        a.iter().zip(b).fold((0.0, 0.0), |(s, m), (&p, &q)| {
            let term = p as f64 * q as f64;
            (s + term, m + term.abs())
        })
    };
    for t in 0..tokens {
        let xt = &x[t * h..(t + 1) * h];
        for j in 0..k {
            let e = ids[t * k + j] as usize;
            let gw = weights[t * k + j] as f64;
            let w13e = &w.w13[e * 2 * i_size * h..(e + 1) * 2 * i_size * h];
            let w2e = &w.w2[e * h * i_size..(e + 1) * h * i_size];
            let mut act = vec![0f64; i_size];
            let mut act_mag = vec![0f64; i_size];
            for i in 0..i_size {
                let (g, g_mag) = dot(xt, &w13e[i * h..(i + 1) * h]);
                let (u, u_mag) = dot(xt, &w13e[(i_size + i) * h..(i_size + i + 1) * h]);
                let silu = g / (1.0 + (-g).exp());
                act[i] = silu * u;
                act_mag[i] = act[i].abs() + 1.1 * u.abs() * g_mag + silu.abs() * u_mag;
            }
            for hh in 0..h {
                let row = &w2e[hh * i_size..(hh + 1) * i_size];
                let (mut y, mut y_mag) = (0.0, 0.0);
                for i in 0..i_size {
                    y += row[i] as f64 * act[i];
                    y_mag += (row[i] as f64).abs() * act_mag[i];
                }
                out[t * h + hh] += gw * y;
                scale[t * h + hh] += gw.abs() * y_mag;
            }
        }
    }
    (out, scale)
}

// ---- moe_route -------------------------------------------------------------------

/// Ids exact; weights within 1e-6 absolute (f32 softmax and renormalisation of values
/// ≤ 1); each row's weights sum to 1 within 1e-6.
pub fn route_matches_reference(backend: &dyn Backend) {
    let mut rng = Rng::new(21);
    for (tokens, experts, k) in [(1, 8, 2), (37, 8, 2), (300, 4, 2), (16, 8, 1), (9, 8, 8)] {
        // Spread-out logits: the seeded draw has no near-ties (checked below).
        let logits = rng.vec(tokens * experts, 4.0);
        let (want_ids, want_weights, min_gap) = route_reference(&logits, experts, k);
        assert!(min_gap > 1e-4, "test data near a tie: gap {min_gap}");
        let (lt, _) = activation(backend, &logits, &[tokens, experts]);
        let (ids, weights) = backend
            .moe_route(&lt, k)
            .unwrap_or_else(|e| panic!("moe_route T={tokens} E={experts} k={k}: {e}"));
        assert_eq!(ids.shape(), &[tokens, k]);
        assert_eq!(weights.shape(), &[tokens, k]);
        assert_eq!(weights.dtype(), DType::F32);
        assert_eq!(
            host_u32(backend, &ids),
            want_ids,
            "T={tokens} E={experts} k={k}"
        );
        let got = host_f32(backend, &weights);
        assert_close(
            &format!("moe_route weights T={tokens} E={experts} k={k}"),
            &got,
            &want_weights,
            Tol::for_backend(backend, 1e-6, 0.0, 1.0),
        );
        for row in got.chunks_exact(k) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() <= 1e-6, "weights {row:?} sum to {sum}");
            assert!(
                row.windows(2).all(|w| w[0] >= w[1]),
                "not descending: {row:?}"
            );
        }
    }
}

/// Hand-picked rows: the chosen experts and weights are known exactly.
pub fn route_picks_largest_and_breaks_ties_by_lower_id(backend: &dyn Backend) {
    let logits = [
        1.0, 1.0, 1.0, 1.0, // all equal → 0, 1 at 1/2 each
        0.0, 5.0, 5.0, 2.0, // tie at the top → 1, 2
        3.0, -1.0, 3.0, 3.0, // three-way tie → 0, 2
        -2.0, 0.0, 7.0, 0.0, // one clear winner, then a tie for second → 2, 1
    ];
    let (lt, _) = activation(backend, &logits, &[4, 4]);
    let (ids, weights) = backend.moe_route(&lt, 2).unwrap();
    assert_eq!(host_u32(backend, &ids), [0, 1, 1, 2, 0, 2, 2, 1]);
    // Row 3: p2 / (p2 + p1) = 1 / (1 + e^-7).
    let top = 1.0 / (1.0 + (-7.0f64).exp());
    let want = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, top, 1.0 - top];
    assert_close(
        "moe_route hand-picked weights",
        &host_f32(backend, &weights),
        &want,
        Tol::for_backend(backend, 1e-6, 0.0, 1.0),
    );
}

pub fn route_rejects_bad_inputs(backend: &dyn Backend) {
    let (lt, _) = activation(backend, &[0.0; 8], &[2, 4]);
    for k in [0, 5] {
        match backend.moe_route(&lt, k) {
            Err(KernelError::Invalid { op, msg }) => {
                assert_eq!(op, "moe_route");
                assert!(msg.contains("top_k"), "{msg}");
            }
            other => panic!("top_k {k}: expected Invalid, got {other:?}"),
        }
    }
    let (flat, _) = activation(backend, &[0.0; 8], &[8]);
    assert!(matches!(
        backend.moe_route(&flat, 2),
        Err(KernelError::WrongRank { .. })
    ));
}

// ---- moe_experts -----------------------------------------------------------------

/// A random MoE problem: `x [T, H]`, weights of `experts` experts, and a routing.
struct Problem {
    x: Vec<f32>,
    w13: Vec<f32>,
    w2: Vec<f32>,
    ids: Vec<u32>,
    weights: Vec<f32>,
}

fn problem(rng: &mut Rng, tokens: usize, dims: (usize, usize, usize, usize)) -> Problem {
    let (hidden, intermediate, experts, k) = dims;
    let logits = rng.vec(tokens * experts, 3.0);
    let (ids, weights, _) = route_reference(&logits, experts, k);
    Problem {
        x: rng.vec(tokens * hidden, 1.0),
        w13: rng.vec(experts * 2 * intermediate * hidden, 0.5),
        w2: rng.vec(experts * hidden * intermediate, 0.5),
        ids,
        weights: weights.iter().map(|&w| w as f32).collect(),
    }
}

/// Runs `moe_experts` on `p` with weights stored in `dtype`; returns the output and the
/// weights as the backend holds them (rounded to `dtype`).
fn run_experts(
    backend: &dyn Backend,
    p: &Problem,
    dims: (usize, usize, usize, usize),
    dtype: DType,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hidden, intermediate, experts, k) = dims;
    let tokens = p.ids.len() / k;
    let (xt, x_ref) = activation(backend, &p.x, &[tokens, hidden]);
    let w13 = upload_float(backend, &p.w13, &[experts, 2 * intermediate, hidden], dtype);
    let w2 = upload_float(backend, &p.w2, &[experts, hidden, intermediate], dtype);
    let ids = upload_u32(backend, &p.ids, &[tokens, k]);
    let weights = upload_float(backend, &p.weights, &[tokens, k], DType::F32);
    let out = backend
        .moe_experts(&xt, &w13, &w2, &ids, &weights)
        .unwrap_or_else(|e| panic!("moe_experts T={tokens} dims={dims:?} {dtype}: {e}"));
    assert_eq!(out.shape(), &[tokens, hidden]);
    (
        host_f32(backend, &out),
        x_ref,
        rounded(dtype, &p.w13),
        rounded(dtype, &p.w2),
    )
}

/// Token counts around the dot-product/GEMM switch (an expert gets ≤ 16 or more rows),
/// odd feature sizes, f32/bf16/f16 weights. Tolerance: `1e-5 · (propagated Σ|terms|)`
/// against the f64 reference, as the matmul tests.
fn experts_match_reference_with(backend: &dyn Backend, dtype: DType, seed: u64) {
    let mut rng = Rng::new(seed);
    for dims in [(67, 45, 8, 2), (32, 64, 4, 2), (130, 24, 3, 3)] {
        let (hidden, intermediate, _, k) = dims;
        for tokens in [1, 3, 17, 64, 300] {
            let p = problem(&mut rng, tokens, dims);
            let (got, x_ref, w13_ref, w2_ref) = run_experts(backend, &p, dims, dtype);
            let weights = ExpertWeights {
                w13: &w13_ref,
                w2: &w2_ref,
                hidden,
                intermediate,
            };
            let (want, scale) = experts_reference(&x_ref, &weights, &p.ids, &p.weights, k);
            assert_close_scaled(
                &format!("moe_experts {dtype} weights, T={tokens} dims={dims:?}"),
                &got,
                &want,
                &scale,
                1e-5,
                Tol::for_backend(backend, 0.0, 0.0, 0.0),
            );
        }
    }
}

pub fn experts_f32_weights(backend: &dyn Backend) {
    experts_match_reference_with(backend, DType::F32, 31);
}

pub fn experts_bf16_weights(backend: &dyn Backend) {
    experts_match_reference_with(backend, DType::BF16, 32);
}

pub fn experts_f16_weights(backend: &dyn Backend) {
    experts_match_reference_with(backend, DType::F16, 33);
}

/// Experts no token picked are never read: their weights are NaN here, which a dense
/// computation (every expert, gate weight 0) would spread into the output (`0 · NaN`).
/// Covers decode (one token) and a batch that leaves experts unused.
pub fn experts_skip_unpicked_experts(backend: &dyn Backend) {
    let mut rng = Rng::new(34);
    let (hidden, intermediate, experts, k) = (40, 24, 8, 2);
    for (tokens, ids) in [(1, vec![5u32, 2]), (3, vec![1, 6, 6, 1, 1, 6])] {
        let mut p = problem(&mut rng, tokens, (hidden, intermediate, experts, k));
        p.ids = ids;
        for e in (0..experts as u32).filter(|e| !p.ids.contains(e)) {
            let e = e as usize;
            let w13_len = 2 * intermediate * hidden;
            p.w13[e * w13_len..(e + 1) * w13_len].fill(f32::NAN);
            p.w2[e * hidden * intermediate..(e + 1) * hidden * intermediate].fill(f32::NAN);
        }
        let dims = (hidden, intermediate, experts, k);
        let (got, x_ref, w13_ref, w2_ref) = run_experts(backend, &p, dims, DType::BF16);
        let weights = ExpertWeights {
            w13: &w13_ref,
            w2: &w2_ref,
            hidden,
            intermediate,
        };
        let (want, scale) = experts_reference(&x_ref, &weights, &p.ids, &p.weights, k);
        assert!(
            got.iter().all(|v| v.is_finite()),
            "an unpicked expert was read"
        );
        assert_close_scaled(
            &format!("moe_experts, T={tokens}, unpicked experts NaN"),
            &got,
            &want,
            &scale,
            1e-5,
            Tol::for_backend(backend, 0.0, 0.0, 0.0),
        );
    }
}

/// Zero tokens give an empty `[0, H]` output.
pub fn experts_zero_tokens(backend: &dyn Backend) {
    let (hidden, intermediate, experts, k) = (8, 4, 4, 2);
    let (xt, _) = activation(backend, &[], &[0, hidden]);
    let w13 = upload_float(
        backend,
        &[0.5; 4 * 8 * 8],
        &[experts, 2 * intermediate, hidden],
        DType::F32,
    );
    let w2 = upload_float(
        backend,
        &[0.5; 4 * 8 * 4],
        &[experts, hidden, intermediate],
        DType::F32,
    );
    let ids = upload_u32(backend, &[], &[0, k]);
    let weights = upload_float(backend, &[], &[0, k], DType::F32);
    let out = backend.moe_experts(&xt, &w13, &w2, &ids, &weights).unwrap();
    assert_eq!(out.shape(), &[0, hidden]);
}

pub fn experts_reject_bad_inputs(backend: &dyn Backend) {
    let (hidden, intermediate, experts, k, tokens) = (8, 4, 4, 2, 3);
    let (xt, _) = activation(backend, &[0.1; 24], &[tokens, hidden]);
    let f = |data: &[f32], shape: &[usize]| upload_float(backend, data, shape, DType::F32);
    let w13 = f(&[0.5; 4 * 8 * 8], &[experts, 2 * intermediate, hidden]);
    let w2 = f(&[0.5; 4 * 8 * 4], &[experts, hidden, intermediate]);
    let ids = upload_u32(backend, &[0, 1, 2, 3, 1, 0], &[tokens, k]);
    let weights = f(&[0.5; 6], &[tokens, k]);
    assert!(backend.moe_experts(&xt, &w13, &w2, &ids, &weights).is_ok());

    // An expert id ≥ E.
    let bad_ids = upload_u32(backend, &[0, 1, 2, 4, 1, 0], &[tokens, k]);
    match backend.moe_experts(&xt, &w13, &w2, &bad_ids, &weights) {
        Err(KernelError::IndexOutOfRange { op, index, size }) => {
            assert_eq!((op, index, size), ("moe_experts", 4, 4))
        }
        other => panic!("expected IndexOutOfRange, got {other:?}"),
    }
    // w13 with an odd row count, or a hidden size that is not x's.
    let odd = f(&[0.5; 4 * 7 * 8], &[experts, 7, hidden]);
    let narrow = f(&[0.5; 4 * 8 * 7], &[experts, 8, 7]);
    for w in [&odd, &narrow] {
        assert!(matches!(
            backend.moe_experts(&xt, w, &w2, &ids, &weights),
            Err(KernelError::Invalid { .. })
        ));
    }
    // w2 with another expert count or intermediate size.
    let w2_bad = f(&[0.5; 3 * 8 * 4], &[3, hidden, intermediate]);
    assert!(matches!(
        backend.moe_experts(&xt, &w13, &w2_bad, &ids, &weights),
        Err(KernelError::ShapeMismatch { .. })
    ));
    // Routing for another token count, weights of another shape, 2-d weights.
    let ids_short = upload_u32(backend, &[0, 1], &[1, k]);
    let weights_k1 = f(&[1.0; 3], &[tokens, 1]);
    let w13_flat = f(&[0.5; 4 * 8 * 8], &[experts * 2 * intermediate, hidden]);
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
    // Integer weights, float ids.
    let float_ids = f(&[0.0; 6], &[tokens, k]);
    assert!(matches!(
        backend.moe_experts(&xt, &w13, &w2, &float_ids, &weights),
        Err(KernelError::WrongDType { .. })
    ));
    let int_w13 = Tensor::from_u32(vec![0; 4 * 8 * 8], &[experts, 2 * intermediate, hidden])
        .and_then(|t| backend.upload(t))
        .unwrap();
    assert!(matches!(
        backend.moe_experts(&xt, &int_w13, &w2, &ids, &weights),
        Err(KernelError::WrongDType { .. })
    ));
}

macro_rules! cpu_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                super::$name(&CpuBackend::new());
            }
        )*
    };
}

mod on_cpu {
    use super::CpuBackend;

    cpu_tests!(
        route_matches_reference,
        route_picks_largest_and_breaks_ties_by_lower_id,
        route_rejects_bad_inputs,
        experts_f32_weights,
        experts_bf16_weights,
        experts_f16_weights,
        experts_skip_unpicked_experts,
        experts_zero_tokens,
        experts_reject_bad_inputs,
    );
}
