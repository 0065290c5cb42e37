//! Argument validation for the CUDA ops: ranks, shapes and dtypes are checked on the
//! host before any launch, so kernels may index freely. Errors name the op and argument.

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

/// `t` must have `dtype`; `expected` is its name in the error.
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

/// Kernel-name suffix of a float dtype (`rms_norm_w` + `bf16`).
pub(crate) fn float_suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        _ => "bf16",
    }
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
            Err(KernelError::WrongRank { arg: "x", .. })
        ));
        assert!(expect_shape("op", &t, &[3, 2]).is_err());
        assert!(matches!(
            expect_dtype("op", "ids", &t, DType::I64),
            Err(KernelError::WrongDType { arg: "ids", .. })
        ));
        assert!(expect_float("op", "w", &t).is_err());
        assert_eq!(float_suffix(DType::F16), "f16");
    }
}
