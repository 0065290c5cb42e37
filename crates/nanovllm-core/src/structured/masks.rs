//! [`StepMasks`]: one step's token masks for the constrained sequences that sample, computed
//! on the host while the forward pass runs ([`crate::runner::ModelRunner`] calls
//! [`StepMasks::compute`] between launching the forward and sampling).
//!
//! A mask is the sampling op's `allowed_tokens`: `vocab_size.div_ceil(32)` u32 words, bit
//! `i % 32` of word `i / 32` set when token `i` is allowed. A matcher that fails to give a
//! mask (llguidance error; should not happen) leaves its row unmasked and is recorded: the
//! engine aborts that request after sampling, before its token is used, and the batch goes on.

use llguidance::Matcher;
use nanovllm_kernels::SamplingRow;
use nanovllm_scheduler::SeqId;

/// The masks of one step, borrowing the constrained sequences' matchers.
pub struct StepMasks<'a> {
    /// `(sampling row, sequence, its matcher)`, one per constrained sampling row; the
    /// row's mask is slot `k` of `words` (the entry's position here).
    rows: Vec<(usize, SeqId, &'a mut Matcher)>,
    /// `slot[r]`: the mask slot of sampling row `r`, `None` for an unconstrained row (or one
    /// whose matcher failed, after [`Self::compute`]).
    slot: Vec<Option<usize>>,
    words: &'a mut Vec<u32>,
    words_per_mask: usize,
    failed: &'a mut Vec<(SeqId, String)>,
}

impl<'a> StepMasks<'a> {
    /// Masks for `rows` among `num_sampling_rows` rows, written into `words` (reused across
    /// steps), failures into `failed`.
    pub(crate) fn new(
        rows: Vec<(usize, SeqId, &'a mut Matcher)>,
        num_sampling_rows: usize,
        words_per_mask: usize,
        words: &'a mut Vec<u32>,
        failed: &'a mut Vec<(SeqId, String)>,
    ) -> Self {
        let mut slot = vec![None; num_sampling_rows];
        for (k, (row, _, _)) in rows.iter().enumerate() {
            slot[*row] = Some(k);
        }
        words.clear();
        words.resize(rows.len() * words_per_mask, 0);
        Self {
            rows,
            slot,
            words,
            words_per_mask,
            failed,
        }
    }

    /// Computes every constrained row's mask (llguidance's `compute_mask`). Host work only:
    /// safe to run beside the forward pass.
    pub fn compute(&mut self) {
        let n = self.words_per_mask;
        for (k, (row, seq_id, matcher)) in self.rows.iter_mut().enumerate() {
            let dst = &mut self.words[k * n..(k + 1) * n];
            let err = match matcher.compute_mask() {
                // llguidance allocates one bit beyond the vocabulary (a spare word when
                // `vocab_size` is a multiple of 32): the words past `n` hold no token.
                Ok(mask) if mask.as_slice().len() >= n => {
                    dst.copy_from_slice(&mask.as_slice()[..n]);
                    continue;
                }
                Ok(mask) => format!(
                    "grammar mask has {} words, expected {n}",
                    mask.as_slice().len()
                ),
                Err(e) => format!("grammar error: {e}"),
            };
            self.slot[*row] = None;
            self.failed.push((*seq_id, err));
        }
    }

    /// `rows` with each constrained row's mask as its `allowed_tokens`.
    pub fn apply<'r>(&'r self, rows: &[SamplingRow<'r>]) -> Vec<SamplingRow<'r>> {
        rows.iter()
            .enumerate()
            .map(|(r, row)| match self.slot.get(r).copied().flatten() {
                Some(k) => SamplingRow {
                    allowed_tokens: Some(
                        &self.words[k * self.words_per_mask..(k + 1) * self.words_per_mask],
                    ),
                    ..*row
                },
                None => *row,
            })
            .collect()
    }
}
