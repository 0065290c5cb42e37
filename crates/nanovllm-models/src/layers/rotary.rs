//! Rotary position embedding (neox style, rotate halves).
//!
//! The cos/sin table is computed once at construction, with exactly the f32
//! arithmetic of transformers' rope (`modeling_rope_utils.py` and the models'
//! `RotaryEmbedding.forward`) so logits agree with it:
//! - default: `inv_freq[i] = 1 / theta^(2i / d)` (the exponent divided in f32, the power
//!   of `theta` as f32);
//! - `llama3`: wavelengths `2π / inv_freq` longer than `original / low_freq_factor` are
//!   divided by `factor`, shorter than `original / high_freq_factor` kept, and the band
//!   between blended by `smooth = (original / wavelen − low) / (high − low)`;
//! - `yarn`: per dimension a blend of the extrapolated `1 / pos_freq` and the interpolated
//!   `1 / (factor · pos_freq)`, the blend a linear ramp over the correction range from
//!   `beta_fast`/`beta_slow` (in f64, as transformers); cos and sin are then multiplied by
//!   the attention factor ([`RopeScaling::attention_factor`]).
//!
//! `freq = pos * inv_freq[i]` in f32, then `cos`/`sin` (times the attention factor).
//! Row `p` of the `[max_positions, head_dim]` table is `cos(freq) ‖ sin(freq)`, the layout
//! [`Backend::rope`] expects. Where torch computes `scalar / tensor` it multiplies by the
//! reciprocal (`Tensor.__rtruediv__`), and this code does too; the frequencies agree with
//! transformers' to an ulp (bit for bit except where torch's f32 `pow` rounds otherwise;
//! see the tests' reference values).

use std::f64::consts::PI;

use nanovllm_kernels::{Backend, Tensor};

use crate::config::RopeScaling;
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
        scaling: &RopeScaling,
    ) -> Result<Self, ModelError> {
        let table = cos_sin_table(head_dim, max_positions, theta, scaling);
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

/// `transformers`' unscaled rope inverse frequencies `theta^(-2i/d)`, in its f32
/// arithmetic (YaRN's `pos_freqs` are their reciprocals before the final division).
fn pos_freqs(head_dim: usize, theta: f64) -> impl Iterator<Item = f32> {
    let base = theta as f32;
    (0..head_dim / 2).map(move |i| base.powf((2 * i) as f32 / head_dim as f32))
}

/// The inverse frequencies of `scaling`, in transformers' f32 arithmetic.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let default = || pos_freqs(head_dim, theta).map(|p| 1.0 / p);
    match *scaling {
        RopeScaling::Default => default().collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old_context_len = original_max_position_embeddings as f64;
            // Python floats compared with, or combined into, f32 tensors act as f32.
            let low_freq_wavelen = (old_context_len / low_freq_factor) as f32;
            let high_freq_wavelen = (old_context_len / high_freq_factor) as f32;
            let (factor, low, span) = (
                factor as f32,
                low_freq_factor as f32,
                (high_freq_factor - low_freq_factor) as f32,
            );
            let two_pi = (2.0 * PI) as f32;
            default()
                .map(|inv| {
                    let wavelen = (1.0 / inv) * two_pi;
                    let scaled = if wavelen > low_freq_wavelen {
                        inv / factor
                    } else {
                        inv
                    };
                    // transformers: `~(wavelen < high) * ~(wavelen > low)`; the same for
                    // non-NaN wavelengths (theta > 0 makes every one a number or +inf).
                    let is_medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                    if is_medium {
                        let smooth = ((1.0 / wavelen) * old_context_len as f32 - low) / span;
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } => {
            let (low, high) = yarn_correction_range(
                beta_fast,
                beta_slow,
                head_dim,
                theta,
                original_max_position_embeddings,
                truncate,
            );
            let high = if low == high { high + 0.001 } else { high };
            let (low32, span) = (low as f32, (high - low) as f32);
            let factor = factor as f32;
            pos_freqs(head_dim, theta)
                .enumerate()
                .map(|(i, pos_freq)| {
                    let extrapolation = 1.0 / pos_freq;
                    let interpolation = 1.0 / (factor * pos_freq);
                    let ramp = ((i as f32 - low32) / span).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_factor)
                        + extrapolation * extrapolation_factor
                })
                .collect()
        }
    }
}

/// YaRN's dimension range `[low, high]` between full extrapolation and full
/// interpolation: the dimensions where the pre-training context turns `beta_fast` and
/// `beta_slow` times, rounded outwards when `truncate`, clipped to `[0, d − 1]`.
fn yarn_correction_range(
    beta_fast: f64,
    beta_slow: f64,
    head_dim: usize,
    theta: f64,
    original_max_position_embeddings: usize,
    truncate: bool,
) -> (f64, f64) {
    let dim = head_dim as f64;
    let correction_dim = |rotations: f64| {
        dim * (original_max_position_embeddings as f64 / (rotations * 2.0 * PI)).ln()
            / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    (low.max(0.0), high.min(dim - 1.0))
}

/// Row-major `[max_positions, head_dim]`: row `p` = `cos(p·inv_freq)·a ‖ sin(p·inv_freq)·a`
/// with `a` the attention factor (1 except for YaRN).
pub fn cos_sin_table(
    head_dim: usize,
    max_positions: usize,
    theta: f64,
    scaling: &RopeScaling,
) -> Vec<f32> {
    let inv_freq = inv_freq(head_dim, theta, scaling);
    let attention_factor = scaling.attention_factor() as f32;
    let half = head_dim / 2;
    let mut table = vec![0f32; max_positions * head_dim];
    for (p, row) in table.chunks_exact_mut(head_dim.max(1)).enumerate() {
        for (i, &f) in inv_freq.iter().enumerate() {
            let angle = p as f32 * f;
            row[i] = angle.cos() * attention_factor;
            row[half + i] = angle.sin() * attention_factor;
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
        let table = cos_sin_table(d, max_pos, theta, &RopeScaling::Default);
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
        let table = cos_sin_table(8, 4, 10_000.0, &RopeScaling::Default);
        assert_eq!(&table[..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(inv_freq(8, 10_000.0, &RopeScaling::Default)[0], 1.0);
        // Position 1, i = 0: angle exactly 1 rad.
        assert_eq!(table[8], 1f32.cos());
        assert_eq!(table[8 + 4], 1f32.sin());
        // i = 1 of d = 8: theta^(-1/4) = 0.1 for theta = 10^4.
        assert!((inv_freq(8, 10_000.0, &RopeScaling::Default)[1] - 0.1).abs() < 1e-8);
    }

    /// Llama 3.1's rope (`factor` 8, low 1, high 4, original 8192) at head_dim 128,
    /// theta 5e5.
    fn llama31() -> RopeScaling {
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }
    }

    /// Qwen3's documented YaRN (`factor` 4, original 32768, everything else default) at
    /// head_dim 128, theta 1e6.
    fn qwen3_yarn() -> RopeScaling {
        RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 32768,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: true,
        }
    }

    /// Every default overridden, untruncated: theta 1e4, head_dim 128.
    fn yarn_custom() -> RopeScaling {
        RopeScaling::Yarn {
            factor: 2.0,
            original_max_position_embeddings: 2048,
            beta_fast: 16.0,
            beta_slow: 2.0,
            mscale: Some(0.707),
            mscale_all_dim: Some(1.0),
            attention_factor: None,
            truncate: false,
        }
    }

    /// Relative f32 error the scaled frequencies may carry against the f64 formula: the
    /// power (as default rope) plus up to six f32 roundings in the blend.
    const FREQ_RTOL: f64 = 8.0 * f32::EPSILON as f64;

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= FREQ_RTOL * w.abs(),
                "{what} inv_freq[{i}]: {g} vs {w}"
            );
        }
    }

    /// The llama3 formula in f64, from Meta's reference (`apply_scaling` in llama3's
    /// `model.py`).
    #[test]
    fn llama3_matches_f64_formula() {
        let (d, theta) = (128, 5e5f64);
        let want: Vec<f64> = (0..d / 2)
            .map(|i| {
                let inv = theta.powf(-((2 * i) as f64) / d as f64);
                let wavelen = 2.0 * PI / inv;
                if wavelen < 8192.0 / 4.0 {
                    inv
                } else if wavelen > 8192.0 / 1.0 {
                    inv / 8.0
                } else {
                    let smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
                    (1.0 - smooth) * inv / 8.0 + smooth * inv
                }
            })
            .collect();
        let got = inv_freq(d, theta, &llama31());
        assert_close(&got, &want, "llama3");
        // All three bands occur: kept, blended and divided.
        let default = inv_freq(d, theta, &RopeScaling::Default);
        assert_eq!(got[..20], default[..20]);
        assert!((got[63] as f64 - default[63] as f64 / 8.0).abs() <= FREQ_RTOL * got[63] as f64);
        // Wavelengths 2048..8192 (dims 29..=34 at theta 5e5) are blended.
        assert!((29..=34).all(|i| got[i] < default[i] && got[i] > default[i] / 8.0));
        assert!(got[28] == default[28] && got[35] == default[35] / 8.0);
    }

    /// The YaRN formula in f64 (paper eqs. 17–21 as transformers writes them).
    fn yarn_f64(d: usize, theta: f64, scaling: &RopeScaling) -> (Vec<f64>, f64) {
        let RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: original,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } = *scaling
        else {
            unreachable!()
        };
        let dim = d as f64;
        let corr = |r: f64| dim * (original as f64 / (r * 2.0 * PI)).ln() / (2.0 * theta.ln());
        let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
        if truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, high) = (low.max(0.0), high.min(dim - 1.0));
        let inv = (0..d / 2)
            .map(|i| {
                let pos = theta.powf(2.0 * i as f64 / dim);
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                (1.0 / (factor * pos)) * ramp + (1.0 / pos) * (1.0 - ramp)
            })
            .collect();
        (inv, scaling.attention_factor())
    }

    #[test]
    fn yarn_matches_f64_formula_and_scales_cos_sin() {
        for (theta, scaling) in [(1e6, qwen3_yarn()), (1e4, yarn_custom())] {
            let d = 128;
            let (want, factor) = yarn_f64(d, theta, &scaling);
            let got = inv_freq(d, theta, &scaling);
            assert_close(&got, &want, "yarn");
            // Position 0: cos = the attention factor, sin = 0; position 3 scaled alike.
            let table = cos_sin_table(d, 4, theta, &scaling);
            for i in 0..d / 2 {
                assert!((table[i] as f64 - factor).abs() <= 2.0 * f32::EPSILON as f64);
                assert_eq!(table[d / 2 + i], 0.0);
                let angle = 3.0 * want[i];
                let (c, s) = (table[3 * d + i] as f64, table[3 * d + d / 2 + i] as f64);
                let tol = 1e-6 + angle * 4.0 * f32::EPSILON as f64;
                assert!((c - factor * angle.cos()).abs() <= tol, "cos i={i}");
                assert!((s - factor * angle.sin()).abs() <= tol, "sin i={i}");
            }
        }
        // The defaults (Qwen3's setting) keep the first dims and interpolate the last.
        let got = inv_freq(128, 1e6, &qwen3_yarn());
        let default = inv_freq(128, 1e6, &RopeScaling::Default);
        assert_eq!(got[0], default[0]);
        assert!((got[63] as f64 - default[63] as f64 / 4.0).abs() <= FREQ_RTOL * got[63] as f64);
    }

    /// transformers' own inverse frequencies (f32 bit patterns), at head_dim 128, from:
    /// ```python
    /// import struct, torch
    /// from transformers import LlamaConfig, Qwen3Config
    /// from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    /// base = dict(hidden_size=1024, num_attention_heads=8, head_dim=128,
    ///             num_hidden_layers=1, intermediate_size=64, vocab_size=10)
    /// l3 = LlamaConfig(**base, max_position_embeddings=131072, rope_parameters=dict(
    ///     rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
    ///     high_freq_factor=4.0, original_max_position_embeddings=8192))
    /// yarn = Qwen3Config(**base, max_position_embeddings=131072, rope_parameters=dict(
    ///     rope_type="yarn", rope_theta=1000000.0, factor=4.0,
    ///     original_max_position_embeddings=32768))
    /// yarn2 = Qwen3Config(**base, max_position_embeddings=4096, rope_parameters=dict(
    ///     rope_type="yarn", rope_theta=10000.0, factor=2.0,
    ///     original_max_position_embeddings=2048, beta_fast=16, beta_slow=2, mscale=0.707,
    ///     mscale_all_dim=1.0, truncate=False))
    /// for c in (l3, yarn, yarn2):
    ///     emb = LlamaRotaryEmbedding(c)
    ///     print(emb.attention_scaling, [hex(struct.unpack("<I", struct.pack("<f", v))[0])
    ///                                   for v in emb.inv_freq.tolist()])
    ///     cos, sin = emb(torch.zeros(1), torch.tensor([[4097]]))
    ///     print(cos[0, 0, [0, 30, 63]].tolist(), sin[0, 0, [64, 94, 127]].tolist())
    /// ```
    /// (transformers 5.25, torch 2.15, CPU.)
    const TRANSFORMERS_LLAMA3: [u32; 64] = [
        0x3f800000, 0x3f508ac1, 0x3f29e1c6, 0x3f0a6384, 0x3ee177bc, 0x3eb7ab7d, 0x3e959ee3,
        0x3e73c461, 0x3e4693b0, 0x3e21c3a0, 0x3e03c6a0, 0x3dd6b19c, 0x3daee4ad, 0x3d8e7898,
        0x3d681e67, 0x3d3d1684, 0x3d1a08c8, 0x3cfaf53f, 0x3ccc6f49, 0x3ca68939, 0x3c87a9c3,
        0x3c5d06ec, 0x3c340d6d, 0x3c12ac7f, 0x3beef74f, 0x3bc2aa76, 0x3b9e9402, 0x3b812e35,
        0x3b527720, 0x3b0dfd06, 0x3ab3d11d, 0x3a60979e, 0x3a0995d2, 0x39a3f108, 0x393b2dd2,
        0x38c86886, 0x38a3418d, 0x3884fdbf, 0x3858ac81, 0x38308199, 0x380fc8f8, 0x37ea426f,
        0x37bed4f4, 0x379b7475, 0x377d45c3, 0x374e51f5, 0x3728126b, 0x3708ea0f, 0x36df10c4,
        0x36b5b687, 0x369406cb, 0x36712b80, 0x36447610, 0x36200a69, 0x36025f34, 0x35d46808,
        0x35ad07a7, 0x358cf400, 0x3565a54d, 0x353b12c7, 0x351864a7, 0x34f848c2, 0x34ca41b0,
        0x34a4c2ff,
    ];
    const TRANSFORMERS_YARN: [u32; 64] = [
        0x3f800000, 0x3f4e4bad, 0x3f263de0, 0x3f05f6ef, 0x3ed7e89b, 0x3eadfcff, 0x3e8c3504,
        0x3e61f835, 0x3e361887, 0x3e12bd91, 0x3dec7fd6, 0x3dbe94c6, 0x3d99940d, 0x3d778513,
        0x3d47763f, 0x3d20bc1d, 0x3d0186e3, 0x3cd0c1a8, 0x3ca8398b, 0x3c879008, 0x3c5a7bf2,
        0x3c301052, 0x3c0de12d, 0x3be4aa46, 0x3bb02377, 0x3b876388, 0x3b4fa550, 0x3b1ed248,
        0x3af241df, 0x3ab82bc0, 0x3a8b8207, 0x3a527db8, 0x3a1e0eb2, 0x39ec1968, 0x39af3d02,
        0x39811c3e, 0x393c93be, 0x39083e38, 0x38c23e9a, 0x38881d0a, 0x383a7753, 0x38164324,
        0x37f22ce2, 0x37c327b5, 0x379d43a4, 0x377d75d4, 0x374c3fbe, 0x372497ab, 0x3704a2b2,
        0x36d5c441, 0x36ac431d, 0x368ad0ed, 0x365fba4f, 0x36344a0e, 0x361148e3, 0x35ea2732,
        0x35bcb0c1, 0x35980e02, 0x35751070, 0x35457bab, 0x351f23e4, 0x35003dec, 0x34ceaf79,
        0x34a68e4c,
    ];
    const TRANSFORMERS_YARN_CUSTOM: [u32; 64] = [
        0x3f800000, 0x3f5dafd7, 0x3f3ff911, 0x3f263de0, 0x3f0ff59a, 0x3ef953cf, 0x3ed7e89b,
        0x3ebaf81b, 0x3ea1e89b, 0x3e8c3504, 0x3e72d423, 0x3e5247ed, 0x3e361887, 0x3e1db040,
        0x3e088d77, 0x3dec7fd6, 0x3dcccccd, 0x3db15978, 0x3d99940d, 0x3d84fe4d, 0x3d6655c2,
        0x3d471426, 0x3d266b09, 0x3d0aefb3, 0x3ce7a9e7, 0x3cc0d98e, 0x3ca04767, 0x3c84f985,
        0x3c5c3888, 0x3c35f90e, 0x3c160590, 0x3bf6bba8, 0x3bca52ba, 0x3ba562b6, 0x3b86b710,
        0x3b5a9728, 0x3b38449c, 0x3b1f91cc, 0x3b0a2e77, 0x3aef520e, 0x3acf3e38, 0x3ab3770f,
        0x3a9b690d, 0x3a86946f, 0x3a691528, 0x3a49d75c, 0x3a2ec98e, 0x3a175c0e, 0x3a03126f,
        0x39e301e2, 0x39c4948c, 0x39aa3b44, 0x39936a16, 0x397f4fac, 0x395d1725, 0x393f74d7,
        0x3925cb60, 0x390f9272, 0x38f8a815, 0x38d753e4, 0x38ba7753, 0x38a17916, 0x388bd472,
        0x38722ce2,
    ];

    /// Within one ulp of transformers, and equal bit for bit except where torch's `theta **
    /// x` differs: its vectorised f32 `pow` (Sleef, ≤ 1 ulp) is not correctly rounded, and
    /// this code uses the platform's `powf` (the default rope shares this).
    #[test]
    fn frequencies_equal_transformers_to_an_ulp() {
        for (name, theta, scaling, want, attention) in [
            ("llama3", 5e5, llama31(), TRANSFORMERS_LLAMA3, 1.0),
            (
                "yarn",
                1e6,
                qwen3_yarn(),
                TRANSFORMERS_YARN,
                1.138629436111989,
            ),
            (
                "yarn custom",
                1e4,
                yarn_custom(),
                TRANSFORMERS_YARN_CUSTOM,
                0.9810072637667154,
            ),
        ] {
            let got = inv_freq(128, theta, &scaling);
            let mut differ = 0;
            for (i, (g, &w)) in got.iter().zip(&want).enumerate() {
                let ulps = (g.to_bits() as i64 - w as i64).abs();
                assert!(
                    ulps <= 1,
                    "{name} inv_freq[{i}]: {g} vs {}",
                    f32::from_bits(w)
                );
                differ += usize::from(ulps != 0);
            }
            // The one known pow difference: theta 1e6, dim 37 (1e6^0.578125).
            assert!(differ <= 1, "{name}: {differ} frequencies differ");
            assert!(
                (scaling.attention_factor() - attention).abs() < 1e-15,
                "{name}"
            );
        }
    }

    /// cos/sin at position 4097 as transformers prints them (same snippet): f32 `cos`/`sin`
    /// implementations may differ by an ulp of the result, so 2e-7 of the attention factor.
    #[test]
    fn table_entries_equal_transformers() {
        let cases: [(f64, RopeScaling, [f64; 3], [f64; 3]); 3] = [
            (
                5e5,
                llama31(),
                [0.9347719550132751, 0.7884342670440674, 0.9999992251396179],
                [
                    0.3552483320236206,
                    -0.6151190400123596,
                    0.001257338561117649,
                ],
            ),
            (
                1e6,
                qwen3_yarn(),
                [1.0643588304519653, -0.3922536373138428, 1.138628602027893],
                [
                    0.4044962227344513,
                    -1.0689313411712646,
                    0.0014472323236986995,
                ],
            ),
            (
                1e4,
                yarn_custom(),
                [0.9170181155204773, 0.9643533229827881, 0.9536868333816528],
                [0.34850120544433594, -0.17999430000782013, 0.229905903339386],
            ),
        ];
        let p = 4097;
        for (theta, scaling, cos, sin) in cases {
            let table = cos_sin_table(128, p + 1, theta, &scaling);
            let row = &table[p * 128..];
            let tol = 2e-7 * scaling.attention_factor();
            for (k, i) in [0, 30, 63].into_iter().enumerate() {
                assert!(
                    (row[i] as f64 - cos[k]).abs() <= tol,
                    "{scaling:?} cos {i}: {} vs {}",
                    row[i],
                    cos[k]
                );
                assert!(
                    (row[64 + i] as f64 - sin[k]).abs() <= tol,
                    "{scaling:?} sin {i}: {} vs {}",
                    row[64 + i],
                    sin[k]
                );
            }
        }
    }
}
