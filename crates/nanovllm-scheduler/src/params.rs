//! Per-request sampling parameters, and the optional overrides every front end
//! (generation_config.json, CLI flags, JSONL lines, HTTP requests) lays over them.

use serde::{Deserialize, Serialize};

use crate::error::SchedulerError;

/// How to pick the next token and when to stop. `validate()` rejects values that make no sense.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it before softmax.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables the filter.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set whose probability mass reaches `top_p`; 1 disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top probability; 0 disables.
    pub min_p: f32,
    /// Number of tokens to generate at most.
    pub max_tokens: usize,
    /// Keep generating past an end-of-sequence token.
    pub ignore_eos: bool,
    /// Extra token ids that finish the sequence (finish reason `stop`), even with `ignore_eos`.
    pub stop_token_ids: Vec<u32>,
    /// Seed of this request's own random stream; `None` draws from the engine's stream.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            max_tokens: 64,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every field; the error names the field, its value and the accepted range.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let bad = |field: &'static str, value: String, expected: &'static str| {
            Err(SchedulerError::InvalidSamplingParam {
                field,
                value,
                expected,
            })
        };
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(
                "temperature",
                self.temperature.to_string(),
                "a finite number >= 0 (0 means greedy)",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p.to_string(), "a number in (0, 1]");
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad("min_p", self.min_p.to_string(), "a number in [0, 1]");
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", "0".into(), "an integer >= 1");
        }
        Ok(())
    }
}

/// Fields a source of sampling settings sets; `None` keeps the value underneath.
///
/// Each front end (generation_config.json, CLI flags, a JSONL line, an HTTP request)
/// translates its own spelling into one of these, and [`Self::apply_to`] is the one
/// place that copies the fields onto [`SamplingParams`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingOverrides {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub max_tokens: Option<usize>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub seed: Option<u64>,
}

impl SamplingOverrides {
    /// Overwrites each field of `params` that is set here; unset fields keep `params`' value.
    pub fn apply_to(&self, params: &mut SamplingParams) {
        // Destructured so that a field added to the struct cannot be forgotten here.
        let Self {
            temperature,
            top_k,
            top_p,
            min_p,
            max_tokens,
            ignore_eos,
            stop_token_ids,
            seed,
        } = self;
        if let Some(v) = *temperature {
            params.temperature = v;
        }
        if let Some(v) = *top_k {
            params.top_k = v;
        }
        if let Some(v) = *top_p {
            params.top_p = v;
        }
        if let Some(v) = *min_p {
            params.min_p = v;
        }
        if let Some(v) = *max_tokens {
            params.max_tokens = v;
        }
        if let Some(v) = *ignore_eos {
            params.ignore_eos = v;
        }
        if let Some(v) = stop_token_ids {
            params.stop_token_ids.clone_from(v);
        }
        if seed.is_some() {
            params.seed = *seed;
        }
    }

    /// `base` with these overrides applied.
    pub fn over(&self, base: &SamplingParams) -> SamplingParams {
        let mut params = base.clone();
        self.apply_to(&mut params);
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base whose every field differs from the default and from `all_set()`.
    fn base() -> SamplingParams {
        SamplingParams {
            temperature: 0.7,
            top_k: 20,
            top_p: 0.8,
            min_p: 0.05,
            max_tokens: 100,
            ignore_eos: true,
            stop_token_ids: vec![9],
            seed: Some(1),
        }
    }

    fn all_set() -> SamplingOverrides {
        SamplingOverrides {
            temperature: Some(0.0),
            top_k: Some(5),
            top_p: Some(0.5),
            min_p: Some(0.1),
            max_tokens: Some(7),
            ignore_eos: Some(false),
            stop_token_ids: Some(vec![3, 4]),
            seed: Some(42),
        }
    }

    #[test]
    fn unset_overrides_keep_the_base() {
        assert_eq!(SamplingOverrides::default().over(&base()), base());
    }

    #[test]
    fn set_overrides_win() {
        assert_eq!(
            all_set().over(&base()),
            SamplingParams {
                temperature: 0.0,
                top_k: 5,
                top_p: 0.5,
                min_p: 0.1,
                max_tokens: 7,
                ignore_eos: false,
                stop_token_ids: vec![3, 4],
                seed: Some(42),
            }
        );
    }

    #[test]
    fn each_field_overrides_only_itself() {
        let set = all_set();
        let singles = [
            SamplingOverrides {
                temperature: set.temperature,
                ..Default::default()
            },
            SamplingOverrides {
                top_k: set.top_k,
                ..Default::default()
            },
            SamplingOverrides {
                top_p: set.top_p,
                ..Default::default()
            },
            SamplingOverrides {
                min_p: set.min_p,
                ..Default::default()
            },
            SamplingOverrides {
                max_tokens: set.max_tokens,
                ..Default::default()
            },
            SamplingOverrides {
                ignore_eos: set.ignore_eos,
                ..Default::default()
            },
            SamplingOverrides {
                stop_token_ids: set.stop_token_ids.clone(),
                ..Default::default()
            },
            SamplingOverrides {
                seed: set.seed,
                ..Default::default()
            },
        ];
        // Applying the single-field overrides one after another equals applying all at once,
        // and each changes exactly one field of the base.
        let mut params = base();
        for single in &singles {
            let before = params.clone();
            single.apply_to(&mut params);
            let changed = [
                before.temperature != params.temperature,
                before.top_k != params.top_k,
                before.top_p != params.top_p,
                before.min_p != params.min_p,
                before.max_tokens != params.max_tokens,
                before.ignore_eos != params.ignore_eos,
                before.stop_token_ids != params.stop_token_ids,
                before.seed != params.seed,
            ];
            assert_eq!(changed.iter().filter(|&&c| c).count(), 1, "{single:?}");
        }
        assert_eq!(params, set.over(&base()));
    }
}
