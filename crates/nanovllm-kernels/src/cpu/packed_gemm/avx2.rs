//! AVX2+FMA body of the packed GEMM: W slice widening into panels, the block loops and
//! the `MR × NR` micro-kernel (`MR` broadcasts of x times two 8-wide W vectors per k).

use std::arch::x86_64::*;

use super::super::parallel::OutPtr;
use super::super::simd::has_avx2_fma;
use super::{ColumnBlock, Shape, WLine, WeightRows, KC, MC, MR, NR};

/// Whether [`column_block`] may run on this CPU.
pub(super) fn available() -> bool {
    has_avx2_fma()
}

/// All output rows × the block's columns: for each KC slice of K, widen the block's W
/// rows into panels, then sweep every MC-row block of `x` over them.
///
/// # Safety
/// AVX2+FMA are available; `packed_x` is `x[m, k]` packed by `pack_x`, `w` holds `n`
/// rows of `k` weights ([`WeightRows::holds`]), and the output columns `n0 .. n0 + cols` of all `m` rows (row stride `n`)
/// behind `out` are this call's alone.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn column_block(
    packed_x: &[f32],
    w: WeightRows,
    shape: Shape,
    block: ColumnBlock,
    packed_w: &mut Vec<WLine>,
    out: OutPtr,
) {
    let Shape { m, k, n } = shape;
    let panels_n = block.cols.div_ceil(NR);
    let x_panels = m.div_ceil(MR);
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        match w {
            // SAFETY: AVX2 (the contract); `w` holds `n·k` bits, so it has the block's
            // rows `n0 .. n0 + cols ≤ n`; `k0 + kc ≤ k`.
            WeightRows::Bf16(w) => unsafe { pack_w(w, k, block, k0, kc, packed_w) },
            // `k0` is a multiple of KC and `kc` of the block (`holds`).
            WeightRows::Quant { dtype, bytes } => {
                super::super::quant_matmul::pack_panels(dtype, bytes, k, block, k0, kc, packed_w)
            }
        }
        let accumulate = k0 > 0;
        let mut xp0 = 0;
        while xp0 < x_panels {
            let xp_end = (xp0 + MC / MR).min(x_panels);
            for jp in 0..panels_n {
                // SAFETY: `pack_w` left `panels_n` panels of `kc` lines in `packed_w`.
                let w_panel = unsafe { packed_w.as_ptr().add(jp * kc) }.cast::<f32>();
                let cols = NR.min(block.cols - jp * NR);
                for xp in xp0..xp_end {
                    let rows = MR.min(m - xp * MR);
                    // SAFETY: x panel `xp < ⌈m/MR⌉` of the packed `[⌈m/MR⌉][k][MR]` x,
                    // from element `k0` of K, holds `kc` lines of `MR`; W panel `jp`
                    // holds `kc` lines of `NR`. The tile is output rows `xp·MR ..
                    // xp·MR + rows ≤ m`, columns `n0 + jp·NR .. + cols ≤ n0 + block.cols`:
                    // the contract gives those to this call. AVX2+FMA are the contract's.
                    unsafe {
                        let x_panel = packed_x.as_ptr().add((xp * k + k0) * MR);
                        let c = out.get().add(xp * MR * n + block.n0 + jp * NR);
                        let tile = Tile {
                            c,
                            ldc: n,
                            rows,
                            cols,
                            accumulate,
                        };
                        micro_kernel(kc, x_panel, w_panel, tile);
                    }
                }
            }
            xp0 = xp_end;
        }
        k0 += kc;
    }
}

/// Widens W rows `n0 .. n0 + cols`, elements `k0 .. k0 + kc`, into `[⌈cols/NR⌉][kc][NR]`
/// panels (zeros past the block's last row). Whole groups of 8 rows × 8 elements go
/// through [`widen_transpose_8x8`]; the ragged rest element by element.
///
/// # Safety
/// AVX2 is available; `w` holds rows `block.n0 .. block.n0 + block.cols` of `k` bf16
/// bits, and `k0 + kc ≤ k`.
#[inline(always)]
unsafe fn pack_w(
    w: &[u16],
    k: usize,
    block: ColumnBlock,
    k0: usize,
    kc: usize,
    packed: &mut Vec<WLine>,
) {
    const GROUP: usize = 8;
    let panels = block.cols.div_ceil(NR);
    // Every element is written below (rows past the block as zeros), so no fill first.
    packed.resize(panels * kc, WLine([0.0; NR]));
    let whole_k = kc / GROUP * GROUP;
    for p in 0..panels {
        let panel = &mut packed[p * kc..(p + 1) * kc];
        let rows = NR.min(block.cols - p * NR);
        let row_start = |j: usize| (block.n0 + p * NR + j) * k + k0;
        for j0 in (0..rows / GROUP * GROUP).step_by(GROUP) {
            // SAFETY: rows `j0 + i < rows` of the block exist in `w` (the contract).
            let src: [*const u16; GROUP] =
                std::array::from_fn(|i| unsafe { w.as_ptr().add(row_start(j0 + i)) });
            for kk in (0..whole_k).step_by(GROUP) {
                // SAFETY: elements `k0 + kk .. k0 + kk + 8 ≤ k0 + kc` of each row are in
                // `w` (the contract); AVX2 is the contract's.
                let columns = unsafe { widen_transpose_8x8(&src, kk) };
                for (c, column) in columns.iter().enumerate() {
                    // SAFETY: a line holds `NR` floats and `j0 + 8 ≤ rows ≤ NR`; AVX is
                    // the contract's.
                    unsafe { _mm256_storeu_ps(panel[kk + c].0.as_mut_ptr().add(j0), *column) };
                }
            }
        }
        for j in 0..rows {
            let src = &w[row_start(j)..row_start(j) + kc];
            let first_k = if j < rows / GROUP * GROUP { whole_k } else { 0 };
            for (line, &bits) in panel[first_k..].iter_mut().zip(&src[first_k..]) {
                line.0[j] = f32::from_bits((bits as u32) << 16);
            }
        }
        if rows < NR {
            for line in panel.iter_mut() {
                line.0[rows..].fill(0.0);
            }
        }
    }
}

/// Elements `kk .. kk + 8` of the 8 bf16 rows at `src`, widened, as 8 column vectors:
/// column `c` holds element `kk + c` of rows 0..8.
///
/// # Safety
/// AVX2 is available and each `src[i]` is valid for reading elements `kk .. kk + 8`.
#[inline(always)]
unsafe fn widen_transpose_8x8(src: &[*const u16; 8], kk: usize) -> [__m256; 8] {
    // SAFETY: the loads read elements `kk .. kk + 8` (16 bytes, unaligned) of each row,
    // readable by the contract; the rest is register-only; AVX2 is the contract's.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| {
            let bits = _mm_loadu_si128(src[i].add(kk).cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
        });
        // Pairs of rows interleaved, then pairs of pairs, then the two 128-bit halves.
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // u[4h + q]: rows 4h..4h + 4 of columns q (low half) and q + 4 (high half).
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let (h, q) = (i / 4, i % 4);
            let (a, b) = (t[4 * h + q / 2], t[4 * h + 2 + q / 2]);
            if q % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(a, b)
            } else {
                _mm256_shuffle_ps::<0xEE>(a, b)
            }
        });
        std::array::from_fn(|c| {
            let (a, b) = (u[c % 4], u[4 + c % 4]);
            if c < 4 {
                _mm256_permute2f128_ps::<0x20>(a, b)
            } else {
                _mm256_permute2f128_ps::<0x31>(a, b)
            }
        })
    }
}

/// Where a micro-kernel's `MR × NR` tile goes: `rows × cols` of it are valid, at `c`
/// with rows `ldc` apart; `accumulate` adds to what is there instead of overwriting.
struct Tile {
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
}

/// `tile (+)= x_panel[kc][MR] · w_panel[kc][NR]`.
///
/// # Safety
/// AVX2+FMA are available; `x_panel` is valid for reading `kc · MR` f32 and `w_panel`
/// `kc · NR`; `tile.c` is valid for reads and writes at `i·ldc + j` for `i < rows ≤ MR`,
/// `j < cols ≤ NR`, which nothing else touches during the call.
#[inline(always)]
unsafe fn micro_kernel(kc: usize, x_panel: *const f32, w_panel: *const f32, tile: Tile) {
    // SAFETY: W reads are line `kk < kc`, elements `0 .. 16 = NR`; x reads element `kk ·
    // MR + i`, `i < MR`; a full tile (rows = MR, cols = NR) loads and stores rows `i < MR`,
    // columns `0 .. 16`, a ragged one only `i < rows`, `j < cols`; the other stores go to
    // the local `full`. All are valid by the contract, as are AVX2+FMA.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for kk in 0..kc {
            let w0 = _mm256_loadu_ps(w_panel.add(kk * NR));
            let w1 = _mm256_loadu_ps(w_panel.add(kk * NR + 8));
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*x_panel.add(kk * MR + i));
                acc_i[0] = _mm256_fmadd_ps(xv, w0, acc_i[0]);
                acc_i[1] = _mm256_fmadd_ps(xv, w1, acc_i[1]);
            }
        }
        if tile.rows == MR && tile.cols == NR {
            for (i, acc_i) in acc.iter().enumerate() {
                let c = tile.c.add(i * tile.ldc);
                let (mut v0, mut v1) = (acc_i[0], acc_i[1]);
                if tile.accumulate {
                    v0 = _mm256_add_ps(_mm256_loadu_ps(c), v0);
                    v1 = _mm256_add_ps(_mm256_loadu_ps(c.add(8)), v1);
                }
                _mm256_storeu_ps(c, v0);
                _mm256_storeu_ps(c.add(8), v1);
            }
            return;
        }
        // A ragged edge: only the valid part exists in the output.
        let mut full = [[0.0f32; NR]; MR];
        for (row, acc_i) in full.iter_mut().zip(&acc) {
            _mm256_storeu_ps(row.as_mut_ptr(), acc_i[0]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), acc_i[1]);
        }
        for (i, row) in full.iter().enumerate().take(tile.rows) {
            let c = tile.c.add(i * tile.ldc);
            for (j, &v) in row.iter().enumerate().take(tile.cols) {
                let prev = if tile.accumulate { *c.add(j) } else { 0.0 };
                *c.add(j) = prev + v;
            }
        }
    }
}
