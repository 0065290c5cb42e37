//! `x · Wᵀ` through cuBLAS (`cublasGemmEx`), f32 accumulation.
//!
//! Row-major `out[M, N] = x[M, K] · W[N, K]ᵀ` is, in cuBLAS's column-major terms,
//! `outᵀ[N, M] = W[N, K] · xᵀ`: `A = W` read transposed (lda = K), `B = x` as stored
//! (ldb = K), `C = out` (ldc = N).
//!
//! Fast path: bf16 weights (what `upload_weight` stores) × bf16 activations → bf16 out,
//! `CUBLAS_COMPUTE_32F`. Other dtypes (f32/f16 weights, f32 x; tests and odd callers)
//! take an exact path: x and W widened to f32 on the device, a pedantic f32 GEMM (no
//! TF32), and one rounding of the result to bf16 (the activation dtype).
//! Block-quantized weights go to `quant.rs` (weight-only kernels of `kernels/quant.cu`).
//!
//! Capturable: the handle is bound to the backend's stream with a fixed workspace.

use std::ffi::c_void;

use cudarc::cublas::{result::gemm_ex, sys};
use cudarc::driver::DevicePtr;

use super::check::{dims2, expect_float};
use super::device::{device_buf, CudaBackend};
use super::elementwise::cast;
use super::launch::{as_i32, cuda_err};
use super::quant;
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

const OP: &str = "matmul";

pub(crate) fn matmul(be: &CudaBackend, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.dtype().is_quantized() {
        return quant::matmul(be, x, w);
    }
    let (m, k) = dims2(OP, "x", x)?;
    let (n, wk) = dims2(OP, "w", w)?;
    if !matches!(x.dtype(), DType::BF16 | DType::F32) {
        return Err(KernelError::WrongDType {
            op: OP,
            arg: "x",
            expected: "bf16 or f32",
            got: x.dtype(),
        });
    }
    expect_float(OP, "w", w)?;
    if wk != k {
        return Err(KernelError::ShapeMismatch {
            op: OP,
            lhs: x.shape().to_vec(),
            rhs: w.shape().to_vec(),
        });
    }
    if m == 0 || n == 0 || k == 0 {
        // An empty sum is 0; cuBLAS is not asked to handle degenerate shapes.
        return be.alloc_zeros(&[m, n], DType::BF16);
    }
    if x.dtype() == DType::BF16 && w.dtype() == DType::BF16 {
        let out = be.alloc(&[m, n], DType::BF16)?;
        gemm(be, x, w, &out, (m, n, k), sys::cudaDataType_t::CUDA_R_16BF)?;
        return Ok(out);
    }
    let widen = |t: &Tensor| match t.dtype() {
        DType::F32 => Ok(None),
        _ => cast(be, t, DType::F32).map(Some),
    };
    let (x32, w32) = (widen(x)?, widen(w)?);
    let out32 = be.alloc(&[m, n], DType::F32)?;
    gemm(
        be,
        x32.as_ref().unwrap_or(x),
        w32.as_ref().unwrap_or(w),
        &out32,
        (m, n, k),
        sys::cudaDataType_t::CUDA_R_32F,
    )?;
    cast(be, &out32, DType::BF16)
}

/// `out = x · wᵀ` with all three in `dtype` (bf16 or f32), f32 compute.
fn gemm(
    be: &CudaBackend,
    x: &Tensor,
    w: &Tensor,
    out: &Tensor,
    (m, n, k): (usize, usize, usize),
    dtype: sys::cudaDataType_t,
) -> Result<()> {
    let (m, n, k) = (
        as_i32(OP, "rows of x", m)?,
        as_i32(OP, "rows of w", n)?,
        as_i32(OP, "inner dimension", k)?,
    );
    let compute = match dtype {
        sys::cudaDataType_t::CUDA_R_32F => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_PEDANTIC,
        _ => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    // cuBLAS uses the calling thread's current context.
    be.bind_to_thread()?;
    let stream = be.stream();
    let (x_ptr, _x_sync) = device_buf(x, OP)?.device_ptr(stream);
    let (w_ptr, _w_sync) = device_buf(w, OP)?.device_ptr(stream);
    let (out_ptr, _out_sync) = device_buf(out, OP)?.device_ptr(stream);
    let blas = be.blas()?;
    // SAFETY: shapes validated by the caller: w holds n·k, x m·k and out m·n elements of
    // `dtype`; alpha/beta are f32 as CUBLAS_COMPUTE_32F* requires.
    unsafe {
        gemm_ex(
            *blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_T,
            sys::cublasOperation_t::CUBLAS_OP_N,
            n,
            m,
            k,
            (&alpha) as *const f32 as *const c_void,
            w_ptr as *const c_void,
            dtype,
            k,
            x_ptr as *const c_void,
            dtype,
            k,
            (&beta) as *const f32 as *const c_void,
            out_ptr as *mut c_void,
            dtype,
            n,
            compute,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(cuda_err(OP))
}
