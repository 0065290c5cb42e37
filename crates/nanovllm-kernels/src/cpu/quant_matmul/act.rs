//! Activation rows quantized on the fly for the integer dot products (Q8-style): each
//! row of `x[M, K]` in blocks of [`ACT_BLOCK`] elements, each block an f32 scale
//! `d = max|x| / 127`, 32 codes `q = round(x / d)` in `-127..=127`, and the f32 sum
//! `Σ x` of the block (the Int4G32 minimum term uses the unquantized sum, so it adds no
//! activation rounding). Filled by [`super::avx2::quantize_blocks`]: a scalar loop
//! (`round` is a libm call without SSE4.1) took a fifth of an M = 16 product.
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
    /// Sizes the buffers for `[m, k]` (contents unspecified until filled).
    pub(super) fn resize(&mut self, m: usize, k: usize) {
        let blocks = m * k / ACT_BLOCK;
        self.codes.resize(m * k, 0);
        self.scales.resize(blocks, 0.0);
        self.sums.resize(blocks, 0.0);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::avx2;
    use super::*;

    /// The AVX2 quantizer keeps the invariant of the module docs (a zero block included);
    /// sums within the f32 rounding of 32 terms (`32 · ε · Σ|x|`).
    #[test]
    fn codes_reconstruct_within_half_a_step() {
        if !avx2::available() {
            return;
        }
        let mut xs: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        xs[64..96].fill(0.0);
        let mut q = QuantizedRows::default();
        q.resize(1, 128);
        // SAFETY: AVX2+FMA+F16C checked above; the buffers are sized for [1, 128].
        unsafe { avx2::quantize_blocks(&xs, &mut q.codes, &mut q.scales, &mut q.sums) };
        for (b, src) in xs.chunks(ACT_BLOCK).enumerate() {
            let (d, codes) = (q.scales[b], &q.codes[b * ACT_BLOCK..(b + 1) * ACT_BLOCK]);
            if b == 2 {
                assert_eq!((d, q.sums[b]), (0.0, 0.0));
                assert!(codes.iter().all(|&c| c == 0));
                continue;
            }
            assert!(d > 0.0);
            for (&x, &c) in src.iter().zip(codes) {
                let back = d * c as f32;
                assert!((x - back).abs() <= d * 0.5 + x.abs() * 2.4e-7, "{x} {back}");
            }
            let magnitude: f32 = src.iter().map(|x| x.abs()).sum();
            let exact: f32 = src.iter().sum();
            assert!((q.sums[b] - exact).abs() <= 32.0 * f32::EPSILON * magnitude);
        }
    }
}
