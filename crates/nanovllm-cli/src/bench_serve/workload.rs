//! What `nanovllm bench serve` sends, and when: random-token prompts of fixed or
//! random lengths (vLLM's `random` dataset) and their arrival times (a Poisson process
//! at `--request-rate`, or all at once).
//!
//! Invariants: the workload is a pure function of the flags and `--seed` (CPython's
//! `random` stream, as `nanovllm bench` uses), so two runs send the same prompts at the
//! same offsets; every prompt and every output length is at least one token; arrival
//! offsets never decrease.

use std::time::Duration;

use nanovllm_core::bench::PyRandom;

/// The shape of the generated requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkloadShape {
    pub num_prompts: usize,
    /// Tokens shared by every prompt, before its own part (exercises prefix caching).
    pub prefix_len: usize,
    pub input_len: usize,
    pub output_len: usize,
    /// Lengths are drawn from `[len·(1−r), len·(1+r)]`; 0 makes every length fixed.
    pub range_ratio: f64,
    /// Token ids are drawn from `0..vocab_size`.
    pub vocab_size: usize,
    pub seed: u64,
}

/// One request: its prompt's token ids and the completion tokens it asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchRequest {
    pub prompt_token_ids: Vec<u32>,
    pub max_tokens: usize,
}

impl WorkloadShape {
    /// Refuses shapes that cannot make a request, naming the flag to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.num_prompts == 0 {
            anyhow::bail!("--num-prompts is 0: give at least 1");
        }
        if !(0.0..1.0).contains(&self.range_ratio) {
            anyhow::bail!(
                "--random-range-ratio is {}: give a value in [0, 1)",
                self.range_ratio
            );
        }
        if self.vocab_size == 0 || self.vocab_size > u32::MAX as usize {
            anyhow::bail!(
                "--vocab-size is {}: give the model's vocabulary size (1..2^32)",
                self.vocab_size
            );
        }
        if self.prefix_len + self.input_len == 0 {
            anyhow::bail!(
                "--random-input-len and --random-prefix-len are both 0: give a prompt length"
            );
        }
        if self.output_len == 0 {
            anyhow::bail!("--random-output-len is 0: give at least 1");
        }
        Ok(())
    }

    /// The requests, in the order they are sent.
    pub fn requests(&self) -> Vec<BenchRequest> {
        let mut rng = PyRandom::new(self.seed);
        let vocab = self.vocab_size as i64 - 1;
        let prefix: Vec<u32> = (0..self.prefix_len)
            .map(|_| rng.randint(0, vocab) as u32)
            .collect();
        (0..self.num_prompts)
            .map(|_| {
                let own = draw_len(&mut rng, self.input_len, self.range_ratio);
                let max_tokens = draw_len(&mut rng, self.output_len, self.range_ratio).max(1);
                let mut prompt_token_ids = prefix.clone();
                prompt_token_ids.extend((0..own).map(|_| rng.randint(0, vocab) as u32));
                if prompt_token_ids.is_empty() {
                    // A drawn length of 0 with no prefix: a prompt needs one token.
                    prompt_token_ids.push(rng.randint(0, vocab) as u32);
                }
                BenchRequest {
                    prompt_token_ids,
                    max_tokens,
                }
            })
            .collect()
    }
}

/// A length uniform in `[len·(1−r), len·(1+r)]` (inclusive, rounded inwards).
fn draw_len(rng: &mut PyRandom, len: usize, ratio: f64) -> usize {
    let low = (len as f64 * (1.0 - ratio)).ceil() as i64;
    let high = (len as f64 * (1.0 + ratio)).floor() as i64;
    if high <= low {
        return len;
    }
    rng.randint(low, high) as usize
}

/// When each of `n` requests is sent, as offsets from the start: all at once for an
/// infinite `rate`, else a Poisson process of `rate` requests per second (exponential
/// gaps, as vLLM's default burstiness of 1).
pub fn arrival_offsets(n: usize, rate: f64, seed: u64) -> Vec<Duration> {
    if !rate.is_finite() {
        return vec![Duration::ZERO; n];
    }
    // A stream apart from the prompts' (any fixed odd constant), so that the rate
    // does not change the prompts.
    let mut rng = PyRandom::new(seed ^ 0x9E37_79B9_7F4A_7C15);
    let mut t = 0.0f64;
    (0..n)
        .map(|i| {
            if i > 0 {
                // random() in [0, 1) as CPython builds it from 53 bits; 1 − u is in (0, 1].
                let u = rng.getrandbits(53) as f64 / (1u64 << 53) as f64;
                t += -(1.0 - u).ln() / rate;
            }
            Duration::from_secs_f64(t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> WorkloadShape {
        WorkloadShape {
            num_prompts: 50,
            prefix_len: 0,
            input_len: 100,
            output_len: 20,
            range_ratio: 0.0,
            vocab_size: 512,
            seed: 0,
        }
    }

    #[test]
    fn a_zero_range_ratio_gives_fixed_lengths() {
        let requests = shape().requests();
        assert_eq!(requests.len(), 50);
        for r in &requests {
            assert_eq!(r.prompt_token_ids.len(), 100);
            assert_eq!(r.max_tokens, 20);
            assert!(r.prompt_token_ids.iter().all(|&t| t < 512));
        }
        // Random tokens, not one repeated prompt.
        assert_ne!(requests[0], requests[1]);
    }

    #[test]
    fn random_lengths_stay_in_range_and_vary() {
        let requests = WorkloadShape {
            range_ratio: 0.5,
            ..shape()
        }
        .requests();
        let inputs: Vec<usize> = requests.iter().map(|r| r.prompt_token_ids.len()).collect();
        let outputs: Vec<usize> = requests.iter().map(|r| r.max_tokens).collect();
        assert!(
            inputs.iter().all(|&l| (50..=150).contains(&l)),
            "{inputs:?}"
        );
        assert!(
            outputs.iter().all(|&l| (10..=30).contains(&l)),
            "{outputs:?}"
        );
        assert!(inputs.iter().min() < inputs.iter().max());
        assert!(outputs.iter().min() < outputs.iter().max());
    }

    #[test]
    fn the_prefix_is_shared_and_the_seed_decides_everything() {
        let s = WorkloadShape {
            prefix_len: 30,
            ..shape()
        };
        let a = s.requests();
        assert!(a.iter().all(|r| r.prompt_token_ids.len() == 130));
        assert!(a
            .iter()
            .all(|r| r.prompt_token_ids[..30] == a[0].prompt_token_ids[..30]));
        assert_ne!(a[0].prompt_token_ids[30..], a[1].prompt_token_ids[30..]);
        assert_eq!(a, s.requests());
        assert_ne!(a, WorkloadShape { seed: 1, ..s }.requests());
    }

    #[test]
    fn bad_shapes_name_the_flag() {
        for (bad, flag) in [
            (
                WorkloadShape {
                    num_prompts: 0,
                    ..shape()
                },
                "--num-prompts",
            ),
            (
                WorkloadShape {
                    range_ratio: 1.0,
                    ..shape()
                },
                "--random-range-ratio",
            ),
            (
                WorkloadShape {
                    vocab_size: 0,
                    ..shape()
                },
                "--vocab-size",
            ),
            (
                WorkloadShape {
                    output_len: 0,
                    ..shape()
                },
                "--random-output-len",
            ),
            (
                WorkloadShape {
                    input_len: 0,
                    prefix_len: 0,
                    ..shape()
                },
                "--random-input-len",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
        shape().validate().unwrap();
    }

    #[test]
    fn poisson_arrivals_average_the_rate() {
        let offsets = arrival_offsets(4001, 20.0, 0);
        assert_eq!(offsets[0], Duration::ZERO);
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
        // 4000 exponential gaps of mean 50 ms: the total is 200 s ± ~3σ (σ = 50 ms·√4000 ≈ 3.2 s).
        let total = offsets.last().unwrap().as_secs_f64();
        assert!((190.0..210.0).contains(&total), "{total}");
        assert!(arrival_offsets(5, f64::INFINITY, 0)
            .iter()
            .all(|d| d.is_zero()));
    }
}
