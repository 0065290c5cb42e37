//! Shared by the bf16 matmul kernels' unit tests: deterministic inputs and the check
//! against an f64 reference.

/// Deterministic values in [-1, 1) from a 64-bit LCG.
pub(crate) fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `values` rounded to bf16, as bits.
pub(crate) fn bf16_bits(values: &[f32]) -> Vec<u16> {
    values
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect()
}

/// Checks `got[M, N]` against `x[M, K] · wᵀ` accumulated in f64 (w as bf16 bits), with
/// the tolerance `1e-5 · Σ|x·w|` per output (bounds the rounding of any f32 summation
/// order).
pub(crate) fn assert_matches_f64(x: &[f32], w_bits: &[u16], m: usize, k: usize, got: &[f32]) {
    let n = got.len() / m;
    for i in 0..m {
        for j in 0..n {
            let (mut want, mut magnitude) = (0.0f64, 0.0f64);
            for kk in 0..k {
                let wv = f32::from_bits((w_bits[j * k + kk] as u32) << 16);
                let term = x[i * k + kk] as f64 * wv as f64;
                want += term;
                magnitude += term.abs();
            }
            let err = (got[i * n + j] as f64 - want).abs();
            assert!(
                err <= 1e-5 * magnitude + 1e-30,
                "m={m} k={k} n={n} ({i},{j}): got {} want {want}",
                got[i * n + j]
            );
        }
    }
}
