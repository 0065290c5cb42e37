//! The chained hash that names a full KV block in the prefix cache.
//!
//! `hash(block i) = xxh64(seed 0, hash(block i-1) as 8 little-endian bytes ++ the block's
//! token ids as 4 little-endian bytes each)`, with nothing before the tokens for block 0. The
//! hash of block `i` therefore covers the whole prefix `0..(i + 1) * block_size`.

use xxhash_rust::xxh64::Xxh64;

/// Tokens converted to bytes per `update` call: a stack buffer, so hashing never allocates.
const TOKENS_PER_CHUNK: usize = 64;

/// Chained xxh64 of one full block given the hash of the block before it (`None` for block 0).
pub fn chained_block_hash(parent_hash: Option<u64>, token_ids: &[u32]) -> u64 {
    let mut hasher = Xxh64::new(0);
    if let Some(parent) = parent_hash {
        hasher.update(&parent.to_le_bytes());
    }
    let mut bytes = [0u8; 4 * TOKENS_PER_CHUNK];
    for chunk in token_ids.chunks(TOKENS_PER_CHUNK) {
        for (dst, token) in bytes.chunks_exact_mut(4).zip(chunk) {
            dst.copy_from_slice(&token.to_le_bytes());
        }
        hasher.update(&bytes[..4 * chunk.len()]);
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh64::xxh64;

    /// Naive reference: build the whole byte string, hash it in one call.
    fn reference(parent_hash: Option<u64>, token_ids: &[u32]) -> u64 {
        let mut bytes = Vec::new();
        if let Some(p) = parent_hash {
            bytes.extend_from_slice(&p.to_le_bytes());
        }
        for t in token_ids {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        xxh64(&bytes, 0)
    }

    #[test]
    fn matches_one_shot_xxh64_over_the_concatenated_bytes() {
        // Lengths below, at and above the chunk size, and a partial last chunk.
        for len in [1usize, 16, 63, 64, 65, 256, 300] {
            let tokens: Vec<u32> = (0..len as u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            for parent in [None, Some(0u64), Some(0xDEAD_BEEF_F00D_CAFE)] {
                assert_eq!(
                    chained_block_hash(parent, &tokens),
                    reference(parent, &tokens),
                    "len {len} parent {parent:?}"
                );
            }
        }
    }

    #[test]
    fn the_parent_hash_changes_the_result() {
        let tokens = [1u32; 16];
        let root = chained_block_hash(None, &tokens);
        assert_ne!(root, chained_block_hash(Some(root), &tokens));
        assert_ne!(
            chained_block_hash(Some(1), &tokens),
            chained_block_hash(Some(2), &tokens)
        );
    }
}
