//! BlockManager rules, driven directly with `Sequence`s (16-token blocks).

use super::{params, tokens};
use crate::{chained_block_hash, BlockManager, BlockManagerStats, SchedulerError, Sequence};

const BS: usize = 16;

fn seq(id: u64, token_ids: Vec<u32>) -> Sequence {
    Sequence::new(id, token_ids, params(8))
}

/// Allocates `token_ids` and marks every full block computed, as a finished prefill would.
fn computed_seq(bm: &mut BlockManager, id: u64, token_ids: Vec<u32>) -> Sequence {
    let mut s = seq(id, token_ids);
    assert!(bm.allocate(&mut s));
    let len = s.len();
    bm.mark_computed(&mut s, len);
    s
}

fn check(bm: &BlockManager, seqs: &[&Sequence]) {
    bm.check_invariants(seqs.iter().copied())
        .expect("block manager invariants");
}

#[test]
fn rejects_bad_block_sizes_and_empty_caches() {
    for block_size in [0, 1, 8, 15, 24, 100, 257] {
        assert!(
            matches!(
                BlockManager::new(4, block_size),
                Err(SchedulerError::InvalidConfig(_))
            ),
            "block_size {block_size}"
        );
    }
    assert!(matches!(
        BlockManager::new(0, 16),
        Err(SchedulerError::InvalidConfig(_))
    ));
    for block_size in [16, 32, 256, 1024] {
        assert!(BlockManager::new(4, block_size).is_ok());
    }
}

#[test]
fn fresh_allocation_takes_ceil_len_over_block_size_blocks_in_free_order() {
    let mut bm = BlockManager::new(8, BS).unwrap();
    let mut s = seq(0, tokens(1, 33));
    assert!(bm.allocate(&mut s));
    assert_eq!(s.block_table, vec![0, 1, 2]);
    assert_eq!((s.num_cached_tokens, s.num_computed_tokens), (0, 0));
    assert_eq!(bm.num_free_blocks(), 5);
    // A sequence that already holds blocks is not allocated again.
    assert!(!bm.allocate(&mut s));
    check(&bm, &[&s]);
}

#[test]
fn allocation_fails_without_changing_anything_when_blocks_run_out() {
    let mut bm = BlockManager::new(2, BS).unwrap();
    let mut s = seq(0, tokens(1, 33));
    assert!(!bm.allocate(&mut s));
    assert!(s.block_table.is_empty());
    assert_eq!(bm.num_free_blocks(), 2);
    check(&bm, &[&s]);
}

#[test]
fn hashes_are_registered_only_once_the_kv_is_computed() {
    let mut bm = BlockManager::new(8, BS).unwrap();
    let prompt = tokens(1, 40);
    let mut a = seq(0, prompt.clone());
    assert!(bm.allocate(&mut a));
    let h0 = chained_block_hash(None, &prompt[..16]);
    let h1 = chained_block_hash(Some(h0), &prompt[16..32]);
    assert_eq!(bm.block_hash(a.block_table[0]), None);
    assert_eq!(bm.cached_block(h0), None);

    // A chunk ending inside block 1 registers block 0 only.
    bm.mark_computed(&mut a, 20);
    assert_eq!(bm.block_hash(a.block_table[0]), Some(h0));
    assert_eq!(bm.cached_block(h0), Some(a.block_table[0]));
    assert_eq!(bm.block_hash(a.block_table[1]), None);
    // A sequence with the same prompt can hit block 0 only.
    let b = seq(1, prompt.clone());
    let mut b2 = b.clone();
    assert!(bm.allocate(&mut b2));
    assert_eq!(b2.num_cached_tokens, 16);
    bm.deallocate(&mut b2);

    bm.mark_computed(&mut a, 40);
    assert_eq!(bm.cached_block(h1), Some(a.block_table[1]));
    // The partial last block is never hashed.
    assert_eq!(bm.block_hash(a.block_table[2]), None);
    check(&bm, &[&a]);
}

#[test]
fn prefix_hit_shares_blocks_and_sets_cached_tokens() {
    let mut bm = BlockManager::new(8, BS).unwrap();
    let a = computed_seq(&mut bm, 0, tokens(1, 40));
    let mut prompt = tokens(1, 32);
    prompt.extend(tokens(500, 10));
    let mut b = seq(1, prompt);
    assert!(bm.allocate(&mut b));
    assert_eq!(b.num_cached_tokens, 32);
    assert_eq!(b.num_computed_tokens, 32);
    assert_eq!(b.block_table[..2], a.block_table[..2]);
    assert_ne!(b.block_table[2], a.block_table[2]);
    assert_eq!(bm.ref_count(a.block_table[0]), Some(2));
    assert_eq!(bm.ref_count(a.block_table[2]), Some(1));
    check(&bm, &[&a, &b]);
}

#[test]
fn without_prefix_caching_nothing_is_hashed_hit_or_shared() {
    let mut bm = BlockManager::new(8, BS).unwrap().with_prefix_caching(false);
    assert!(!bm.prefix_caching());
    let a = computed_seq(&mut bm, 0, tokens(1, 40));
    assert!(a.block_table.iter().all(|&b| bm.block_hash(b).is_none()));
    // The same 32-token prefix that hits with caching on computes afresh.
    let mut prompt = tokens(1, 32);
    prompt.extend(tokens(500, 10));
    let mut b = seq(1, prompt);
    assert!(bm.allocate(&mut b));
    assert_eq!((b.num_cached_tokens, b.num_computed_tokens), (0, 0));
    assert!(b.block_table.iter().all(|blk| !a.block_table.contains(blk)));
    assert!(a
        .block_table
        .iter()
        .all(|&blk| bm.ref_count(blk) == Some(1)));
    check(&bm, &[&a, &b]);
    // Freed blocks cache nothing.
    let mut a = a;
    bm.deallocate(&mut a);
    assert_eq!(bm.stats().num_cached_free_blocks, 0);
    check(&bm, &[&b]);
}

#[test]
fn hits_stop_at_the_first_miss() {
    let mut bm = BlockManager::new(8, BS).unwrap();
    let a = computed_seq(&mut bm, 0, tokens(1, 49));
    // Same block 0 and block 2 tokens, different block 1: only block 0 hits.
    let mut prompt = a.token_ids.clone();
    prompt[20] = 999;
    let mut b = seq(1, prompt);
    assert!(bm.allocate(&mut b));
    assert_eq!(b.num_cached_tokens, 16);
    assert_eq!(b.block_table[0], a.block_table[0]);
    check(&bm, &[&a, &b]);
}

#[test]
fn a_hash_collision_with_other_tokens_is_not_a_hit() {
    let mut bm = BlockManager::new(8, BS).unwrap();
    let a = computed_seq(&mut bm, 0, tokens(1, 20));
    let b_prompt = tokens(100, 20);
    let b_hash = chained_block_hash(None, &b_prompt[..16]);
    // A's block 0 now claims B's hash but still holds A's tokens.
    bm.forge_hash_collision(a.block_table[0], b_hash);

    let mut b = seq(1, b_prompt);
    assert!(bm.allocate(&mut b));
    assert_eq!(
        b.num_cached_tokens, 0,
        "a collision must not alias two prefixes"
    );
    assert_ne!(b.block_table[0], a.block_table[0]);
    // Registering B's block keeps the map (the other block owns the hash) and B its own block.
    bm.mark_computed(&mut b, 20);
    assert_eq!(bm.cached_block(b_hash), Some(a.block_table[0]));
    assert_eq!(bm.block_hash(b.block_table[0]), Some(b_hash));
    assert_eq!(bm.ref_count(b.block_table[0]), Some(1));
}

#[test]
fn at_most_len_minus_one_tokens_are_served_from_the_cache() {
    let mut bm = BlockManager::new(8, BS).unwrap();
    let a = computed_seq(&mut bm, 0, tokens(1, 33));
    // Exactly two full blocks, both cached: the last one is computed again in a fresh block.
    let mut b = seq(1, tokens(1, 32));
    assert!(bm.allocate(&mut b));
    assert_eq!(b.num_cached_tokens, 16);
    assert_eq!(b.block_table[0], a.block_table[0]);
    assert_ne!(b.block_table[1], a.block_table[1]);
    // One token past two cached blocks: both hit, the partial block is fresh.
    let mut c = seq(2, tokens(1, 33));
    assert!(bm.allocate(&mut c));
    assert_eq!(c.num_cached_tokens, 32);
    // A single-block prompt equal to a cached block hits nothing.
    let mut d = seq(3, tokens(1, 16));
    assert!(bm.allocate(&mut d));
    assert_eq!(d.num_cached_tokens, 0);
    check(&bm, &[&a, &b, &c, &d]);
}

#[test]
fn free_blocks_are_reused_least_recently_freed_first() {
    let mut bm = BlockManager::new(3, BS).unwrap();
    let mut a = computed_seq(&mut bm, 0, tokens(1, 16));
    let mut b = computed_seq(&mut bm, 1, tokens(100, 16));
    let mut c = computed_seq(&mut bm, 2, tokens(200, 16));
    let (ba, bb, bc) = (a.block_table[0], b.block_table[0], c.block_table[0]);
    bm.deallocate(&mut a);
    bm.deallocate(&mut c);
    bm.deallocate(&mut b);
    assert_eq!(bm.free_blocks_in_reuse_order(), vec![ba, bc, bb]);
    assert_eq!(
        bm.stats(),
        BlockManagerStats {
            num_blocks: 3,
            num_free_blocks: 3,
            num_cached_free_blocks: 3
        }
    );
    // Two new single-block prompts evict A's block, then C's; B's stays cached.
    let mut d = seq(3, tokens(300, 16));
    let mut e = seq(4, tokens(400, 16));
    assert!(bm.allocate(&mut d) && bm.allocate(&mut e));
    assert_eq!((d.block_table[0], e.block_table[0]), (ba, bc));
    assert_eq!(bm.stats().num_cached_free_blocks, 1);
    let b_hash = chained_block_hash(None, &tokens(100, 16));
    assert_eq!(bm.cached_block(b_hash), Some(bb));
    check(&bm, &[&d, &e]);
}

#[test]
fn a_finished_sequence_releases_tail_first_and_uncached_blocks_go_to_the_front() {
    let mut bm = BlockManager::new(4, BS).unwrap();
    // Three full computed blocks and a partial one.
    let mut a = computed_seq(&mut bm, 0, tokens(1, 50));
    let t = a.block_table.clone();
    bm.deallocate(&mut a);
    assert!(a.block_table.is_empty());
    assert_eq!(a.num_computed_tokens, 0);
    // The partial block caches nothing: reused first. Then the tail, the prefix last.
    assert_eq!(
        bm.free_blocks_in_reuse_order(),
        vec![t[3], t[2], t[1], t[0]]
    );
    assert_eq!(bm.stats().num_cached_free_blocks, 3);
    check(&bm, &[]);
}

#[test]
fn a_hit_on_a_free_cached_block_takes_it_out_of_the_free_list() {
    let mut bm = BlockManager::new(4, BS).unwrap();
    let mut a = computed_seq(&mut bm, 0, tokens(1, 40));
    let t = a.block_table.clone();
    bm.deallocate(&mut a);
    let mut b = seq(1, tokens(1, 40));
    assert!(bm.allocate(&mut b));
    assert_eq!(b.block_table[..2], t[..2]);
    assert_eq!(b.num_cached_tokens, 32);
    let free = bm.free_blocks_in_reuse_order();
    assert!(!free.contains(&t[0]) && !free.contains(&t[1]));
    assert_eq!(free.len(), 1);
    assert_eq!(bm.stats().num_cached_free_blocks, 0);
    check(&bm, &[&b]);
}

#[test]
fn allocation_counts_hits_on_free_blocks_as_consumed() {
    let mut bm = BlockManager::new(4, BS).unwrap();
    // A holds 3 blocks (2 full computed); 1 block free.
    let a = computed_seq(&mut bm, 0, tokens(1, 33));
    let mut prompt = tokens(1, 32);
    prompt.extend(tokens(900, 16));
    // B hits A's two blocks (in use: free for B) and needs 1 fresh block.
    let mut b = seq(1, prompt.clone());
    assert!(bm.allocate(&mut b));
    assert_eq!(bm.num_free_blocks(), 0);
    check(&bm, &[&a, &b]);

    // Same prompt against free cached blocks: the two hits consume free blocks too.
    let mut bm = BlockManager::new(3, BS).unwrap();
    let mut a = computed_seq(&mut bm, 0, tokens(1, 32));
    bm.deallocate(&mut a);
    // `holder` takes the never-used block; A's two cached blocks stay free.
    let mut holder = seq(2, tokens(700, 1));
    assert!(bm.allocate(&mut holder));
    assert_eq!(bm.stats().num_cached_free_blocks, 2);
    // B hits both free cached blocks and needs a fresh one: 3 free blocks, only 2 left.
    let mut b = seq(1, prompt);
    assert!(!bm.allocate(&mut b));
    check(&bm, &[&holder]);
}

#[test]
fn identical_blocks_computed_twice_are_deduplicated_on_registration() {
    let mut bm = BlockManager::new(8, BS).unwrap();
    let prompt = tokens(1, 40);
    let mut a = seq(0, prompt.clone());
    let mut b = seq(1, prompt);
    assert!(bm.allocate(&mut a) && bm.allocate(&mut b));
    assert_eq!(b.num_cached_tokens, 0);
    let b_own = b.block_table.clone();
    bm.mark_computed(&mut a, 40);
    bm.mark_computed(&mut b, 40);
    assert_eq!(b.block_table[..2], a.block_table[..2]);
    assert_eq!(
        b.block_table[2], b_own[2],
        "the partial block stays private"
    );
    assert_eq!(bm.ref_count(a.block_table[0]), Some(2));
    assert_eq!(bm.ref_count(b_own[0]), Some(0));
    assert_eq!(bm.ref_count(b_own[1]), Some(0));
    assert_eq!(bm.block_hash(b_own[0]), None);
    // The released copies cache nothing, so they are reused first.
    assert_eq!(bm.free_blocks_in_reuse_order()[..2], [b_own[1], b_own[0]]);
    check(&bm, &[&a, &b]);
}

#[test]
fn decode_appends_a_block_only_when_the_last_one_is_full() {
    let mut bm = BlockManager::new(2, BS).unwrap();
    let mut s = seq(0, tokens(1, 16));
    assert!(bm.allocate(&mut s));
    bm.mark_computed(&mut s, 16);
    assert!(bm.append(&mut s));
    assert_eq!(s.block_table.len(), 1);
    s.token_ids.push(77); // len 17: position 16 needs block 1
    assert!(bm.append(&mut s));
    assert_eq!(s.block_table.len(), 2);
    // Fill block 1 by decode steps; registration happens as block 1 fills.
    for t in 0..15 {
        let len = s.len();
        bm.mark_computed(&mut s, len);
        s.token_ids.push(100 + t);
        assert!(bm.append(&mut s));
    }
    assert_eq!(s.len(), 32);
    assert_eq!(bm.block_hash(s.block_table[1]), None);
    bm.mark_computed(&mut s, 32);
    let h0 = chained_block_hash(None, &s.token_ids[..16]);
    let h1 = chained_block_hash(Some(h0), &s.token_ids[16..32]);
    assert_eq!(bm.cached_block(h1), Some(s.block_table[1]));
    // Position 32 needs a third block: none is free.
    s.token_ids.push(5);
    assert!(!bm.append(&mut s));
    assert_eq!(s.block_table.len(), 2);
    check(&bm, &[&s]);
}
