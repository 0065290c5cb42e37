//! Rotary position embedding (neox style, rotate halves).
//!
//! The cos/sin table is computed once at construction, with exactly the f32
//! arithmetic of transformers' default rope so logits agree with it:
//! `inv_freq[i] = 1 / theta^(2i / d)` (the exponent divided in f32, the power
//! of `theta` as f32), `freq = pos * inv_freq[i]` in f32, then `cos`/`sin`.
//! Row `p` of the `[max_positions, head_dim]` table is `cos(freq) ‖ sin(freq)`,
//! the layout [`Backend::rope`] expects.

use nanovllm_kernels::{Backend, Tensor};

use crate::error::ModelError;

#[derive(Debug)]
pub struct RotaryEmbedding {
    /// f32 `[max_positions, head_dim]` on the device.
    cos_sin: Tensor,
    head_dim: usize,
}

impl RotaryEmbedding {
    pub fn new(
        backend: &dyn Backend,
        head_dim: usize,
        max_positions: usize,
        theta: f64,
    ) -> Result<Self, ModelError> {
        let table = cos_sin_table(head_dim, max_positions, theta);
        let cos_sin = backend.upload(Tensor::from_f32(table, &[max_positions, head_dim])?)?;
        Ok(Self { cos_sin, head_dim })
    }

    /// Rotates `x: [T, heads * head_dim]` in place by each token's position (`U32 [T]`).
    pub fn forward(
        &self,
        backend: &dyn Backend,
        x: &mut Tensor,
        positions: &Tensor,
    ) -> Result<(), ModelError> {
        Ok(backend.rope(x, positions, &self.cos_sin, self.head_dim)?)
    }

    pub fn cos_sin(&self) -> &Tensor {
        &self.cos_sin
    }
}

/// `transformers`' default rope inverse frequencies, in its f32 arithmetic.
pub fn inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    let base = theta as f32;
    (0..head_dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

/// Row-major `[max_positions, head_dim]`: row `p` = `cos(p·inv_freq) ‖ sin(p·inv_freq)`.
pub fn cos_sin_table(head_dim: usize, max_positions: usize, theta: f64) -> Vec<f32> {
    let inv_freq = inv_freq(head_dim, theta);
    let half = head_dim / 2;
    let mut table = vec![0f32; max_positions * head_dim];
    for (p, row) in table.chunks_exact_mut(head_dim.max(1)).enumerate() {
        for (i, &f) in inv_freq.iter().enumerate() {
            let angle = p as f32 * f;
            row[i] = angle.cos();
            row[half + i] = angle.sin();
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference in f64 from the formula: the f32 table must agree to f32 rounding of the
    /// angle (|p·inv_freq| · 2⁻²³ relative error in the angle, plus f32 cos/sin rounding).
    #[test]
    fn table_matches_formula() {
        let (d, max_pos, theta) = (16, 64, 1_000_000.0f64);
        let table = cos_sin_table(d, max_pos, theta);
        for p in 0..max_pos {
            for i in 0..d / 2 {
                let inv = 1.0 / theta.powf(2.0 * i as f64 / d as f64);
                let angle = p as f64 * inv;
                let tol = 1e-6 + angle.abs() * 4.0 * f32::EPSILON as f64;
                let (c, s) = (table[p * d + i] as f64, table[p * d + d / 2 + i] as f64);
                assert!(
                    (c - angle.cos()).abs() <= tol,
                    "cos p={p} i={i}: {c} vs {}",
                    angle.cos()
                );
                assert!(
                    (s - angle.sin()).abs() <= tol,
                    "sin p={p} i={i}: {s} vs {}",
                    angle.sin()
                );
            }
        }
    }

    #[test]
    fn position_zero_is_identity_and_first_freq_is_one() {
        let table = cos_sin_table(8, 4, 10_000.0);
        assert_eq!(&table[..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(inv_freq(8, 10_000.0)[0], 1.0);
        // Position 1, i = 0: angle exactly 1 rad.
        assert_eq!(table[8], 1f32.cos());
        assert_eq!(table[8 + 4], 1f32.sin());
        // i = 1 of d = 8: theta^(-1/4) = 0.1 for theta = 10^4.
        assert!((inv_freq(8, 10_000.0)[1] - 0.1).abs() < 1e-8);
    }
}
