//! Scheduler rules: validation, batch contents, chunked prefill, decode growth, preemption,
//! finish reasons and abort.

use super::{config, params, step, tokens, EOS};
use crate::{
    BatchKind, FinishReason, SamplingParams, Scheduler, SchedulerConfig, SchedulerError,
    SequenceStatus,
};

#[test]
fn new_validates_the_config() {
    let bad = [
        SchedulerConfig {
            block_size: 8,
            ..config(4)
        },
        SchedulerConfig {
            block_size: 48,
            ..config(4)
        },
        SchedulerConfig {
            num_blocks: 0,
            ..config(4)
        },
        SchedulerConfig {
            max_num_seqs: 0,
            ..config(4)
        },
        SchedulerConfig {
            max_num_batched_tokens: 0,
            ..config(4)
        },
        SchedulerConfig {
            max_model_len: 0,
            ..config(4)
        },
    ];
    for cfg in bad {
        assert!(
            matches!(
                Scheduler::new(cfg.clone()),
                Err(SchedulerError::InvalidConfig(_))
            ),
            "{cfg:?}"
        );
    }
    let sched = Scheduler::new(SchedulerConfig::default()).unwrap();
    assert_eq!(sched.config().block_size, 256);
    assert!(!sched.has_unfinished());
}

#[test]
fn check_prompt_refuses_what_add_refuses_and_queues_nothing() {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_model_len: 100,
        ..config(4)
    })
    .unwrap();
    let too_long = SchedulerError::PromptTooLong {
        prompt_len: 101,
        max_model_len: 100,
    };
    let exceeds_cache = SchedulerError::PromptExceedsCache {
        prompt_len: 65,
        needed_blocks: 5,
        block_size: 16,
        num_blocks: 4,
    };
    let bad_top_p = SamplingParams {
        top_p: 0.0,
        ..params(4)
    };
    for (prompt_len, p, expected) in [
        (0, params(4), Err(SchedulerError::EmptyPrompt)),
        (101, params(4), Err(too_long)),
        (65, params(4), Err(exceeds_cache)),
        (
            4,
            bad_top_p,
            Err(SchedulerError::InvalidSamplingParam {
                field: "top_p",
                value: "0".into(),
                expected: "a number in (0, 1]",
            }),
        ),
        (64, params(4), Ok(())),
    ] {
        assert_eq!(sched.check_prompt(prompt_len, &p), expected, "{prompt_len}");
        assert!(!sched.has_unfinished());
        let added = sched.add(tokens(1, prompt_len), p).map(|_| ());
        assert_eq!(added, expected, "{prompt_len}");
    }
    assert_eq!(sched.num_waiting(), 1);
}

#[test]
fn add_validates_requests_and_assigns_increasing_ids() {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_model_len: 100,
        ..config(4)
    })
    .unwrap();
    assert_eq!(
        sched.add(vec![], params(4)),
        Err(SchedulerError::EmptyPrompt)
    );
    assert!(matches!(
        sched.add(tokens(1, 4), params(0)),
        Err(SchedulerError::InvalidSamplingParam {
            field: "max_tokens",
            ..
        })
    ));
    let bad_temperature = SamplingParams {
        temperature: -1.0,
        ..params(4)
    };
    assert!(matches!(
        sched.add(tokens(1, 4), bad_temperature),
        Err(SchedulerError::InvalidSamplingParam {
            field: "temperature",
            ..
        })
    ));
    // 4 blocks of 16 tokens: 65 tokens do not fit even below max_model_len.
    assert_eq!(
        sched.add(tokens(1, 65), params(4)),
        Err(SchedulerError::PromptExceedsCache {
            prompt_len: 65,
            needed_blocks: 5,
            block_size: 16,
            num_blocks: 4
        })
    );
    assert_eq!(sched.add(tokens(1, 64), params(4)), Ok(0));
    assert_eq!(sched.add(tokens(1, 1), params(4)), Ok(1));
    assert_eq!(sched.num_waiting(), 2);
    assert_eq!(
        sched.sequence(1).map(|s| s.status),
        Some(SequenceStatus::Waiting)
    );
}

#[test]
fn a_prefill_batch_packs_prompts_with_positions_slots_and_block_tables() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let a = sched.add(tokens(1, 20), params(4)).unwrap();
    let b = sched.add(tokens(100, 5), params(4)).unwrap();
    let batch = sched.schedule().unwrap().unwrap();
    batch.check_invariants().unwrap();
    assert_eq!(batch.kind, BatchKind::Prefill);
    assert_eq!(batch.block_size, 16);
    assert_eq!(batch.seqs.len(), 2);
    assert_eq!((batch.seqs[0].seq_id, batch.seqs[1].seq_id), (a, b));
    let mut ids = tokens(1, 20);
    ids.extend(tokens(100, 5));
    assert_eq!(batch.input_ids, ids);
    let mut positions: Vec<u32> = (0..20).collect();
    positions.extend(0..5);
    assert_eq!(batch.positions, positions);
    assert_eq!(batch.cu_seqlens_q, vec![0, 20, 25]);
    // A holds blocks 0 and 1, B block 2.
    assert_eq!(batch.block_table(0), &[0, 1]);
    assert_eq!(batch.block_table(1), &[2]);
    let mut slots: Vec<i64> = (0..20).collect();
    slots.extend(32..37);
    assert_eq!(batch.slot_mapping, slots);
    assert!(batch
        .seqs
        .iter()
        .all(|s| s.sample && s.num_computed_tokens == 0));
    assert_eq!(batch.seqs[0].context_len, 20);
    assert_eq!(sched.num_running(), 2);
    assert_eq!(sched.sequence(a).unwrap().num_scheduled_tokens, 20);

    let out = sched.postprocess(batch, &[7, 8]).unwrap();
    assert_eq!(out.new_tokens, vec![(a, 7), (b, 8)]);
    assert!(out.finished.is_empty());
    let seq_a = sched.sequence(a).unwrap();
    assert_eq!((seq_a.len(), seq_a.num_computed_tokens), (21, 20));
    assert_eq!(seq_a.num_scheduled_tokens, 0);
    sched.check_invariants().unwrap();
}

#[test]
fn decode_computes_the_last_token_and_grows_the_block_table() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let a = sched.add(tokens(1, 15), params(100)).unwrap();
    step(&mut sched, 50); // prefill: len 16
    let (batch, _) = step(&mut sched, 51); // decode position 15, still block 0
    assert_eq!(batch.kind, BatchKind::Decode);
    assert_eq!(batch.input_ids, vec![50]);
    assert_eq!(batch.positions, vec![15]);
    assert_eq!(batch.slot_mapping, vec![15]);
    assert_eq!(batch.seqs[0].num_computed_tokens, 15);
    assert_eq!(batch.seqs[0].context_len, 16);
    assert_eq!(batch.block_table(0), &[0]);
    // len 17: position 16 needs a second block.
    let (batch, _) = step(&mut sched, 52);
    assert_eq!(batch.positions, vec![16]);
    assert_eq!(batch.block_table(0), &[0, 1]);
    assert_eq!(batch.slot_mapping, vec![16]);
    let seq = sched.sequence(a).unwrap();
    assert_eq!(seq.completion_token_ids(), &[50, 51, 52]);
    assert_eq!(seq.num_computed_tokens, 17);
    // Block 0 filled at position 15 and is now registered.
    assert!(sched.block_manager().block_hash(0).is_some());
}

#[test]
fn chunked_prefill_continues_at_the_front_and_samples_only_the_last_chunk() {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_num_batched_tokens: 20,
        ..config(8)
    })
    .unwrap();
    let a = sched.add(tokens(1, 30), params(4)).unwrap();
    let b = sched.add(tokens(100, 5), params(4)).unwrap();

    let (batch, out) = step(&mut sched, 9);
    assert_eq!(
        batch.seqs.len(),
        1,
        "nothing is admitted after a partial chunk"
    );
    let s = batch.seqs[0];
    assert_eq!(
        (s.seq_id, s.num_computed_tokens, s.num_new_tokens),
        (a, 0, 20)
    );
    assert!(!s.sample);
    assert!(out.new_tokens.is_empty());
    let seq_a = sched.sequence(a).unwrap();
    assert_eq!((seq_a.len(), seq_a.num_computed_tokens), (30, 20));
    assert_eq!(seq_a.status, SequenceStatus::Waiting);
    assert_eq!(sched.num_waiting(), 2);
    // Block 0 is computed and registered; block 1 (half written) is not.
    let table = seq_a.block_table.clone();
    assert!(sched.block_manager().block_hash(table[0]).is_some());
    assert!(sched.block_manager().block_hash(table[1]).is_none());

    let (batch, out) = step(&mut sched, 9);
    assert_eq!(batch.kind, BatchKind::Prefill);
    assert_eq!(batch.seqs.len(), 2);
    let (sa, sb) = (batch.seqs[0], batch.seqs[1]);
    assert_eq!(
        (sa.seq_id, sa.num_computed_tokens, sa.num_new_tokens),
        (a, 20, 10)
    );
    assert_eq!(batch.positions[..10], (20..30).collect::<Vec<u32>>()[..]);
    assert_eq!(batch.block_table(0), &table[..]);
    assert!(sa.sample);
    assert_eq!((sb.seq_id, sb.num_new_tokens), (b, 5));
    assert!(sb.sample);
    assert_eq!(out.new_tokens, vec![(a, 9), (b, 9)]);
    assert_eq!(sched.num_running(), 2);
}

#[test]
fn a_chunk_that_reaches_the_end_exactly_is_sampled_and_a_later_prompt_is_chunked() {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_num_batched_tokens: 20,
        ..config(8)
    })
    .unwrap();
    let a = sched.add(tokens(1, 12), params(4)).unwrap();
    let b = sched.add(tokens(100, 8), params(4)).unwrap();
    let c = sched.add(tokens(200, 3), params(4)).unwrap();
    let (batch, _) = step(&mut sched, 9);
    // A (12) and B (8) use the whole budget; C waits for the next step.
    assert_eq!(batch.seqs.len(), 2);
    assert!(batch.seqs.iter().all(|s| s.sample));
    assert_eq!(sched.sequence(c).unwrap().status, SequenceStatus::Waiting);
    let (batch, _) = step(&mut sched, 9);
    assert_eq!(batch.kind, BatchKind::Prefill);
    assert_eq!(batch.seqs[0].seq_id, c);
    let (batch, _) = step(&mut sched, 9);
    assert_eq!(batch.kind, BatchKind::Decode);
    let ids: Vec<_> = batch.seqs.iter().map(|s| s.seq_id).collect();
    assert_eq!(ids, vec![a, b, c]);
}

#[test]
fn admission_counts_running_sequences_against_max_num_seqs() {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_num_seqs: 2,
        ..config(8)
    })
    .unwrap();
    sched.add(tokens(1, 4), params(2)).unwrap();
    sched.add(tokens(10, 4), params(2)).unwrap();
    let c = sched.add(tokens(20, 4), params(2)).unwrap();
    let (batch, _) = step(&mut sched, 5);
    assert_eq!(batch.seqs.len(), 2);
    // Two running: C cannot join until one finishes; decode runs instead.
    let (batch, out) = step(&mut sched, 5);
    assert_eq!(batch.kind, BatchKind::Decode);
    assert_eq!(out.finished.len(), 2);
    let (batch, _) = step(&mut sched, 5);
    assert_eq!(batch.seqs[0].seq_id, c);
}

#[test]
fn blocks_running_out_preempts_the_newest_sequence_to_the_front_of_waiting() {
    // 4 blocks: three 16-token prompts take 3; the first decode needs one block each.
    let mut sched = Scheduler::new(config(4)).unwrap();
    let a = sched.add(tokens(1, 16), params(50)).unwrap();
    let b = sched.add(tokens(100, 16), params(50)).unwrap();
    let c = sched.add(tokens(200, 16), params(50)).unwrap();
    step(&mut sched, 5);
    let (batch, _) = step(&mut sched, 5);
    // A takes the last free block, B needs one: C (newest) is preempted, B gets C's block.
    assert_eq!(batch.kind, BatchKind::Decode);
    let ids: Vec<_> = batch.seqs.iter().map(|s| s.seq_id).collect();
    assert_eq!(ids, vec![a, b]);
    assert_eq!(sched.num_preemptions(), 1);
    let seq_c = sched.sequence(c).unwrap();
    assert_eq!(seq_c.status, SequenceStatus::Waiting);
    assert!(seq_c.block_table.is_empty());
    assert_eq!(seq_c.num_computed_tokens, 0);
    assert_eq!(seq_c.len(), 17, "generated tokens are kept for recompute");
    // C's freed (cached) block went to B and left the prefix cache.
    assert_eq!(sched.block_manager().stats().num_free_blocks, 0);
    let c_hash = crate::chained_block_hash(None, &tokens(200, 16));
    assert_eq!(sched.block_manager().cached_block(c_hash), None);
}

#[test]
fn preemption_keeps_older_preempted_sequences_ahead() {
    // 3 blocks, three 15-token prompts; each first decode fits, the second needs a block each.
    let mut sched = Scheduler::new(config(3)).unwrap();
    let a = sched.add(tokens(1, 15), params(50)).unwrap();
    let b = sched.add(tokens(100, 15), params(50)).unwrap();
    let c = sched.add(tokens(200, 15), params(50)).unwrap();
    step(&mut sched, 5); // prefill: len 16 each
    step(&mut sched, 5); // decode position 15: len 17 each
    let (batch, _) = step(&mut sched, 5);
    // A needs block 2 of its own: C then B are preempted (newest first).
    assert_eq!(batch.seqs.len(), 1);
    assert_eq!(batch.seqs[0].seq_id, a);
    assert_eq!(sched.num_preemptions(), 2);
    let waiting: Vec<_> = sched.waiting_ids().collect();
    assert_eq!(waiting, vec![b, c], "B (older) is re-admitted first");
}

#[test]
fn finish_on_eos_unless_ignore_eos() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let a = sched.add(tokens(1, 4), params(10)).unwrap();
    let b = sched
        .add(
            tokens(1, 4),
            SamplingParams {
                ignore_eos: true,
                ..params(10)
            },
        )
        .unwrap();
    let (_, out) = step(&mut sched, EOS);
    assert_eq!(out.finished.len(), 1);
    let f = &out.finished[0];
    assert_eq!((f.seq_id, f.finish_reason), (a, FinishReason::Eos));
    assert_eq!(f.prompt_token_ids, tokens(1, 4));
    assert_eq!(f.completion_token_ids, vec![EOS]);
    assert!(sched.sequence(a).is_none());
    assert_eq!(sched.sequence(b).unwrap().completion_token_ids(), &[EOS]);
    assert_eq!(sched.num_running(), 1);
}

#[test]
fn finish_on_stop_ids_even_with_ignore_eos() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let stop = SamplingParams {
        ignore_eos: true,
        stop_token_ids: vec![42],
        ..params(10)
    };
    let a = sched.add(tokens(1, 4), stop).unwrap();
    let (_, out) = step(&mut sched, 41);
    assert!(out.finished.is_empty());
    let (_, out) = step(&mut sched, 42);
    assert_eq!(out.finished[0].seq_id, a);
    assert_eq!(out.finished[0].finish_reason, FinishReason::Stop);
    assert_eq!(out.finished[0].completion_token_ids, vec![41, 42]);
}

#[test]
fn finish_on_max_tokens() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let a = sched.add(tokens(1, 4), params(3)).unwrap();
    for _ in 0..2 {
        assert!(step(&mut sched, 9).1.finished.is_empty());
    }
    let (_, out) = step(&mut sched, 9);
    assert_eq!(out.finished[0].seq_id, a);
    assert_eq!(out.finished[0].finish_reason, FinishReason::Length);
    assert_eq!(out.finished[0].completion_token_ids.len(), 3);
    assert!(!sched.has_unfinished());
    assert_eq!(sched.block_manager().num_free_blocks(), 8);
}

#[test]
fn finish_on_max_model_len() {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_model_len: 10,
        ..config(8)
    })
    .unwrap();
    let a = sched.add(tokens(1, 8), params(100)).unwrap();
    assert!(step(&mut sched, 9).1.finished.is_empty()); // len 9
    let (_, out) = step(&mut sched, 9); // len 10
    assert_eq!(out.finished[0].seq_id, a);
    assert_eq!(out.finished[0].finish_reason, FinishReason::Length);
    assert_eq!(out.finished[0].completion_token_ids.len(), 2);
    // A prompt of exactly max_model_len still gets its one token.
    let b = sched.add(tokens(1, 10), params(100)).unwrap();
    let (_, out) = step(&mut sched, 9);
    assert_eq!(out.finished[0].seq_id, b);
    assert_eq!(out.finished[0].finish_reason, FinishReason::Length);
}

#[test]
fn abort_a_waiting_sequence() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let a = sched.add(tokens(1, 4), params(3)).unwrap();
    let f = sched.abort(a).unwrap();
    assert_eq!(f.finish_reason, FinishReason::Abort);
    assert_eq!(f.prompt_token_ids, tokens(1, 4));
    assert!(f.completion_token_ids.is_empty());
    assert_eq!(sched.abort(a), None, "unknown ids are None");
    assert!(!sched.has_unfinished());
    assert_eq!(sched.schedule().unwrap(), None);
    sched.check_invariants().unwrap();
}

#[test]
fn abort_a_sequence_between_prefill_chunks() {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_num_batched_tokens: 20,
        ..config(8)
    })
    .unwrap();
    let a = sched.add(tokens(1, 50), params(3)).unwrap();
    let b = sched.add(tokens(100, 5), params(3)).unwrap();
    step(&mut sched, 9);
    assert_eq!(sched.sequence(a).unwrap().num_computed_tokens, 20);
    sched.abort(a).unwrap();
    sched.check_invariants().unwrap();
    // The computed chunk blocks stay cached; everything is free.
    assert_eq!(sched.block_manager().num_free_blocks(), 8);
    assert_eq!(sched.block_manager().stats().num_cached_free_blocks, 1);
    let (batch, _) = step(&mut sched, 9);
    assert_eq!(batch.seqs[0].seq_id, b);
}

#[test]
fn abort_a_running_sequence() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let a = sched.add(tokens(1, 20), params(30)).unwrap();
    let b = sched.add(tokens(100, 20), params(30)).unwrap();
    step(&mut sched, 9);
    step(&mut sched, 9);
    let f = sched.abort(a).unwrap();
    assert_eq!(f.completion_token_ids, vec![9, 9]);
    sched.check_invariants().unwrap();
    let (batch, _) = step(&mut sched, 9);
    assert_eq!(batch.seqs.len(), 1);
    assert_eq!(batch.seqs[0].seq_id, b);
}

#[test]
fn abort_while_its_step_is_in_flight_skips_it_in_postprocess() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let a = sched.add(tokens(1, 20), params(30)).unwrap();
    let b = sched.add(tokens(100, 20), params(30)).unwrap();
    let batch = sched.schedule().unwrap().unwrap();
    sched.abort(a).unwrap();
    let out = sched.postprocess(batch, &[9, 9]).unwrap();
    assert_eq!(out.new_tokens, vec![(b, 9)]);
    sched.check_invariants().unwrap();
    // The last running sequence's in-flight decode: abort it too.
    let batch = sched.schedule().unwrap().unwrap();
    sched.abort(b).unwrap();
    let out = sched.postprocess(batch, &[9]).unwrap();
    assert!(out.new_tokens.is_empty() && out.finished.is_empty());
    assert!(!sched.has_unfinished());
    assert_eq!(sched.block_manager().num_free_blocks(), 8);
    sched.check_invariants().unwrap();
}

#[test]
fn abort_a_preempted_sequence() {
    let mut sched = Scheduler::new(config(4)).unwrap();
    sched.add(tokens(1, 16), params(50)).unwrap();
    sched.add(tokens(100, 16), params(50)).unwrap();
    let c = sched.add(tokens(200, 16), params(50)).unwrap();
    step(&mut sched, 5);
    step(&mut sched, 5);
    assert_eq!(sched.sequence(c).unwrap().status, SequenceStatus::Waiting);
    let f = sched.abort(c).unwrap();
    assert_eq!(f.completion_token_ids, vec![5]);
    sched.check_invariants().unwrap();
    assert_eq!(sched.num_waiting(), 0);
}

#[test]
fn postprocess_rejects_a_wrong_number_of_samples() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    sched.add(tokens(1, 4), params(3)).unwrap();
    let batch = sched.schedule().unwrap().unwrap();
    assert_eq!(
        sched.postprocess(batch.clone(), &[1, 2]),
        Err(SchedulerError::SampledCountMismatch {
            expected: 1,
            got: 2
        })
    );
    // The step can still be completed with the right count.
    let out = sched.postprocess(batch, &[1]).unwrap();
    assert_eq!(out.new_tokens.len(), 1);
    sched.check_invariants().unwrap();
}

#[test]
fn postprocessing_the_same_batch_twice_changes_nothing_the_second_time() {
    let mut sched = Scheduler::new(config(8)).unwrap();
    let a = sched.add(tokens(1, 4), params(10)).unwrap();
    let batch = sched.schedule().unwrap().unwrap();
    sched.postprocess(batch.clone(), &[1]).unwrap();
    let out = sched.postprocess(batch, &[1]).unwrap();
    assert!(out.new_tokens.is_empty());
    assert_eq!(sched.sequence(a).unwrap().len(), 5);
    sched.check_invariants().unwrap();
}

#[test]
fn decode_steps_reuse_the_batch_buffers() {
    let mut sched = Scheduler::new(config(64)).unwrap();
    for i in 0..8 {
        sched.add(tokens(1 + 100 * i, 30), params(100)).unwrap();
    }
    step(&mut sched, 3);
    let batch = sched.schedule().unwrap().unwrap();
    let ptrs = (
        batch.input_ids.as_ptr(),
        batch.slot_mapping.as_ptr(),
        batch.seqs.as_ptr(),
    );
    sched.postprocess(batch, &[3; 8]).unwrap();
    let batch = sched.schedule().unwrap().unwrap();
    assert_eq!(
        ptrs,
        (
            batch.input_ids.as_ptr(),
            batch.slot_mapping.as_ptr(),
            batch.seqs.as_ptr()
        )
    );
    sched.postprocess(batch, &[3; 8]).unwrap();
}

/// A request with prompt logprobs gets `prompt_logprob_rows` for every prompt position
/// but the last, chunk by chunk; none once it has generated (decode, or a recompute after
/// a preemption); it reads nothing from the prefix cache, but publishes its blocks.
#[test]
fn prompt_logprob_rows_cover_the_prompt_once_and_skip_the_prefix_cache() {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_num_batched_tokens: 20,
        ..config(16)
    })
    .unwrap();
    // Warm the cache with a 40-token prompt.
    sched.add(tokens(1, 40), params(1)).unwrap();
    while sched.has_unfinished() {
        step(&mut sched, 9);
    }
    let scoring = SamplingParams {
        prompt_logprobs: Some(2),
        ..params(3)
    };
    let a = sched.add(tokens(1, 40), scoring.clone()).unwrap();
    let (batch, _) = step(&mut sched, 9);
    let s = batch.seqs[0];
    assert_eq!((s.seq_id, s.num_computed_tokens), (a, 0), "no prefix hit");
    assert_eq!((s.num_new_tokens, s.prompt_logprob_rows), (20, 20));
    assert_eq!(sched.sequence(a).unwrap().num_cached_tokens, 0);
    let (batch, out) = step(&mut sched, 9);
    let s = batch.seqs[0];
    assert_eq!((s.num_computed_tokens, s.num_new_tokens), (20, 20));
    assert_eq!(s.prompt_logprob_rows, 19, "the last position samples");
    assert!(s.sample);
    assert_eq!(out.new_tokens, vec![(a, 9)]);
    let (batch, _) = step(&mut sched, 9);
    assert_eq!(batch.kind, BatchKind::Decode);
    assert_eq!(batch.seqs[0].prompt_logprob_rows, 0);
    // A request that does not ask hits what the scoring one published.
    while sched.has_unfinished() {
        step(&mut sched, 9);
    }
    let c = sched.add(tokens(1, 41), params(1)).unwrap();
    let (batch, _) = step(&mut sched, 9);
    let s = batch.seqs[0];
    assert_eq!(
        (s.seq_id, s.num_computed_tokens, s.prompt_logprob_rows),
        (c, 32, 0)
    );
}

#[test]
fn a_preempted_scoring_request_scores_nothing_again() {
    // Two requests of 20 + 20 tokens need 3 blocks each; 4 blocks force a preemption.
    let mut sched = Scheduler::new(config(4)).unwrap();
    let scoring = SamplingParams {
        prompt_logprobs: Some(0),
        ignore_eos: true,
        ..params(20)
    };
    sched.add(tokens(1, 20), scoring.clone()).unwrap();
    sched.add(tokens(50, 20), scoring).unwrap();
    let mut rows = std::collections::HashMap::new();
    while sched.has_unfinished() {
        let (batch, _) = step(&mut sched, 9);
        for s in &batch.seqs {
            *rows.entry(s.seq_id).or_insert(0) += s.prompt_logprob_rows;
        }
    }
    assert!(sched.num_preemptions() > 0);
    assert_eq!(rows.values().copied().collect::<Vec<_>>(), vec![19, 19]);
}
