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
/// W rows sharing each x chunk when the tile has 3–4 x rows: 12 accumulators, so the
/// FMA chains have slack (8 exactly fill two pipes of latency 4). The 3 × 4 tile is
/// [`block_3x4`], in assembly: with intrinsics the compiler spilled accumulators.
/// Measured at M = 16 and 32, one thread: 72–76 → 79–85 GFLOP/s.
const W_ROWS_WIDE: usize = 3;
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
/// for reads and writes at `i·out_stride + r` for every `i < M`, `r < R`, which nothing
/// else touches during the call.
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
                // SAFETY: AVX2+FMA (the contract). x rows `i0 .. i0 + x_rows ≤ m` and W
                // rows `r0 .. r0 + w_rows ≤ R` exist, so the tile's outputs (x row
                // `i0 + i`, W row `r0 + r`) are among the contract's writable ones; the
                // span lies in `0 ..= split_len(k)` and its bounds are multiples of 16.
                unsafe {
                    let out_tile = Out {
                        ptr: out.add(i0 * out_stride + r0),
                        stride: out_stride,
                    };
                    tile(&x, w_group, w_rows, x_rows, i0, span, out_tile);
                }
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
///
/// # Safety
/// AVX2+FMA are available; `x` holds rows `i0 .. i0 + x_rows` (as given and split) and
/// `w` holds `w_rows` rows of `x.k` bf16 bits, `1 ≤ w_rows ≤ 3`, `1 ≤ x_rows ≤ 4`; the
/// span's bounds are multiples of 16 within `split_len(k)`; `out` is valid for reads
/// and writes at `i·stride + r` for `i < x_rows`, `r < w_rows`, which nothing else
/// touches during the call.
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
    // `block_outputs` picks 3 W rows (fewer in a ragged last group), one for M = 1. Few x
    // rows: two accumulator sets per output keep enough FMA chains in flight.
    debug_assert!(
        w_rows
            <= if x_rows >= 3 {
                W_ROWS_WIDE
            } else {
                W_ROWS_NARROW
            }
    );
    // SAFETY: each arm's kernel covers exactly `w_rows` W rows × `x_rows` x rows (the
    // last arms the remaining 1–2), which the contract makes valid.
    unsafe {
        match (w_rows, x_rows) {
            (3, 4) => block_3x4(x, w, i0, span, out),
            (3, 3) => block::<3, 3, 1>(x, w, i0, span, out),
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
///
/// # Safety
/// AVX2+FMA are available; every `w_ptr[r]` and `x_ptr[i]` is valid for reading
/// elements `o .. o + 16`.
#[inline(always)]
unsafe fn pair<const R: usize, const X: usize, const U: usize>(
    w_ptr: &[*const u16; R],
    x_ptr: &[*const f32; X],
    o: usize,
    acc: &mut [[[__m256; X]; R]; U],
) {
    // SAFETY: the loads read W elements `o .. o + 16` (32 bytes) and x elements `o .. o
    // + 8` and `o + 8 .. o + 16`, all readable by the contract; unaligned loads need no
    // alignment; AVX2+FMA are the contract's.
    unsafe {
        let odd_mask = _mm256_set1_epi32(0xffff_0000_u32 as i32);
        let words: [__m256i; R] =
            std::array::from_fn(|r| _mm256_loadu_si256(w_ptr[r].add(o).cast()));
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
}

/// One half (even or odd) of a 16-element pair of [`block_3x4`] as assembly text: the
/// split x rows' vectors at `4·o + $x` bytes, each times the three widened W halves in
/// ymm12–14, into the accumulators ymm0–11 (x row i × W row r in `3·i + r`).
macro_rules! fmas_3x4 {
    ($x:literal) => {
        concat!(
            "vmovups ymm15, ymmword ptr [{x0} + 4*{o} + ",
            $x,
            "]\n",
            "vfmadd231ps ymm0, ymm12, ymm15\n",
            "vfmadd231ps ymm1, ymm13, ymm15\n",
            "vfmadd231ps ymm2, ymm14, ymm15\n",
            "vmovups ymm15, ymmword ptr [{x1} + 4*{o} + ",
            $x,
            "]\n",
            "vfmadd231ps ymm3, ymm12, ymm15\n",
            "vfmadd231ps ymm4, ymm13, ymm15\n",
            "vfmadd231ps ymm5, ymm14, ymm15\n",
            "vmovups ymm15, ymmword ptr [{x2} + 4*{o} + ",
            $x,
            "]\n",
            "vfmadd231ps ymm6, ymm12, ymm15\n",
            "vfmadd231ps ymm7, ymm13, ymm15\n",
            "vfmadd231ps ymm8, ymm14, ymm15\n",
            "vmovups ymm15, ymmword ptr [{x3} + 4*{o} + ",
            $x,
            "]\n",
            "vfmadd231ps ymm9, ymm12, ymm15\n",
            "vfmadd231ps ymm10, ymm13, ymm15\n",
            "vfmadd231ps ymm11, ymm14, ymm15\n",
        )
    };
}

/// The 3 W rows × 4 x rows tile: 12 accumulators, so every FMA chain has slack (the
/// 2 × 4 tile's 8 chains exactly fill two FMA pipes of latency 4, and any stall costs).
/// The K loop is one assembly block because with 12 accumulators, 3 widened W vectors
/// and an x vector all 16 registers are taken, and the compiler spilled an accumulator
/// rather than keep the mask in memory and reload the W words for the odd halves.
///
/// # Safety
/// As [`tile`] with 3 W rows and 4 x rows.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_3x4(x: &Rows<'_>, w: &[u16], i0: usize, span: Span, out: Out) {
    let k = x.k;
    let full = split_len(k);
    // SAFETY: x rows `i0 .. i0 + 4` and W rows `0 .. 3` exist (the contract), so each
    // row's start is inside its buffer.
    let x_ptr: [*const f32; 4] =
        std::array::from_fn(|i| unsafe { x.x_split.as_ptr().add((i0 + i) * full) });
    // SAFETY: as above.
    let w_ptr: [*const u16; 3] = std::array::from_fn(|r| unsafe { w.as_ptr().add(r * k) });
    // The next row group's line (see the module docs): 3 rows further on.
    let pf_ptr: [*const u16; 3] = std::array::from_fn(|r| w_ptr[r].wrapping_add(3 * k));
    let mut a: [__m256; 12] = [_mm256_setzero_ps(); 12];
    // One 16-element pair per iteration, prefetching each row's line 3 rows on (one
    // prefetch per line would do, but unrolling to whole lines measured no faster).
    // `o` counts elements: W at `w + 2·o` bytes, the split x at `x + 4·o` (even half)
    // and `x + 4·o + 32` (odd half).
    if span.start < span.end {
        // SAFETY: the loop reads W elements and split x elements `o .. o + 16` for `o`
        // from `span.start` by 16 while below `span.end` (both multiples of 16 within
        // `split_len(k)`), inside the rows the contract makes readable; it writes only
        // the registers it names (ymm0–11 in and out, ymm12–15 clobbered, `o`), no
        // memory (`readonly`) and no stack (`nostack`). Prefetches are hints that never
        // fault, so the next group's rows may lie past W. `ODD_MASK` is a 32-byte
        // aligned static. AVX2+FMA are the contract's.
        unsafe {
            std::arch::asm!(
                "2:",
                "prefetcht0 byte ptr [{p0} + 2*{o}]",
                "prefetcht0 byte ptr [{p1} + 2*{o}]",
                "prefetcht0 byte ptr [{p2} + 2*{o}]",
                // Even halves: the words shifted up.
                "vmovdqu ymm12, ymmword ptr [{w0} + 2*{o}]",
                "vmovdqu ymm13, ymmword ptr [{w1} + 2*{o}]",
                "vmovdqu ymm14, ymmword ptr [{w2} + 2*{o}]",
                "vpslld ymm12, ymm12, 16",
                "vpslld ymm13, ymm13, 16",
                "vpslld ymm14, ymm14, 16",
                fmas_3x4!("0"),
                // Odd halves: the words again from L1, masked with the constant in memory.
                "vmovdqu ymm12, ymmword ptr [{w0} + 2*{o}]",
                "vmovdqu ymm13, ymmword ptr [{w1} + 2*{o}]",
                "vmovdqu ymm14, ymmword ptr [{w2} + 2*{o}]",
                "vpand ymm12, ymm12, ymmword ptr [rip + {mask}]",
                "vpand ymm13, ymm13, ymmword ptr [rip + {mask}]",
                "vpand ymm14, ymm14, ymmword ptr [rip + {mask}]",
                fmas_3x4!("32"),
                "add {o}, 16",
                "cmp {o}, {end}",
                "jb 2b",
                o = inout(reg) span.start => _,
                end = in(reg) span.end,
                w0 = in(reg) w_ptr[0],
                w1 = in(reg) w_ptr[1],
                w2 = in(reg) w_ptr[2],
                p0 = in(reg) pf_ptr[0],
                p1 = in(reg) pf_ptr[1],
                p2 = in(reg) pf_ptr[2],
                x0 = in(reg) x_ptr[0],
                x1 = in(reg) x_ptr[1],
                x2 = in(reg) x_ptr[2],
                x3 = in(reg) x_ptr[3],
                mask = sym ODD_MASK,
                inout("ymm0") a[0],
                inout("ymm1") a[1],
                inout("ymm2") a[2],
                inout("ymm3") a[3],
                inout("ymm4") a[4],
                inout("ymm5") a[5],
                inout("ymm6") a[6],
                inout("ymm7") a[7],
                inout("ymm8") a[8],
                inout("ymm9") a[9],
                inout("ymm10") a[10],
                inout("ymm11") a[11],
                out("ymm12") _,
                out("ymm13") _,
                out("ymm14") _,
                out("ymm15") _,
                options(nostack, readonly),
            );
        }
    }
    // Register `3·i + r` holds x row i × W row r.
    let acc: [[[__m256; 4]; 3]; 1] = [std::array::from_fn(|r| {
        std::array::from_fn(|i| a[3 * i + r])
    })];
    // SAFETY: the 3 W row pointers and the 3 × 4 tile are the contract's.
    unsafe { finish(x, &w_ptr, &acc, i0, span, out) };
}

/// The high 16 bits of every 32-bit lane: the odd bf16 elements' mask, in memory for
/// [`block_3x4`].
#[repr(C, align(32))]
struct Mask([u32; 8]);
static ODD_MASK: Mask = Mask([0xffff_0000; 8]);

/// `R` W rows × x rows `i0 .. i0 + X`; with `U = 2` the even and odd halves accumulate
/// separately (more independent FMA chains when the tile is small).
///
/// # Safety
/// As [`tile`] with `R` W rows and `X` x rows.
#[inline(always)]
unsafe fn block<const R: usize, const X: usize, const U: usize>(
    x: &Rows<'_>,
    w: &[u16],
    i0: usize,
    span: Span,
    out: Out,
) {
    // SAFETY: x rows `i0 .. i0 + X` and W rows `0 .. R` exist (the contract), so the row
    // pointers are in bounds; `pair` reads elements `off .. off + 16 ≤ span.end ≤
    // split_len(k)` of those rows (spans are whole 16-element pairs); prefetches are hints
    // that never fault (`wrapping_add`: the address may lie past W); `finish` gets the
    // contract's outputs. AVX2+FMA are the contract's.
    unsafe {
        let k = x.k;
        let full = split_len(k);
        let x_ptr: [*const f32; X] =
            std::array::from_fn(|i| x.x_split.as_ptr().add((i0 + i) * full));
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
        finish(x, &w_ptr, &acc, i0, span, out);
    }
}

/// The tile's outputs from its accumulators: the U sets added, each summed across lanes,
/// the scalar K tail added on the last span, and written (first span) or added.
///
/// # Safety
/// AVX2+FMA are available; `w_ptr[r]` points at W row `r`'s `x.k` bf16 bits, `x.xs`
/// holds rows `i0 .. i0 + X`, and `out` is valid for reads and writes at
/// `i·out.stride + r` for `i < X`, `r < R`, which nothing else touches during the call.
#[inline(always)]
unsafe fn finish<const R: usize, const X: usize, const U: usize>(
    x: &Rows<'_>,
    w_ptr: &[*const u16; R],
    acc: &[[[__m256; X]; R]; U],
    i0: usize,
    span: Span,
    out: Out,
) {
    // SAFETY: the tail reads elements `full .. k` of x row `i0 + i` and W row `r`, and
    // the output is `(i, r)` with `i < X`, `r < R`: all valid by the contract, as are
    // AVX2+FMA.
    unsafe {
        let k = x.k;
        let full = split_len(k);
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
}
