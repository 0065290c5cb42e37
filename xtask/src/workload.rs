//! Benchmark workloads, generated exactly like nano-vLLM's bench.py.
//!
//! bench.py: `seed(0)`; for each of `num_seqs` sequences, a prompt of
//! `randint(min_input, max_input)` tokens, each `randint(0, 10000)` (all prompts
//! first), then `max_tokens = randint(min_output, max_output)` per sequence;
//! `temperature = 0.6`, `ignore_eos = True`. Throughput is total output tokens
//! over wall time.

use crate::pyrandom::PyRandom;

/// The shape of a generated workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    pub num_seqs: usize,
    pub min_input: usize,
    pub max_input: usize,
    pub min_output: usize,
    pub max_output: usize,
}

impl WorkloadSpec {
    /// bench.py exactly: 256 sequences, prompts 100–1024, outputs 100–1024.
    pub const SEED: Self = Self {
        num_seqs: 256,
        min_input: 100,
        max_input: 1024,
        min_output: 100,
        max_output: 1024,
    };
    /// The same generator scaled for a 2-core CPU: 32 sequences, prompts and outputs 32–256.
    pub const CPU: Self = Self {
        num_seqs: 32,
        min_input: 32,
        max_input: 256,
        min_output: 32,
        max_output: 256,
    };
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub prompts: Vec<Vec<u32>>,
    pub max_tokens: Vec<usize>,
}

impl Workload {
    pub fn generate(spec: &WorkloadSpec) -> Self {
        let mut rng = PyRandom::new(0);
        let prompts = (0..spec.num_seqs)
            .map(|_| {
                let len = rng.randint(spec.min_input as i64, spec.max_input as i64);
                (0..len).map(|_| rng.randint(0, 10000) as u32).collect()
            })
            .collect();
        let max_tokens = (0..spec.num_seqs)
            .map(|_| rng.randint(spec.min_output as i64, spec.max_output as i64) as usize)
            .collect();
        Self {
            prompts,
            max_tokens,
        }
    }
    pub fn num_prompt_tokens(&self) -> usize {
        self.prompts.iter().map(Vec::len).sum()
    }
    pub fn num_output_tokens(&self) -> usize {
        self.max_tokens.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_profile_reproduces_bench_py() {
        let w = Workload::generate(&WorkloadSpec::SEED);
        assert_eq!(w.prompts.len(), 256);
        assert_eq!(w.num_prompt_tokens(), 142_827);
        assert_eq!(w.num_output_tokens(), 133_966);
        let first: Vec<usize> = w.prompts.iter().take(3).map(Vec::len).collect();
        assert_eq!(first, vec![964, 724, 484]);
        assert_eq!(&w.prompts[0][..5], &[6311, 6890, 663, 4242, 8376]);
        assert_eq!(&w.max_tokens[..3], &[845, 312, 607]);
    }

    #[test]
    fn cpu_profile_stays_in_its_ranges() {
        let w = Workload::generate(&WorkloadSpec::CPU);
        assert_eq!(w.prompts.len(), 32);
        assert!(w.prompts.iter().all(|p| (32..=256).contains(&p.len())));
        assert!(w.max_tokens.iter().all(|m| (32..=256).contains(m)));
    }
}
