//! AVX2+FMA register-blocked `x[M, K] · w[R, K]ᵀ` for bf16 weights over a block of W rows.
//!
//! Loop order (outer to inner): passes over [`K_CHUNK`]-long spans of K (for M > 4), then blocks of up
//! to [`X_ROWS`] x rows, then groups of [`W_ROWS_WIDE`] (for 1–2 x rows, [`W_ROWS_NARROW`];
//! for M = 1, one) W rows, then the span. One block of x rows over one span (`4 · 1024` f32, 16 KiB)
//! stays in L1 while the W block (sized by the caller to fit L2) streams past it, so
//! the bytes a step pulls from L2 are the narrow W chunks, not the twice-as-wide x rows.
//! W is read 16 bf16 at a time as 8 u32 words and widened (exactly) without shuffles:
//! `word << 16` is the even elements, `word & 0xffff_0000` the odd ones, so x comes in
//! pre-split by [`split_even_odd`] (per 16 elements: the 8 even ones, then the 8 odd
//! ones). Each widened half feeds one FMA per x row. W is prefetched one row group
//! ahead: at the same offset in the rows `R` below (the next group's rows; W rows are
//! contiguous, so that is `R·K` elements ahead of each stream, 4–12 KiB). Rows are a few
//! KiB long, so the hardware prefetchers, which stop at every 4 KiB page, would restart
//! on every other row; a prefetch only one row ahead (2 KiB at K = 1024) mostly fetched
//! lines the same tile was already reading.
//!
//! A single x row (decode of one sequence) is pure streaming: nothing in W is reused, so
//! the tile is one W row and the block is read front to back as one stream (its rows are
//! contiguous), prefetched [`SINGLE_ROW_PREFETCH`] ahead. Against the 3-row tile this
//! reads at the machine's streaming rate (measured: 2 threads 26 → 32 GB/s best case,
//! one thread 15 → 20).
//!
//! Accumulation is f32 in a fixed order (per span: per-lane partial sums, the even and
//! odd halves in separate sets for small tiles, then a fixed horizontal sum, then for the
//! last span the scalar K tail; the span sums added to the output in K order), so a
//! given input always gives the same result.

use std::arch::x86_64::*;

use super::super::simd::{has_avx2_fma, hsum_avx};

/// Rows of `x` sharing each widened W chunk.
pub(super) const X_ROWS: usize = 4;
/// W rows sharing each x chunk when the tile has 3–4 x rows: 8 accumulators plus the W
/// words, their widened halves, one x vector and the mask fit the 16 AVX registers
/// (a 3 × 4 tile spilled accumulators to the stack on every pair).
const W_ROWS_WIDE: usize = 2;
/// W rows per tile when it has 1–2 x rows: more rows keep enough FMA chains in flight.
const W_ROWS_NARROW: usize = 3;
/// Elements ahead that a one-row tile (M = 1) prefetches W: 1 KiB. Measured at K = 1024
/// and 3072, 1–8 KiB: nearer than 1 KiB leaves latency uncovered, farther ones evict
/// lines before their use or fetch across the next 4 KiB page too early.
const SINGLE_ROW_PREFETCH: usize = 512;
/// Split x elements per pass over K when there are several blocks of x rows: a block of
/// [`X_ROWS`] rows (16 KiB) stays in L1 while the W block streams past it (at K = 3072
/// whole rows would not, and the x loads would come from L2). With one block of x rows
/// (M ≤ 4) the W block streams past once and each W row is best read in one go, so K is
/// not split. A multiple of [`LINE_ELEMS`].
pub(super) const K_CHUNK: usize = 1024;
/// A multiple of both tile heights: W blocks of this many rows have no ragged tile.
pub(super) const W_ROWS_MULTIPLE: usize = 6;
/// f32 lanes per AVX register.
const LANES: usize = 8;
/// bf16 elements per 32-byte load: one even and one odd half of 8 lanes each.
const PAIR_ELEMS: usize = 16;
/// Elements per 64-byte cache line of bf16 weights: the unrolled step of the K loop.
const LINE_ELEMS: usize = 32;

/// Whether [`block_outputs`] may run on this CPU.
pub(super) fn available() -> bool {
    has_avx2_fma()
}

/// Length of one row of [`split_even_odd`]'s output: K rounded down to whole pairs.
pub(super) fn split_len(k: usize) -> usize {
    k / PAIR_ELEMS * PAIR_ELEMS
}

/// `x[M, K]` re-ordered for [`block_outputs`]: row `i` becomes [`split_len`]`(K)` values
/// where each 16-element group holds its 8 even elements, then its 8 odd ones.
/// The K tail beyond the last whole group is left out (the kernel reads it from `x`).
pub(super) fn split_even_odd(xs: &[f32], m: usize, k: usize, out: &mut Vec<f32>) {
    let len = split_len(k);
    out.clear();
    out.reserve(m * len);
    for row in xs.chunks_exact(k).take(m) {
        for group in row[..len].chunks_exact(PAIR_ELEMS) {
            out.extend(group.iter().step_by(2));
            out.extend(group.iter().skip(1).step_by(2));
        }
    }
}

/// `out[i·out_stride + r] = Σ_k x[i, k] · w[r, k]` for the `R = w.len() / K` W rows and
/// every `i < M`, where `x_split` is `x` through [`split_even_odd`].
///
/// # Safety
/// The CPU supports AVX2 and FMA ([`available`]); `xs` holds `M·K` values and `x_split`
/// their `M·`[`split_len`]`(K)` split copy, `w` holds `R·K` bf16 bits, and `out` is valid
/// for writes at `i·out_stride + r` for every `i < M`, `r < R`, which nothing else
/// touches during the call.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn block_outputs(
    xs: &[f32],
    x_split: &[f32],
    w: &[u16],
    m: usize,
    k: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let rows = w.len() / k;
    debug_assert!(xs.len() >= m * k && x_split.len() >= m * split_len(k));
    let x = Rows { xs, x_split, k };
    let full = split_len(k);
    let mut span = Span {
        start: 0,
        end: 0,
        first: true,
        last: false,
    };
    loop {
        // Whole chunks, but no short last one: it joins the chunk before.
        span.end = if m > X_ROWS && full - span.start >= K_CHUNK + K_CHUNK / 2 {
            span.start + K_CHUNK
        } else {
            full
        };
        span.last = span.end == full;
        let mut i0 = 0;
        while i0 < m {
            let x_rows = (m - i0).min(X_ROWS);
            let tile_rows = if x_rows >= 3 {
                W_ROWS_WIDE
            } else if m == 1 {
                1
            } else {
                W_ROWS_NARROW
            };
            let mut r0 = 0;
            while r0 < rows {
                let w_rows = (rows - r0).min(tile_rows);
                let w_group = &w[r0 * k..(r0 + w_rows) * k];
                let out_tile = Out {
                    ptr: out.add(i0 * out_stride + r0),
                    stride: out_stride,
                };
                tile(&x, w_group, w_rows, x_rows, i0, span, out_tile);
                r0 += w_rows;
            }
            i0 += x_rows;
        }
        if span.last {
            return;
        }
        span.start = span.end;
        span.first = false;
    }
}

/// The part of K one pass covers: split elements `start .. end`; the `first` pass
/// overwrites the outputs and later ones add to them; the `last` adds the scalar K tail.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    first: bool,
    last: bool,
}

/// Where a tile's outputs go: `ptr` is output (x row `i0`, W row `r0`) and x rows are
/// `stride` apart.
struct Out {
    ptr: *mut f32,
    stride: usize,
}

/// Dispatches one `w_rows × x_rows` register tile to its monomorphised kernel.
#[inline(always)]
unsafe fn tile(
    x: &Rows<'_>,
    w: &[u16],
    w_rows: usize,
    x_rows: usize,
    i0: usize,
    span: Span,
    out: Out,
) {
    // `block_outputs` picks 2 W rows for 3–4 x rows and 3 for 1–2 (fewer in a ragged last
    // group). Few x rows: two accumulator sets per output keep enough FMA chains in flight.
    debug_assert!(
        w_rows
            <= if x_rows >= 3 {
                W_ROWS_WIDE
            } else {
                W_ROWS_NARROW
            }
    );
    match (w_rows, x_rows) {
        (2, 4) => block::<2, 4, 1>(x, w, i0, span, out),
        (2, 3) => block::<2, 3, 1>(x, w, i0, span, out),
        (1, 4) => block::<1, 4, 2>(x, w, i0, span, out),
        (1, 3) => block::<1, 3, 2>(x, w, i0, span, out),
        (3, 2) => block::<3, 2, 2>(x, w, i0, span, out),
        (3, _) => block::<3, 1, 2>(x, w, i0, span, out),
        (2, 2) => block::<2, 2, 2>(x, w, i0, span, out),
        (2, _) => block::<2, 1, 2>(x, w, i0, span, out),
        (_, 2) => block::<1, 2, 2>(x, w, i0, span, out),
        _ => block::<1, 1, 2>(x, w, i0, span, out),
    }
}

/// The rows of `x`, as given and split.
struct Rows<'a> {
    xs: &'a [f32],
    x_split: &'a [f32],
    k: usize,
}

/// One 16-element pair at `o`: `acc_even[r][i] += w_even · x_even`, then the odd halves
/// into `acc_odd` (the same set when `U = 1`). Each W row is loaded once; both halves are
/// widened from the same words.
#[inline(always)]
unsafe fn pair<const R: usize, const X: usize, const U: usize>(
    w_ptr: &[*const u16; R],
    x_ptr: &[*const f32; X],
    o: usize,
    acc: &mut [[[__m256; X]; R]; U],
) {
    let odd_mask = _mm256_set1_epi32(0xffff_0000_u32 as i32);
    let words: [__m256i; R] = std::array::from_fn(|r| _mm256_loadu_si256(w_ptr[r].add(o).cast()));
    let even: [__m256; R] =
        std::array::from_fn(|r| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(words[r])));
    for (i, &xp) in x_ptr.iter().enumerate() {
        let xv = _mm256_loadu_ps(xp.add(o));
        for (acc_r, &wr) in acc[0].iter_mut().zip(&even) {
            acc_r[i] = _mm256_fmadd_ps(wr, xv, acc_r[i]);
        }
    }
    let odd: [__m256; R] =
        std::array::from_fn(|r| _mm256_castsi256_ps(_mm256_and_si256(words[r], odd_mask)));
    for (i, &xp) in x_ptr.iter().enumerate() {
        let xv = _mm256_loadu_ps(xp.add(o + LANES));
        for (acc_r, &wr) in acc[U - 1].iter_mut().zip(&odd) {
            acc_r[i] = _mm256_fmadd_ps(wr, xv, acc_r[i]);
        }
    }
}

/// `R` W rows × x rows `i0 .. i0 + X`; with `U = 2` the even and odd halves accumulate
/// separately (more independent FMA chains when the tile is small).
#[inline(always)]
unsafe fn block<const R: usize, const X: usize, const U: usize>(
    x: &Rows<'_>,
    w: &[u16],
    i0: usize,
    span: Span,
    out: Out,
) {
    let k = x.k;
    let full = split_len(k);
    let x_ptr: [*const f32; X] = std::array::from_fn(|i| x.x_split.as_ptr().add((i0 + i) * full));
    let w_ptr: [*const u16; R] = std::array::from_fn(|r| w.as_ptr().add(r * k));
    let mut acc = [[[_mm256_setzero_ps(); X]; R]; U];
    let mut off = span.start;
    // The next row group's line, or for a lone row the line SINGLE_ROW_PREFETCH ahead in
    // the one stream (see the module docs).
    let ahead = if R == 1 && X == 1 {
        SINGLE_ROW_PREFETCH
    } else {
        R * k
    };
    // One cache line of each W row per step: one prefetch per row, two pairs.
    while off + LINE_ELEMS <= span.end {
        for &wp in &w_ptr {
            // A hint only: it never faults, so running past the end of W is harmless.
            _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(off + ahead).cast());
        }
        pair(&w_ptr, &x_ptr, off, &mut acc);
        pair(&w_ptr, &x_ptr, off + PAIR_ELEMS, &mut acc);
        off += LINE_ELEMS;
    }
    // Spans start at multiples of K_CHUNK, so at most one 16-element pair is left.
    if off < span.end {
        pair(&w_ptr, &x_ptr, off, &mut acc);
    }
    for r in 0..R {
        for i in 0..X {
            let mut v = acc[0][r][i];
            for acc_u in &acc[1..] {
                v = _mm256_add_ps(v, acc_u[r][i]);
            }
            let mut sum = hsum_avx(v);
            if span.last {
                let x_row = x.xs.as_ptr().add((i0 + i) * k);
                for kk in full..k {
                    let wk = f32::from_bits((*w_ptr[r].add(kk) as u32) << 16);
                    sum = (*x_row.add(kk)).mul_add(wk, sum);
                }
            }
            let dst = out.ptr.add(i * out.stride + r);
            *dst = if span.first { sum } else { *dst + sum };
        }
    }
}
