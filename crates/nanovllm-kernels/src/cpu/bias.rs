//! `add_bias`: `x[t, n] += bias[n]` in place, for `x: [T, N]` and `bias: [N]`, each in
//! f32, bf16 or f16 (x is f32 in the model; the others serve callers holding narrow
//! activations). Each sum is taken in f32 from the widened (exact) operands and rounded
//! once, to nearest even, into x's dtype. The bias is read in its own dtype, so nothing
//! is widened into a buffer and nothing is allocated; rows run in parallel when large.

use half::{bf16, f16};

use crate::error::{KernelError, Result};
use crate::tensor::{CpuStorage, Tensor};
use crate::validate;

use super::check::{self, Floats};
use super::parallel::for_each_row;

const OP: &str = "add_bias";

/// A float element: widened to f32 exactly, and rounded from f32 to nearest even.
trait Float: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Float for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Float for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Float for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

pub(crate) fn add_bias(x: &mut Tensor, bias: &Tensor) -> Result<()> {
    let (_, cols) = validate::add_bias_shapes(OP, x, bias)?;
    let bias = check::floats(OP, "bias", bias)?;
    match x.cpu_mut(OP)? {
        CpuStorage::F32(xs) => add_rows(xs, cols, bias),
        CpuStorage::BF16(xs) => add_rows(xs, cols, bias),
        CpuStorage::F16(xs) => add_rows(xs, cols, bias),
        s => {
            return Err(KernelError::WrongDType {
                op: OP,
                arg: "x",
                expected: "f32, bf16 or f16",
                got: s.dtype(),
            })
        }
    }
    Ok(())
}

/// `xs: [_, cols] += bias` row by row, for each dtype of the bias.
fn add_rows<X: Float>(xs: &mut [X], cols: usize, bias: Floats) {
    match bias {
        Floats::F32(b) => add_rows_typed(xs, cols, b),
        Floats::BF16(b) => add_rows_typed(xs, cols, b),
        Floats::F16(b) => add_rows_typed(xs, cols, b),
    }
}

fn add_rows_typed<X: Float, B: Float>(xs: &mut [X], cols: usize, bias: &[B]) {
    for_each_row(xs, cols, cols, |_, row| {
        for (x, &b) in row.iter_mut().zip(bias) {
            *x = X::from_f32(x.to_f32() + b.to_f32());
        }
    });
}
