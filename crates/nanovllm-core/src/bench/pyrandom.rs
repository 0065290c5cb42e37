//! CPython's `random` module, bit for bit: MT19937 seeded like `random.seed(int)`,
//! `getrandbits` and `randint` (through `_randbelow_with_getrandbits`).
//!
//! nano-vLLM's bench.py draws its workload from Python's `random` with
//! `seed(0)`; reproducing that stream exactly is what makes our throughput
//! figures comparable with published ones.
//!
//! Invariant: after `new(seed)` the stream of `next_u32` equals CPython's
//! `random.getrandbits(32)` stream after `random.seed(seed)`.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

pub struct PyRandom {
    state: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.seed(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        // CPython splits |seed| into 32-bit words, least significant first; 0 is one word.
        let key: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        let mut rng = Self {
            state: [0; N],
            index: N,
        };
        rng.init_by_array(&key);
        rng
    }

    fn init_genrand(&mut self, s: u32) {
        self.state[0] = s;
        for i in 1..N {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
        }
        self.state[0] = 0x8000_0000;
    }

    fn twist(&mut self) {
        for k in 0..N {
            let y = (self.state[k] & UPPER_MASK) | (self.state[(k + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.state[k] = self.state[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// The next 32-bit output of MT19937 (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random.getrandbits(k)` for 1 ≤ k ≤ 64.
    ///
    /// # Panics
    /// When `k` is outside `1..=64` (a caller bug: `randbelow` never asks for that).
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!((1..=64).contains(&k), "getrandbits supports 1..=64 bits");
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        // CPython fills 32-bit words least significant first; the last word keeps its top bits.
        let low = u64::from(self.next_u32());
        let high = u64::from(self.next_u32() >> (64 - k));
        low | (high << 32)
    }

    /// `random._randbelow(n)`: uniform in `0..n` by rejection on `n.bit_length()` bits.
    ///
    /// # Panics
    /// When `n == 0`.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        assert!(n > 0, "randbelow needs n > 0");
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.randint(a, b)`: uniform in `a..=b`.
    ///
    /// # Panics
    /// When `a > b` (check user-given bounds first, as [`super::WorkloadSpec::validate`] does).
    pub fn randint(&mut self, a: i64, b: i64) -> i64 {
        assert!(a <= b, "randint needs a <= b");
        a + self.randbelow((b - a) as u64 + 1) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_cpython_getrandbits_after_seed_0() {
        // python3 -c "import random; random.seed(0); print([random.getrandbits(32) for _ in range(3)])"
        let mut r = PyRandom::new(0);
        let got: Vec<u64> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(got, vec![3626764237, 1654615998, 3255389356]);
    }

    #[test]
    fn matches_cpython_randint_after_seed_0() {
        // python3 -c "import random; random.seed(0); print([random.randint(0, 10000) for _ in range(5)])"
        let mut r = PyRandom::new(0);
        let got: Vec<i64> = (0..5).map(|_| r.randint(0, 10000)).collect();
        assert_eq!(got, vec![6311, 6890, 663, 4242, 8376]);
    }
}
