//! FP8 e4m3 ("fn": no infinities; `0x7f`/`0xff` are NaN; largest finite ±448), the scalar
//! reference every FP8 kernel is tested against.
//!
//! Encoding rounds to nearest, ties to even, and saturates: a finite value beyond ±448
//! becomes ±448 (as PyTorch's `to(torch.float8_e4m3fn)` of a pre-scaled tensor never
//! sees, and as vLLM's FP8 KV cache clamps). NaN encodes as `0x7f`.

/// Largest finite e4m3 magnitude.
pub const E4M3_MAX: f32 = 448.0;

/// The value of one e4m3 byte.
pub fn e4m3_to_f32(bits: u8) -> f32 {
    let sign = if bits & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = (bits >> 3) & 0x0f;
    let mant = (bits & 0x07) as f32;
    if bits & 0x7f == 0x7f {
        return f32::NAN;
    }
    let magnitude = if exp == 0 {
        mant * (1.0 / 512.0) // subnormal: m · 2^-9
    } else {
        (1.0 + mant / 8.0) * f32::powi(2.0, exp as i32 - 7)
    };
    sign * magnitude
}

/// The e4m3 byte nearest to `x` (ties to even), saturating at ±448.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7e;
    }
    // Below the smallest normal (2^-6) the step is 2^-9; m = 8 rounds up into the
    // smallest normal, whose encoding is 0b0000_1000 = 8, so the bits are m either way.
    if a < 1.0 / 64.0 {
        let m = (a * 512.0).round_ties_even() as u8;
        return sign | m;
    }
    let mut exp = a.log2().floor() as i32;
    // log2 of a value just below a power of two may round up: fix the exponent exactly.
    if f32::powi(2.0, exp) > a {
        exp -= 1;
    } else if f32::powi(2.0, exp + 1) <= a {
        exp += 1;
    }
    let mut m = ((a / f32::powi(2.0, exp) - 1.0) * 8.0).round_ties_even() as u32;
    if m == 8 {
        m = 0;
        exp += 1;
    }
    if exp > 8 || (exp == 8 && m > 6) {
        return sign | 0x7e;
    }
    sign | (((exp + 7) as u8) << 3) | m as u8
}

/// All 256 e4m3 values, for table-driven decoding.
pub fn e4m3_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|i| e4m3_to_f32(i as u8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finite_byte_round_trips() {
        for bits in 0..=255u8 {
            let x = e4m3_to_f32(bits);
            if x.is_nan() {
                assert!(bits & 0x7f == 0x7f);
                continue;
            }
            // -0 encodes as 0x80 and back.
            assert_eq!(f32_to_e4m3(x), bits, "byte {bits:#04x} = {x}");
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x08), 1.0 / 64.0);
        assert_eq!(e4m3_to_f32(0x01), 1.0 / 512.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(f32_to_e4m3(1e6), 0x7e);
        assert_eq!(f32_to_e4m3(-1e6), 0xfe);
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7f);
    }

    /// Against a brute-force nearest search over all finite codes (ties to the even code).
    #[test]
    fn encoding_is_the_nearest_value_ties_to_even() {
        let finite: Vec<(u8, f32)> = (0..=255u8)
            .map(|b| (b, e4m3_to_f32(b)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        let mut state = 0x1234_5678u64;
        let mut samples: Vec<f32> = (0..20_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                (u - 0.5) * 2.0 * 2f32.powi(((state >> 8) % 20) as i32 - 11)
            })
            .collect();
        // Exact midpoints between neighbours test the tie rule.
        let mut sorted: Vec<f32> = finite
            .iter()
            .map(|&(_, v)| v)
            .filter(|v| *v >= 0.0)
            .collect();
        sorted.sort_by(f32::total_cmp);
        sorted.dedup();
        samples.extend(sorted.windows(2).map(|w| (w[0] + w[1]) / 2.0));
        for x in samples {
            let got = f32_to_e4m3(x);
            let best = finite
                .iter()
                .filter(|(b, _)| (*b & 0x80 != 0) == x.is_sign_negative())
                .min_by(|(ba, va), (bb, vb)| {
                    let (da, db) = ((va - x).abs(), (vb - x).abs());
                    da.total_cmp(&db).then((ba & 1).cmp(&(bb & 1)))
                })
                .unwrap();
            assert_eq!(
                (e4m3_to_f32(got) - x).abs(),
                (best.1 - x).abs(),
                "x = {x}: got {got:#04x}, nearest {:#04x}",
                best.0
            );
            if (e4m3_to_f32(got) - x).abs() == (best.1 - x).abs() && got != best.0 {
                assert_eq!(got & 1, 0, "x = {x}: tie not broken to even ({got:#04x})");
            }
        }
    }
}
