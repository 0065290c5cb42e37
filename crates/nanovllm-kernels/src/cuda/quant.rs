//! `x · Wᵀ` with a block-quantized `W` ([`DType::Int8G32`], [`DType::Int4G32`],
//! [`DType::Fp8G128`]; layouts in [`crate::quant`]): launchers for `kernels/quant.cu`.
//!
//! `x` is bf16 `[M, K]`, `W` `[N, K]` in its quantized bytes (as `upload_weight` keeps it),
//! the output bf16 `[M, N]`. Up to [`GEMV_MAX_M`] rows (decode) a GEMV reads each weight
//! once, one warp per W row, in f32; above it, a 64 × 64-tiled GEMM widens W tiles to bf16
//! in shared memory and multiplies on the tensor cores (f32 accumulation). Both dequantize
//! in registers; no dequantized copy of W exists. Capturable: sizes are launch parameters.
//!
//! Validation status: the kernels compile for sm_80 and sm_90a, and their own source runs
//! on the host in `quant/emu.rs` (warp collectives, `ldmatrix`, `mma` and `cp.async`
//! emulated per the PTX ISA) against the reference; they have not yet run on a GPU. The
//! shared backend suite's `quant::*` tests run them there (`cargo xtask gpu-check`).

#[cfg(test)]
mod emu;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::check::dims2;
use super::device::{device_buf, device_buf_mut, CudaBackend};
use super::launch::{as_i32, cuda_err};
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

const OP: &str = "matmul";

/// Rows of `x` up to which the GEMV runs (`GEMV_MAX_M` in quant.cu).
pub(crate) const GEMV_MAX_M: usize = 8;
/// W rows (one warp each) per GEMV block (`GEMV_WARPS`).
const GEMV_WARPS: usize = 4;
/// Output tile of the GEMM (`QG_BM`, `QG_BN`) and its threads (`QG_THREADS`).
const GEMM_BLOCK_M: usize = 64;
const GEMM_BLOCK_N: usize = 64;
const GEMM_THREADS: u32 = 128;

/// Which kernel runs and its grid.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Launch {
    pub name: &'static str,
    pub grid: (u32, u32),
    pub threads: u32,
}

/// The kernel and grid for `[m, k] · [n, k]ᵀ` with weights of `dtype` (all dims non-zero).
pub(crate) fn plan(dtype: DType, m: usize, n: usize) -> Result<Launch> {
    let (gemv, gemm) = match dtype {
        DType::Int8G32 => ("quant_gemv_int8_g32", "quant_gemm_int8_g32"),
        DType::Int4G32 => ("quant_gemv_int4_g32", "quant_gemm_int4_g32"),
        DType::Fp8G128 => ("quant_gemv_fp8_g128", "quant_gemm_fp8_g128"),
        other => {
            return Err(KernelError::UnsupportedDType {
                op: OP,
                dtype: other,
            })
        }
    };
    if m <= GEMV_MAX_M {
        let blocks = as_i32(OP, "weight rows", n.div_ceil(GEMV_WARPS))?;
        return Ok(Launch {
            name: gemv,
            grid: (blocks as u32, 1),
            threads: 32 * GEMV_WARPS as u32,
        });
    }
    let col_tiles = as_i32(OP, "weight row tiles", n.div_ceil(GEMM_BLOCK_N))?;
    let row_tiles = m.div_ceil(GEMM_BLOCK_M);
    if row_tiles > 65_535 {
        return Err(KernelError::Invalid {
            op: OP,
            msg: format!(
                "{m} rows of x need {row_tiles} row tiles, beyond the CUDA grid limit of 65535; \
                 split the batch"
            ),
        });
    }
    Ok(Launch {
        name: gemm,
        grid: (col_tiles as u32, row_tiles as u32),
        threads: GEMM_THREADS,
    })
}

/// `x · wᵀ` for a block-quantized `w` (the caller checked that `w` is quantized).
pub(crate) fn matmul(be: &CudaBackend, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (m, k) = dims2(OP, "x", x)?;
    let (n, wk) = dims2(OP, "w", w)?;
    if x.dtype() != DType::BF16 {
        return Err(KernelError::WrongDType {
            op: OP,
            arg: "x",
            expected: "bf16 (with block-quantized weights)",
            got: x.dtype(),
        });
    }
    if wk != k {
        return Err(KernelError::ShapeMismatch {
            op: OP,
            lhs: x.shape().to_vec(),
            rhs: w.shape().to_vec(),
        });
    }
    let Some(block) = w.dtype().block() else {
        return Err(KernelError::UnsupportedDType {
            op: OP,
            dtype: w.dtype(),
        });
    };
    // A quantized tensor's last dim is whole blocks by construction (`Tensor::from_bytes`);
    // the kernels rely on it (rows of whole blocks, 32-wide chunks), so say so if not.
    if k % block.elems != 0 {
        return Err(KernelError::Invalid {
            op: OP,
            msg: format!(
                "{} weights need K to be a multiple of {}, got K = {k}",
                w.dtype(),
                block.elems
            ),
        });
    }
    if m == 0 || n == 0 || k == 0 {
        return be.alloc_zeros(&[m, n], DType::BF16);
    }
    let launch = plan(w.dtype(), m, n)?;
    let (m_i, n_i, k_i) = (
        as_i32(OP, "rows of x", m)?,
        as_i32(OP, "rows of w", n)?,
        as_i32(OP, "inner dimension", k)?,
    );
    // Element offsets inside the kernels are 64-bit; only the sizes must fit an int.
    as_i32(OP, "inner dimension in bytes", 2 * k)?;
    let mut out = be.alloc(&[m, n], DType::BF16)?;
    let func = be.function(launch.name)?;
    let mut builder = be.stream().launch_builder(&func);
    builder
        .arg(device_buf(x, OP)?)
        .arg(device_buf(w, OP)?)
        .arg(device_buf_mut(&mut out, OP)?)
        .arg(&m_i)
        .arg(&n_i)
        .arg(&k_i);
    let cfg = LaunchConfig {
        grid_dim: (launch.grid.0, launch.grid.1, 1),
        block_dim: (launch.threads, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: matches `quant_{gemv,gemm}_<dtype>(x, w, out, m, n, k)`: x holds m·k bf16,
    // w n rows of k / block.elems blocks of `dtype` (its storage), out m·n bf16; k is a
    // multiple of the block size (checked above). The GEMV grid covers n rows with
    // GEMV_WARPS warps per block and m ≤ GEMV_MAX_M; the GEMM grid covers n and m in
    // 64-wide tiles; both guard every row and column past n and m.
    unsafe { builder.launch(cfg) }.map_err(cuda_err(OP))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNELS_CU: &str = include_str!("../../kernels/quant.cu");

    #[test]
    fn small_batches_take_the_gemv_and_larger_ones_the_tiled_gemm() {
        for dtype in [DType::Int8G32, DType::Int4G32, DType::Fp8G128] {
            for m in [1, 3, GEMV_MAX_M] {
                let l = plan(dtype, m, 1001).unwrap_or_else(|e| panic!("{e}"));
                assert!(l.name.starts_with("quant_gemv_"), "{dtype} m={m}: {l:?}");
                assert_eq!((l.grid, l.threads), ((251, 1), 128));
            }
            for (m, row_tiles) in [(GEMV_MAX_M + 1, 1), (64, 1), (65, 2), (300, 5)] {
                let l = plan(dtype, m, 130).unwrap_or_else(|e| panic!("{e}"));
                assert!(l.name.starts_with("quant_gemm_"), "{dtype} m={m}: {l:?}");
                assert_eq!((l.grid, l.threads), ((3, row_tiles), 128));
            }
        }
        assert!(plan(DType::Int8G32, 64 * 65_535 + 1, 8).is_err());
        assert!(plan(DType::BF16, 1, 8).is_err());
    }

    /// Every kernel name the launcher uses is defined in quant.cu (and the launch constants
    /// match the kernel file's).
    #[test]
    fn planned_kernels_exist_in_the_kernel_file() {
        for dtype in [DType::Int8G32, DType::Int4G32, DType::Fp8G128] {
            for m in [1, 100] {
                let name = plan(dtype, m, 8).unwrap_or_else(|e| panic!("{e}")).name;
                let stem = name.trim_start_matches("quant_gemv_");
                let stem = stem.trim_start_matches("quant_gemm_");
                let kind = if m == 1 { "gemv" } else { "gemm" };
                assert_eq!(name, format!("quant_{kind}_{}", dtype.as_str()));
                assert!(
                    KERNELS_CU.contains(&format!("QUANT_KERNELS({stem}, ")),
                    "{name} is not instantiated in quant.cu"
                );
            }
        }
        for constant in [
            format!("GEMV_MAX_M = {GEMV_MAX_M};"),
            format!("GEMV_WARPS = {GEMV_WARPS};"),
            format!("QG_BM = {GEMM_BLOCK_M}, QG_BN = {GEMM_BLOCK_N}"),
            format!("QG_THREADS = {GEMM_THREADS};"),
        ] {
            assert!(
                KERNELS_CU.contains(&constant),
                "quant.cu lacks `{constant}`"
            );
        }
    }
}
