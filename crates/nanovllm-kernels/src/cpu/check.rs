//! Argument validation shared by the CPU ops.
//!
//! Every op checks ranks, shapes and dtypes up front and returns a [`KernelError`]
//! naming the op and the argument, so the kernels behind it can index freely. The
//! device-independent checks live in [`crate::validate`] (re-exported here); this file
//! adds typed access to CPU storage, which doubles as the dtype check.

use half::{bf16, f16};

use crate::error::{KernelError, Result};
use crate::tensor::{CpuStorage, Tensor};

pub(crate) use crate::validate::{dims1, dims2, expect_shape};

/// A float buffer in one of the storage dtypes weights may use.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Floats<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

fn wrong_dtype(
    op: &'static str,
    arg: &'static str,
    expected: &'static str,
    s: &CpuStorage,
) -> KernelError {
    KernelError::WrongDType {
        op,
        arg,
        expected,
        got: s.dtype(),
    }
}

pub(crate) fn f32s<'a>(op: &'static str, arg: &'static str, t: &'a Tensor) -> Result<&'a [f32]> {
    match t.cpu(op)? {
        CpuStorage::F32(v) => Ok(v),
        s => Err(wrong_dtype(op, arg, "f32", s)),
    }
}

pub(crate) fn f32s_mut<'a>(
    op: &'static str,
    arg: &'static str,
    t: &'a mut Tensor,
) -> Result<&'a mut [f32]> {
    match t.cpu_mut(op)? {
        CpuStorage::F32(v) => Ok(v),
        s => Err(wrong_dtype(op, arg, "f32", s)),
    }
}

pub(crate) fn u32s<'a>(op: &'static str, arg: &'static str, t: &'a Tensor) -> Result<&'a [u32]> {
    match t.cpu(op)? {
        CpuStorage::U32(v) => Ok(v),
        s => Err(wrong_dtype(op, arg, "u32", s)),
    }
}

pub(crate) fn i64s<'a>(op: &'static str, arg: &'static str, t: &'a Tensor) -> Result<&'a [i64]> {
    match t.cpu(op)? {
        CpuStorage::I64(v) => Ok(v),
        s => Err(wrong_dtype(op, arg, "i64", s)),
    }
}

/// A float tensor's buffer in its own dtype (f32, bf16 or f16); integers are an error.
pub(crate) fn floats<'a>(op: &'static str, arg: &'static str, t: &'a Tensor) -> Result<Floats<'a>> {
    match t.cpu(op)? {
        CpuStorage::F32(v) => Ok(Floats::F32(v)),
        CpuStorage::BF16(v) => Ok(Floats::BF16(v)),
        CpuStorage::F16(v) => Ok(Floats::F16(v)),
        s => Err(wrong_dtype(op, arg, "f32, bf16 or f16", s)),
    }
}

/// Checks that every index is below `size` (so kernels may index without bounds worries).
pub(crate) fn indices_below(op: &'static str, indices: &[u32], size: usize) -> Result<()> {
    match indices.iter().find(|&&i| i as usize >= size) {
        Some(&index) => Err(KernelError::IndexOutOfRange {
            op,
            index: index as usize,
            size,
        }),
        None => Ok(()),
    }
}
