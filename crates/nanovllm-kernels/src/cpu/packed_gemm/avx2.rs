//! AVX2+FMA body of the packed GEMM: W slice widening into panels, the block loops and
//! the `MR × NR` micro-kernel (`MR` broadcasts of x times two 8-wide W vectors per k).

use std::arch::x86_64::*;

use super::super::parallel::OutPtr;
use super::super::simd::has_avx2_fma;
use super::{ColumnBlock, Shape, WLine, KC, MC, MR, NR};

/// Whether [`column_block`] may run on this CPU.
pub(super) fn available() -> bool {
    has_avx2_fma()
}

/// All output rows × the block's columns: for each KC slice of K, widen the block's W
/// rows into panels, then sweep every MC-row block of `x` over them.
///
/// # Safety
/// AVX2+FMA are available; `packed_x` is `x[m, k]` packed by `pack_x`, `w` holds `n·k`
/// bf16 bits, and the output columns `n0 .. n0 + cols` of all `m` rows (row stride `n`)
/// behind `out` are this call's alone.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn column_block(
    packed_x: &[f32],
    w: &[u16],
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
        pack_w(w, k, block, k0, kc, packed_w);
        let accumulate = k0 > 0;
        let mut xp0 = 0;
        while xp0 < x_panels {
            let xp_end = (xp0 + MC / MR).min(x_panels);
            for jp in 0..panels_n {
                let w_panel = packed_w.as_ptr().add(jp * kc).cast::<f32>();
                let cols = NR.min(block.cols - jp * NR);
                for xp in xp0..xp_end {
                    let x_panel = packed_x.as_ptr().add((xp * k + k0) * MR);
                    let rows = MR.min(m - xp * MR);
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
            xp0 = xp_end;
        }
        k0 += kc;
    }
}

/// Widens W rows `n0 .. n0 + cols`, elements `k0 .. k0 + kc`, into `[⌈cols/NR⌉][kc][NR]`
/// panels (zeros past the block's last row).
#[inline(always)]
unsafe fn pack_w(
    w: &[u16],
    k: usize,
    block: ColumnBlock,
    k0: usize,
    kc: usize,
    packed: &mut Vec<WLine>,
) {
    let panels = block.cols.div_ceil(NR);
    packed.clear();
    packed.resize(panels * kc, WLine([0.0; NR]));
    for p in 0..panels {
        let panel = &mut packed[p * kc..(p + 1) * kc];
        let rows = NR.min(block.cols - p * NR);
        for j in 0..rows {
            let start = (block.n0 + p * NR + j) * k + k0;
            let src = &w[start..start + kc];
            for (line, &bits) in panel.iter_mut().zip(src) {
                line.0[j] = f32::from_bits((bits as u32) << 16);
            }
        }
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
#[inline(always)]
unsafe fn micro_kernel(kc: usize, x_panel: *const f32, w_panel: *const f32, tile: Tile) {
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
