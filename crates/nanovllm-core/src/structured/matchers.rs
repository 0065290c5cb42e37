//! [`GrammarMatchers`]: the engine's structured-output state, one llguidance [`Matcher`]
//! per constrained request in flight.
//!
//! Invariants:
//! - A matcher has consumed exactly the request's generated tokens, in order: it advances
//!   only in [`GrammarMatchers::advance`], on the token sampled for the request at a step
//!   it sampled at. A preempted request recomputes its KV cache without sampling (its
//!   matcher waits) and samples its next token from the state it had.
//! - A request leaves ([`GrammarMatchers::remove`]) when it finishes, however it finishes.
//! - With no constrained request in flight, a step costs one `is_empty` check: no mask, no
//!   thread, no allocation.

use std::collections::HashMap;

use llguidance::Matcher;
use nanovllm_scheduler::{ScheduledBatch, SeqId};

use super::masks::StepMasks;

/// What the step's sampled tokens did to the grammars.
#[derive(Debug, Default)]
pub struct GrammarStep {
    /// Requests to abort, with why (the matcher refused its token or failed to give a
    /// mask): their token this step must not be used.
    pub failed: Vec<(SeqId, String)>,
    /// Requests whose grammar is complete after this step's token: they finish (`Stop`).
    pub completed: Vec<SeqId>,
}

/// One matcher per constrained request.
#[derive(Default)]
pub struct GrammarMatchers {
    matchers: HashMap<SeqId, Matcher>,
    /// The step's masks, back to back (kept: no allocation per step once grown).
    mask_words: Vec<u32>,
    /// Requests whose mask failed this step.
    mask_failures: Vec<(SeqId, String)>,
}

impl std::fmt::Debug for GrammarMatchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarMatchers")
            .field("num_constrained", &self.matchers.len())
            .finish()
    }
}

impl GrammarMatchers {
    pub fn insert(&mut self, seq_id: SeqId, matcher: Matcher) {
        self.matchers.insert(seq_id, matcher);
    }

    pub fn remove(&mut self, seq_id: SeqId) {
        self.matchers.remove(&seq_id);
    }

    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// The masks `batch` needs this step: `None` when no sequence that samples is
    /// constrained (no work, no allocation). `vocab_size` is the logits' width.
    pub fn step_masks(
        &mut self,
        batch: &ScheduledBatch,
        vocab_size: usize,
    ) -> Option<StepMasks<'_>> {
        self.mask_failures.clear();
        if self.matchers.is_empty() {
            return None;
        }
        let sampling_rows: HashMap<SeqId, usize> = batch
            .seqs
            .iter()
            .filter(|s| s.sample)
            .enumerate()
            .map(|(row, s)| (s.seq_id, row))
            .collect();
        let mut rows: Vec<_> = self
            .matchers
            .iter_mut()
            .filter_map(|(&seq_id, m)| Some((*sampling_rows.get(&seq_id)?, seq_id, m)))
            .collect();
        if rows.is_empty() {
            return None;
        }
        rows.sort_unstable_by_key(|&(row, _, _)| row);
        Some(StepMasks::new(
            rows,
            sampling_rows.len(),
            vocab_size.div_ceil(32),
            &mut self.mask_words,
            &mut self.mask_failures,
        ))
    }

    /// Feeds each constrained sequence that sampled its token (`tokens[i]` for
    /// `batch.seqs[i]`; sequences in `skipped` got none). Call once per step, after
    /// sampling and before the scheduler sees the tokens.
    pub fn advance(
        &mut self,
        batch: &ScheduledBatch,
        tokens: &[u32],
        skipped: &[SeqId],
    ) -> GrammarStep {
        let mut step = GrammarStep {
            failed: std::mem::take(&mut self.mask_failures),
            completed: Vec::new(),
        };
        if self.matchers.is_empty() {
            return step;
        }
        for (seq, &token) in batch.seqs.iter().zip(tokens) {
            if !seq.sample
                || skipped.contains(&seq.seq_id)
                || step.failed.iter().any(|(id, _)| *id == seq.seq_id)
            {
                continue;
            }
            let Some(matcher) = self.matchers.get_mut(&seq.seq_id) else {
                continue;
            };
            match matcher.consume_token(token) {
                Ok(()) if matcher.is_stopped() => step.completed.push(seq.seq_id),
                Ok(()) => {}
                Err(e) => step.failed.push((
                    seq.seq_id,
                    format!("the grammar rejected token {token}: {e}"),
                )),
            }
        }
        step
    }
}
