//! Launch geometry of the MoE kernels in `kernels/moe.cu` (pure host arithmetic).
//!
//! The per-expert row counts live on the device, so grids are sized by host upper
//! bounds: CTAs past the real work exit on the device.

/// GEMM tile rows, columns and threads (`GM_BM`, `GM_BN`, `GM_THREADS` in moe.cu).
pub(crate) const GEMM_BLOCK_M: usize = 64;
pub(crate) const GEMM_BLOCK_N: usize = 64;
pub(crate) const GEMM_THREADS: u32 = 128;
/// Routing: warps (one token each) per CTA (`ROUTE_WARPS`).
pub(crate) const ROUTE_WARPS: usize = 4;
/// Threads per CTA of the per-pair kernels (count, scatter) and of the combine.
pub(crate) const PAIR_THREADS: u32 = 256;
/// Dynamic shared memory available without an opt-in attribute.
const SMEM_LIMIT: usize = 48 * 1024;

/// Upper bound on the GEMM row tiles over all experts: `Σ_e ⌈count_e / BM⌉ ≤ ⌈P / BM⌉ +
/// min(E, P)` for `P` routed pairs (each non-empty expert wastes less than one tile).
pub(crate) fn max_row_tiles(pairs: usize, experts: usize) -> usize {
    pairs.div_ceil(GEMM_BLOCK_M) + experts.min(pairs)
}

/// Column blocks of the gate/up GEMM: each CTA computes `BN / 2` gate columns and the
/// matching up columns of the `intermediate` outputs.
pub(crate) fn gate_up_col_blocks(intermediate: usize) -> usize {
    intermediate.div_ceil(GEMM_BLOCK_N / 2)
}

/// Column blocks of the down GEMM over `hidden` outputs.
pub(crate) fn down_col_blocks(hidden: usize) -> usize {
    hidden.div_ceil(GEMM_BLOCK_N)
}

/// Routing CTAs and their dynamic shared memory (`probs [ROUTE_WARPS][E]` f32), or
/// `None` when `E` is too large for shared memory.
pub(crate) fn route_launch(tokens: usize, experts: usize) -> Option<(usize, usize)> {
    let smem = 4 * ROUTE_WARPS * experts;
    (smem <= SMEM_LIMIT).then_some((tokens.div_ceil(ROUTE_WARPS), smem))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The true tile count for given per-expert row counts.
    fn tiles(counts: &[usize]) -> usize {
        counts.iter().map(|c| c.div_ceil(GEMM_BLOCK_M)).sum()
    }

    #[test]
    fn row_tile_bound_covers_every_distribution() {
        let cases: &[&[usize]] = &[
            &[],
            &[0, 0, 0],
            &[1],
            &[1, 1, 1, 1, 1, 1, 1, 1],
            &[64, 64],
            &[65, 0, 63],
            &[1000, 1, 1, 1],
            &[4096, 0, 0, 0, 0, 0, 0, 0],
            &[127; 16],
        ];
        for counts in cases {
            let pairs: usize = counts.iter().sum();
            let bound = max_row_tiles(pairs, counts.len());
            assert!(bound >= tiles(counts), "{counts:?}: {bound}");
        }
        // Tight where every expert's count is one more than a multiple of the tile.
        let counts = [65usize; 8];
        assert_eq!(tiles(&counts), 16);
        assert_eq!(max_row_tiles(8 * 65, 8), 9 + 8);
    }

    #[test]
    fn column_blocks_cover_the_outputs() {
        assert_eq!(gate_up_col_blocks(14_336), 448);
        assert_eq!(gate_up_col_blocks(33), 2);
        assert_eq!(down_col_blocks(4096), 64);
        assert_eq!(down_col_blocks(65), 2);
    }

    #[test]
    fn route_launch_bounds_shared_memory() {
        assert_eq!(route_launch(9, 8), Some((3, 4 * 4 * 8)));
        assert_eq!(route_launch(0, 128), Some((0, 2048)));
        assert!(route_launch(1, 3072).is_some());
        assert!(route_launch(1, 3073).is_none());
    }
}
