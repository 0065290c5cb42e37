//! `x[M, K] · w[N, K]ᵀ → [M, N]`, activations f32, weights f32, bf16 or f16, or a
//! block-quantized dtype ([`super::quant_matmul`]).
//!
//! - f32 weights: one `gemm` call on the row-major buffers.
//! - bf16/f16 weights, `M ≤ SMALL_M` (decode): [`super::gemv`], parallel over W rows with
//!   on-the-fly widening.
//! - bf16 weights, larger `M` (prefill), AVX2+FMA: [`super::packed_gemm`], whose weight
//!   packing is the widening.
//! - Otherwise (f16, or no AVX2), larger `M`: W is widened a tile of rows at a time into a
//!   thread-local f32 buffer that is reused across tiles and calls, and `gemm` multiplies
//!   `x` by the tile into the matching output columns. Every weight is read once per call
//!   and no widened copy of the whole matrix ever exists.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::tensor::{CpuStorage, Tensor};

use super::check::{self, Floats};
use super::gemv;
use super::packed_gemm;
use super::parallel::{worth_parallel, OutPtr};

const OP: &str = "matmul";

/// Up to this many rows of `x`, narrow weights take the blocked dot-product path
/// (measured faster than widened tiles + gemm at M = 32, slower at M = 64).
pub(crate) const SMALL_M: usize = 32;

/// f32 elements per widened weight tile (1 MiB). `gemm` re-packs all of `x` for every
/// tile it is handed, so bigger tiles mean fewer passes over `x` (it blocks the tile for
/// its caches itself); [`tile_rows`] still leaves several tiles per thread for balance.
const TILE_ELEMS: usize = 1 << 18;

thread_local! {
    /// Per-thread widened weight tile, reused across tiles and calls.
    static WEIGHT_TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (m, k) = check::dims2(OP, "x", x)?;
    let (n, w_k) = check::dims2(OP, "w", w)?;
    if w_k != k {
        return Err(KernelError::ShapeMismatch {
            op: OP,
            lhs: x.shape().to_vec(),
            rhs: w.shape().to_vec(),
        });
    }
    let xs = check::f32s(OP, "x", x)?;
    if let CpuStorage::Bytes { dtype, bytes } = w.cpu(OP)? {
        let dtype = *dtype;
        if !dtype.is_quantized() || dtype.block().is_some_and(|b| k % b.elems != 0) {
            return Err(KernelError::UnsupportedDType { op: OP, dtype });
        }
        let mut out = super::buffer_pool::take_zeroed(m * n);
        if m > 0 && n > 0 && k > 0 {
            super::quant_matmul::matmul(xs, dtype, bytes, m, k, n, &mut out);
        }
        return Tensor::from_f32(out, &[m, n]);
    }
    let weights = check::floats(OP, "w", w)?;
    // Zeroed: with K = 0 the product is all zeros and no kernel writes it.
    let mut out = super::buffer_pool::take_zeroed(m * n);
    if m > 0 && n > 0 && k > 0 {
        match weights {
            Floats::F32(ws) => {
                let parallelism = if worth_parallel(m * n * k) {
                    Parallelism::Rayon(rayon::current_num_threads())
                } else {
                    Parallelism::None
                };
                // SAFETY: xs is [m, k], ws is [n, k] and out is [m, n] (checked above).
                unsafe { gemm_x_wt(m, n, k, xs, ws, out.as_mut_ptr(), n, parallelism) };
            }
            _ if m <= SMALL_M => gemv::matmul_small_m(xs, weights, m, k, n, &mut out),
            Floats::BF16(ws) if packed_gemm::available() => {
                packed_gemm::matmul_bf16(xs, bytemuck::cast_slice(ws), m, k, n, &mut out)
            }
            _ => matmul_tiled(xs, weights, m, k, n, &mut out),
        }
    }
    Tensor::from_f32(out, &[m, n])
}

/// `out[i, j] = Σ_k x[i, k] · w[j, k]` for `i < m`, `j < n`, where `out` rows are
/// `out_stride` apart (so a column block of a wider output can be targeted).
///
/// # Safety
/// `x` holds `m·k` and `w` holds `n·k` elements; `out` is valid for writes at
/// `i·out_stride + j` for every `i < m`, `j < n`, and nothing else touches those
/// elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_x_wt(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[f32],
    out: *mut f32,
    out_stride: usize,
    parallelism: Parallelism,
) {
    debug_assert!(x.len() >= m * k && w.len() >= n * k);
    // gemm computes dst = alpha·dst + beta·lhs·rhs; with read_dst = false, dst = lhs·rhs.
    // lhs = x (row-major [m, k]); rhs = wᵀ, i.e. element (kk, j) at w[j·k + kk].
    // SAFETY: with these strides gemm reads x[i·k + kk] (i < m, kk < k) and w[j·k + kk]
    // (j < n), inside the slices by the contract, and writes out[i·out_stride + j], which
    // the contract makes valid and this call's alone; with read_dst = false it never
    // reads `out`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            out_stride as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// W rows per tile: fills [`TILE_ELEMS`], but leaves ≥ 4 tiles per thread for balance.
fn tile_rows(k: usize, n: usize) -> usize {
    let by_cache = (TILE_ELEMS / k).max(16);
    let by_balance = n.div_ceil(4 * rayon::current_num_threads()).max(16);
    by_cache.min(by_balance).next_multiple_of(16)
}

fn matmul_tiled(xs: &[f32], w: Floats, m: usize, k: usize, n: usize, out: &mut [f32]) {
    let rows = tile_rows(k, n);
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..n.div_ceil(rows))
        .into_par_iter()
        .for_each(|tile_index| {
            let n0 = tile_index * rows;
            let tile_n = rows.min(n - n0);
            // No rayon call happens while the tile is borrowed, so the borrow cannot re-enter.
            WEIGHT_TILE.with_borrow_mut(|tile| {
                tile.resize(tile_n * k, 0.0);
                w.convert_range(n0 * k, &mut tile[..tile_n * k]);
                // SAFETY: x is [m, k] and the tile [tile_n, k]; this task alone writes output
                // columns n0..n0 + tile_n of each of the m rows (row stride n) of `out`.
                unsafe {
                    gemm_x_wt(
                        m,
                        tile_n,
                        k,
                        xs,
                        tile,
                        out_ptr.get().add(n0),
                        n,
                        Parallelism::None,
                    )
                };
            });
        });
}
