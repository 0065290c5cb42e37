//! `out[M, N] = x[M, K] · w[N, K]ᵀ` for bf16 or block-quantized weights ([`WeightRows`])
//! and many rows of `x` (prefill, big decode batches): a BLIS-style packed GEMM whose
//! weight packing *is* the widening (bf16 → f32, or the dequantization of
//! [`super::quant_matmul::pack_panels`]), so no widened row-major copy is ever made and
//! packed again.
//!
//! Invariants:
//! - `x` is packed once per call into row panels of [`MR`] rows, `[⌈M/MR⌉][K][MR]` f32
//!   (rows past M are zeros), in a buffer of the calling thread shared read-only by the
//!   tasks.
//! - Tasks own disjoint blocks of output columns (W rows), `nc ≤` [`NC_MAX`] each, so
//!   every weight is read from memory once per call and no two tasks write one element.
//!   Per task, each [`KC`]-long slice of its W rows is widened into a per-thread panel
//!   buffer `[⌈nc/NR⌉][kc][NR]` (rows past N are zeros), which then stays in L2 while
//!   every [`MC`]-row block of `x` sweeps it.
//! - The register tile is [`MR`] × [`NR`] (12 accumulators); tiles on the ragged edges
//!   compute the full tile from the zero padding and store only the valid part.
//! - Each output is an f32 sum in a fixed order (k ascending within each KC slice, the
//!   slices added to the output in ascending order), independent of the thread count.

#[cfg(target_arch = "x86_64")]
mod avx2;

use std::cell::RefCell;

use rayon::prelude::*;

use super::parallel::{min_items, with_taken, worth_parallel, OutPtr};
use crate::dtype::DType;

/// Where the W rows of a packed product come from.
#[derive(Clone, Copy)]
pub(crate) enum WeightRows<'a> {
    /// `[n, k]` bf16 bits.
    Bf16(&'a [u16]),
    /// `n` rows of `k / block.elems` blocks of the block-quantized `dtype`; `k` and every
    /// slice start a multiple of the block size ([`KC`] is a multiple of every block).
    Quant { dtype: DType, bytes: &'a [u8] },
}

/// Rows of `x` per register tile (and per packed x panel).
pub(crate) const MR: usize = 6;
/// Output columns (W rows) per register tile (and per packed W panel): two AVX vectors.
pub(crate) const NR: usize = 16;
/// K elements per packed W slice: an `NR × KC` f32 panel (16 KiB) stays in L1.
const KC: usize = 256;
/// Rows of `x` per block: its `MC × KC` packed slice (96 KiB) stays in L2.
const MC: usize = 16 * MR;
/// Most output columns per task: its widened `KC × NC_MAX` W slice is 128 KiB (L2).
pub(crate) const NC_MAX: usize = 8 * NR;

thread_local! {
    /// The packed `x` of the calling thread, reused across calls.
    static PACKED_X: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's widened W panels, reused across tasks and calls.
    static PACKED_W: RefCell<Vec<WLine>> = const { RefCell::new(Vec::new()) };
}

/// Whether [`matmul_bf16`] may run on this CPU.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output columns per task: at most [`NC_MAX`], but ≥ 4 tasks per thread for balance;
/// a multiple of [`NR`].
fn task_cols(n: usize) -> usize {
    let by_balance = n.div_ceil(4 * rayon::current_num_threads());
    by_balance.clamp(1, NC_MAX).next_multiple_of(NR)
}

/// Length of `x[m, k]` packed by [`pack_x_into`]: `⌈m/MR⌉` panels of `k · MR`.
pub(crate) fn packed_x_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * k * MR
}

/// `x[M, K]` as row panels `[⌈M/MR⌉][K][MR]`, zero-padded past row M.
fn pack_x(xs: &[f32], m: usize, k: usize, packed: &mut Vec<f32>) {
    // Every element is written by `pack_x_into` (rows past M as zeros), so no fill first.
    packed.resize(packed_x_len(m, k), 0.0);
    pack_x_into(xs, m, k, packed);
}

/// Packs `xs: [m, k]` into the first [`packed_x_len`]`(m, k)` elements of `packed`,
/// overwriting each of them.
pub(crate) fn pack_x_into(xs: &[f32], m: usize, k: usize, packed: &mut [f32]) {
    let len = packed_x_len(m, k);
    if len == 0 {
        return;
    }
    for (p, panel) in packed[..len].chunks_exact_mut(k * MR).enumerate() {
        let rows = MR.min(m - p * MR);
        for i in 0..rows {
            let row = &xs[(p * MR + i) * k..(p * MR + i + 1) * k];
            for (kk, &v) in row.iter().enumerate() {
                panel[kk * MR + i] = v;
            }
        }
        for i in rows..MR {
            for kk in 0..k {
                panel[kk * MR + i] = 0.0;
            }
        }
    }
}

/// `out = x · wᵀ` (shapes validated by the caller, all non-zero; [`available`] checked).
pub(crate) fn matmul_bf16(xs: &[f32], ws: &[u16], m: usize, k: usize, n: usize, out: &mut [f32]) {
    matmul_packed(xs, WeightRows::Bf16(ws), m, k, n, out);
}

/// `out = x · wᵀ` for either kind of [`WeightRows`] (shapes validated by the caller, all
/// non-zero; [`available`] checked).
pub(crate) fn matmul_packed(
    xs: &[f32],
    ws: WeightRows,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    // Checked in release too: the unsafe kernel below trusts them (one check per call).
    assert!(available());
    assert!(xs.len() >= m * k && ws.holds(n, k) && out.len() >= m * n);
    let nc = task_cols(n);
    let tasks = n.div_ceil(nc);
    let out_ptr = OutPtr(out.as_mut_ptr());
    // The packed x is held across the parallel loop, so it is taken, not borrowed (see
    // `with_taken`); the tasks make no rayon calls, so their PACKED_W borrow cannot
    // re-enter.
    with_taken(&PACKED_X, |packed_x| {
        pack_x(xs, m, k, packed_x);
        let packed_x: &[f32] = packed_x;
        let task = |t: usize| {
            let n0 = t * nc;
            let block = ColumnBlock {
                n0,
                cols: nc.min(n - n0),
            };
            // The task makes no rayon calls, so this borrow cannot re-enter.
            PACKED_W.with_borrow_mut(|packed_w| {
                // SAFETY: `available()` holds and w holds [n, k] (asserted above); x is packed
                // for [m, k]; `nc ≤ NC_MAX`; this task alone writes output columns
                // n0..n0 + cols of the m rows of `out`, which holds m·n (asserted above).
                unsafe { column_block(packed_x, ws, Shape { m, k, n }, block, packed_w, out_ptr) };
            });
        };
        if worth_parallel(m * n * k) {
            (0..tasks)
                .into_par_iter()
                .with_min_len(min_items(m * nc * k))
                .for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    });
}

/// Output columns `block.n0 .. + block.cols` of all `m` rows of `out = x · wᵀ`, where
/// `out` rows are `n` apart, from `x` packed by [`pack_x_into`] and `w: [n, k]` bf16 bits,
/// on the calling thread, widening W into `packed_w`. The buffer is first reserved for
/// the largest block ([`reserve_w_panels`]), so a warm buffer never grows here.
///
/// # Safety
/// [`available`] holds; `packed_x` holds `x[m, k]` packed by [`pack_x_into`]; `w` holds
/// `n·k` elements; `block.n0 + block.cols ≤ n`, `0 < block.cols ≤ NC_MAX`; `out` is valid
/// for writes at `i·n + j` for `i < m` and `j` in the block's columns, and nothing else
/// touches those elements during the call.
pub(crate) unsafe fn column_block_bf16(
    packed_x: &[f32],
    w: &[u16],
    shape: Shape,
    block: ColumnBlock,
    packed_w: &mut Vec<WLine>,
    out: OutPtr,
) {
    // SAFETY: the same contract.
    unsafe { column_block(packed_x, WeightRows::Bf16(w), shape, block, packed_w, out) }
}

/// [`column_block_bf16`] for either kind of [`WeightRows`].
///
/// # Safety
/// As for [`column_block_bf16`], with `w` holding `n` rows of `k` weights
/// ([`WeightRows::holds`]).
pub(crate) unsafe fn column_block(
    packed_x: &[f32],
    w: WeightRows,
    shape: Shape,
    block: ColumnBlock,
    packed_w: &mut Vec<WLine>,
    out: OutPtr,
) {
    debug_assert!(block.cols <= NC_MAX && block.n0 + block.cols <= shape.n);
    debug_assert!(packed_x.len() >= packed_x_len(shape.m, shape.k));
    reserve_w_panels(packed_w);
    // SAFETY: the contract gives every requirement of `column_block`.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        avx2::column_block(packed_x, w, shape, block, packed_w, out)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (packed_x, w, shape, block, packed_w, out);
}

impl WeightRows<'_> {
    /// Whether the buffer holds `n` rows of `k` weights (whole blocks for a quantized one).
    pub(crate) fn holds(&self, n: usize, k: usize) -> bool {
        match *self {
            WeightRows::Bf16(ws) => ws.len() >= n * k,
            WeightRows::Quant { dtype, bytes } => dtype.block().is_some_and(|b| {
                k % b.elems == 0 && KC % b.elems == 0 && bytes.len() >= n * (k / b.elems) * b.bytes
            }),
        }
    }
}

/// Gives `packed_w` room for the widened W panels of the largest block, once: `pack_w`
/// sizes it to `⌈cols/NR⌉ · kc ≤ MAX_W_LINES` lines.
pub(crate) fn reserve_w_panels(packed_w: &mut Vec<WLine>) {
    packed_w.reserve(MAX_W_LINES.saturating_sub(packed_w.len()));
}

/// Most lines a thread's widened W panels hold: `NC_MAX / NR` panels of `KC` lines.
const MAX_W_LINES: usize = NC_MAX / NR * KC;

/// One k of one packed W panel: `NR` f32 on a 64-byte line of their own, so neither of
/// the micro-kernel's two 32-byte loads per k ever splits a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct WLine(pub(crate) [f32; NR]);

/// The product's dimensions.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
}

/// One task's output columns `n0 .. n0 + cols` (W rows).
#[derive(Clone, Copy)]
pub(crate) struct ColumnBlock {
    pub(crate) n0: usize,
    pub(crate) cols: usize,
}

#[cfg(test)]
mod tests {
    use super::super::matmul_check::{assert_matches_f64, bf16_bits, values};
    use super::*;

    /// Ragged and whole tiles in every dimension: M around MR and MC, N around NR and
    /// the task width, K around KC (one and several slices); against f64 accumulation with
    /// the tolerance `1e-5 · Σ|x·w|` (bounds the rounding of any f32 summation order).
    #[test]
    fn packed_bf16_matches_f64_reference() {
        if !available() {
            eprintln!("skipped: no AVX2+FMA");
            return;
        }
        let shapes = [
            (1, 1, 1),
            (5, 7, 3),
            (6, 16, 16),
            (7, 17, 255),
            (13, 45, 256),
            (33, 130, 257),
            (97, 300, 600),
            (200, 64, 40),
        ];
        for (m, n, k) in shapes {
            let x = values((m * 31 + k) as u64, m * k);
            let w_bits = bf16_bits(&values((n * 17 + k) as u64, n * k));
            let mut got = vec![f32::NAN; m * n];
            matmul_bf16(&x, &w_bits, m, k, n, &mut got);
            assert_matches_f64(&x, &w_bits, m, k, &got);
        }
    }

    /// Same inputs, same bits, whatever the thread count (tasks split columns only).
    #[test]
    fn packed_bf16_is_deterministic_across_thread_counts() {
        if !available() {
            return;
        }
        let (m, n, k) = (50, 200, 700);
        let x = values(3, m * k);
        let w = bf16_bits(&values(4, n * k));
        let mut one = vec![0.0; m * n];
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool")
            .install(|| matmul_bf16(&x, &w, m, k, n, &mut one));
        let mut many = vec![0.0; m * n];
        rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool")
            .install(|| matmul_bf16(&x, &w, m, k, n, &mut many));
        assert_eq!(one, many);
    }
}
