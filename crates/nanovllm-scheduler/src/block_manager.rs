//! Paged KV blocks with hash-chained prefix caching. (Being written; see the helper task.)

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockManagerStats {
    pub num_blocks: usize,
    /// Blocks with ref count 0 (cached-but-evictable ones included).
    pub num_free_blocks: usize,
    /// Free blocks that still hold a registered hash (reusable on a prefix hit).
    pub num_cached_free_blocks: usize,
}

#[derive(Debug)]
pub struct BlockManager {}
