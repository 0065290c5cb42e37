//! Device-independent argument validation shared by the CPU and CUDA backends.
//!
//! Everything here reads only shapes, dtypes and host-side scalars (never tensor data),
//! so both backends run the same checks, in the same order, with the same errors; each
//! backend then adds what is specific to it (storage access, dtype requirements of its
//! kernels, reads of metadata values). Errors name the op and the argument.

pub(crate) mod attention;
pub(crate) mod kv;
pub(crate) mod moe;

use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

/// `(rows, cols)` of a 2-d tensor.
pub(crate) fn dims2(op: &'static str, arg: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    match *t.shape() {
        [rows, cols] => Ok((rows, cols)),
        _ => Err(wrong_rank(op, arg, 2, t)),
    }
}

/// Length of a 1-d tensor.
pub(crate) fn dims1(op: &'static str, arg: &'static str, t: &Tensor) -> Result<usize> {
    match *t.shape() {
        [len] => Ok(len),
        _ => Err(wrong_rank(op, arg, 1, t)),
    }
}

/// `[a, b, c]` of a 3-d tensor.
pub(crate) fn dims3(
    op: &'static str,
    arg: &'static str,
    t: &Tensor,
) -> Result<(usize, usize, usize)> {
    match *t.shape() {
        [a, b, c] => Ok((a, b, c)),
        _ => Err(wrong_rank(op, arg, 3, t)),
    }
}

pub(crate) fn wrong_rank(
    op: &'static str,
    arg: &'static str,
    expected: usize,
    t: &Tensor,
) -> KernelError {
    KernelError::WrongRank {
        op,
        arg,
        expected,
        shape: t.shape().to_vec(),
    }
}

pub(crate) fn expect_shape(op: &'static str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.shape() != expected {
        return Err(KernelError::ShapeMismatch {
            op,
            lhs: t.shape().to_vec(),
            rhs: expected.to_vec(),
        });
    }
    Ok(())
}

/// The shapes of a fused residual add + RMSNorm: `x` and `residual` `[M, N]`, `weight`
/// `[N]`; returns `(M, N)`.
pub(crate) fn add_rms_norm_shapes(
    op: &'static str,
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
) -> Result<(usize, usize)> {
    let (rows, cols) = dims2(op, "x", x)?;
    expect_shape(op, residual, &[rows, cols])?;
    dims1(op, "weight", weight)?;
    expect_shape(op, weight, &[cols])?;
    Ok((rows, cols))
}

/// The operands of `add_bias`: `x: [T, N]` and `bias: [N]`, both float (f32, bf16 or
/// f16); returns `(T, N)`.
pub(crate) fn add_bias_shapes(
    op: &'static str,
    x: &Tensor,
    bias: &Tensor,
) -> Result<(usize, usize)> {
    let (rows, cols) = dims2(op, "x", x)?;
    dims1(op, "bias", bias)?;
    expect_shape(op, bias, &[cols])?;
    expect_float(op, "x", x)?;
    expect_float(op, "bias", bias)?;
    Ok((rows, cols))
}

/// `t` must have `dtype`; its name is the `expected` of the error.
pub(crate) fn expect_dtype(
    op: &'static str,
    arg: &'static str,
    t: &Tensor,
    dtype: DType,
) -> Result<()> {
    if t.dtype() != dtype {
        return Err(KernelError::WrongDType {
            op,
            arg,
            expected: dtype.as_str(),
            got: t.dtype(),
        });
    }
    Ok(())
}

/// `t` must be a float tensor (f32, bf16 or f16): weights may be any of them.
pub(crate) fn expect_float(op: &'static str, arg: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(KernelError::WrongDType {
            op,
            arg,
            expected: "f32, bf16 or f16",
            got: t.dtype(),
        });
    }
    Ok(())
}

/// A copy's `src` and `dst` must have the same shape and dtype (`copy_from_host`,
/// `copy_device`): the copy keeps `dst`'s buffer, so nothing may be reshaped or converted.
pub(crate) fn same_layout(op: &'static str, src: &Tensor, dst: &Tensor) -> Result<()> {
    if src.shape() != dst.shape() || src.dtype() != dst.dtype() {
        return Err(KernelError::Invalid {
            op,
            msg: format!(
                "source is {:?} {}, destination {:?} {}",
                src.shape(),
                src.dtype(),
                dst.shape(),
                dst.dtype()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_shape_and_dtype_errors_name_the_argument() {
        let t = Tensor::zeros_cpu(&[2, 3], DType::U32);
        assert_eq!(dims2("op", "x", &t).ok(), Some((2, 3)));
        assert!(matches!(
            dims1("op", "x", &t),
            Err(KernelError::WrongRank {
                arg: "x",
                expected: 1,
                ..
            })
        ));
        assert!(matches!(
            dims3("op", "w", &t),
            Err(KernelError::WrongRank {
                arg: "w",
                expected: 3,
                ..
            })
        ));
        assert!(matches!(
            expect_shape("op", &t, &[3, 2]),
            Err(KernelError::ShapeMismatch { .. })
        ));
        assert!(expect_shape("op", &t, &[2, 3]).is_ok());
        assert!(matches!(
            expect_dtype("op", "ids", &t, DType::I64),
            Err(KernelError::WrongDType {
                arg: "ids",
                expected: "i64",
                ..
            })
        ));
        assert!(expect_dtype("op", "ids", &t, DType::U32).is_ok());
        assert!(expect_float("op", "w", &t).is_err());
        assert!(expect_float("op", "w", &Tensor::zeros_cpu(&[1], DType::F16)).is_ok());
    }

    #[test]
    fn copies_need_the_same_shape_and_dtype() {
        let a = Tensor::zeros_cpu(&[2, 3], DType::F32);
        assert!(same_layout("copy", &a, &Tensor::zeros_cpu(&[2, 3], DType::F32)).is_ok());
        for other in [
            Tensor::zeros_cpu(&[3, 2], DType::F32),
            Tensor::zeros_cpu(&[2, 3], DType::BF16),
        ] {
            assert!(matches!(
                same_layout("copy", &a, &other),
                Err(KernelError::Invalid { op: "copy", .. })
            ));
        }
    }
}
