//! Request fields → [`SamplingParams`], with OpenAI's ranges checked here so
//! that every refusal names its field (`param`) and the accepted range.
//!
//! Unset fields fall back to the server's defaults (the model's
//! generation_config.json overlaid with the `serve` sampling flags). The
//! structured-output fields are read by [`structured_output`]; `best_of` is
//! accepted only as `n`, since every choice is one sequence.

use std::collections::BTreeMap;

use nanovllm_core::{SamplingOverrides, SamplingParams, SchedulerError};
use serde_json::Value as Json;

use super::errors::ApiError;
use super::openai_types::SamplingFields;
use super::structured_output;

/// Most choices (`n`) one request may ask for.
pub const MAX_N: usize = 64;
/// Most alternatives per token (`logprobs` / `top_logprobs`), as OpenAI and vLLM allow.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The parts of a request that decide how each of its sequences is sampled.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Parameters of choice 0; choice `i` adds `i` to the seed (when one is set).
    pub params: SamplingParams,
    pub n: usize,
    pub stop: Vec<String>,
    pub num_top_logprobs: Option<usize>,
}

impl Sampling {
    /// Parameters of choice `i` of `n`: distinct seeds keep seeded choices distinct.
    pub fn params_for_choice(&self, i: usize) -> SamplingParams {
        let mut p = self.params.clone();
        p.seed = p.seed.map(|s| s.wrapping_add(i as u64));
        p
    }
}

/// Checks `fields` and builds the sampling of a request that may generate `max_tokens`
/// with a model of `vocab_size` tokens.
pub fn build(
    defaults: &SamplingParams,
    fields: &SamplingFields,
    max_tokens: usize,
    num_top_logprobs: Option<usize>,
    vocab_size: usize,
) -> Result<Sampling, ApiError> {
    // OpenAI's ranges, checked per field so that a refusal names it; `p.validate()` below
    // then applies the engine's own checks to the merged parameters.
    let temperature = match fields.temperature {
        Some(t) if !(0.0..=2.0).contains(&t) => {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be in [0, 2], got {t}"),
            ));
        }
        t => t,
    };
    let top_p = match fields.top_p {
        Some(top_p) if !(top_p > 0.0 && top_p <= 1.0) => {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        top_p => top_p,
    };
    let top_k = match fields.top_k {
        None => None,
        Some(-1 | 0) => Some(0),
        Some(k) if k > 0 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be -1 or 0 (disabled) or a positive number, got {k}"),
            ))
        }
    };
    let min_p = match fields.min_p {
        Some(min_p) if !(0.0..=1.0).contains(&min_p) => {
            return Err(ApiError::invalid(
                "min_p",
                format!("min_p must be in [0, 1], got {min_p}"),
            ));
        }
        min_p => min_p,
    };
    let p = SamplingOverrides {
        max_tokens: Some(max_tokens),
        temperature,
        top_p,
        top_k,
        min_p,
        seed: fields.seed,
        ignore_eos: fields.ignore_eos,
        stop_token_ids: fields.stop_token_ids.clone(),
        presence_penalty: fields.presence_penalty,
        frequency_penalty: fields.frequency_penalty,
        repetition_penalty: fields.repetition_penalty,
        logit_bias: fields
            .logit_bias
            .as_ref()
            .map(|biases| parse_logit_bias(biases, vocab_size))
            .transpose()?,
        structured_output: structured_output::from_fields(fields)?,
        ..SamplingOverrides::default()
    }
    .over(defaults);
    let n = fields.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("n must be in [1, {MAX_N}], got {n}"),
        ));
    }
    if let Some(best_of) = fields.best_of {
        if best_of != n {
            return Err(ApiError::invalid(
                "best_of",
                format!(
                    "best_of must equal n ({n}): this server samples each choice once and \
                     returns them all, got best_of {best_of}"
                ),
            ));
        }
    }
    if let Some(k) = num_top_logprobs {
        if k > MAX_TOP_LOGPROBS {
            return Err(ApiError::invalid(
                "logprobs",
                format!(
                    "at most {MAX_TOP_LOGPROBS} top logprobs per token can be returned, got {k}"
                ),
            ));
        }
    }
    p.validate().map_err(|e| match e {
        SchedulerError::InvalidSamplingParam { field, .. } => {
            ApiError::invalid(field, e.to_string())
        }
        other => ApiError::InvalidField {
            param: None,
            message: other.to_string(),
        },
    })?;
    Ok(Sampling {
        params: p,
        n,
        stop: parse_stop(fields.stop.as_ref())?,
        num_top_logprobs,
    })
}

/// `logit_bias` (`{"token id": bias}`, OpenAI's shape) as `(id, bias)` pairs in id
/// order; every key must be a token id below `vocab_size`. Bias ranges are checked by
/// `SamplingParams::validate`.
pub fn parse_logit_bias(
    biases: &BTreeMap<String, f32>,
    vocab_size: usize,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let mut pairs = biases
        .iter()
        .map(|(key, &bias)| {
            let id: u32 = key.trim().parse().map_err(|_| {
                ApiError::invalid(
                    "logit_bias",
                    format!("logit_bias keys must be token ids (integers as strings), got {key:?}"),
                )
            })?;
            if id as usize >= vocab_size {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!(
                        "logit_bias names token id {id}, out of range: the model's vocabulary \
                         has {vocab_size} tokens"
                    ),
                ));
            }
            Ok((id, bias))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // "1" and "01" are the same id: the keys' string order is not the ids' order.
    pairs.sort_by_key(|&(id, _)| id);
    if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ApiError::invalid(
            "logit_bias",
            format!("logit_bias names token id {} twice", w[0].0),
        ));
    }
    Ok(pairs)
}

/// `stop`: absent, null, a string, or a list of strings; each must be non-empty.
pub fn parse_stop(stop: Option<&Json>) -> Result<Vec<String>, ApiError> {
    let bad = |what: String| ApiError::invalid("stop", what);
    let stops = match stop {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Array(items)) => items
            .iter()
            .map(|item| match item {
                Json::String(s) => Ok(s.clone()),
                other => Err(bad(format!(
                    "stop must be a string or a list of strings; the list holds {other}"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(bad(format!(
                "stop must be a string or a list of strings, got {other}"
            )))
        }
    };
    if stops.iter().any(String::is_empty) {
        return Err(bad("stop strings must not be empty".into()));
    }
    Ok(stops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VOCAB: usize = 100;

    fn fields(v: Json) -> SamplingFields {
        serde_json::from_value(v).unwrap()
    }

    fn param_of(e: ApiError) -> Option<String> {
        match e {
            ApiError::InvalidField { param, .. } => param,
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn request_fields_override_the_defaults() {
        let defaults = SamplingParams {
            temperature: 0.6,
            top_k: 20,
            ..SamplingParams::default()
        };
        let s = build(
            &defaults,
            &fields(json!({"temperature": 0, "top_k": -1, "seed": 5, "n": 3,
                           "stop": "##", "stop_token_ids": [7], "ignore_eos": true})),
            9,
            Some(2),
            VOCAB,
        )
        .unwrap();
        assert_eq!(s.params.temperature, 0.0);
        assert_eq!(s.params.top_k, 0);
        assert_eq!(s.params.max_tokens, 9);
        assert_eq!(s.params.stop_token_ids, vec![7]);
        assert!(s.params.ignore_eos);
        assert_eq!(s.n, 3);
        assert_eq!(s.stop, vec!["##".to_string()]);
        assert_eq!(s.num_top_logprobs, Some(2));
        assert_eq!(s.params_for_choice(0).seed, Some(5));
        assert_eq!(s.params_for_choice(2).seed, Some(7));
        // Untouched defaults stay.
        let s = build(&defaults, &fields(json!({})), 4, None, VOCAB).unwrap();
        assert_eq!(s.params.temperature, 0.6);
        assert_eq!(s.params.top_k, 20);
        assert_eq!(s.params_for_choice(1).seed, None);
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let d = SamplingParams::default();
        for (body, param) in [
            (json!({"temperature": 3}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_k": -2}), "top_k"),
            (json!({"min_p": 1.5}), "min_p"),
            (json!({"n": 0}), "n"),
            (json!({"presence_penalty": 2.5}), "presence_penalty"),
            (json!({"frequency_penalty": -2.1}), "frequency_penalty"),
            (json!({"repetition_penalty": 0}), "repetition_penalty"),
            (json!({"logit_bias": {"5": 101}}), "logit_bias"),
            (json!({"logit_bias": {"x": 1}}), "logit_bias"),
            (json!({"logit_bias": {"-1": 1}}), "logit_bias"),
            (json!({"logit_bias": {"100": 1}}), "logit_bias"),
            (json!({"logit_bias": {"7": 1, "07": 2}}), "logit_bias"),
            (json!({"best_of": 2}), "best_of"),
            (json!({"n": 2, "best_of": 3}), "best_of"),
            (json!({"guided_regex": 1}), "guided_regex"),
            (json!({"stop": ""}), "stop"),
            (json!({"stop": [1]}), "stop"),
            (json!({"stop": {"a": 1}}), "stop"),
        ] {
            let err = build(&d, &fields(body.clone()), 4, None, VOCAB).unwrap_err();
            assert_eq!(param_of(err).as_deref(), Some(param), "{body}");
        }
        let err = build(&d, &fields(json!({})), 4, Some(21), VOCAB).unwrap_err();
        assert_eq!(param_of(err).as_deref(), Some("logprobs"));
        // The engine's own check (max_tokens >= 1) is reported with its field too.
        let err = build(&d, &fields(json!({})), 0, None, VOCAB).unwrap_err();
        assert_eq!(param_of(err).as_deref(), Some("max_tokens"));
    }

    #[test]
    fn penalties_biases_best_of_and_constraints_reach_the_params() {
        let d = SamplingParams::default();
        let s = build(
            &d,
            &fields(json!({"presence_penalty": -2, "frequency_penalty": 1.5,
                           "repetition_penalty": 1.2, "logit_bias": {"99": -100, "3": 5.5},
                           "n": 2, "best_of": 2, "guided_choice": ["a", "b"]})),
            4,
            None,
            VOCAB,
        )
        .unwrap();
        assert_eq!(s.params.presence_penalty, -2.0);
        assert_eq!(s.params.frequency_penalty, 1.5);
        assert_eq!(s.params.repetition_penalty, 1.2);
        assert_eq!(s.params.logit_bias, vec![(3, 5.5), (99, -100.0)]);
        assert_eq!(
            s.params.structured_output,
            Some(nanovllm_core::StructuredOutput::Choice(vec![
                "a".into(),
                "b".into()
            ]))
        );
        // best_of 1 with n absent; penalties absent keep the defaults (off).
        let s = build(&d, &fields(json!({"best_of": 1})), 4, None, VOCAB).unwrap();
        assert_eq!(s.n, 1);
        assert_eq!(s.params.repetition_penalty, 1.0);
        assert!(s.params.logit_bias.is_empty());
        assert_eq!(s.params.structured_output, None);
        // Accepted and ignored.
        build(
            &d,
            &fields(json!({"user": "u", "store": false, "metadata": {"k": "v"},
                           "service_tier": "auto", "guided_decoding_backend": "xgrammar"})),
            4,
            None,
            VOCAB,
        )
        .unwrap();
    }

    #[test]
    fn stop_accepts_a_string_a_list_or_nothing() {
        assert_eq!(parse_stop(None).unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_stop(Some(&json!(null))).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(parse_stop(Some(&json!("a"))).unwrap(), vec!["a"]);
        assert_eq!(
            parse_stop(Some(&json!(["a", "b"]))).unwrap(),
            vec!["a", "b"]
        );
    }
}
