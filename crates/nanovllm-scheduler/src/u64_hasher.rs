//! A cheap hasher for `HashMap`s keyed by a single `u64` (sequence ids, block hashes).
//!
//! Sequence ids are small consecutive integers and block hashes are already xxh64 outputs,
//! so one multiplication by an odd constant (Fibonacci hashing) spreads them over all bits,
//! including the top bits the std `HashMap` uses for its control bytes. SipHash would cost
//! several times more on the decode hot path and buys no protection here: the keys are not
//! attacker-chosen strings.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than u64; fold bytes in so it stays a valid hasher.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type U64Map<V> = HashMap<u64, V, BuildHasherDefault<U64Hasher>>;
