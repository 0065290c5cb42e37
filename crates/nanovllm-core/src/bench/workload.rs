//! Benchmark workloads, generated exactly like nano-vLLM's bench.py.
//!
//! bench.py: `seed(0)`; for each of `num_seqs` sequences, a prompt of
//! `randint(min_input, max_input)` tokens, each `randint(0, 10000)` (all prompts
//! first), then `max_tokens = randint(min_output, max_output)` per sequence;
//! `temperature = 0.6`, `ignore_eos = True`. Throughput is total output tokens
//! over wall time.
//!
//! Invariant: a [`Workload`] is only made from a spec that passed
//! [`WorkloadSpec::validate`], so every prompt has at least one token and every
//! `max_tokens` is at least 1.

use crate::bench::pyrandom::PyRandom;
use crate::error::{EngineError, Result};

/// The largest token id in a generated prompt (`randint(0, 10000)`): a model needs
/// `vocab_size > MAX_PROMPT_TOKEN_ID` to run the workload.
pub const MAX_PROMPT_TOKEN_ID: u32 = 10_000;

/// bench.py's `random.seed(0)`.
const BENCH_PY_SEED: u64 = 0;

/// The shape of a generated workload (bounds inclusive, as in `randint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    pub num_seqs: usize,
    pub min_input: usize,
    pub max_input: usize,
    pub min_output: usize,
    pub max_output: usize,
}

/// A named [`WorkloadSpec`]: the `--profile` of `nanovllm bench` and `cargo xtask bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BenchProfile {
    /// bench.py exactly: 256 sequences, prompts and outputs of 100–1024 tokens.
    Seed,
    /// Scaled for a 2-core CPU: 32 sequences, prompts and outputs of 32–256 tokens.
    Cpu,
}

impl BenchProfile {
    pub fn spec(self) -> WorkloadSpec {
        match self {
            BenchProfile::Seed => WorkloadSpec::SEED,
            BenchProfile::Cpu => WorkloadSpec::CPU,
        }
    }
}

/// Bounds given on a command line, each replacing the profile's when set (with the
/// feature `clap`, these are the flags `--num-seqs`, `--min-input`, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct WorkloadOverrides {
    /// Sequences in the workload.
    #[cfg_attr(feature = "clap", arg(long))]
    pub num_seqs: Option<usize>,
    /// Shortest prompt, in tokens.
    #[cfg_attr(feature = "clap", arg(long))]
    pub min_input: Option<usize>,
    /// Longest prompt, in tokens.
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_input: Option<usize>,
    /// Fewest tokens generated for a sequence.
    #[cfg_attr(feature = "clap", arg(long))]
    pub min_output: Option<usize>,
    /// Most tokens generated for a sequence.
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_output: Option<usize>,
}

impl WorkloadSpec {
    /// This spec with every bound `overrides` sets replaced.
    pub fn with_overrides(self, overrides: WorkloadOverrides) -> Self {
        Self {
            num_seqs: overrides.num_seqs.unwrap_or(self.num_seqs),
            min_input: overrides.min_input.unwrap_or(self.min_input),
            max_input: overrides.max_input.unwrap_or(self.max_input),
            min_output: overrides.min_output.unwrap_or(self.min_output),
            max_output: overrides.max_output.unwrap_or(self.max_output),
        }
    }

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

    /// Checks the bounds: at least one sequence, `1 <= min <= max` for prompts and
    /// outputs, and lengths that fit the generator's integers.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, value: usize, expected: String| {
            Err(EngineError::InvalidBenchmark {
                what,
                value: value.to_string(),
                expected,
            })
        };
        // Far beyond any context length; keeps `randint`'s i64 arithmetic exact.
        let limit = u32::MAX as usize;
        if self.num_seqs == 0 {
            return bad("num_seqs", 0, "at least 1".into());
        }
        for (min_name, min, max_name, max) in [
            ("min_input", self.min_input, "max_input", self.max_input),
            ("min_output", self.min_output, "max_output", self.max_output),
        ] {
            if min == 0 {
                return bad(min_name, min, "at least 1 token".into());
            }
            if max > limit {
                return bad(max_name, max, format!("at most {limit}"));
            }
            if min > max {
                return bad(min_name, min, format!("at most {max_name} = {max}"));
            }
        }
        Ok(())
    }

    /// The longest sequence (prompt plus output) the spec can draw.
    pub fn max_seq_len(&self) -> usize {
        self.max_input + self.max_output
    }
}

/// The requests of one benchmark run: `prompts[i]` is answered with exactly
/// `max_tokens[i]` tokens (`ignore_eos`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub prompts: Vec<Vec<u32>>,
    pub max_tokens: Vec<usize>,
}

impl Workload {
    /// Draws the workload from CPython's `random` seeded with 0, in bench.py's order.
    pub fn generate(spec: &WorkloadSpec) -> Result<Self> {
        spec.validate()?;
        let mut rng = PyRandom::new(BENCH_PY_SEED);
        let prompts = (0..spec.num_seqs)
            .map(|_| {
                let len = rng.randint(spec.min_input as i64, spec.max_input as i64);
                (0..len)
                    .map(|_| rng.randint(0, i64::from(MAX_PROMPT_TOKEN_ID)) as u32)
                    .collect()
            })
            .collect();
        let max_tokens = (0..spec.num_seqs)
            .map(|_| rng.randint(spec.min_output as i64, spec.max_output as i64) as usize)
            .collect();
        Ok(Self {
            prompts,
            max_tokens,
        })
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
        let w = Workload::generate(&WorkloadSpec::SEED).unwrap();
        assert_eq!(w.prompts.len(), 256);
        assert_eq!(w.num_prompt_tokens(), 142_827);
        assert_eq!(w.num_output_tokens(), 133_966);
        let first: Vec<usize> = w.prompts.iter().take(3).map(Vec::len).collect();
        assert_eq!(first, vec![964, 724, 484]);
        assert_eq!(&w.prompts[0][..5], &[6311, 6890, 663, 4242, 8376]);
        assert_eq!(&w.max_tokens[..3], &[845, 312, 607]);
    }

    #[test]
    fn overrides_replace_only_the_bounds_they_set() {
        let spec = WorkloadSpec::CPU.with_overrides(WorkloadOverrides {
            num_seqs: Some(3),
            max_output: Some(40),
            ..WorkloadOverrides::default()
        });
        assert_eq!(
            spec,
            WorkloadSpec {
                num_seqs: 3,
                max_output: 40,
                ..WorkloadSpec::CPU
            }
        );
        assert_eq!(
            WorkloadSpec::SEED.with_overrides(WorkloadOverrides::default()),
            WorkloadSpec::SEED
        );
    }

    #[test]
    fn cpu_profile_stays_in_its_ranges() {
        let w = Workload::generate(&WorkloadSpec::CPU).unwrap();
        assert_eq!(w.prompts.len(), 32);
        assert!(w.prompts.iter().all(|p| (32..=256).contains(&p.len())));
        assert!(w.max_tokens.iter().all(|m| (32..=256).contains(m)));
        let max_id = w.prompts.iter().flatten().max().copied();
        assert!(max_id.is_some_and(|id| id <= MAX_PROMPT_TOKEN_ID));
    }

    #[test]
    fn bad_specs_are_refused_naming_the_field() {
        let cases = [
            (
                WorkloadSpec {
                    num_seqs: 0,
                    ..WorkloadSpec::CPU
                },
                "num_seqs",
            ),
            (
                WorkloadSpec {
                    min_input: 0,
                    ..WorkloadSpec::CPU
                },
                "min_input",
            ),
            (
                WorkloadSpec {
                    min_output: 0,
                    ..WorkloadSpec::CPU
                },
                "min_output",
            ),
            (
                WorkloadSpec {
                    min_input: 300,
                    ..WorkloadSpec::CPU
                },
                "max_input = 256",
            ),
            (
                WorkloadSpec {
                    max_output: 31,
                    ..WorkloadSpec::CPU
                },
                "max_output = 31",
            ),
            (
                WorkloadSpec {
                    max_input: usize::MAX,
                    ..WorkloadSpec::CPU
                },
                "max_input",
            ),
        ];
        for (spec, needle) in cases {
            let err = Workload::generate(&spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }
}
