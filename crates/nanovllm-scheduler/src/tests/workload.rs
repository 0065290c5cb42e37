//! Property tests: random workloads for thousands of steps, every invariant checked after
//! every step, plus a simulated KV cache that proves each sequence attends to its own tokens.
//!
//! The simulated cache stores, per slot, a digest of the whole token prefix up to that
//! position (what a real K/V row depends on). After each step's writes, every scheduled
//! sequence must read the right digest at every position of its context: this catches
//! stale prefix hits, blocks reused while shared, wrong dedupe and colliding slots.

use std::collections::HashMap;

use proptest::prelude::*;

use super::EOS;
use crate::{
    FinishReason, SamplingParams, ScheduledBatch, Scheduler, SchedulerConfig, SchedulerError, SeqId,
};

/// Token that every generated request lists as a stop id.
const STOP: u32 = 7;
/// Steps after which an unfinished workload is a failure (a livelock).
const MAX_STEPS: usize = 20_000;

/// splitmix64: a tiny deterministic generator for the workload's own decisions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Digest of a token prefix: what the KV row of its last token depends on.
fn extend_digest(digest: u64, token: u32) -> u64 {
    let mut z = (digest ^ u64::from(token)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

struct Request {
    prompt: Vec<u32>,
    params: SamplingParams,
    /// Tokens the scheduler reported as appended to this sequence.
    streamed: Vec<u32>,
}

struct Workload {
    sched: Scheduler,
    rng: Rng,
    /// `kv[slot]`: digest of the prefix whose last token was written there.
    kv: Vec<Option<u64>>,
    live: HashMap<SeqId, Request>,
    bases: Vec<Vec<u32>>,
    num_to_add: usize,
    num_hits: usize,
}

impl Workload {
    fn new(cfg: SchedulerConfig, seed: u64) -> Self {
        let mut rng = Rng(seed);
        // A few base prefixes so that prompts share cached blocks, and one periodic base
        // whose blocks repeat the same tokens behind different prefixes.
        let mut bases: Vec<Vec<u32>> = (0..3)
            .map(|_| {
                let len = rng.range(0, cfg.max_model_len);
                (0..len).map(|_| rng.range(1, 1000) as u32).collect()
            })
            .collect();
        let period: Vec<u32> = (0..16).map(|_| rng.range(1, 1000) as u32).collect();
        bases.push(
            period
                .iter()
                .copied()
                .cycle()
                .take(cfg.max_model_len)
                .collect(),
        );
        let num_to_add = rng.range(100, 400);
        Self {
            kv: vec![None; cfg.num_blocks * cfg.block_size],
            sched: Scheduler::new(cfg).unwrap(),
            rng,
            live: HashMap::new(),
            bases,
            num_to_add,
            num_hits: 0,
        }
    }

    fn add_random_request(&mut self) -> Result<(), TestCaseError> {
        let cfg = self.sched.config().clone();
        let base = &self.bases[self.rng.range(0, self.bases.len() - 1)];
        let mut prompt: Vec<u32> = base[..self.rng.range(0, base.len())].to_vec();
        for _ in 0..self.rng.range(0, 20) {
            prompt.push(self.rng.range(1, 1000) as u32);
        }
        prompt.truncate(cfg.max_model_len);
        if prompt.is_empty() {
            prompt.push(1);
        }
        let params = SamplingParams {
            max_tokens: self.rng.range(1, 60),
            ignore_eos: self.rng.chance(20),
            stop_token_ids: vec![STOP],
            ..SamplingParams::greedy(1)
        };
        let fits = prompt.len().div_ceil(cfg.block_size) <= cfg.num_blocks;
        match self.sched.add(prompt.clone(), params.clone()) {
            Ok(seq_id) => {
                prop_assert!(fits);
                self.live.insert(
                    seq_id,
                    Request {
                        prompt,
                        params,
                        streamed: Vec::new(),
                    },
                );
            }
            Err(SchedulerError::PromptExceedsCache { .. }) => prop_assert!(!fits),
            Err(e) => prop_assert!(false, "unexpected add error {e}"),
        }
        self.num_to_add -= 1;
        Ok(())
    }

    fn abort_random_live(&mut self) -> Result<(), TestCaseError> {
        let mut ids: Vec<SeqId> = self.live.keys().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort_unstable();
        let id = ids[self.rng.range(0, ids.len() - 1)];
        let finished = self
            .sched
            .abort(id)
            .ok_or_else(|| TestCaseError::fail(format!("live seq {id} unknown to abort")))?;
        prop_assert_eq!(finished.finish_reason, FinishReason::Abort);
        let req = self.live.remove(&id).expect("id taken from live");
        prop_assert_eq!(&finished.prompt_token_ids, &req.prompt);
        prop_assert_eq!(&finished.completion_token_ids, &req.streamed);
        Ok(())
    }

    /// Writes the batch's new rows into the simulated cache, then checks that every scheduled
    /// sequence reads its own prefix digest at every position of its context.
    fn simulate_kv(&mut self, batch: &ScheduledBatch) -> Result<(), TestCaseError> {
        let bs = batch.block_size;
        let num_slots = self.kv.len() as i64;
        prop_assert!(batch
            .slot_mapping
            .iter()
            .all(|&s| (0..num_slots).contains(&s)));
        for (i, s) in batch.seqs.iter().enumerate() {
            let tokens = &self.scheduled_seq_tokens(s.seq_id)?;
            let rows = batch.cu_seqlens_q[i] as usize..batch.cu_seqlens_q[i + 1] as usize;
            let mut digest = 0;
            for (pos, &token) in tokens.iter().enumerate().take(s.context_len) {
                digest = extend_digest(digest, token);
                if pos >= s.num_computed_tokens {
                    let row = rows.start + pos - s.num_computed_tokens;
                    prop_assert_eq!(batch.input_ids[row], token);
                    self.kv[batch.slot_mapping[row] as usize] = Some(digest);
                }
            }
        }
        for (i, s) in batch.seqs.iter().enumerate() {
            let tokens = self.scheduled_seq_tokens(s.seq_id)?;
            let table = batch.block_table(i);
            let mut digest = 0;
            for (pos, &token) in tokens.iter().enumerate().take(s.context_len) {
                digest = extend_digest(digest, token);
                let slot = table[pos / bs] as usize * bs + pos % bs;
                prop_assert_eq!(
                    self.kv[slot],
                    Some(digest),
                    "seq {} reads a wrong KV row at position {} (slot {})",
                    s.seq_id,
                    pos,
                    slot
                );
            }
        }
        Ok(())
    }

    /// A scheduled sequence's tokens (cloned: the simulated cache is written meanwhile).
    fn scheduled_seq_tokens(&self, seq_id: SeqId) -> Result<Vec<u32>, TestCaseError> {
        self.sched
            .sequence(seq_id)
            .map(|s| s.token_ids.clone())
            .ok_or_else(|| TestCaseError::fail(format!("scheduled seq {seq_id} unknown")))
    }

    fn sample(&mut self) -> u32 {
        match self.rng.next() % 100 {
            0..=2 => EOS,
            3 => STOP,
            _ => self.rng.range(1, 1000) as u32,
        }
    }

    fn check_finished(
        &mut self,
        finished: &[crate::FinishedSeq],
        max_model_len: usize,
        eos_ids: &[u32],
    ) -> Result<(), TestCaseError> {
        for f in finished {
            let req = self
                .live
                .remove(&f.seq_id)
                .ok_or_else(|| TestCaseError::fail(format!("seq {} finished twice", f.seq_id)))?;
            prop_assert_eq!(&f.prompt_token_ids, &req.prompt);
            prop_assert_eq!(&f.completion_token_ids, &req.streamed);
            let last = *f.completion_token_ids.last().unwrap_or(&u32::MAX);
            let len = f.prompt_token_ids.len() + f.completion_token_ids.len();
            let expected = if !req.params.ignore_eos && eos_ids.contains(&last) {
                FinishReason::Eos
            } else if req.params.stop_token_ids.contains(&last) {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            prop_assert_eq!(f.finish_reason, expected);
            if expected == FinishReason::Length {
                prop_assert!(
                    f.completion_token_ids.len() == req.params.max_tokens || len >= max_model_len
                );
            }
            prop_assert!(f.num_cached_tokens < len);
            self.num_hits += usize::from(f.num_cached_tokens > 0);
        }
        Ok(())
    }

    fn run(mut self) -> Result<(), TestCaseError> {
        let cfg = self.sched.config().clone();
        let mut steps = 0;
        while self.num_to_add > 0 || self.sched.has_unfinished() {
            steps += 1;
            prop_assert!(
                steps < MAX_STEPS,
                "workload did not finish in {} steps",
                MAX_STEPS
            );
            while self.num_to_add > 0 && self.rng.chance(30) {
                self.add_random_request()?;
            }
            if self.rng.chance(2) {
                self.abort_random_live()?;
            }
            let batch = match self.sched.schedule() {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    prop_assert!(self.live.is_empty());
                    continue;
                }
                Err(SchedulerError::Unschedulable {
                    seq_id,
                    needed_blocks,
                    num_blocks,
                }) => {
                    prop_assert!(needed_blocks > num_blocks);
                    prop_assert_eq!(num_blocks, cfg.num_blocks);
                    let seq = self
                        .sched
                        .sequence(seq_id)
                        .map(|s| s.num_blocks(cfg.block_size));
                    prop_assert_eq!(seq, Some(needed_blocks));
                    let finished = self.sched.abort(seq_id);
                    prop_assert!(finished.is_some());
                    self.live.remove(&seq_id);
                    self.sched.check_invariants().map_err(TestCaseError::fail)?;
                    continue;
                }
                Err(e) => return Err(TestCaseError::fail(format!("schedule: {e}"))),
            };
            batch.check_invariants().map_err(TestCaseError::fail)?;
            for s in &batch.seqs {
                // Preempted and recomputed sequences included: the sampler's step.
                let generated = self.live.get(&s.seq_id).map(|r| r.streamed.len());
                prop_assert_eq!(Some(s.num_generated_tokens), generated);
            }
            prop_assert!(batch.num_seqs() <= cfg.max_num_seqs);
            if batch.is_prefill() {
                prop_assert!(batch.num_tokens() <= cfg.max_num_batched_tokens);
            }
            self.simulate_kv(&batch)?;
            let sampled: Vec<u32> = (0..batch.num_seqs()).map(|_| self.sample()).collect();
            // Sometimes a client disconnects while its step is in flight.
            if self.rng.chance(3) {
                self.abort_random_live()?;
            }
            let scheduled = batch.seqs.clone();
            let out = self
                .sched
                .postprocess(batch, &sampled)
                .map_err(|e| TestCaseError::fail(format!("postprocess: {e}")))?;
            // Every entry still alive made progress: its new tokens are computed and, if it
            // was sampled, it holds one more token. (No livelock can hide behind aborts.)
            for s in &scheduled {
                if let Some(seq) = self.sched.sequence(s.seq_id) {
                    prop_assert_eq!(seq.num_computed_tokens, s.context_len);
                    if s.sample {
                        prop_assert_eq!(seq.len(), s.context_len + 1);
                    } else {
                        prop_assert!(seq.len() > s.context_len);
                    }
                    prop_assert_eq!(seq.num_scheduled_tokens, 0);
                }
            }
            for &(seq_id, token) in &out.new_tokens {
                let req = self.live.get_mut(&seq_id).ok_or_else(|| {
                    TestCaseError::fail(format!("token for unknown seq {seq_id}"))
                })?;
                req.streamed.push(token);
            }
            self.check_finished(&out.finished, cfg.max_model_len, &cfg.eos_token_ids)?;
            self.sched.check_invariants().map_err(TestCaseError::fail)?;
        }
        prop_assert!(self.live.is_empty(), "sequences never finished");
        let stats = self.sched.block_manager().stats();
        prop_assert_eq!(stats.num_free_blocks, cfg.num_blocks, "leaked blocks");
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_workloads_keep_every_invariant_and_finish(
        block_size in prop::sample::select(vec![16usize, 32]),
        num_blocks in 1usize..16,
        max_num_seqs in 1usize..8,
        max_num_batched_tokens in 4usize..160,
        max_model_len in 8usize..200,
        seed in any::<u64>(),
        enable_prefix_caching in any::<bool>(),
    ) {
        let cfg = SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens,
            max_model_len,
            block_size,
            num_blocks,
            eos_token_ids: vec![EOS],
            enable_prefix_caching,
        };
        Workload::new(cfg, seed).run()?;
    }
}
