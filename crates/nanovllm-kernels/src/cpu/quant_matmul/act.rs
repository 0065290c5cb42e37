//! Activation rows quantized on the fly for the integer dot products (Q8-style): each
//! row of `x[M, K]` in blocks of [`ACT_BLOCK`] elements, each block an f32 scale
//! `d = max|x| / 127`, 32 codes `q = round(x / d)` in `-127..=127`, and the exact f32
//! sum `Σ x` of the block (the Int4G32 minimum term uses the true sum, so it adds no
//! activation rounding).
//!
//! Invariant: `|x − d·q| ≤ d/2` per element, up to the f32 rounding of `x · (1/d)`
//! (relative 2⁻²²), and `d = 0` exactly when the block is all zeros (then every code is 0).

/// Elements per activation block: the weight block of Int8G32 and Int4G32.
pub(super) const ACT_BLOCK: usize = 32;

/// `x[M, K]` quantized per block; `K` is a multiple of [`ACT_BLOCK`].
#[derive(Default)]
pub(crate) struct QuantizedRows {
    /// `[M, K]` codes.
    pub(super) codes: Vec<i8>,
    /// `[M, K / ACT_BLOCK]` scales.
    pub(super) scales: Vec<f32>,
    /// `[M, K / ACT_BLOCK]` exact block sums of `x`.
    pub(super) sums: Vec<f32>,
}

impl QuantizedRows {
    /// Quantizes `xs: [m, k]` into `self`, reusing its buffers.
    pub(super) fn fill(&mut self, xs: &[f32], m: usize, k: usize) {
        debug_assert!(k % ACT_BLOCK == 0 && xs.len() >= m * k);
        let blocks = m * k / ACT_BLOCK;
        self.codes.clear();
        self.codes.resize(m * k, 0);
        self.scales.clear();
        self.scales.resize(blocks, 0.0);
        self.sums.clear();
        self.sums.resize(blocks, 0.0);
        let chunks = xs[..m * k].chunks_exact(ACT_BLOCK);
        let outs = self.codes.chunks_exact_mut(ACT_BLOCK);
        for (((src, codes), scale), sum) in chunks
            .zip(outs)
            .zip(self.scales.iter_mut())
            .zip(self.sums.iter_mut())
        {
            let amax = src.iter().fold(0f32, |a, &x| a.max(x.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (q, &x) in codes.iter_mut().zip(src) {
                *q = (x * inv).round().clamp(-127.0, 127.0) as i8;
            }
            *scale = d;
            *sum = src.iter().sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_reconstruct_within_half_a_step() {
        let xs: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let mut q = QuantizedRows::default();
        q.fill(&xs, 1, 96);
        let (codes, scales, sums) = (&q.codes, &q.scales, &q.sums);
        for (b, src) in xs.chunks(ACT_BLOCK).enumerate() {
            let d = scales[b];
            assert!(d > 0.0);
            for (i, &x) in src.iter().enumerate() {
                let back = d * codes[b * ACT_BLOCK + i] as f32;
                assert!((x - back).abs() <= d * 0.5 + x.abs() * 2.4e-7, "{x} {back}");
            }
            assert_eq!(sums[b], src.iter().sum::<f32>());
        }
        q.fill(&[0.0; 32], 1, 32);
        assert_eq!((q.scales[0], q.codes.iter().all(|&c| c == 0)), (0.0, true));
    }
}
