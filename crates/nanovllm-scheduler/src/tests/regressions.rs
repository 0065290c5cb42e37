//! The six named regressions of known scheduler / prefix-cache bugs.

use super::{config, params, step, tokens};
use crate::{
    chained_block_hash, BatchKind, FinishReason, SamplingParams, Scheduler, SchedulerConfig,
    SchedulerError,
};

#[test]
fn regression_1_a_prompt_whose_every_block_is_cached_still_computes_a_token() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let a = sched.add(tokens(1, 32), params(1)).unwrap();
    let (_, out) = step(&mut sched, 9);
    assert_eq!(out.finished[0].seq_id, a);
    // Both blocks of A's prompt are cached now; the same prompt again still computes one block.
    for prompt in [tokens(1, 32), tokens(1, 16)] {
        let len = prompt.len();
        let b = sched.add(prompt, params(1)).unwrap();
        let batch = sched.schedule().unwrap().unwrap();
        batch.check_invariants().unwrap();
        let s = batch.seqs[0];
        assert_eq!(s.seq_id, b);
        assert!(s.num_new_tokens >= 1);
        assert_eq!(s.num_computed_tokens + s.num_new_tokens, len);
        assert_eq!(
            s.num_computed_tokens,
            len - 16,
            "all but the last block hit"
        );
        assert!(s.sample);
        let out = sched.postprocess(batch, &[9]).unwrap();
        assert_eq!(out.finished[0].num_cached_tokens, len - 16);
        sched.check_invariants().unwrap();
    }
}

#[test]
fn regression_1b_a_full_hit_on_a_running_sequence_never_writes_into_its_blocks() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let a = sched.add(tokens(1, 32), params(10)).unwrap();
    step(&mut sched, 9);
    let b = sched.add(tokens(1, 32), params(10)).unwrap();
    let batch = sched.schedule().unwrap().unwrap();
    batch.check_invariants().unwrap();
    let a_table = sched.sequence(a).unwrap().block_table.clone();
    let a_slots: Vec<i64> = a_table
        .iter()
        .flat_map(|&blk| (0..16).map(move |o| blk as i64 * 16 + o))
        .collect();
    assert_eq!(batch.seqs[0].seq_id, b);
    assert!(batch.slot_mapping.iter().all(|s| !a_slots.contains(s)));
    sched.postprocess(batch, &[9]).unwrap();
    sched.check_invariants().unwrap();
}

#[test]
fn regression_2_a_reused_block_leaves_the_hash_map() {
    let mut sched = Scheduler::new(config(1)).unwrap();
    let a_prompt = tokens(1, 16);
    let a_hash = chained_block_hash(None, &a_prompt);
    sched.add(a_prompt.clone(), params(1)).unwrap();
    step(&mut sched, 9);
    let block = sched.block_manager().cached_block(a_hash).unwrap();
    assert_eq!(sched.block_manager().stats().num_cached_free_blocks, 1);

    // The only block is reused for another prompt: A's hash must not point at it any more.
    let b_prompt = tokens(100, 16);
    let b = sched.add(b_prompt.clone(), params(5)).unwrap();
    let batch = sched.schedule().unwrap().unwrap();
    assert_eq!(batch.block_table(0), &[block]);
    assert_eq!(sched.block_manager().cached_block(a_hash), None);
    assert_eq!(sched.block_manager().block_hash(block), None);
    assert_eq!(sched.block_manager().stats().num_cached_free_blocks, 0);
    sched.postprocess(batch, &[9]).unwrap();
    sched.check_invariants().unwrap();
    // Once B's KV is computed the block is registered under B's hash only.
    let b_hash = chained_block_hash(None, &b_prompt);
    assert_eq!(sched.block_manager().cached_block(b_hash), Some(block));
    assert_eq!(sched.block_manager().cached_block(a_hash), None);
    sched.abort(b).unwrap();
    sched.check_invariants().unwrap();
}

#[test]
fn regression_3_identical_prompts_in_one_step_compute_their_own_kv_then_share_blocks() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let prompt = tokens(1, 40);
    let a = sched.add(prompt.clone(), params(10)).unwrap();
    let b = sched.add(prompt, params(10)).unwrap();
    let batch = sched.schedule().unwrap().unwrap();
    batch.check_invariants().unwrap(); // includes: no slot written twice
    assert_eq!(batch.seqs.len(), 2);
    for s in &batch.seqs {
        assert_eq!((s.num_computed_tokens, s.num_new_tokens), (0, 40));
    }
    let (slots_a, slots_b) = batch.slot_mapping.split_at(40);
    assert!(slots_a.iter().all(|s| !slots_b.contains(s)));
    assert_eq!(sched.block_manager().num_free_blocks(), 2);

    sched.postprocess(batch, &[9, 9]).unwrap();
    sched.check_invariants().unwrap();
    let ta = sched.sequence(a).unwrap().block_table.clone();
    let tb = sched.sequence(b).unwrap().block_table.clone();
    assert_eq!(ta[..2], tb[..2], "the two full blocks are shared");
    assert_ne!(ta[2], tb[2], "the partial blocks stay private");
    let bm = sched.block_manager();
    assert_eq!(bm.ref_count(ta[0]), Some(2));
    assert_eq!(bm.ref_count(ta[1]), Some(2));
    assert_eq!(
        bm.num_free_blocks(),
        4,
        "B's two duplicate blocks were freed"
    );
    // Decoding on goes on correctly in the private blocks.
    let (batch, _) = step(&mut sched, 9);
    assert_eq!(batch.kind, BatchKind::Decode);
    assert_eq!(batch.slot_mapping[0] / 16, ta[2] as i64);
    assert_eq!(batch.slot_mapping[1] / 16, tb[2] as i64);
}

/// `enable_prefix_caching: false` (vLLM's `--no-enable-prefix-caching`): the same two
/// identical prompts never share a block, in the step that computes them or after, and a
/// third identical prompt admitted later computes its whole prompt again.
#[test]
fn without_prefix_caching_identical_prompts_share_no_block() {
    let mut sched = Scheduler::new(SchedulerConfig {
        enable_prefix_caching: false,
        ..config(12)
    })
    .unwrap();
    let prompt = tokens(1, 40);
    let a = sched.add(prompt.clone(), params(10)).unwrap();
    let b = sched.add(prompt.clone(), params(10)).unwrap();
    let batch = sched.schedule().unwrap().unwrap();
    sched.postprocess(batch, &[9, 9]).unwrap();
    sched.check_invariants().unwrap();
    let ta = sched.sequence(a).unwrap().block_table.clone();
    let tb = sched.sequence(b).unwrap().block_table.clone();
    assert!(ta.iter().all(|blk| !tb.contains(blk)), "{ta:?} {tb:?}");
    let bm = sched.block_manager();
    assert!(ta
        .iter()
        .chain(&tb)
        .all(|&blk| bm.ref_count(blk) == Some(1)));
    assert_eq!(bm.num_free_blocks(), 6);

    let c = sched.add(prompt, params(10)).unwrap();
    let batch = sched.schedule().unwrap().unwrap();
    let seq_c = batch.seqs.iter().find(|s| s.seq_id == c).unwrap();
    assert_eq!((seq_c.num_computed_tokens, seq_c.num_new_tokens), (0, 40));
    let tc = sched.sequence(c).unwrap().block_table.clone();
    assert!(tc.iter().all(|blk| !ta.contains(blk) && !tb.contains(blk)));
    assert_eq!(sched.sequence(c).unwrap().num_cached_tokens, 0);
}

#[test]
fn regression_4_kv_exhaustion_with_a_single_sequence_errors_instead_of_spinning() {
    // 2 blocks of 16: the sequence fits until position 32, which needs a third block.
    let mut sched = Scheduler::new(SchedulerConfig {
        max_model_len: 100,
        ..config(2)
    })
    .unwrap();
    let never_eos = SamplingParams {
        ignore_eos: true,
        ..params(100)
    };
    let a = sched.add(tokens(1, 20), never_eos).unwrap();
    let b = sched.add(tokens(100, 20), params(3)).unwrap();
    let mut error = None;
    let mut finished = Vec::new();
    for _ in 0..200 {
        match sched.schedule() {
            Ok(None) => break,
            Ok(Some(batch)) => {
                let n = batch.num_seqs();
                finished.extend(sched.postprocess(batch, &vec![9; n]).unwrap().finished);
            }
            Err(e) => {
                error = Some(e);
                let f = sched.abort(a).unwrap();
                assert_eq!(f.finish_reason, FinishReason::Abort);
                finished.push(f);
            }
        }
        sched.check_invariants().unwrap();
    }
    assert_eq!(
        error,
        Some(SchedulerError::Unschedulable {
            seq_id: a,
            needed_blocks: 3,
            num_blocks: 2
        })
    );
    assert!(
        !sched.has_unfinished(),
        "the other sequence ran after the abort"
    );
    let ids: Vec<_> = finished
        .iter()
        .map(|f| (f.seq_id, f.finish_reason))
        .collect();
    assert!(ids.contains(&(b, FinishReason::Length)));
    assert_eq!(sched.block_manager().num_free_blocks(), 2);
}

#[test]
fn regression_5_a_preempted_sequence_hits_its_own_cached_prefix_on_readmission() {
    // 7 blocks: three 32-token prompts take 6; on the first decode A takes the 7th, B
    // preempts C (C's blocks are released tail first, B reuses C's block 1).
    let mut sched = Scheduler::new(config(7)).unwrap();
    sched.add(tokens(1, 32), params(3)).unwrap();
    sched.add(tokens(100, 32), params(3)).unwrap();
    let c = sched.add(tokens(200, 32), params(10)).unwrap();
    step(&mut sched, 9);
    step(&mut sched, 9);
    assert_eq!(sched.num_preemptions(), 1);
    let seq_c = sched.sequence(c).unwrap();
    assert!(seq_c.block_table.is_empty());
    assert_eq!(seq_c.num_cached_tokens, 0);
    // A and B finish on this step; C does not fit before that.
    let (batch, out) = step(&mut sched, 9);
    assert_eq!(batch.kind, BatchKind::Decode);
    assert_eq!(out.finished.len(), 2);
    // Re-admission: C's block 0 is still cached.
    let (batch, _) = step(&mut sched, 9);
    assert_eq!(batch.kind, BatchKind::Prefill);
    let s = batch.seqs[0];
    assert_eq!(s.seq_id, c);
    assert_eq!((s.num_computed_tokens, s.num_new_tokens), (16, 17));
    let seq_c = sched.sequence(c).unwrap();
    assert!(seq_c.num_cached_tokens > 0);
    assert_eq!(seq_c.completion_token_ids(), &[9, 9]);
}

#[test]
fn regression_6_a_prompt_longer_than_max_model_len_is_rejected() {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_model_len: 100,
        ..config(64)
    })
    .unwrap();
    assert_eq!(
        sched.add(tokens(1, 101), params(4)),
        Err(SchedulerError::PromptTooLong {
            prompt_len: 101,
            max_model_len: 100
        })
    );
    assert!(!sched.has_unfinished());
    assert!(sched.add(tokens(1, 100), params(4)).is_ok());
}
