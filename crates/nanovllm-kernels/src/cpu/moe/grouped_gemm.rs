//! Grouped GEMM: many small `x_e · W_eᵀ` products, one per expert, in one parallel pass.
//!
//! `x: f32 [R, K]` holds the rows of every expert back to back (expert `e` owns rows
//! `offsets[e] .. offsets[e + 1]`), `w: [E, N, K]` is the stacked expert weights (f32, bf16
//! or f16) and `out: f32 [R, N]` gets `out[r] = x[r] · W_{e(r)}ᵀ`.
//!
//! Work items are (expert, tile of W_e rows) pairs over the experts that own rows, all
//! handed to rayon at once, so a few busy experts still fill every core. Each item reads
//! its tile of W once:
//! - up to [`DOT_MAX_ROWS`] rows (decode tokens nearly alone on their expert): dot
//!   products, each W row read once; bf16 dots the raw bits (the row stays in L1 for the
//!   second), f16 widens each W row once into a per-thread scratch row;
//! - more rows, bf16 weights on AVX2+FMA: the packed GEMM of dense bf16 matmul
//!   ([`packed_gemm::column_block_bf16`]) on the expert's rows, packed once per call
//!   before the items run; tiles are at most [`packed_gemm::NC_MAX`] W rows, its block;
//! - more rows otherwise (f32 or f16 weights, or no AVX2): the tile is widened (narrow
//!   dtypes) into a per-thread f32 buffer and multiplied by the expert's rows with `gemm`.
//!
//! `benches/moe_layer.rs` (Mixtral-small layer, bf16; 2 cores): at T = 8 decode tokens
//! (~2 rows per expert) bf16 dots for two rows beat the packed GEMM by 1.04–1.08×, dots up
//! to four rows lost (1.16× slower); at T = 64 (~16 rows) the packed GEMM is 1.9–2.5× the
//! `gemm` crate.
//!
//! Allocation: the items, the packed rows and the widened W panels (one buffer per rayon
//! worker, indexed by worker, all held by the calling thread) are kept across calls and
//! sized for the call's worst case (any routing of the same `R`, `E`, `n`, `k`), so with
//! bf16 weights on AVX2 a warm call allocates nothing, whichever experts the tokens pick
//! and whichever worker runs which item. The `gemm` crate allocates its own packing
//! buffers, so the `gemm` path does.
//!
//! Items write disjoint blocks of `out` (their expert's rows × their tile's columns).

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::super::check::Floats;
use super::super::matmul::gemm_x_wt;
use super::super::packed_gemm::{self, ColumnBlock, Shape, WLine, MR};
use super::super::parallel::{with_taken, worth_parallel, OutPtr};
use super::super::simd::{dot_bf16, dot_f32};

/// Up to this many rows an expert takes the dot-product path (measured, see the module
/// docs).
const DOT_MAX_ROWS: usize = 2;

/// f32 elements per widened weight tile of the `gemm` path (256 KiB: stays in L2 while
/// gemm sweeps `x`).
const TILE_ELEMS: usize = 1 << 16;

/// Fewest W rows per tile (a multiple of the packed GEMM's register tile width).
const MIN_TILE_ROWS: usize = 16;

thread_local! {
    /// Per-thread widened weight tile (or row), reused across items and calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The work items of a call, reused across calls.
    static ITEMS: RefCell<Vec<Item>> = const { RefCell::new(Vec::new()) };
    /// The packed rows of every multi-row expert (packed path), reused across calls.
    static PACKED_X: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The widened W panels of each rayon worker, and a last one for items run on the
    /// calling thread (packed path), reused across calls.
    static W_PANELS: RefCell<Vec<Vec<WLine>>> = const { RefCell::new(Vec::new()) };
}

/// A call's W panel buffers, one per worker: an item uses its worker's only, and a worker
/// runs one item at a time (items make no rayon calls).
#[derive(Clone, Copy)]
struct PanelSlots {
    first: *mut Vec<WLine>,
    len: usize,
}
// SAFETY: the buffers outlive the items, and each is used by one thread at a time (its
// worker's, see the type's docs).
unsafe impl Send for PanelSlots {}
// SAFETY: as for `Send`: sharing `&PanelSlots` only copies the pointer out.
unsafe impl Sync for PanelSlots {}

impl PanelSlots {
    /// The calling thread's buffer: its worker index, or the last slot off the pool.
    ///
    /// # Safety
    /// The buffers outlive `'a` (the item's run), no other thread uses the slot of the
    /// caller's worker index meanwhile, and the caller holds no other borrow of it.
    unsafe fn mine<'a>(self) -> &'a mut Vec<WLine> {
        let slot = rayon::current_thread_index()
            .filter(|&i| i + 1 < self.len)
            .unwrap_or(self.len - 1);
        // SAFETY: `slot < len`, and the contract makes the borrow exclusive.
        unsafe { &mut *self.first.add(slot) }
    }
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
    /// Where the expert's packed rows start in the packed buffer (packed path, multi-row
    /// experts only).
    packed0: usize,
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
    let packed = matches!(w, Floats::BF16(_)) && packed_gemm::available();
    // Taken, not borrowed: the items, the packed rows and the panels outlive a parallel
    // loop (see `with_taken`).
    with_taken(&ITEMS, |items| {
        with_taken(&PACKED_X, |packed_x| {
            with_taken(&W_PANELS, |panels| {
                work_items(offsets, n, k, packed, items);
                let packing = packed.then(|| {
                    pack_expert_rows(x, k, items, rows_total, offsets.len() - 1, packed_x);
                    // One buffer per worker and one for the calling thread, each reserved
                    // for the largest block: no item grows one.
                    panels.resize_with(rayon::current_num_threads() + 1, Vec::new);
                    panels.iter_mut().for_each(packed_gemm::reserve_w_panels);
                    let slots = PanelSlots {
                        first: panels.as_mut_ptr(),
                        len: panels.len(),
                    };
                    (&packed_x[..], slots)
                });
                let out_ptr = OutPtr(out.as_mut_ptr());
                let run = |item: &Item| {
                    // SAFETY: `item` covers rows row0..row0+rows (≤ R: every offset is,
                    // asserted above) and columns n0..n0+tile_n (≤ n) of `out`, which holds
                    // R·n (asserted above); no other item touches that block. With `packed`,
                    // `pack_expert_rows` packed every multi-row expert at its `packed0`,
                    // and the panel slots are the buffers just sized, one per worker.
                    unsafe { run_item(x, packing, w, n, k, *item, out_ptr) }
                };
                if worth_parallel(2 * rows_total * n * k) {
                    items.par_iter().for_each(run);
                } else {
                    items.iter().for_each(run);
                }
            })
        })
    });
}

/// Splits every expert that owns rows into tiles of W rows: tiles fill [`TILE_ELEMS`]
/// (the packed path: [`packed_gemm::NC_MAX`]) but leave ≥ 4 items per thread over all
/// experts, for balance. With `packed`, numbers the multi-row experts' packed rows.
fn work_items(offsets: &[usize], n: usize, k: usize, packed: bool, items: &mut Vec<Item>) {
    let active = offsets.windows(2).filter(|w| w[1] > w[0]).count();
    let by_cache = if packed {
        packed_gemm::NC_MAX
    } else {
        (TILE_ELEMS / k).max(MIN_TILE_ROWS)
    };
    let by_balance = (active * n)
        .div_ceil(4 * rayon::current_num_threads())
        .max(MIN_TILE_ROWS);
    let tile_rows = by_cache.min(by_balance).next_multiple_of(MIN_TILE_ROWS);
    items.clear();
    // Room for every expert at the smallest tile, so the list stops growing after its
    // first call whichever experts the tokens pick.
    items.reserve(offsets.len().saturating_sub(1) * n.div_ceil(MIN_TILE_ROWS));
    let mut packed0 = 0;
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
                packed0,
            });
        }
        if packed && rows > DOT_MAX_ROWS {
            packed0 += packed_gemm::packed_x_len(rows, k);
        }
    }
}

/// Packs each multi-row expert's rows of `x` at its items' `packed0` (on the calling
/// thread: `R·k` copies, next to the `R·n·k` multiply-adds that follow).
fn pack_expert_rows(
    x: &[f32],
    k: usize,
    items: &[Item],
    rows_total: usize,
    experts: usize,
    packed_x: &mut Vec<f32>,
) {
    // Σ_e ⌈rows_e/MR⌉·MR ≤ R + (MR − 1) per expert with rows: the bound over every
    // routing of R rows, reserved so that a warm call never grows the buffer.
    let bound = (rows_total + experts.min(rows_total) * (MR - 1)) * k;
    packed_x.reserve(bound.saturating_sub(packed_x.len()));
    let first_tiles = items
        .iter()
        .filter(|item| item.n0 == 0 && item.rows > DOT_MAX_ROWS);
    let len = first_tiles.clone().next_back().map_or(0, |last| {
        last.packed0 + packed_gemm::packed_x_len(last.rows, k)
    });
    // Every element up to `len` is overwritten below.
    packed_x.resize(len, 0.0);
    for item in first_tiles {
        let rows = &x[item.row0 * k..(item.row0 + item.rows) * k];
        packed_gemm::pack_x_into(rows, item.rows, k, &mut packed_x[item.packed0..]);
    }
}

/// Computes one item's block of `out` (row stride `n`).
///
/// # Safety
/// `out` is valid for writes at `r·n + j` for `r` in the item's rows and `j` in its
/// columns, and nothing else touches those elements during the call. `packing` is
/// `Some` only for bf16 `w` with [`packed_gemm::available`], and then holds the item's
/// expert's rows packed at `item.packed0` when it has more than [`DOT_MAX_ROWS`], and the
/// call's per-worker panel buffers (see [`PanelSlots`]).
unsafe fn run_item(
    x: &[f32],
    packing: Option<(&[f32], PanelSlots)>,
    w: Floats,
    n: usize,
    k: usize,
    item: Item,
    out: OutPtr,
) {
    let Item {
        expert,
        row0,
        rows,
        n0,
        tile_n,
        packed0,
    } = item;
    let xs = &x[row0 * k..(row0 + rows) * k];
    // Element offset of W_e row n0 in the stacked weights.
    let w_start = (expert * n + n0) * k;
    // SAFETY: element (row0, 0) is in `out` by the contract (row0 is one of the item's).
    let out_rows = unsafe { out.get().add(row0 * n) };
    // SAFETY: element (row0, n0) is one of the item's, valid by the contract.
    let out_block = unsafe { out_rows.add(n0) };
    if rows <= DOT_MAX_ROWS {
        // SAFETY: xs is [rows, k]; out_block's `rows × tile_n` block (row stride n) is
        // the item's, which the contract gives to this call.
        unsafe { dot_rows(xs, w, w_start, rows, k, tile_n, out_block, n) };
        return;
    }
    if let (Some((packed_x, slots)), Floats::BF16(ws)) = (packing, w) {
        let expert_w: &[u16] = bytemuck::cast_slice(&ws[expert * n * k..(expert + 1) * n * k]);
        // SAFETY: this thread's worker runs one item at a time and the item makes no rayon
        // call, so nothing else uses its slot now.
        let panels = unsafe { slots.mine() };
        let shape = Shape { m: rows, k, n };
        let block = ColumnBlock { n0, cols: tile_n };
        // SAFETY: the packed GEMM is available and the expert's rows are packed at
        // `packed0` (the contract); `expert_w` is W_e, [n, k]; `n0 + tile_n ≤ n` and
        // `tile_n ≤ NC_MAX` (`work_items`); the item's rows × columns `n0 .. n0 + tile_n`
        // of `out_rows` (row stride n) are this call's by the contract.
        unsafe {
            packed_gemm::column_block_bf16(
                &packed_x[packed0..],
                expert_w,
                shape,
                block,
                panels,
                OutPtr(out_rows),
            )
        };
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
            Floats::BF16(ws) => {
                let w_row = bytemuck::cast_slice(&ws[row_start..row_start + k]);
                for i in 0..rows {
                    let dot = dot_bf16(&xs[i * k..(i + 1) * k], w_row);
                    // SAFETY: as in `write`.
                    unsafe { *out.add(i * stride + j) = dot };
                }
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
