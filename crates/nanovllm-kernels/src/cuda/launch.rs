//! Launch-shape helpers and error mapping shared by the kernel wrappers.

use cudarc::driver::LaunchConfig;

use crate::error::KernelError;

/// Threads per block for elementwise and row kernels.
pub(crate) const BLOCK: u32 = 256;

/// Maps any CUDA/cuBLAS error into a [`KernelError::Cuda`] naming the op.
pub(crate) fn cuda_err<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> KernelError {
    move |e| KernelError::Cuda {
        op,
        msg: e.to_string(),
    }
}

/// A grid of `ceil(n / BLOCK)` blocks (at least one) of `BLOCK` threads: one thread per
/// element, for elementwise kernels that guard `i < n`.
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks_for(n, BLOCK), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row (`rows` blocks, at least one) of `threads` threads. Row kernels index
/// rows by `blockIdx.x`, so more rows than the grid limit (2³¹ − 1) is an error.
pub(crate) fn per_row(
    op: &'static str,
    rows: usize,
    threads: u32,
) -> Result<LaunchConfig, KernelError> {
    let rows = as_i32(op, "rows", rows)?.max(1) as u32;
    Ok(LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Threads for a row kernel over `cols` columns: a multiple of 32 in `32..=1024`,
/// about one thread per 4 columns (each thread loops over a strided share).
pub(crate) fn row_threads(cols: usize) -> u32 {
    let want = cols.div_ceil(4).next_multiple_of(32);
    want.clamp(32, 1024) as u32
}

/// `ceil(n / block)`, at least 1, capped at the grid limit (kernels grid-stride past it).
pub(crate) fn blocks_for(n: usize, block: u32) -> u32 {
    n.div_ceil(block as usize).clamp(1, i32::MAX as usize) as u32
}

/// A size as the `int` a kernel takes, or an error naming the op when it does not fit.
pub(crate) fn as_i32(op: &'static str, what: &'static str, v: usize) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| KernelError::Invalid {
        op,
        msg: format!("{what} = {v} exceeds the kernels' 32-bit index range"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_covers_every_element() {
        for n in [0usize, 1, 255, 256, 257, 1 << 20] {
            let cfg = elementwise(n);
            assert!(cfg.grid_dim.0 as usize * BLOCK as usize >= n, "n = {n}");
            assert!(cfg.grid_dim.0 >= 1);
        }
        assert_eq!(elementwise(257).grid_dim.0, 2);
    }

    #[test]
    fn row_threads_are_warp_multiples_in_range() {
        for cols in [0usize, 1, 37, 128, 1024, 4096, 1 << 20] {
            let t = row_threads(cols);
            assert!(t % 32 == 0 && (32..=1024).contains(&t), "cols {cols} → {t}");
        }
        assert_eq!(row_threads(1024), 256);
    }

    #[test]
    fn per_row_is_one_block_per_row_within_the_grid_limit() {
        let cfg = per_row("t", 300, 128).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((cfg.grid_dim.0, cfg.block_dim.0), (300, 128));
        assert_eq!(per_row("t", 0, 32).map(|c| c.grid_dim.0).ok(), Some(1));
        assert!(per_row("t", 1 << 31, 32).is_err());
    }

    #[test]
    fn sizes_beyond_i32_are_errors() {
        assert_eq!(as_i32("t", "n", 7).ok(), Some(7));
        assert!(as_i32("t", "n", 1 << 31).is_err());
    }
}
