//! AVX2+FMA+F16C kernels for `x[M, K] · w[R, K]ᵀ` over a block of `R` quantized W rows,
//! small `M` (decode): every W row is read from memory once per call and dequantized in
//! registers, never into memory.
//!
//! Register tiles: [`X_ROWS`] x rows × one W row (4 accumulators; a 4 × 2 tile needs 8
//! accumulators, 4 W vectors (codes and magnitudes), the x codes and temporaries — more
//! than the 16 AVX registers, and the compiler spilled accumulators, no faster than
//! 4 × 1 at M = 16; with one W row only the x loads repeat, and they hit L1), or for a
//! single x row (decode of one stream: pure streaming, nothing in W is reused) one x row
//! × [`W_ROWS_SINGLE`] W rows, so four independent accumulator chains hide the latency.
//! Each tile runs over the whole of K: an x tile (≤ 4 × 3072 codes) stays in L1 while
//! the caller's W block (sized for L2) streams past it.
//!
//! - Int8G32 (integer): per 32-block, `|w|` (`vpsignb w, w`) once per W row, then per x
//!   row `vpsignb x, w` (moves w's sign onto x, so the unsigned × signed `vpmaddubsw`
//!   sees `|w| ≤ 127`: a pair sums to at most 2·127·127 < 2¹⁵, no saturation),
//!   `vpmaddwd` by ones to 8 i32, convert, and one FMA by `d_w · d_x`.
//! - Int4G32 (integer): the 16 nibble bytes become 32 unsigned codes `0..=15` in block
//!   order (low nibbles, then high), fed to `vpmaddubsw` directly against the x codes
//!   (2·15·127 < 2¹⁵), then as for int8; the minimum term `m_w · Σx` uses each x
//!   block's exact sum, one scalar FMA per block.
//! - Fp8G128 (f32): e4m3 bytes widen to f16 bits exactly — sign-extend to 16 bits,
//!   shift left by 7, clear bit 14 — which is the e4m3 value × 2⁻⁸ (normal and
//!   subnormal alike: both formats shift the same exponent field), then `vcvtph2ps` and
//!   a multiply by `s · 256` per 8 weights, shared by every x row of the tile; x stays
//!   f32, so only f32 rounding separates the result from the reference. The NaN code
//!   `0x7f` (never written by [`crate::quant::quantize_block`]) decodes as a finite 480·s.
//!
//! Accumulation is in a fixed order (per tile: blocks in K order, 8 lanes, then a fixed
//! horizontal sum), so a given input always gives the same bits, whatever the threads.

use std::arch::x86_64::*;

use super::super::simd::{has_avx2_fma, hsum_avx};
use super::act::ACT_BLOCK;

/// x rows per tile when `M > 1`.
pub(super) const X_ROWS: usize = 4;
/// W rows per tile when `M = 1`.
const W_ROWS_SINGLE: usize = 4;

/// Bytes of one Int8G32 / Int4G32 / Fp8G128 block (the layouts of [`crate::quant::blocks`]).
const INT8_BYTES: usize = 34;
const INT4_BYTES: usize = 20;
const FP8_BYTES: usize = 132;
const FP8_ELEMS: usize = 128;

/// Whether the kernels may run on this CPU.
pub(super) fn available() -> bool {
    has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c")
}

/// Row pointers of an x tile (quantized codes, scales and sums, or f32 values).
#[derive(Clone, Copy)]
struct XTile<const XR: usize> {
    codes: [*const i8; XR],
    scales: [*const f32; XR],
    sums: [*const f32; XR],
    values: [*const f32; XR],
}

/// The x operand: `x[M, K]` quantized ([`super::act::QuantizedRows`]; Int8, Int4) or as
/// f32 values (Fp8), as base pointers of row-major buffers. The pointers a kind does not
/// use may dangle: they are only ever offset (wrapping), never read.
#[derive(Clone, Copy)]
pub(super) struct XRows {
    pub(super) codes: *const i8,
    pub(super) scales: *const f32,
    pub(super) sums: *const f32,
    pub(super) values: *const f32,
}

// SAFETY: the kernels only read through the pointers, and the caller keeps the buffers
// alive and unchanged while the tasks sharing an `XRows` run.
unsafe impl Send for XRows {}
// SAFETY: as for `Send`.
unsafe impl Sync for XRows {}

impl XRows {
    /// Rows `i0 .. i0 + XR` (of `k` elements, `k / 32` blocks).
    #[inline(always)]
    fn tile<const XR: usize>(self, i0: usize, k: usize) -> XTile<XR> {
        let blocks = k / ACT_BLOCK;
        XTile {
            codes: std::array::from_fn(|r| self.codes.wrapping_add((i0 + r) * k)),
            scales: std::array::from_fn(|r| self.scales.wrapping_add((i0 + r) * blocks)),
            sums: std::array::from_fn(|r| self.sums.wrapping_add((i0 + r) * blocks)),
            values: std::array::from_fn(|r| self.values.wrapping_add((i0 + r) * k)),
        }
    }
}

/// Which product a tile computes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Int8,
    Int4,
    Fp8,
}

/// `out[i·out_stride + r] = x_i · w_r` for `i < m` and the `rows` W rows at `w` (each
/// `row_bytes` long).
///
/// # Safety
/// [`available`] holds; `w` is valid for `rows · row_bytes` bytes of whole blocks of
/// `kind`'s dtype covering `k` elements per row; `x` holds `m` rows of `k` codes and
/// `k / 32` scales and sums (Int8, Int4) or of `k` values (Fp8); `out` is valid for
/// writes at `i·out_stride + r` for `i < m`, `r < rows`, and nothing else touches those
/// elements during the call.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn block_outputs(
    kind: Kind,
    x: XRows,
    m: usize,
    k: usize,
    w: *const u8,
    rows: usize,
    row_bytes: usize,
    out: *mut f32,
    out_stride: usize,
) {
    if m == 1 {
        let xt = x.tile::<1>(0, k);
        let mut j0 = 0;
        while j0 + W_ROWS_SINGLE <= rows {
            // SAFETY: x row 0 < m and W rows j0 .. j0 + 4 ≤ rows are the contract's, as
            // are their outputs.
            unsafe { tile::<1, W_ROWS_SINGLE>(kind, xt, k, w, j0, row_bytes, out, out_stride) };
            j0 += W_ROWS_SINGLE;
        }
        for j in j0..rows {
            // SAFETY: x row 0 < m and W row j < rows are the contract's, as is the output.
            unsafe { tile::<1, 1>(kind, xt, k, w, j, row_bytes, out, out_stride) };
        }
        return;
    }
    let mut i0 = 0;
    while i0 < m {
        let xr = X_ROWS.min(m - i0);
        let out_i = out.wrapping_add(i0 * out_stride);
        macro_rules! run {
            ($xr:literal) => {{
                let xt = x.tile::<$xr>(i0, k);
                for j in 0..rows {
                    // SAFETY: x rows i0 .. i0 + $xr ≤ m and W row j < rows are the
                    // contract's, as are their outputs (`out_i` is row i0 of `out`).
                    unsafe { tile::<$xr, 1>(kind, xt, k, w, j, row_bytes, out_i, out_stride) };
                }
            }};
        }
        match xr {
            1 => run!(1),
            2 => run!(2),
            3 => run!(3),
            _ => run!(4),
        }
        i0 += xr;
    }
}

/// One `XR × WR` tile over all of K, written to `out[r·out_stride + j0 + j]`.
///
/// # Safety
/// As for [`block_outputs`], for x rows `0..XR` of `x` and W rows `j0 .. j0 + WR`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<const XR: usize, const WR: usize>(
    kind: Kind,
    x: XTile<XR>,
    k: usize,
    w: *const u8,
    j0: usize,
    row_bytes: usize,
    out: *mut f32,
    out_stride: usize,
) {
    // SAFETY: W rows j0 .. j0 + WR exist (the contract).
    let w_rows: [*const u8; WR] = std::array::from_fn(|j| unsafe { w.add((j0 + j) * row_bytes) });
    let ahead = WR * row_bytes;
    // SAFETY: the contract of `block_outputs` covers each kernel's.
    let sums = unsafe {
        match kind {
            Kind::Int8 => int8_tile::<XR, WR>(x, w_rows, k / ACT_BLOCK, ahead),
            Kind::Int4 => int4_tile::<XR, WR>(x, w_rows, k / ACT_BLOCK, ahead),
            Kind::Fp8 => fp8_tile::<XR, WR>(x, w_rows, k / FP8_ELEMS, ahead),
        }
    };
    for (r, row) in sums.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            // SAFETY: output (r, j0 + j) is the contract's.
            unsafe { *out.add(r * out_stride + j0 + j) = v };
        }
    }
}

/// Prefetches the line `ahead` bytes past `p`: the same offset in the next tile's W rows
/// (rows are contiguous, so `WR · row_bytes` ahead, 1–13 KiB). The hardware prefetchers
/// stop at 4 KiB pages, which a W row of a few hundred bytes to 3 KiB crosses often;
/// measured at M = 1 from DRAM (LM head, one thread), G weights/s: int8 6.8 → 9.0,
/// int4 7.9 → 15.4, fp8 5.8 → 8.5 (bf16's kernel: 6.6).
#[inline(always)]
fn prefetch(p: *const u8, ahead: usize) {
    // SAFETY: a prefetch never faults, whatever the address; SSE is baseline on x86_64.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead).cast()) };
}

/// The f16 at `p` (unaligned) as f32.
///
/// # Safety
/// F16C is available and `p` is valid for reading 2 bytes.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: 2 readable bytes (the contract); the rest is register-only.
    unsafe {
        let bits = p.cast::<u16>().read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

/// Int8G32 tile: `Σ_b d_w·d_x·Σ q_w·q_x` per (x row, W row).
///
/// # Safety
/// AVX2+FMA+F16C; each `w[j]` holds `blocks` Int8G32 blocks; each x row holds
/// `blocks · 32` codes and `blocks` scales.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed form: constant trip counts, unrolled into registers
unsafe fn int8_tile<const XR: usize, const WR: usize>(
    x: XTile<XR>,
    w: [*const u8; WR],
    blocks: usize,
    ahead: usize,
) -> [[f32; WR]; XR] {
    // SAFETY: block b of each W row is bytes b·34 .. b·34 + 34 (the scale, then 32
    // codes), of each x row codes b·32 .. b·32 + 32 and scale b: readable by the
    // contract; the rest is register-only, with the contract's CPU features.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); WR]; XR];
        for b in 0..blocks {
            let mut w_abs = [_mm256_setzero_si256(); WR];
            let mut w_sign = [_mm256_setzero_si256(); WR];
            let mut d_w = [_mm256_setzero_ps(); WR];
            for j in 0..WR {
                let p = w[j].add(b * INT8_BYTES);
                prefetch(p, ahead);
                d_w[j] = _mm256_set1_ps(f16_at(p));
                let q = _mm256_loadu_si256(p.add(2).cast());
                w_sign[j] = q;
                w_abs[j] = _mm256_sign_epi8(q, q);
            }
            for r in 0..XR {
                let q_x = _mm256_loadu_si256(x.codes[r].add(b * ACT_BLOCK).cast());
                // A broadcast load: no shuffle, unlike broadcasting a computed scalar.
                let d_x = _mm256_broadcast_ss(&*x.scales[r].add(b));
                for j in 0..WR {
                    let signed = _mm256_sign_epi8(q_x, w_sign[j]);
                    let pairs = _mm256_maddubs_epi16(w_abs[j], signed);
                    let dots = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    let scale = _mm256_mul_ps(d_w[j], d_x);
                    acc[r][j] = _mm256_fmadd_ps(dots, scale, acc[r][j]);
                }
            }
        }
        acc.map(|row| row.map(|v| hsum_avx(v)))
    }
}

/// Int4G32 tile: `Σ_b d_w·d_x·Σ q_w·q_x + m_w·Σx` per (x row, W row).
///
/// # Safety
/// AVX2+FMA+F16C; each `w[j]` holds `blocks` Int4G32 blocks; each x row holds
/// `blocks · 32` codes and `blocks` scales and sums.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed form: constant trip counts, unrolled into registers
unsafe fn int4_tile<const XR: usize, const WR: usize>(
    x: XTile<XR>,
    w: [*const u8; WR],
    blocks: usize,
    ahead: usize,
) -> [[f32; WR]; XR] {
    // SAFETY: block b of each W row is bytes b·20 .. b·20 + 20 (d, m, 16 nibble bytes),
    // of each x row codes b·32 .. + 32, scale and sum b: readable by the contract; the
    // rest is register-only, with the contract's CPU features.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); WR]; XR];
        let mut min_acc = [[0f32; WR]; XR];
        for b in 0..blocks {
            let mut q_w = [_mm256_setzero_si256(); WR];
            let mut d_w = [_mm256_setzero_ps(); WR];
            let mut m_w = [0f32; WR];
            for j in 0..WR {
                let p = w[j].add(b * INT4_BYTES);
                prefetch(p, ahead);
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
                d_w[j] = _mm256_broadcastss_ps(dm);
                m_w[j] = _mm_cvtss_f32(_mm_movehdup_ps(dm));
                let bytes = _mm_loadu_si128(p.add(4).cast());
                // Low nibbles are elements 0..16, high nibbles 16..32.
                let both = _mm256_set_m128i(_mm_srli_epi16::<4>(bytes), bytes);
                q_w[j] = _mm256_and_si256(both, low);
            }
            for r in 0..XR {
                let q_x = _mm256_loadu_si256(x.codes[r].add(b * ACT_BLOCK).cast());
                let d_x = _mm256_broadcast_ss(&*x.scales[r].add(b));
                let sum_x = *x.sums[r].add(b);
                for j in 0..WR {
                    let pairs = _mm256_maddubs_epi16(q_w[j], q_x);
                    let dots = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    let scale = _mm256_mul_ps(d_w[j], d_x);
                    acc[r][j] = _mm256_fmadd_ps(dots, scale, acc[r][j]);
                    min_acc[r][j] = m_w[j].mul_add(sum_x, min_acc[r][j]);
                }
            }
        }
        let mut out = [[0f32; WR]; XR];
        for r in 0..XR {
            for j in 0..WR {
                out[r][j] = hsum_avx(acc[r][j]) + min_acc[r][j];
            }
        }
        out
    }
}

/// 16 e4m3 bytes at `p` as two vectors of 8 f32, each × `scale` (= the block's `s · 256`).
///
/// # Safety
/// AVX2+F16C; `p` is valid for reading 16 bytes.
#[inline(always)]
unsafe fn fp8x16(p: *const u8, scale: __m256) -> (__m256, __m256) {
    // SAFETY: 16 readable bytes (the contract); the rest is register-only.
    unsafe {
        let wide = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast()));
        // Sign-extended then << 7: the sign lands in bit 15, exponent and mantissa in
        // bits 7..14, and bit 14 gets a copy of the sign, which is cleared.
        let bits = _mm256_and_si256(_mm256_slli_epi16::<7>(wide), _mm256_set1_epi16(!0x4000));
        let lo = _mm256_cvtph_ps(_mm256_castsi256_si128(bits));
        let hi = _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(bits));
        (_mm256_mul_ps(lo, scale), _mm256_mul_ps(hi, scale))
    }
}

/// Fp8G128 tile: `Σ x · s·e4m3(q)` per (x row, W row), in f32.
///
/// # Safety
/// AVX2+FMA+F16C; each `w[j]` holds `blocks` Fp8G128 blocks; each x row holds
/// `blocks · 128` values.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed form: constant trip counts, unrolled into registers
unsafe fn fp8_tile<const XR: usize, const WR: usize>(
    x: XTile<XR>,
    w: [*const u8; WR],
    blocks: usize,
    ahead: usize,
) -> [[f32; WR]; XR] {
    // SAFETY: block b of each W row is bytes b·132 .. b·132 + 132 (the f32 scale, then
    // 128 codes), of each x row values b·128 .. + 128: readable by the contract; the
    // rest is register-only, with the contract's CPU features.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); WR]; XR];
        for b in 0..blocks {
            let mut scale = [_mm256_setzero_ps(); WR];
            for j in 0..WR {
                let p = w[j].add(b * FP8_BYTES);
                prefetch(p, ahead);
                prefetch(p.wrapping_add(64), ahead);
                let s = p.cast::<f32>().read_unaligned();
                scale[j] = _mm256_set1_ps(s * 256.0);
            }
            for c in (0..FP8_ELEMS).step_by(16) {
                let mut lo = [_mm256_setzero_ps(); WR];
                let mut hi = [_mm256_setzero_ps(); WR];
                for j in 0..WR {
                    (lo[j], hi[j]) = fp8x16(w[j].add(b * FP8_BYTES + 4 + c), scale[j]);
                }
                for r in 0..XR {
                    let xp = x.values[r].add(b * FP8_ELEMS + c);
                    let (x0, x1) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
                    for j in 0..WR {
                        acc[r][j] = _mm256_fmadd_ps(x0, lo[j], acc[r][j]);
                        acc[r][j] = _mm256_fmadd_ps(x1, hi[j], acc[r][j]);
                    }
                }
            }
        }
        acc.map(|row| row.map(|v| hsum_avx(v)))
    }
}

/// Quantizes whole 32-blocks of `xs` into `codes`, `scales` and `sums` as
/// [`super::act::QuantizedRows`] describes (codes rounded to nearest, ties to even; the
/// sums in a fixed order of their own).
///
/// # Safety
/// AVX2+FMA+F16C; `codes` holds `xs.len()` and `scales`, `sums` `xs.len() / 32` elements,
/// `xs.len()` a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_blocks(
    xs: &[f32],
    codes: &mut [i8],
    scales: &mut [f32],
    sums: &mut [f32],
) {
    debug_assert!(xs.len() % ACT_BLOCK == 0 && codes.len() >= xs.len());
    let blocks = xs
        .chunks_exact(ACT_BLOCK)
        .zip(codes.chunks_exact_mut(ACT_BLOCK));
    for ((src, dst), (scale, sum)) in blocks.zip(scales.iter_mut().zip(sums.iter_mut())) {
        // SAFETY: `src` and `dst` are 32 elements each: the loads read and the store
        // writes exactly them; the rest is register-only, with the contract's features.
        unsafe {
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(src.as_ptr().add(8 * i)));
            let magnitude = |x: __m256| _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
            let amax = _mm256_max_ps(
                _mm256_max_ps(magnitude(v[0]), magnitude(v[1])),
                _mm256_max_ps(magnitude(v[2]), magnitude(v[3])),
            );
            let amax = _mm_max_ps(
                _mm256_castps256_ps128(amax),
                _mm256_extractf128_ps::<1>(amax),
            );
            let amax = _mm_max_ps(amax, _mm_movehl_ps(amax, amax));
            let amax = _mm_cvtss_f32(_mm_max_ss(amax, _mm_movehdup_ps(amax)));
            let d = amax / 127.0;
            let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            // |x · inv| ≤ 127 up to rounding, so the conversions never saturate beyond ±127.
            let q: [__m256i; 4] = v.map(|x| _mm256_cvtps_epi32(_mm256_mul_ps(x, inv)));
            let packed = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            // The packs interleave 4-byte groups across the two 128-bit lanes: restore order.
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let packed = _mm256_permutevar8x32_epi32(packed, order);
            _mm256_storeu_si256(dst.as_mut_ptr().cast(), packed);
            *scale = d;
            *sum = hsum_avx(_mm256_add_ps(
                _mm256_add_ps(v[0], v[1]),
                _mm256_add_ps(v[2], v[3]),
            ));
        }
    }
}
