//! Grouped GEMM: many small `x_e · W_eᵀ` products, one per expert, in one parallel pass.
//!
//! `x: f32 [R, K]` holds the rows of every expert back to back (expert `e` owns rows
//! `offsets[e] .. offsets[e + 1]`), `w: [E, N, K]` is the stacked expert weights (f32, bf16
//! or f16) and `out: f32 [R, N]` gets `out[r] = x[r] · W_{e(r)}ᵀ`.
//!
//! Work items are (expert, tile of W_e rows) pairs over the experts that own rows, all
//! handed to rayon at once, so a few busy experts still fill every core. Each item reads
//! its tile of W once:
//! - one row (a decode token alone on its expert): dot products; bf16 dots the raw bits,
//!   f16 widens each W row once into a per-thread scratch row;
//! - more rows: the tile is widened (narrow dtypes) into a per-thread f32 buffer and
//!   multiplied by the expert's rows with `gemm` (already at 2–16 rows gemm beats one
//!   dot product per row and W row: 2.5× at 64 decode tokens, `benches/moe_layer.rs`).
//!
//! Items write disjoint blocks of `out` (their expert's rows × their tile's columns).

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::super::check::Floats;
use super::super::matmul::gemm_x_wt;
use super::super::parallel::{with_taken, worth_parallel, OutPtr};
use super::super::simd::{dot_bf16, dot_f32};

/// Up to this many rows an expert takes the dot-product path (see the module docs).
const DOT_MAX_ROWS: usize = 1;

/// f32 elements per widened weight tile (256 KiB: stays in L2 while gemm sweeps `x`).
const TILE_ELEMS: usize = 1 << 16;

thread_local! {
    /// Per-thread widened weight tile (or row), reused across items and calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The work items of a call, reused across calls.
    static ITEMS: RefCell<Vec<Item>> = const { RefCell::new(Vec::new()) };
}

/// The shape of one grouped product (validated by the caller).
#[derive(Clone, Copy, Debug)]
pub(super) struct GroupedShape<'a> {
    /// `E + 1` row offsets into `x` / `out`, non-decreasing, last = R.
    pub offsets: &'a [usize],
    /// Output features per expert (rows of each W_e).
    pub n: usize,
    /// Input features (columns of x and of each W_e).
    pub k: usize,
}

/// One unit of work: rows `row0 .. row0 + rows` of `x` times W_e rows `n0 .. n0 + tile_n`.
#[derive(Clone, Copy, Debug)]
struct Item {
    expert: usize,
    row0: usize,
    rows: usize,
    n0: usize,
    tile_n: usize,
}

/// `out[r] = x[r] · W_{e(r)}ᵀ` for every row (see the module docs).
pub(super) fn grouped_matmul(x: &[f32], w: Floats, shape: GroupedShape, out: &mut [f32]) {
    let GroupedShape { offsets, n, k } = shape;
    let rows_total = offsets.last().copied().unwrap_or(0);
    // Checked in release too: items write `out` through a raw pointer, and an expert's
    // rows `offsets[e] .. offsets[e + 1]` must lie in it (one pass over E per call).
    assert!(x.len() >= rows_total * k && out.len() >= rows_total * n);
    assert!(offsets.iter().all(|&o| o <= rows_total));
    if rows_total == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..rows_total * n].fill(0.0);
        return;
    }
    // Taken, not borrowed: the items outlive a parallel loop (see `with_taken`).
    with_taken(&ITEMS, |items| {
        work_items(offsets, n, k, items);
        let out_ptr = OutPtr(out.as_mut_ptr());
        let run = |item: &Item| {
            // SAFETY: `item` covers rows row0..row0+rows (≤ R: every offset is, asserted
            // above) and columns n0..n0+tile_n (≤ n) of `out`, which holds R·n (asserted
            // above); no other item touches that block.
            unsafe { run_item(x, w, n, k, *item, out_ptr.get()) }
        };
        if worth_parallel(2 * rows_total * n * k) {
            items.par_iter().for_each(run);
        } else {
            items.iter().for_each(run);
        }
    });
}

/// Splits every expert that owns rows into tiles of W rows: tiles fill [`TILE_ELEMS`] but
/// leave ≥ 4 items per thread over all experts, for balance.
fn work_items(offsets: &[usize], n: usize, k: usize, items: &mut Vec<Item>) {
    let active = offsets.windows(2).filter(|w| w[1] > w[0]).count();
    let by_cache = (TILE_ELEMS / k).max(16);
    let by_balance = (active * n)
        .div_ceil(4 * rayon::current_num_threads())
        .max(16);
    let tile_rows = by_cache.min(by_balance).next_multiple_of(16);
    items.clear();
    // Room for every expert at once, so the list stops growing after its first call
    // whichever experts the tokens pick.
    items.reserve(offsets.len().saturating_sub(1) * n.div_ceil(tile_rows));
    for (expert, bounds) in offsets.windows(2).enumerate() {
        let (row0, rows) = (bounds[0], bounds[1].saturating_sub(bounds[0]));
        if rows == 0 {
            continue;
        }
        for n0 in (0..n).step_by(tile_rows) {
            items.push(Item {
                expert,
                row0,
                rows,
                n0,
                tile_n: tile_rows.min(n - n0),
            });
        }
    }
}

/// Computes one item's block of `out` (row stride `n`).
///
/// # Safety
/// `out` is valid for writes at `r·n + j` for `r` in the item's rows and `j` in its
/// columns, and nothing else touches those elements during the call.
unsafe fn run_item(x: &[f32], w: Floats, n: usize, k: usize, item: Item, out: *mut f32) {
    let Item {
        expert,
        row0,
        rows,
        n0,
        tile_n,
    } = item;
    let xs = &x[row0 * k..(row0 + rows) * k];
    // Element offset of W_e row n0 in the stacked weights.
    let w_start = (expert * n + n0) * k;
    // SAFETY: element (row0, n0) is one of the item's, valid by the contract.
    let out_block = unsafe { out.add(row0 * n + n0) };
    if rows <= DOT_MAX_ROWS {
        // SAFETY: xs is [rows, k]; out_block's `rows × tile_n` block (row stride n) is
        // the item's, which the contract gives to this call.
        unsafe { dot_rows(xs, w, w_start, rows, k, tile_n, out_block, n) };
        return;
    }
    let gemm_tile = |tile: &[f32]| {
        // Items already run in parallel, so each gemm call stays on its thread.
        // SAFETY: xs is [rows, k], tile is [tile_n, k] (callers pass exactly that), and
        // out_block's `rows × tile_n` block (row stride n) is the item's, which the
        // contract gives to this call.
        unsafe { gemm_x_wt(rows, tile_n, k, xs, tile, out_block, n, Parallelism::None) }
    };
    match w {
        Floats::F32(ws) => gemm_tile(&ws[w_start..w_start + tile_n * k]),
        // No rayon call happens while the scratch is borrowed, so the borrow cannot re-enter.
        _ => SCRATCH.with_borrow_mut(|tile| {
            tile.resize(tile_n * k, 0.0);
            w.convert_range(w_start, &mut tile[..tile_n * k]);
            gemm_tile(&tile[..tile_n * k]);
        }),
    }
}

/// Few rows: `out[i, j] = x_i · W row j` by dot products, each W row read (and widened) once.
///
/// # Safety
/// As [`run_item`], for the `rows × tile_n` block at `out` with row stride `stride`.
#[allow(clippy::too_many_arguments)]
unsafe fn dot_rows(
    xs: &[f32],
    w: Floats,
    w_start: usize,
    rows: usize,
    k: usize,
    tile_n: usize,
    out: *mut f32,
    stride: usize,
) {
    for j in 0..tile_n {
        let row_start = w_start + j * k;
        let write = |w_row: &[f32]| {
            for i in 0..rows {
                let dot = dot_f32(&xs[i * k..(i + 1) * k], w_row);
                // SAFETY: output (i, j) with i < rows, j < tile_n is in the block the
                // contract gives to this call.
                unsafe { *out.add(i * stride + j) = dot };
            }
        };
        match w {
            Floats::F32(ws) => write(&ws[row_start..row_start + k]),
            Floats::BF16(ws) if rows == 1 => {
                let dot = dot_bf16(xs, bytemuck::cast_slice(&ws[row_start..row_start + k]));
                // SAFETY: as in `write`, for the one row.
                unsafe { *out.add(j) = dot };
            }
            // No rayon call happens while the scratch is borrowed.
            _ => SCRATCH.with_borrow_mut(|row| {
                row.resize(k, 0.0);
                w.convert_range(row_start, &mut row[..k]);
                write(&row[..k]);
            }),
        }
    }
}
