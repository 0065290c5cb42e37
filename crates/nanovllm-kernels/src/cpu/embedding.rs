//! Token embedding lookup: `ids: U32 [T]`, `table: [V, H]` (f32/bf16/f16) → f32 `[T, H]`.
//! Every id is checked against `V` before any row is read.
//! [`embedding_shard`] is the vocab-parallel form: ids outside this rank's rows give zeros.

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

    let mut out = super::buffer_pool::take_for_overwrite(num_tokens * hidden);
    for_each_row(&mut out, hidden, hidden, |t, row| {
        rows.convert_range(ids[t] as usize * hidden, row);
    });
    Tensor::from_f32(out, &[num_tokens, hidden])
}

/// `table: [R, H]` holds vocabulary rows `vocab_start..vocab_start + R`; other ids give zero rows.
pub(crate) fn embedding_shard(ids: &Tensor, table: &Tensor, vocab_start: usize) -> Result<Tensor> {
    const OP: &str = "embedding_shard";
    let num_tokens = check::dims1(OP, "ids", ids)?;
    let ids = check::u32s(OP, "ids", ids)?;
    let (shard_rows, hidden) = check::dims2(OP, "table", table)?;
    let rows = check::floats(OP, "table", table)?;

    let mut out = super::buffer_pool::take_zeroed(num_tokens * hidden);
    for_each_row(&mut out, hidden, hidden, |t, row| {
        let local = (ids[t] as usize).wrapping_sub(vocab_start);
        if local < shard_rows {
            rows.convert_range(local * hidden, row);
        }
    });
    Tensor::from_f32(out, &[num_tokens, hidden])
}
