//! A fast exact f32 → FP8 e4m3 encoder for the KV cache's `store_kv`: bit arithmetic
//! instead of the reference's `log2`/`powi`, and the same byte for every f32
//! ([`crate::quant::fp8::f32_to_e4m3`]: round to nearest even, saturate at ±448, NaN →
//! `0x7f`), which the tests check on every class of input.

/// `f32` bits of 448, the largest finite e4m3 magnitude.
const MAX_BITS: u32 = 0x43e0_0000;
/// `f32` bits of 2⁻⁶, the smallest normal e4m3 magnitude.
const MIN_NORMAL_BITS: u32 = 0x3c80_0000;
/// 2²³: adding it to a value in `[0, 2²³)` rounds that value to an integer, ties to even.
const ROUND_TO_INT: f32 = 8_388_608.0;

/// The e4m3 byte nearest to `x` (ties to even), saturating at ±448; NaN gives `0x7f`.
#[inline(always)]
pub(crate) fn f32_to_e4m3_fast(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let abs = bits & 0x7fff_ffff;
    if abs > 0x7f80_0000 {
        return 0x7f;
    }
    if abs >= MAX_BITS {
        return sign | 0x7e;
    }
    if abs < MIN_NORMAL_BITS {
        // Subnormal codes: m · 2⁻⁹ for m = 0..=8 (8 is the smallest normal, 0x08). The
        // scaling by 2⁹ is exact and the sum rounds to the nearest integer, ties to even.
        let m = (f32::from_bits(abs) * 512.0 + ROUND_TO_INT) - ROUND_TO_INT;
        return sign | m as u8;
    }
    // Normal: keep 3 of the 23 mantissa bits, rounding to nearest even (a carry moves
    // into the exponent), then rebias the exponent from 127 to 7. Below 448, the largest
    // result is 448 itself (0x7e).
    let rounded = abs + 0x7_ffff + ((abs >> 20) & 1);
    sign | ((rounded >> 20) - ((127 - 7) << 3)) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::fp8::{e4m3_to_f32, f32_to_e4m3};

    fn check(x: f32) {
        assert_eq!(
            f32_to_e4m3_fast(x),
            f32_to_e4m3(x),
            "x = {x:e} (bits {:#010x})",
            x.to_bits()
        );
    }

    /// Every e4m3 value, the midpoints between neighbours (ties) and one f32 ulp either
    /// side of them, both signs.
    #[test]
    fn codes_ties_and_their_neighbours() {
        let mut values: Vec<f32> = (0..=255u8)
            .map(e4m3_to_f32)
            .filter(|v| v.is_finite() && *v >= 0.0)
            .collect();
        values.sort_by(f32::total_cmp);
        values.dedup();
        let mut xs = values.clone();
        for w in values.windows(2) {
            let mid = (w[0] + w[1]) / 2.0;
            xs.extend([
                mid,
                f32::from_bits(mid.to_bits() - 1),
                f32::from_bits(mid.to_bits() + 1),
            ]);
        }
        for x in xs {
            check(x);
            check(-x);
        }
    }

    /// Zeros, f32 subnormals, saturation (448, just above, 464, the f32 maximum,
    /// infinities) and NaNs of both signs and several payloads.
    #[test]
    fn special_classes() {
        for x in [
            0.0f32,
            -0.0,
            f32::from_bits(1),
            f32::from_bits(0x007f_ffff),
            f32::MIN_POSITIVE,
            1.0 / 1024.0,
            448.0,
            f32::from_bits(448f32.to_bits() + 1),
            447.99,
            464.0,
            480.0,
            1e30,
            f32::MAX,
            f32::INFINITY,
        ] {
            check(x);
            check(-x);
        }
        for bits in [
            0x7fc0_0000u32,
            0x7f80_0001,
            0xffc0_0000,
            0xff80_0001,
            0x7fff_ffff,
        ] {
            assert_eq!(f32_to_e4m3_fast(f32::from_bits(bits)), 0x7f, "{bits:#x}");
            assert_eq!(f32_to_e4m3(f32::from_bits(bits)), 0x7f, "{bits:#x}");
        }
    }

    /// Every f32 whose exponent lies in the e4m3 range or just around it, sampled on a
    /// stride of the mantissa that walks every low-bit pattern class, plus random bits
    /// over the whole f32 range.
    #[test]
    fn sweep_of_exponents_and_random_bits() {
        for exp in 100u32..=140 {
            for m in (0..1u32 << 23).step_by(997) {
                check(f32::from_bits(exp << 23 | m));
            }
            // The mantissa patterns around the rounding point of 3 kept bits.
            for m in [
                0x7_ffff, 0x8_0000, 0x8_0001, 0x17_ffff, 0x18_0000, 0x18_0001,
            ] {
                check(f32::from_bits(exp << 23 | m));
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1_000_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            check(f32::from_bits((state >> 16) as u32));
        }
    }
}
