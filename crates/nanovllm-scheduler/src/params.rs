//! Per-request sampling parameters.

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
