//! Rotary position embedding, neox style (rotate halves), in place.
//!
//! `x: f32 [T, heads * head_dim]`, `positions: U32 [T]`, `cos_sin: f32 [max_pos, head_dim]`
//! with row `p = cos ‖ sin` (halves of `head_dim / 2`). For each head, with `x = x1 ‖ x2`:
//! `x1' = x1·cos − x2·sin`, `x2' = x2·cos + x1·sin` (HF `rotate_half`).
//! Every position is checked against `max_pos` before `x` is touched.

use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

use super::check;
use super::parallel::for_each_row;

const OP: &str = "rope";

pub(crate) fn rope(
    x: &mut Tensor,
    positions: &Tensor,
    cos_sin: &Tensor,
    head_dim: usize,
) -> Result<()> {
    let (num_tokens, width) = check::dims2(OP, "x", x)?;
    if head_dim == 0 || head_dim % 2 != 0 || width % head_dim != 0 {
        return Err(KernelError::Invalid {
            op: OP,
            msg: format!(
                "head_dim {head_dim} must be even, positive and divide the row width {width} of x"
            ),
        });
    }
    check::dims1(OP, "positions", positions)?;
    check::expect_shape(OP, positions, &[num_tokens])?;
    let positions = check::u32s(OP, "positions", positions)?;
    let (max_positions, table_width) = check::dims2(OP, "cos_sin", cos_sin)?;
    if table_width != head_dim {
        return Err(KernelError::ShapeMismatch {
            op: OP,
            lhs: cos_sin.shape().to_vec(),
            rhs: vec![max_positions, head_dim],
        });
    }
    let table = check::f32s(OP, "cos_sin", cos_sin)?;
    check::indices_below(OP, positions, max_positions)?;

    let half = head_dim / 2;
    let xs = check::f32s_mut(OP, "x", x)?;
    for_each_row(xs, width, 3 * width, |t, row| {
        let p = positions[t] as usize;
        let (cos, sin) = table[p * head_dim..(p + 1) * head_dim].split_at(half);
        for head in row.chunks_exact_mut(head_dim) {
            let (x1, x2) = head.split_at_mut(half);
            for (((a, b), &c), &s) in x1.iter_mut().zip(x2.iter_mut()).zip(cos).zip(sin) {
                let (u, v) = (*a, *b);
                *a = u * c - v * s;
                *b = v * c + u * s;
            }
        }
    });
    Ok(())
}
