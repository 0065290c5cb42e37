//! SwiGLU activation: `gate_up: f32 [M, 2N]` (gate ‖ up per row) → `silu(gate) · up: [M, N]`,
//! with `silu(g) = g / (1 + exp(−g))`.

use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

use super::check;
use super::parallel::for_each_row;

const OP: &str = "silu_mul";

pub(crate) fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    let (m, width) = check::dims2(OP, "gate_up", gate_up)?;
    if width % 2 != 0 {
        return Err(KernelError::Invalid {
            op: OP,
            msg: format!("gate_up row width {width} must be even (gate ‖ up halves)"),
        });
    }
    let n = width / 2;
    let xs = check::f32s(OP, "gate_up", gate_up)?;
    let mut out = super::buffer_pool::take_for_overwrite(m * n);
    // exp is ~20 scalar operations.
    for_each_row(&mut out, n, 24 * n, |i, row| {
        let (gate, up) = xs[i * width..(i + 1) * width].split_at(n);
        for ((o, &g), &u) in row.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    });
    Tensor::from_f32(out, &[m, n])
}
