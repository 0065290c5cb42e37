//! Paged KV blocks with hash-chained prefix caching.
//!
//! The KV cache is `num_blocks` blocks of `block_size` token slots; a sequence's
//! `block_table` lists its blocks in order, so token position `p` lives in slot
//! `block_table[p / block_size] * block_size + p % block_size`.
//!
//! Invariants (checked by [`BlockManager::check_invariants`]):
//! - **Ref counts.** A block's ref count is the number of block tables holding it. A block is
//!   free (in the LRU free list) exactly when its ref count is 0.
//! - **What a hash covers.** Only full blocks whose KV has been computed are hashed: the hash
//!   of block `i` is [`chained_block_hash`] of block `i - 1`'s hash and block `i`'s token ids,
//!   so it covers the whole prefix `0..(i + 1) * block_size`. A hash is registered when
//!   `num_computed_tokens` passes the block's end ([`BlockManager::mark_computed`]), never at
//!   allocation, so nobody can hit a block that a chunked prefill is still writing.
//! - **The hash map** `hash -> block` only points at blocks that hold exactly the hashed
//!   tokens (the block's own hash, parent hash and token ids are stored with it). A prefix hit
//!   needs the hash in the map *and* equal token ids and parent hash, so a hash collision can
//!   never alias two prefixes. Hits stop at the first miss. Every sequence computes at least
//!   one token: at most `(len - 1) / block_size` blocks can hit, so a prompt whose every
//!   block is cached still gets a fresh last block, and nothing writes into a shared block.
//! - **Eviction order.** A block whose ref count drops to 0 stays cached (keeps its hash and
//!   tokens) at the back of the free list; reuse pops the front, i.e. the block freed longest
//!   ago. A block that caches nothing (partial, never computed, or a released duplicate) goes
//!   to the front instead: reusing it loses nothing. Sequences release their blocks tail first,
//!   so a prefix stays cached longer than its continuations. A hit on a free cached block
//!   unlinks it from the free list; a block popped for reuse leaves the hash map.
//! - **Prompt logprobs.** A sequence that still has prompt positions to score
//!   (`Sequence::needs_prompt_logprobs`) takes no prefix hit: its positions must be
//!   computed. Its full blocks are hashed and published as usual.
//! - **Prefix caching off** ([`BlockManager::with_prefix_caching`]`(false)`, vLLM's
//!   `--no-enable-prefix-caching`): no hash is ever registered, so no block is ever hit or
//!   shared between sequences and every freed block goes to the front of the free list.
//! - **Allocation cost.** Allocation, release, a prefix-hit removal from the free list and a
//!   decode append are O(1) per block (intrusive linked list, hash map). Hashing happens only
//!   at admission (prefix lookup) and when a block fills.

use crate::block_hash::chained_block_hash;
use crate::error::SchedulerError;
use crate::free_list::FreeList;
use crate::sequence::Sequence;
use crate::u64_hasher::U64Map;

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockManagerStats {
    pub num_blocks: usize,
    /// Blocks with ref count 0 (cached-but-evictable ones included).
    pub num_free_blocks: usize,
    /// Free blocks that still hold a registered hash (reusable on a prefix hit).
    pub num_cached_free_blocks: usize,
}

/// Owns which sequence holds which KV block, and the prefix cache. See the module docs.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    /// `log2(block_size)`: the hot paths divide by shifting.
    block_shift: u32,
    ref_counts: Vec<u32>,
    /// Chained hash of a full computed block; `None` while the block is partial or being written.
    block_hashes: Vec<Option<u64>>,
    /// Hash of the block before it in the chain (`None` for a first block), stored with the hash.
    parent_hashes: Vec<Option<u64>>,
    /// Token ids of a hashed block, compared on every hit. Allocated lazily, then reused.
    block_tokens: Vec<Vec<u32>>,
    hash_to_block: U64Map<u32>,
    free: FreeList,
    /// Free blocks still in `hash_to_block`.
    num_cached_free_blocks: usize,
    /// Whether full computed blocks are hashed and reused (prefix caching).
    prefix_caching: bool,
}

impl BlockManager {
    /// `block_size` must be a power of two >= 16 and `num_blocks` at least 1.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self, SchedulerError> {
        if block_size < 16 || !block_size.is_power_of_two() {
            return Err(SchedulerError::InvalidConfig(format!(
                "block_size = {block_size}: expected a power of two >= 16 (e.g. 256)"
            )));
        }
        if num_blocks == 0 || num_blocks >= u32::MAX as usize {
            return Err(SchedulerError::InvalidConfig(format!(
                "num_blocks = {num_blocks}: expected at least 1 KV block and fewer than 2^32 - 1"
            )));
        }
        Ok(Self {
            block_size,
            block_shift: block_size.trailing_zeros(),
            ref_counts: vec![0; num_blocks],
            block_hashes: vec![None; num_blocks],
            parent_hashes: vec![None; num_blocks],
            block_tokens: vec![Vec::new(); num_blocks],
            hash_to_block: U64Map::default(),
            free: FreeList::with_all_blocks(num_blocks),
            num_cached_free_blocks: 0,
            prefix_caching: true,
        })
    }

    /// Turns prefix caching on (the default) or off. Off, no block is ever hashed, so no
    /// sequence reuses another's KV and no block is shared: every prompt is computed in full.
    pub fn with_prefix_caching(mut self, enabled: bool) -> Self {
        self.prefix_caching = enabled;
        self
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn stats(&self) -> BlockManagerStats {
        BlockManagerStats {
            num_blocks: self.num_blocks(),
            num_free_blocks: self.free.len(),
            num_cached_free_blocks: self.num_cached_free_blocks,
        }
    }

    /// How many block tables hold `block`; `None` if there is no such block.
    pub fn ref_count(&self, block: u32) -> Option<u32> {
        self.ref_counts.get(block as usize).copied()
    }

    /// The chained hash of `block` once its KV is computed and full; `None` otherwise.
    pub fn block_hash(&self, block: u32) -> Option<u64> {
        self.block_hashes.get(block as usize).copied().flatten()
    }

    /// The block registered under `hash` in the prefix cache, if any.
    pub fn cached_block(&self, hash: u64) -> Option<u32> {
        self.hash_to_block.get(&hash).copied()
    }

    /// Free blocks in reuse order (the first is evicted next). For tests and debugging.
    pub fn free_blocks_in_reuse_order(&self) -> Vec<u32> {
        self.free.iter().collect()
    }

    /// Gives a sequence without blocks the `ceil(len / block_size)` blocks of all its tokens,
    /// reusing the cached prefix. Sets `block_table`, and `num_cached_tokens` and
    /// `num_computed_tokens` to the tokens served from the cache (always `<= len - 1`).
    /// Returns false, changing nothing, if there are not enough free blocks (or the
    /// sequence already holds blocks or is empty).
    pub fn allocate(&mut self, seq: &mut Sequence) -> bool {
        if !seq.block_table.is_empty() || seq.is_empty() {
            return false;
        }
        let mut num_free_hits = 0;
        // A sequence that scores its prompt computes every position: it hits nothing (but
        // publishes its full blocks like any other, `mark_computed`).
        let reads_cache = !seq.needs_prompt_logprobs();
        let block_table = &mut seq.block_table;
        if reads_cache {
            self.for_each_prefix_hit(&seq.token_ids, |block| {
                block_table.push(block);
                num_free_hits += usize::from(self.ref_counts[block as usize] == 0);
            });
        }
        let num_hits = seq.block_table.len();
        if self.num_free_blocks_needed(seq.len(), num_hits, num_free_hits) > self.free.len() {
            seq.block_table.clear();
            return false;
        }
        for i in 0..num_hits {
            self.take_ref(seq.block_table[i]);
        }
        // Cannot run dry: the free block count was checked above.
        while seq.block_table.len() < self.num_blocks_for(seq.len()) {
            let Some(block) = self.pop_free_block() else {
                break;
            };
            seq.block_table.push(block);
        }
        seq.num_cached_tokens = num_hits * self.block_size;
        seq.num_computed_tokens = seq.num_cached_tokens;
        true
    }

    /// Releases every block of `seq`, tail first so its prefix stays cached longest, and
    /// resets `num_computed_tokens` to 0 (`num_cached_tokens` is kept for reporting).
    pub fn deallocate(&mut self, seq: &mut Sequence) {
        for i in (0..seq.block_table.len()).rev() {
            self.release(seq.block_table[i]);
        }
        seq.block_table.clear();
        seq.num_computed_tokens = 0;
    }

    /// Grows the block table to cover `seq.len()` tokens (one new block per decode step that
    /// crosses a block boundary). Returns false, changing nothing, if too few blocks are free.
    pub fn append(&mut self, seq: &mut Sequence) -> bool {
        let needed = self.num_blocks_for(seq.len());
        if needed.saturating_sub(seq.block_table.len()) > self.free.len() {
            return false;
        }
        while seq.block_table.len() < needed {
            let Some(block) = self.pop_free_block() else {
                break; // cannot happen: checked above
            };
            seq.block_table.push(block);
        }
        true
    }

    /// Records that the KV of tokens `0..num_computed_tokens` of `seq` is now in the cache and
    /// registers the hashes of the blocks this filled. If a filled block's hash is already
    /// registered for another block with the same tokens (two identical prompts computed in
    /// the same step), the sequence switches to that block and releases its own copy.
    /// `num_computed_tokens` is clamped to the tokens the sequence and its blocks hold.
    #[inline]
    pub fn mark_computed(&mut self, seq: &mut Sequence, num_computed_tokens: usize) {
        let num_computed_tokens = num_computed_tokens
            .min(seq.len())
            .min(seq.block_table.len() * self.block_size);
        let first_new_full = seq.num_computed_tokens >> self.block_shift;
        let end_full = num_computed_tokens >> self.block_shift;
        seq.num_computed_tokens = num_computed_tokens;
        // Most decode steps fill no block: keep that path a division and a compare.
        if first_new_full < end_full && self.prefix_caching {
            self.register_full_blocks(seq, first_new_full, end_full);
        }
    }

    /// Registers blocks `first..end` of `seq`, which just became full and computed.
    fn register_full_blocks(&mut self, seq: &mut Sequence, first: usize, end: usize) {
        let bs = self.block_size;
        for i in first..end {
            let parent_hash = match i {
                0 => None,
                _ => self.block_hashes[seq.block_table[i - 1] as usize],
            };
            let token_ids = &seq.token_ids[i * bs..(i + 1) * bs];
            let hash = chained_block_hash(parent_hash, token_ids);
            let block = seq.block_table[i];
            match self.hash_to_block.get(&hash).copied() {
                Some(existing)
                    if existing != block && self.holds(existing, hash, parent_hash, token_ids) =>
                {
                    self.take_ref(existing);
                    seq.block_table[i] = existing;
                    self.release(block);
                }
                Some(_) => {
                    // Already registered, or a true 64-bit collision with other tokens: keep
                    // the map as it is; the block still records its hash for the next link.
                    self.store_hash(block, hash, parent_hash, token_ids);
                }
                None => {
                    self.store_hash(block, hash, parent_hash, token_ids);
                    self.hash_to_block.insert(hash, block);
                }
            }
        }
    }

    /// Checks every invariant of the module docs against the block tables of `seqs`, which
    /// must be every sequence holding blocks. For tests and debugging; O(blocks + tokens).
    pub fn check_invariants<'a>(
        &self,
        seqs: impl IntoIterator<Item = &'a Sequence>,
    ) -> Result<(), String> {
        let bs = self.block_size;
        let mut holders = vec![0u32; self.num_blocks()];
        for seq in seqs {
            let id = seq.seq_id;
            for (i, &block) in seq.block_table.iter().enumerate() {
                let Some(count) = holders.get_mut(block as usize) else {
                    return Err(format!("seq {id}: block {block} out of range"));
                };
                *count += 1;
                if seq.block_table[..i].contains(&block) {
                    return Err(format!("seq {id}: block {block} twice in its table"));
                }
            }
            if seq.num_computed_tokens > seq.block_table.len() * bs {
                return Err(format!(
                    "seq {id}: {} computed tokens but only {} blocks",
                    seq.num_computed_tokens,
                    seq.block_table.len()
                ));
            }
            let mut parent = None;
            // Without prefix caching no block is hashed (checked below with the map).
            let hashed_blocks = if self.prefix_caching {
                seq.num_computed_tokens / bs
            } else {
                0
            };
            for i in 0..hashed_blocks {
                let block = seq.block_table[i];
                let tokens = &seq.token_ids[i * bs..(i + 1) * bs];
                let expected = chained_block_hash(parent, tokens);
                if !self.holds(block, expected, parent, tokens) {
                    return Err(format!(
                        "seq {id}: computed block {i} (id {block}) does not hold its tokens' hash"
                    ));
                }
                parent = Some(expected);
            }
        }
        for (block, (&refs, &held)) in self.ref_counts.iter().zip(&holders).enumerate() {
            if refs != held {
                return Err(format!(
                    "block {block}: ref count {refs} but {held} block tables hold it"
                ));
            }
            if (refs == 0) != self.free.contains(block as u32) {
                return Err(format!(
                    "block {block}: ref count {refs} but in free list = {}",
                    self.free.contains(block as u32)
                ));
            }
            let hash = self.block_hashes[block];
            if !self.prefix_caching && hash.is_some() {
                return Err(format!("block {block} has a hash with prefix caching off"));
            }
            let in_map = hash.is_some_and(|h| self.cached_block(h) == Some(block as u32));
            if refs == 0 && hash.is_some() && !in_map {
                return Err(format!(
                    "free block {block} keeps a hash the map does not know"
                ));
            }
        }
        self.free.check()?;
        for (&hash, &block) in &self.hash_to_block {
            let b = block as usize;
            let (parent, tokens) = (self.parent_hashes[b], &self.block_tokens[b]);
            if self.block_hashes[b] != Some(hash)
                || tokens.len() != bs
                || chained_block_hash(parent, tokens) != hash
            {
                return Err(format!(
                    "hash {hash:#x} maps to block {block}, which does not hold it"
                ));
            }
        }
        let cached_free = self
            .free
            .iter()
            .filter(|&b| self.block_hashes[b as usize].is_some())
            .count();
        if cached_free != self.num_cached_free_blocks {
            return Err(format!(
                "num_cached_free_blocks = {} but {cached_free} free blocks are cached",
                self.num_cached_free_blocks
            ));
        }
        Ok(())
    }

    /// Calls `on_hit` with each cached block of the longest cached prefix of `token_ids`,
    /// at most `(len - 1) / block_size` of them so that at least one token is left to compute.
    fn for_each_prefix_hit(&self, token_ids: &[u32], mut on_hit: impl FnMut(u32)) {
        let max_hits = token_ids.len().saturating_sub(1) / self.block_size;
        let mut parent_hash = None;
        for token_ids in token_ids.chunks_exact(self.block_size).take(max_hits) {
            let hash = chained_block_hash(parent_hash, token_ids);
            match self.hash_to_block.get(&hash) {
                Some(&block) if self.holds(block, hash, parent_hash, token_ids) => on_hit(block),
                _ => return,
            }
            parent_hash = Some(hash);
        }
    }

    /// `ceil(num_tokens / block_size)`.
    #[inline]
    fn num_blocks_for(&self, num_tokens: usize) -> usize {
        (num_tokens + self.block_size - 1) >> self.block_shift
    }

    /// Free blocks an allocation of `len` tokens consumes: fresh blocks plus hits on free blocks.
    fn num_free_blocks_needed(&self, len: usize, num_hits: usize, num_free_hits: usize) -> usize {
        self.num_blocks_for(len) - num_hits + num_free_hits
    }

    /// Whether `block` is hashed as `hash` with this parent and exactly these tokens.
    fn holds(&self, block: u32, hash: u64, parent_hash: Option<u64>, token_ids: &[u32]) -> bool {
        let b = block as usize;
        self.block_hashes[b] == Some(hash)
            && self.parent_hashes[b] == parent_hash
            && self.block_tokens[b] == token_ids
    }

    fn store_hash(&mut self, block: u32, hash: u64, parent_hash: Option<u64>, token_ids: &[u32]) {
        let b = block as usize;
        self.block_hashes[b] = Some(hash);
        self.parent_hashes[b] = parent_hash;
        self.block_tokens[b].clear();
        self.block_tokens[b].extend_from_slice(token_ids);
    }

    /// Pops the block freed longest ago, evicting whatever it cached.
    fn pop_free_block(&mut self) -> Option<u32> {
        let block = self.free.pop_front()?;
        if let Some(hash) = self.block_hashes[block as usize].take() {
            // A free block keeps a hash only while the map points at it (see `release`).
            if self.cached_block(hash) == Some(block) {
                self.hash_to_block.remove(&hash);
            }
            self.num_cached_free_blocks -= 1;
        }
        self.parent_hashes[block as usize] = None;
        self.ref_counts[block as usize] = 1;
        Some(block)
    }

    fn take_ref(&mut self, block: u32) {
        let b = block as usize;
        if self.ref_counts[b] == 0 {
            self.free.remove(block);
            if self.block_hashes[b].is_some() {
                self.num_cached_free_blocks -= 1;
            }
        }
        self.ref_counts[b] += 1;
    }

    fn release(&mut self, block: u32) {
        let b = block as usize;
        match self.ref_counts.get_mut(b) {
            // Not a block this manager handed out (a hand-made block table): nothing to free.
            None | Some(0) => return,
            Some(refs) => {
                *refs -= 1;
                if *refs > 0 {
                    return;
                }
            }
        }
        let in_map = self.block_hashes[b].is_some_and(|h| self.cached_block(h) == Some(block));
        if in_map {
            self.free.push_back(block);
            self.num_cached_free_blocks += 1;
        } else {
            self.block_hashes[b] = None;
            self.parent_hashes[b] = None;
            self.free.push_front(block);
        }
    }

    /// Renames `block`'s registered hash to `hash` without touching its tokens, so that a
    /// sequence whose block hashes to `hash` sees a 64-bit collision with different tokens.
    #[cfg(test)]
    pub(crate) fn forge_hash_collision(&mut self, block: u32, hash: u64) {
        if let Some(old) = self.block_hashes[block as usize] {
            self.hash_to_block.remove(&old);
        }
        self.block_hashes[block as usize] = Some(hash);
        self.hash_to_block.insert(hash, block);
    }
}
