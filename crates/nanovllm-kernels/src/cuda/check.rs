//! Argument validation for the CUDA ops: ranks, shapes and dtypes are checked on the
//! host before any launch, so kernels may index freely. Errors name the op and argument.
//! The checks are the device-independent ones of [`crate::validate`], re-exported here.

use crate::dtype::DType;

pub(crate) use crate::validate::{dims1, dims2, expect_dtype, expect_float, expect_shape};

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
    fn kernel_suffixes_name_the_float_dtype() {
        assert_eq!(float_suffix(DType::F32), "f32");
        assert_eq!(float_suffix(DType::BF16), "bf16");
        assert_eq!(float_suffix(DType::F16), "f16");
    }
}
