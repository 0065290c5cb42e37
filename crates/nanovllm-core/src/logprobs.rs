//! Per-token log-probabilities, for requests that ask for them (OpenAI's
//! `logprobs` / `top_logprobs`).
//!
//! A token's logprob is taken from the log-softmax of its row of logits after
//! temperature scaling (`logits / temperature`; the raw logits when greedy),
//! before top-k / top-p / min-p: the distribution the sampler starts from, so
//! a token the filters removed still has a finite logprob. The sum runs in f64
//! (`log Σ exp(x - max)`), so the values are accurate to f32 rounding.
//!
//! `top` lists the `num_top` most likely tokens, most likely first, equal
//! values → lower id first (the sampler's tie order). NaN logits count as -inf.

use std::cmp::Ordering;

/// One candidate token and its logprob.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TopLogprob {
    pub token_id: u32,
    pub logprob: f32,
}

/// The sampled token's logprob and the top alternatives at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub token_id: u32,
    pub logprob: f32,
    /// The `num_top` most likely tokens (fewer when the vocabulary is smaller).
    pub top: Vec<TopLogprob>,
}

/// Logprobs of `token_id` and of the `num_top` most likely tokens of `logits`.
/// `None` when the row has no finite logit (the sampler refuses such rows too)
/// or `token_id` is outside the row.
pub fn token_logprobs(
    logits: &[f32],
    temperature: f32,
    token_id: u32,
    num_top: usize,
) -> Option<TokenLogprobs> {
    let inv_t = if temperature > 0.0 {
        1.0 / temperature as f64
    } else {
        1.0
    };
    let scaled = |l: f32| -> f64 {
        if l.is_nan() {
            f64::NEG_INFINITY
        } else {
            l as f64 * inv_t
        }
    };
    let max = logits
        .iter()
        .map(|&l| scaled(l))
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return None;
    }
    let sum: f64 = logits.iter().map(|&l| (scaled(l) - max).exp()).sum();
    let log_z = max + sum.ln();
    let logprob = |id: u32| (scaled(logits[id as usize]) - log_z) as f32;
    if token_id as usize >= logits.len() {
        return None;
    }
    let chosen = logprob(token_id);

    let by_likelihood = |a: &u32, b: &u32| -> Ordering {
        scaled(logits[*b as usize])
            .total_cmp(&scaled(logits[*a as usize]))
            .then(a.cmp(b))
    };
    let num_top = num_top.min(logits.len());
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    if num_top > 0 && num_top < ids.len() {
        ids.select_nth_unstable_by(num_top - 1, by_likelihood);
    }
    ids.truncate(num_top);
    ids.sort_unstable_by(by_likelihood);
    Some(TokenLogprobs {
        token_id,
        logprob: chosen,
        top: ids
            .into_iter()
            .map(|id| TopLogprob {
                token_id: id,
                logprob: logprob(id),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive reference: softmax in f64 by definition, then ln; full sort for the top.
    fn reference(logits: &[f32], temperature: f32) -> Vec<f64> {
        let t = if temperature > 0.0 {
            temperature as f64
        } else {
            1.0
        };
        let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 / t).exp()).collect();
        let total: f64 = exps.iter().sum();
        exps.iter().map(|e| (e / total).ln()).collect()
    }

    fn test_logits() -> Vec<f32> {
        // Deterministic, spread over [-6, 6), with an exact tie at 2.5 (ids 7 and 19).
        let mut v: Vec<f32> = (0..50)
            .map(|i| ((i * 37 % 50) as f32 / 50.0) * 12.0 - 6.0)
            .collect();
        v[7] = 2.5;
        v[19] = 2.5;
        v
    }

    #[test]
    fn matches_the_naive_log_softmax() {
        let logits = test_logits();
        for temperature in [0.0f32, 0.7, 1.0, 2.0] {
            let expected = reference(&logits, temperature);
            for id in [0u32, 7, 19, 49] {
                let got = token_logprobs(&logits, temperature, id, 0).unwrap();
                // f32 rounding of a value of magnitude < 20.
                assert!(
                    (got.logprob as f64 - expected[id as usize]).abs() < 1e-5,
                    "t={temperature} id={id}: {} vs {}",
                    got.logprob,
                    expected[id as usize]
                );
                assert!(got.top.is_empty());
            }
        }
    }

    #[test]
    fn top_lists_the_most_likely_with_ties_by_lower_id() {
        let logits = test_logits();
        let expected = reference(&logits, 1.0);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| {
            expected[b]
                .partial_cmp(&expected[a])
                .unwrap()
                .then(a.cmp(&b))
        });
        let got = token_logprobs(&logits, 1.0, 3, 5).unwrap();
        let ids: Vec<u32> = got.top.iter().map(|t| t.token_id).collect();
        let want: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
        assert_eq!(ids, want);
        for t in &got.top {
            assert!((t.logprob as f64 - expected[t.token_id as usize]).abs() < 1e-5);
        }
        // The tie at 2.5: id 7 before id 19 whenever both are listed.
        let got = token_logprobs(&logits, 1.0, 3, 50).unwrap();
        let pos = |id| got.top.iter().position(|t| t.token_id == id).unwrap();
        assert!(pos(7) + 1 == pos(19));
        // Probabilities of the whole vocabulary sum to 1.
        let total: f64 = got.top.iter().map(|t| (t.logprob as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
    }

    #[test]
    fn num_top_beyond_the_vocabulary_lists_everything() {
        let got = token_logprobs(&[0.0, 1.0], 1.0, 0, 20).unwrap();
        assert_eq!(got.top.len(), 2);
        assert_eq!(got.top[0].token_id, 1);
    }

    #[test]
    fn masked_and_nan_logits_have_no_probability() {
        let logits = [1.0, f32::NEG_INFINITY, f32::NAN, 1.0];
        let got = token_logprobs(&logits, 1.0, 1, 4).unwrap();
        assert_eq!(got.logprob, f32::NEG_INFINITY);
        assert!((got.top[0].logprob - (0.5f32).ln()).abs() < 1e-6);
        assert_eq!(got.top[0].token_id, 0);
        assert_eq!(got.top[1].token_id, 3);
    }

    #[test]
    fn rows_without_a_finite_logit_or_bad_ids_give_none() {
        assert!(token_logprobs(&[f32::NAN, f32::NEG_INFINITY], 1.0, 0, 1).is_none());
        assert!(token_logprobs(&[0.0, 1.0], 1.0, 2, 1).is_none());
    }
}
