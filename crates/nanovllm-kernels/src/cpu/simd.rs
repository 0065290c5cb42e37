//! Vector-friendly inner loops (dot products, axpy, sum of squares).
//!
//! Each loop is written once as an `#[inline(always)]` body generic over `FMA`, with
//! [`LANES`] independent accumulators so LLVM can vectorise the reduction without
//! reassociating floats. The public wrappers run the body compiled with `avx2,fma` when
//! the CPU has them (checked at runtime) and the baseline-target body otherwise. Bigger
//! kernels (attention) instantiate the bodies inside their own `avx2,fma` functions.
//!
//! Results differ from a sequential sum only by float rounding (the order is fixed, so
//! a given CPU always gives the same answer).

use super::convert::bf16_bits_to_f32;

/// Independent accumulators per reduction: 4 AVX registers, enough to hide FMA latency.
pub(crate) const LANES: usize = 32;

/// Whether the `avx2,fma` instantiations may run on this CPU (std caches the check).
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `a * b + acc`; fused only where the target has FMA (a libm call otherwise).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, acc: f32) -> f32 {
    if FMA {
        a.mul_add(b, acc)
    } else {
        a * b + acc
    }
}

/// Sums the accumulator lanes in a fixed pairwise tree (vector-friendly).
#[inline(always)]
fn reduce(acc: &[f32; LANES]) -> f32 {
    let mut v = *acc;
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            v[i] += v[i + width];
        }
        width /= 2;
    }
    v[0]
}

/// `Σ a[i]·b[i]` over the common length.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed form: constant trip count, vectorises
pub(crate) fn dot_f32_body<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (mut a, mut b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    // Fixed-size array chunks: the inner loop has a constant trip count, so LLVM keeps
    // the accumulators in full-width vector registers.
    while let (Some((xa, rest_a)), Some((xb, rest_b))) = (
        a.split_first_chunk::<LANES>(),
        b.split_first_chunk::<LANES>(),
    ) {
        for i in 0..LANES {
            acc[i] = madd::<FMA>(xa[i], xb[i], acc[i]);
        }
        (a, b) = (rest_a, rest_b);
    }
    let mut tail = 0.0f32;
    for (&x, &y) in a.iter().zip(b) {
        tail = madd::<FMA>(x, y, tail);
    }
    reduce(&acc) + tail
}

/// `Σ x[i]·w[i]` with `w` given as raw bf16 bits, widened on the fly.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed form: constant trip count, vectorises
pub(crate) fn dot_bf16_body<const FMA: bool>(x: &[f32], w: &[u16]) -> f32 {
    let n = x.len().min(w.len());
    let (mut x, mut w) = (&x[..n], &w[..n]);
    let mut acc = [0.0f32; LANES];
    while let (Some((xs, rest_x)), Some((ws, rest_w))) = (
        x.split_first_chunk::<LANES>(),
        w.split_first_chunk::<LANES>(),
    ) {
        for i in 0..LANES {
            acc[i] = madd::<FMA>(xs[i], bf16_bits_to_f32(ws[i]), acc[i]);
        }
        (x, w) = (rest_x, rest_w);
    }
    let mut tail = 0.0f32;
    for (&a, &b) in x.iter().zip(w) {
        tail = madd::<FMA>(a, bf16_bits_to_f32(b), tail);
    }
    reduce(&acc) + tail
}

/// `y[i] += alpha · x[i]` over the common length.
#[inline(always)]
pub(crate) fn axpy_body<const FMA: bool>(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (d, &s) in y.iter_mut().zip(x) {
        *d = madd::<FMA>(alpha, s, *d);
    }
}

/// Rows handled together by the 4-way kernels below.
pub(crate) const ROWS4: usize = 4;

/// `[q·k₀, q·k₁, q·k₂, q·k₃]` over the common length: the four dot products share
/// every load of `q`, and 16 lanes per row keep eight independent FMA chains.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed form: constant trip count, vectorises
pub(crate) fn dot4_body<const FMA: bool>(q: &[f32], k: [&[f32]; ROWS4]) -> [f32; ROWS4] {
    const W: usize = 16;
    let n = k.iter().fold(q.len(), |n, row| n.min(row.len()));
    let mut q = &q[..n];
    let [mut k0, mut k1, mut k2, mut k3] = k.map(|row| &row[..n]);
    let mut acc = [[0.0f32; W]; ROWS4];
    // Named rows and fixed-size chunks: every index is a constant, so each accumulator
    // stays in two vector registers.
    while let (Some((qc, q_rest)), Some((c0, r0)), Some((c1, r1)), Some((c2, r2)), Some((c3, r3))) = (
        q.split_first_chunk::<W>(),
        k0.split_first_chunk::<W>(),
        k1.split_first_chunk::<W>(),
        k2.split_first_chunk::<W>(),
        k3.split_first_chunk::<W>(),
    ) {
        for i in 0..W {
            acc[0][i] = madd::<FMA>(qc[i], c0[i], acc[0][i]);
            acc[1][i] = madd::<FMA>(qc[i], c1[i], acc[1][i]);
            acc[2][i] = madd::<FMA>(qc[i], c2[i], acc[2][i]);
            acc[3][i] = madd::<FMA>(qc[i], c3[i], acc[3][i]);
        }
        (q, k0, k1, k2, k3) = (q_rest, r0, r1, r2, r3);
    }
    let mut out = [0.0f32; ROWS4];
    for (r, row) in [k0, k1, k2, k3].into_iter().enumerate() {
        let mut tail = 0.0f32;
        for (&x, &y) in q.iter().zip(row) {
            tail = madd::<FMA>(x, y, tail);
        }
        let mut v = acc[r];
        let mut width = W / 2;
        while width > 0 {
            for i in 0..width {
                v[i] += v[i + width];
            }
            width /= 2;
        }
        out[r] = v[0] + tail;
    }
    out
}

/// `y[i] += w₀·x₀[i] + w₁·x₁[i] + w₂·x₂[i] + w₃·x₃[i]`, accumulated in that order (so
/// bit-identical to four [`axpy_body`] calls) with one load/store of `y` per element.
#[inline(always)]
pub(crate) fn axpy4_body<const FMA: bool>(w: [f32; ROWS4], x: [&[f32]; ROWS4], y: &mut [f32]) {
    let [x0, x1, x2, x3] = x;
    for ((((d, &a), &b), &c), &e) in y.iter_mut().zip(x0).zip(x1).zip(x2).zip(x3) {
        let acc = madd::<FMA>(w[0], a, *d);
        let acc = madd::<FMA>(w[1], b, acc);
        let acc = madd::<FMA>(w[2], c, acc);
        *d = madd::<FMA>(w[3], e, acc);
    }
}

/// `Σ x[i]²`.
#[inline(always)]
pub(crate) fn sum_squares_body<const FMA: bool>(x: &[f32]) -> f32 {
    dot_f32_body::<FMA>(x, x)
}

/// Generates a runtime-dispatching wrapper around a `<const FMA: bool>` body.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                /// The body compiled with `avx2,fma`.
                ///
                /// # Safety
                /// The CPU supports AVX2 and FMA ([`has_avx2_fma`]).
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $body::<true>($($arg),*)
                }
                if has_avx2_fma() {
                    // SAFETY: the CPU supports avx2 and fma (checked just above).
                    return unsafe { fast($($arg),*) };
                }
            }
            $body::<false>($($arg),*)
        }
    };
}

dispatch!(
    /// `Σ a[i]·b[i]` over the common length.
    pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 => dot_f32_body
);
dispatch!(
    /// `Σ x[i]·w[i]`, `w` as raw bf16 bits.
    pub(crate) fn dot_bf16(x: &[f32], w: &[u16]) -> f32 => dot_bf16_body
);
dispatch!(
    /// `Σ x[i]²`.
    pub(crate) fn sum_squares(x: &[f32]) -> f32 => sum_squares_body
);

/// Sum of the 8 lanes of an AVX register in a fixed order (for the `avx2,fma` kernels).
///
/// # Safety
/// The CPU supports AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn hsum_avx(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: register-only intrinsics (no memory access); the caller guarantees AVX,
    // which implies the SSE ones.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }
}
