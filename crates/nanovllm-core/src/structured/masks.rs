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

    /// Computes every constrained row's mask (llguidance's `compute_mask`), one row after the
    /// other on this thread; host work only, safe to run beside the forward pass. For the
    /// CPU backend, whose rayon pool the forward pass keeps busy.
    pub fn compute(&mut self) {
        let n = self.words_per_mask;
        let chunks = self.words.chunks_mut(n.max(1));
        let errors: Vec<Option<String>> = self
            .rows
            .iter_mut()
            .zip(chunks)
            .map(|((_, _, matcher), dst)| fill(matcher, dst))
            .collect();
        self.record(errors);
    }

    /// [`Self::compute`] with the rows spread over the rayon pool: for a device backend,
    /// whose forward pass leaves the host's cores idle while it runs.
    pub fn compute_parallel(&mut self) {
        use rayon::prelude::*;
        let n = self.words_per_mask;
        let chunks = self.words.par_chunks_mut(n.max(1));
        let errors: Vec<Option<String>> = self
            .rows
            .par_iter_mut()
            .zip(chunks)
            .map(|((_, _, matcher), dst)| fill(matcher, dst))
            .collect();
        self.record(errors);
    }

    /// Unmasks and records the rows whose matcher failed (`errors[k]` for row slot `k`).
    fn record(&mut self, errors: Vec<Option<String>>) {
        for ((row, seq_id, _), err) in self.rows.iter().zip(errors) {
            if let Some(err) = err {
                self.slot[*row] = None;
                self.failed.push((*seq_id, err));
            }
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

/// Writes `matcher`'s mask into `dst` (`vocab_size.div_ceil(32)` words); the error when it
/// gives none.
fn fill(matcher: &mut Matcher, dst: &mut [u32]) -> Option<String> {
    let n = dst.len();
    match matcher.compute_mask() {
        // llguidance allocates one bit beyond the vocabulary (a spare word when `vocab_size`
        // is a multiple of 32): the words past `n` hold no token.
        Ok(mask) if mask.as_slice().len() >= n => {
            dst.copy_from_slice(&mask.as_slice()[..n]);
            None
        }
        Ok(mask) => Some(format!(
            "grammar mask has {} words, expected {n}",
            mask.as_slice().len()
        )),
        Err(e) => Some(format!("grammar error: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use nanovllm_scheduler::StructuredOutput;

    use super::*;
    use crate::structured::GrammarCompiler;
    use crate::tokenizer::tests::qwen3_tokenizer;

    /// Qwen3's padded vocabulary, a multiple of 32 (llguidance's spare word is dropped).
    const VOCAB: usize = 151_936;

    fn allowed(words: &[u32], token: u32) -> bool {
        words[token as usize / 32] >> (token % 32) & 1 == 1
    }

    /// Sequential and pooled computation give the same masks; each mask is its grammar's;
    /// only the constrained rows get one.
    #[test]
    fn masks_are_the_grammars_in_their_rows() {
        let Some(tok) = qwen3_tokenizer() else { return };
        let compiler = GrammarCompiler::default();
        let matcher = |spec: StructuredOutput| {
            compiler
                .matcher(&spec, Some(&tok), &[151_645], VOCAB)
                .unwrap()
        };
        let specs = || {
            [
                StructuredOutput::Regex("[0-9]+".to_string()),
                StructuredOutput::JsonObject,
            ]
        };
        let id = |text: &str| {
            let ids = tok.encode(text).unwrap();
            assert_eq!(ids.len(), 1, "{text:?} is one token");
            ids[0]
        };
        let mut results = Vec::new();
        for parallel in [false, true] {
            let mut matchers: Vec<Matcher> = specs().into_iter().map(matcher).collect();
            let (mut words, mut failed) = (Vec::new(), Vec::new());
            // Rows 0 and 2 of 3 are constrained; row 1 is not.
            let rows = matchers
                .iter_mut()
                .zip([0usize, 2])
                .map(|(m, row)| (row, row as SeqId + 100, m))
                .collect();
            let mut masks = StepMasks::new(rows, 3, VOCAB.div_ceil(32), &mut words, &mut failed);
            if parallel {
                masks.compute_parallel();
            } else {
                masks.compute();
            }
            let applied = masks.apply(&[SamplingRow::default(); 3]);
            assert!(applied[1].allowed_tokens.is_none());
            let digits = applied[0].allowed_tokens.unwrap();
            let json = applied[2].allowed_tokens.unwrap();
            assert_eq!(digits.len(), VOCAB.div_ceil(32));
            assert!(allowed(digits, id("7")) && allowed(digits, id("3")));
            assert!(!allowed(digits, id("a")) && !allowed(digits, id("{")));
            assert!(allowed(json, id("{")) && !allowed(json, id("7")));
            // Nothing beyond the tokenizer's vocabulary, nor EOS before the grammar ends.
            assert!(!allowed(digits, VOCAB as u32 - 1) && !allowed(digits, 151_645));
            drop(masks);
            assert!(failed.is_empty(), "{failed:?}");
            results.push(words);
        }
        assert_eq!(results[0], results[1]);
    }
}
