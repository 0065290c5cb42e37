//! AVX2+FMA register-blocked `x[M, K] · w[R, K]ᵀ` for bf16 weights, `R ≤ 3` W rows.
//!
//! Each 8-wide bf16 chunk of a W row is loaded and widened (exact: a 16-bit shift) once
//! per block of up to [`X_ROWS`] rows of `x`, then feeds one FMA per x row; the x rows
//! stay in L1/L2 while W streams from memory once. Accumulation is f32 in a fixed order
//! (per-lane partial sums, then a fixed horizontal sum, then the scalar K tail), so a
//! given input always gives the same result.

use std::arch::x86_64::*;

use super::super::simd::has_avx2_fma;

/// W rows handled by one call of [`rows_outputs`].
pub(super) const W_ROWS: usize = 3;
/// Rows of `x` sharing each widened W chunk.
const X_ROWS: usize = 4;
/// f32 lanes per AVX register.
const LANES: usize = 8;

/// Whether [`rows_outputs`] may run on this CPU.
pub(super) fn available() -> bool {
    has_avx2_fma()
}

/// `dst[r·M + i] = Σ_k x[i, k] · w[r, k]` for the `R = w.len() / K` (1 to 3) W rows.
///
/// # Safety
/// The CPU supports AVX2 and FMA ([`available`]); `xs` holds `M·K` values, `w` holds
/// `R·K` bf16 bits with `R ≤ W_ROWS`, and `dst` holds `R·M` outputs.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn rows_outputs(xs: &[f32], w: &[u16], m: usize, k: usize, dst: &mut [f32]) {
    let rows = w.len() / k;
    debug_assert!(rows <= W_ROWS && xs.len() >= m * k && dst.len() >= rows * m);
    let mut i0 = 0;
    while i0 < m {
        let x_rows = (m - i0).min(X_ROWS);
        // Few x rows: two accumulator sets per output keep enough FMA chains in flight.
        match (rows, x_rows) {
            (3, 4) => block::<3, 4, 1>(xs, w, i0, m, k, dst),
            (3, 3) => block::<3, 3, 1>(xs, w, i0, m, k, dst),
            (3, 2) => block::<3, 2, 1>(xs, w, i0, m, k, dst),
            (3, _) => block::<3, 1, 2>(xs, w, i0, m, k, dst),
            (2, 4) => block::<2, 4, 1>(xs, w, i0, m, k, dst),
            (2, 3) => block::<2, 3, 1>(xs, w, i0, m, k, dst),
            (2, 2) => block::<2, 2, 2>(xs, w, i0, m, k, dst),
            (2, _) => block::<2, 1, 2>(xs, w, i0, m, k, dst),
            (_, 4) => block::<1, 4, 1>(xs, w, i0, m, k, dst),
            (_, 3) => block::<1, 3, 2>(xs, w, i0, m, k, dst),
            (_, 2) => block::<1, 2, 2>(xs, w, i0, m, k, dst),
            _ => block::<1, 1, 2>(xs, w, i0, m, k, dst),
        }
        i0 += x_rows;
    }
}

/// 8 bf16 values at `p` widened to f32.
#[inline(always)]
unsafe fn widen(p: *const u16) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
        _mm_loadu_si128(p.cast()),
    )))
}

/// Sum of the 8 lanes in a fixed order.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

/// `R` W rows × x rows `i0 .. i0 + X`, with `U` accumulator sets over alternating chunks.
#[inline(always)]
unsafe fn block<const R: usize, const X: usize, const U: usize>(
    xs: &[f32],
    w: &[u16],
    i0: usize,
    m: usize,
    k: usize,
    dst: &mut [f32],
) {
    let x_ptr: [*const f32; X] = std::array::from_fn(|i| xs.as_ptr().add((i0 + i) * k));
    let w_ptr: [*const u16; R] = std::array::from_fn(|r| w.as_ptr().add(r * k));
    let mut acc = [[[_mm256_setzero_ps(); X]; R]; U];
    let full = k / LANES * LANES;
    let step = LANES * U;
    let mut off = 0;
    while off + step <= full {
        for (u, acc_u) in acc.iter_mut().enumerate() {
            let o = off + u * LANES;
            let wv: [__m256; R] = std::array::from_fn(|r| widen(w_ptr[r].add(o)));
            for (i, &xp) in x_ptr.iter().enumerate() {
                let xv = _mm256_loadu_ps(xp.add(o));
                for (acc_r, &wr) in acc_u.iter_mut().zip(&wv) {
                    acc_r[i] = _mm256_fmadd_ps(wr, xv, acc_r[i]);
                }
            }
        }
        off += step;
    }
    // Leftover whole chunks go to the first accumulator set.
    while off < full {
        let wv: [__m256; R] = std::array::from_fn(|r| widen(w_ptr[r].add(off)));
        for (i, &xp) in x_ptr.iter().enumerate() {
            let xv = _mm256_loadu_ps(xp.add(off));
            for (acc_r, &wr) in acc[0].iter_mut().zip(&wv) {
                acc_r[i] = _mm256_fmadd_ps(wr, xv, acc_r[i]);
            }
        }
        off += LANES;
    }
    for r in 0..R {
        for i in 0..X {
            let mut v = acc[0][r][i];
            for acc_u in &acc[1..] {
                v = _mm256_add_ps(v, acc_u[r][i]);
            }
            let mut sum = hsum(v);
            for kk in full..k {
                let wk = f32::from_bits((*w_ptr[r].add(kk) as u32) << 16);
                sum = (*x_ptr[i].add(kk)).mul_add(wk, sum);
            }
            dst[r * m + i0 + i] = sum;
        }
    }
}
