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
    /// OpenAI's presence penalty, in [-2, 2]: subtracted once from the logit of every token
    /// the output holds. 0 is off.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty, in [-2, 2]: subtracted from a token's logit once per
    /// occurrence in the output. 0 is off.
    pub frequency_penalty: f32,
    /// vLLM's repetition penalty, > 0: the logit of every token in the prompt or the output
    /// is divided by it when positive and multiplied by it when negative. 1 is off.
    pub repetition_penalty: f32,
    /// `(token id, bias)` added to the logits before sampling; biases in [-100, 100].
    pub logit_bias: Vec<(u32, f32)>,
    /// `Some(n)`: return the logprob of every prompt token after the first (the first has
    /// none), with the `n` most likely alternatives at each position.
    pub prompt_logprobs: Option<usize>,
    /// Constrain the output to a grammar (JSON schema, regex, choice, Lark).
    pub structured_output: Option<StructuredOutput>,
}

/// What a constrained request's output must match. Compiled by the engine (llguidance);
/// a grammar that does not compile is refused when the request is added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON document valid under `schema` (JSON text of a JSON Schema). `strict` is
    /// OpenAI's flag: `true` allows no properties beyond those the schema lists.
    JsonSchema { schema: String, strict: bool },
    /// Text matching a regular expression (vLLM's `regex` / `guided_regex`).
    Regex(String),
    /// Exactly one of these strings (vLLM's `choice` / `guided_choice`).
    Choice(Vec<String>),
    /// A Lark grammar in llguidance's dialect (vLLM's `grammar` / `guided_grammar`).
    Lark(String),
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
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            prompt_logprobs: None,
            structured_output: None,
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
        for (field, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return bad(field, value.to_string(), "a number in [-2, 2] (0 is off)");
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty.to_string(),
                "a finite number > 0 (1 is off)",
            );
        }
        if let Some(&(id, bias)) = self
            .logit_bias
            .iter()
            .find(|(_, bias)| !(-100.0..=100.0).contains(bias))
        {
            return bad(
                "logit_bias",
                format!("{bias} for token {id}"),
                "biases in [-100, 100]",
            );
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
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub logit_bias: Option<Vec<(u32, f32)>>,
    pub prompt_logprobs: Option<usize>,
    pub structured_output: Option<StructuredOutput>,
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
            presence_penalty,
            frequency_penalty,
            repetition_penalty,
            logit_bias,
            prompt_logprobs,
            structured_output,
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
        if let Some(v) = *presence_penalty {
            params.presence_penalty = v;
        }
        if let Some(v) = *frequency_penalty {
            params.frequency_penalty = v;
        }
        if let Some(v) = *repetition_penalty {
            params.repetition_penalty = v;
        }
        if let Some(v) = logit_bias {
            params.logit_bias.clone_from(v);
        }
        if prompt_logprobs.is_some() {
            params.prompt_logprobs = *prompt_logprobs;
        }
        if structured_output.is_some() {
            params.structured_output.clone_from(structured_output);
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
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            repetition_penalty: 1.5,
            logit_bias: vec![(1, 2.0)],
            prompt_logprobs: Some(1),
            structured_output: Some(StructuredOutput::JsonObject),
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
            presence_penalty: Some(-1.0),
            frequency_penalty: Some(1.0),
            repetition_penalty: Some(1.1),
            logit_bias: Some(vec![(7, -5.0)]),
            prompt_logprobs: Some(0),
            structured_output: Some(StructuredOutput::Regex("a+".into())),
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
                presence_penalty: -1.0,
                frequency_penalty: 1.0,
                repetition_penalty: 1.1,
                logit_bias: vec![(7, -5.0)],
                prompt_logprobs: Some(0),
                structured_output: Some(StructuredOutput::Regex("a+".into())),
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
            SamplingOverrides {
                presence_penalty: set.presence_penalty,
                ..Default::default()
            },
            SamplingOverrides {
                frequency_penalty: set.frequency_penalty,
                ..Default::default()
            },
            SamplingOverrides {
                repetition_penalty: set.repetition_penalty,
                ..Default::default()
            },
            SamplingOverrides {
                logit_bias: set.logit_bias.clone(),
                ..Default::default()
            },
            SamplingOverrides {
                prompt_logprobs: set.prompt_logprobs,
                ..Default::default()
            },
            SamplingOverrides {
                structured_output: set.structured_output.clone(),
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
                before.presence_penalty != params.presence_penalty,
                before.frequency_penalty != params.frequency_penalty,
                before.repetition_penalty != params.repetition_penalty,
                before.logit_bias != params.logit_bias,
                before.prompt_logprobs != params.prompt_logprobs,
                before.structured_output != params.structured_output,
            ];
            assert_eq!(changed.iter().filter(|&&c| c).count(), 1, "{single:?}");
        }
        assert_eq!(params, set.over(&base()));
    }

    #[test]
    fn penalties_and_biases_out_of_range_are_refused() {
        let field = |p: SamplingParams| match p.validate() {
            Err(SchedulerError::InvalidSamplingParam { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        let ok = SamplingParams {
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            repetition_penalty: 0.5,
            logit_bias: vec![(0, -100.0), (1, 100.0)],
            ..SamplingParams::default()
        };
        ok.validate().unwrap();
        for (p, want) in [
            (
                SamplingParams {
                    presence_penalty: 2.5,
                    ..ok.clone()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: f32::NAN,
                    ..ok.clone()
                },
                "frequency_penalty",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..ok.clone()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    repetition_penalty: f32::INFINITY,
                    ..ok.clone()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(3, 100.5)],
                    ..ok.clone()
                },
                "logit_bias",
            ),
        ] {
            assert_eq!(field(p), want);
        }
    }
}
