//! Token embedding lookup: `ids: U32 [T]`, `table: [V, H]` (f32/bf16/f16) → f32 `[T, H]`.
//! Every id is checked against `V` before any row is read.

use crate::error::Result;
use crate::tensor::Tensor;

use super::check;
use super::parallel::for_each_row;

const OP: &str = "embedding";

pub(crate) fn embedding(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    let num_tokens = check::dims1(OP, "ids", ids)?;
    let ids = check::u32s(OP, "ids", ids)?;
    let (vocab, hidden) = check::dims2(OP, "table", table)?;
    let rows = check::floats(OP, "table", table)?;
    check::indices_below(OP, ids, vocab)?;

    let mut out = vec![0.0f32; num_tokens * hidden];
    for_each_row(&mut out, hidden, hidden, |t, row| {
        rows.convert_range(ids[t] as usize * hidden, row);
    });
    Tensor::from_f32(out, &[num_tokens, hidden])
}
