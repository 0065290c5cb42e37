//! Naive references: plain loops with f64 accumulation, written for obviousness.

use crate::TopKWeights;

/// `x[M, K] · w[N, K]ᵀ` and, per output, `Σ_k |x·w|` (which bounds the rounding error of
/// any summation order).
pub fn matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0f64; m * n];
    let mut magnitude = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            let mut abs = 0.0f64;
            for kk in 0..k {
                let term = x[i * k + kk] as f64 * w[j * k + kk] as f64;
                acc += term;
                abs += term.abs();
            }
            out[i * n + j] = acc;
            magnitude[i * n + j] = abs;
        }
    }
    (out, magnitude)
}

/// HF RMSNorm: `x / sqrt(mean(x²) + eps) * weight` per row.
pub fn rms_norm(x: &[f32], weight: &[f32], n: usize, eps: f32) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(n) {
        let mean_square = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
        let inv_rms = 1.0 / (mean_square + eps as f64).sqrt();
        out.extend(
            row.iter()
                .zip(weight)
                .map(|(&v, &w)| v as f64 * inv_rms * w as f64),
        );
    }
    out
}

/// `cos_sin` table rows `cos(p·f) ‖ sin(p·f)` with `f_i = theta^(−2i/head_dim)`.
pub fn rope_table(max_positions: usize, head_dim: usize, theta: f64) -> Vec<f32> {
    let half = head_dim / 2;
    let mut table = Vec::with_capacity(max_positions * head_dim);
    for p in 0..max_positions {
        let angles: Vec<f64> = (0..half)
            .map(|i| p as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64))
            .collect();
        table.extend(angles.iter().map(|a| a.cos() as f32));
        table.extend(angles.iter().map(|a| a.sin() as f32));
    }
    table
}

/// Neox rotary embedding: per head, `x1·cos − x2·sin ‖ x2·cos + x1·sin`.
pub fn rope(
    x: &[f32],
    positions: &[u32],
    table: &[f32],
    width: usize,
    head_dim: usize,
) -> Vec<f64> {
    let half = head_dim / 2;
    let mut out = vec![0.0f64; x.len()];
    for (t, &p) in positions.iter().enumerate() {
        let cos = &table[p as usize * head_dim..p as usize * head_dim + half];
        let sin = &table[p as usize * head_dim + half..(p as usize + 1) * head_dim];
        for h in 0..width / head_dim {
            let base = t * width + h * head_dim;
            for i in 0..half {
                let (x1, x2) = (x[base + i] as f64, x[base + half + i] as f64);
                let (c, s) = (cos[i] as f64, sin[i] as f64);
                out[base + i] = x1 * c - x2 * s;
                out[base + half + i] = x2 * c + x1 * s;
            }
        }
    }
    out
}

pub fn silu_mul(gate_up: &[f32], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks_exact(2 * n) {
        for i in 0..n {
            let g = row[i] as f64;
            out.push(g / (1.0 + (-g).exp()) * row[n + i] as f64);
        }
    }
    out
}

/// Causal GQA attention of one sequence, keys/values given in logical order.
/// `q: [q_len, heads*d]`, `k, v: [context_len, kv_heads*d]`; query `i` sits at position
/// `context_len − q_len + i` and sees keys `0..=pos`. Full softmax in f64.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f32,
) -> Vec<f64> {
    let q_len = q.len() / (heads * head_dim);
    let context_len = k.len() / (kv_heads * head_dim);
    let group = heads / kv_heads;
    let mut out = vec![0.0f64; q.len()];
    for i in 0..q_len {
        let pos = context_len - q_len + i;
        for h in 0..heads {
            let g = h / group;
            let q_row = &q[(i * heads + h) * head_dim..(i * heads + h + 1) * head_dim];
            let scores: Vec<f64> = (0..=pos)
                .map(|p| {
                    let k_row =
                        &k[(p * kv_heads + g) * head_dim..(p * kv_heads + g + 1) * head_dim];
                    let dot: f64 = q_row
                        .iter()
                        .zip(k_row)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    dot * scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for (p, w) in weights.iter().enumerate() {
                let v_row = &v[(p * kv_heads + g) * head_dim..(p * kv_heads + g + 1) * head_dim];
                for d in 0..head_dim {
                    out[(i * heads + h) * head_dim + d] += w / total * v_row[d] as f64;
                }
            }
        }
    }
    out
}

/// MoE routing of `logits: [T, E]`: per row, softmax, experts by descending probability
/// (ties: the lower id first), the first `k` weighted as `weighting` says (renormalised to
/// sum to 1, or the probabilities). Returns the ids, their weights, and the smallest
/// nonzero gap between a row's k-th and (k+1)-th probability: a test insists on a clear
/// gap, since a backend's f32 arithmetic may order a near tie either way (an exact tie has
/// a defined order and needs no gap).
pub fn moe_route(
    logits: &[f32],
    experts: usize,
    k: usize,
    weighting: TopKWeights,
) -> (Vec<u32>, Vec<f64>, f64) {
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
        let chosen: f64 = match weighting {
            TopKWeights::Renormalized => order[..k].iter().map(|&e| exps[e] / sum).sum(),
            TopKWeights::Probabilities => 1.0,
        };
        ids.extend(order[..k].iter().map(|&e| e as u32));
        weights.extend(order[..k].iter().map(|&e| exps[e] / sum / chosen));
        if k < experts {
            let gap = (exps[order[k - 1]] - exps[order[k]]) / sum;
            if gap > 0.0 {
                min_gap = min_gap.min(gap);
            }
        }
    }
    (ids, weights, min_gap)
}

/// The weights of a MoE layer's experts, as the backend holds them.
pub struct ExpertWeights<'a> {
    /// `[E, 2I, H]`: each expert's gate rows, then its up rows.
    pub w13: &'a [f32],
    /// `[E, H, I]`: each expert's down projection.
    pub w2: &'a [f32],
    pub hidden: usize,
    pub intermediate: usize,
}

/// Dense per-token `moe_experts`: `out[t] = Σ_j weights[t, j] · w2[e]·silu_mul(w13[e]·x[t])`
/// with `e = ids[t, j]`, in f64. Also returns, per output, a bound on the rounding error
/// of an f32 (or narrower) computation in units of its relative step: each matmul output
/// may be off by `ε·Σ|terms|`, which silu·mul carries on (`|silu'| ≤ 1.1`) into the down
/// projection; `scale[t, h]` is that propagated `Σ|terms|`.
pub fn moe_experts(
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
