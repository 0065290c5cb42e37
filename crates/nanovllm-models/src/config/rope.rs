//! Rotary-embedding parameters of `config.json`: the base `rope_theta` and the scaling kind.
//!
//! Both forms are read, resolved the way transformers 5 (`modeling_rope_utils.py`,
//! `RotaryEmbeddingConfigMixin`) resolves them:
//! - transformers 4: top-level `rope_theta`, and `rope_scaling: {type | rope_type, …}`;
//! - transformers 5: `rope_parameters: {rope_type, rope_theta, …}`.
//!
//! A non-empty `rope_scaling` wins over `rope_parameters`; `rope_theta` inside the dict wins
//! over the top-level one, which defaults to 10000. The kind is `rope_type`, else `type`,
//! else `"default"`. Kinds the engine does not implement (`linear`, `dynamic`, `longrope`, …)
//! are errors naming the kind and the implemented ones, and so is a `partial_rotary_factor`
//! other than 1: only full-head rotation is implemented.

use serde_json::{Map, Value};

use super::{invalid, Fields};
use crate::error::ModelError;

/// Rope kinds [`RopeScaling`] implements, as config.json names them.
pub const IMPLEMENTED_ROPE_TYPES: [&str; 3] = ["default", "llama3", "yarn"];

/// How the rotary inverse frequencies are derived from `rope_theta` (see
/// `layers::rotary` for the formulas). Every default is already resolved here.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN: interpolation blended with extrapolation per dimension, and cos/sin scaled by an
    /// attention factor.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        /// `beta_fast`, or 32 when absent, null or 0 (transformers: `get("beta_fast") or 32`).
        beta_fast: f64,
        /// `beta_slow`, or 1 when absent, null or 0.
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        /// Explicit factor for cos/sin; when `None` it follows from `factor`, `mscale` and
        /// `mscale_all_dim` ([`RopeScaling::attention_factor`]).
        attention_factor: Option<f64>,
        /// Whether the correction range is rounded outwards to whole dimensions: `true` when
        /// absent, `false` for JSON `null` (transformers reads `get("truncate", True)`).
        truncate: bool,
    },
}

impl RopeScaling {
    /// YaRN's `mscale` (paper eq. 21): `0.1 · mscale · ln(scale) + 1`, 1 for `scale ≤ 1`.
    pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * mscale * scale.ln() + 1.0
        }
    }

    /// The factor YaRN multiplies cos and sin by (1 for the other kinds), as transformers'
    /// `_compute_yarn_parameters`: the explicit `attention_factor`, else
    /// `mscale(factor, mscale) / mscale(factor, mscale_all_dim)` when both are set and
    /// non-zero, else `mscale(factor, 1)`.
    pub fn attention_factor(&self) -> f64 {
        match *self {
            RopeScaling::Yarn {
                factor,
                mscale,
                mscale_all_dim,
                attention_factor,
                ..
            } => attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
                (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                    Self::yarn_get_mscale(factor, m) / Self::yarn_get_mscale(factor, all)
                }
                _ => Self::yarn_get_mscale(factor, 1.0),
            }),
            _ => 1.0,
        }
    }

    /// The kind's name in config.json.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::Default => "default",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
        }
    }
}

/// A JSON object of config fields.
type Object = Map<String, Value>;

/// Layer-type names transformers nests per-layer rope parameters under.
const NESTED_ROPE_KEYS: [&str; 3] = ["full_attention", "sliding_attention", "chunked_attention"];

impl Fields<'_> {
    /// `(rope_theta, scaling)` from either config form.
    pub(super) fn rope(
        &self,
        max_position_embeddings: usize,
    ) -> Result<(f64, RopeScaling), ModelError> {
        let (field, params) = self.rope_dict()?;
        let empty = Map::new();
        let params = params.unwrap_or(&empty);
        if let Some(key) = NESTED_ROPE_KEYS.iter().find(|k| params.contains_key(**k)) {
            return Err(invalid(
                self.file,
                format!(
                    "{field} is nested per layer type (\"{key}\"): per-layer rope parameters \
                     are not implemented"
                ),
            ));
        }
        let p = Fields {
            obj: params,
            file: self.file,
        };
        let theta = match p.optional_f64("rope_theta")? {
            Some(theta) => theta,
            None => self.optional_f64("rope_theta")?.unwrap_or(10_000.0),
        };
        let partial = match p.optional_f64("partial_rotary_factor")? {
            Some(x) => Some(x),
            None => self.optional_f64("partial_rotary_factor")?,
        };
        if let Some(x) = partial.filter(|&x| x != 1.0) {
            return Err(invalid(
                self.file,
                format!(
                    "partial_rotary_factor is {x}: only rotating the whole head (1.0) is \
                     implemented"
                ),
            ));
        }
        let kind = match p.optional_str("rope_type")? {
            Some(kind) => kind,
            None => p.optional_str("type")?.unwrap_or("default"),
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "llama3" => RopeScaling::Llama3 {
                factor: p.required_rope_f64(field, kind, "factor")?,
                low_freq_factor: p.required_rope_f64(field, kind, "low_freq_factor")?,
                high_freq_factor: p.required_rope_f64(field, kind, "high_freq_factor")?,
                original_max_position_embeddings: self
                    .original_max_positions(&p, max_position_embeddings)?,
            },
            "yarn" => {
                let original = self.original_max_positions(&p, max_position_embeddings)?;
                // transformers requires the key; an explicit null means the ratio of the
                // context lengths.
                let factor = match params.get("factor") {
                    None => return Err(missing_rope_key(&p, field, kind, "factor")),
                    Some(Value::Null) => max_position_embeddings as f64 / original as f64,
                    Some(_) => p.required_rope_f64(field, kind, "factor")?,
                };
                let nonzero_or = |name: &str, default: f64| -> Result<f64, ModelError> {
                    Ok(p.optional_f64(name)?
                        .filter(|&x| x != 0.0)
                        .unwrap_or(default))
                };
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast: nonzero_or("beta_fast", 32.0)?,
                    beta_slow: nonzero_or("beta_slow", 1.0)?,
                    mscale: p.optional_f64("mscale")?,
                    mscale_all_dim: p.optional_f64("mscale_all_dim")?,
                    attention_factor: p.optional_f64("attention_factor")?,
                    truncate: match params.get("truncate") {
                        None => true,
                        Some(Value::Null) => false,
                        Some(_) => p.optional_bool("truncate")?.unwrap_or(true),
                    },
                }
            }
            other => {
                return Err(invalid(
                    self.file,
                    format!(
                        "{field}: rope type {other:?} is not implemented; implemented are {}",
                        IMPLEMENTED_ROPE_TYPES.map(|t| format!("{t:?}")).join(", ")
                    ),
                ))
            }
        };
        check_rope_values(self, field, &scaling)?;
        Ok((theta, scaling))
    }

    /// The dict holding the rope parameters and its field name: a non-empty `rope_scaling`
    /// (transformers 4), else `rope_parameters` (5), else none.
    fn rope_dict(&self) -> Result<(&'static str, Option<&Object>), ModelError> {
        let object = |name: &'static str| -> Result<Option<&Object>, ModelError> {
            self.get(name)
                .map(|v| {
                    v.as_object()
                        .ok_or_else(|| self.wrong_type(name, "an object", v))
                })
                .transpose()
        };
        match object("rope_scaling")? {
            Some(scaling) if !scaling.is_empty() => Ok(("rope_scaling", Some(scaling))),
            _ => Ok(("rope_parameters", object("rope_parameters")?)),
        }
    }

    /// The pre-training context length of llama3/yarn: a top-level
    /// `original_max_position_embeddings` wins (transformers' `standardize_rope_params`
    /// copies it over the dict's when it computes the frequencies), then the dict's, then
    /// `max_position_embeddings`.
    fn original_max_positions(
        &self,
        params: &Fields,
        max_position_embeddings: usize,
    ) -> Result<usize, ModelError> {
        let name = "original_max_position_embeddings";
        Ok(match self.optional_usize(name)? {
            Some(n) => n,
            None => params
                .optional_usize(name)?
                .unwrap_or(max_position_embeddings),
        })
    }

    fn required_rope_f64(&self, field: &str, kind: &str, name: &str) -> Result<f64, ModelError> {
        self.optional_f64(name)?
            .ok_or_else(|| missing_rope_key(self, field, kind, name))
    }
}

fn missing_rope_key(f: &Fields, field: &str, kind: &str, name: &str) -> ModelError {
    invalid(
        f.file,
        format!("{field}: rope type {kind:?} needs \"{name}\", which is missing"),
    )
}

/// Values the formulas cannot use (divisions by zero, logarithms of non-positive numbers);
/// `rope_theta` is checked with the other sizes (`ModelConfig::validate`).
fn check_rope_values(f: &Fields, field: &str, scaling: &RopeScaling) -> Result<(), ModelError> {
    let positive = |name: &str, x: f64| {
        if x.is_finite() && x > 0.0 {
            Ok(())
        } else {
            Err(invalid(
                f.file,
                format!("{field}: {name} must be positive, got {x}"),
            ))
        }
    };
    match *scaling {
        RopeScaling::Default => {}
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            positive("factor", factor)?;
            positive("low_freq_factor", low_freq_factor)?;
            positive("high_freq_factor", high_freq_factor)?;
            positive(
                "original_max_position_embeddings",
                original_max_position_embeddings as f64,
            )?;
            if low_freq_factor == high_freq_factor {
                return Err(invalid(
                    f.file,
                    format!(
                        "{field}: low_freq_factor and high_freq_factor are both \
                         {low_freq_factor}; the llama3 ramp between them needs them to differ"
                    ),
                ));
            }
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            ..
        } => {
            positive("factor", factor)?;
            positive(
                "original_max_position_embeddings",
                original_max_position_embeddings as f64,
            )?;
            positive("beta_fast", beta_fast)?;
            positive("beta_slow", beta_slow)?;
            if let Some(a) = attention_factor {
                positive("attention_factor", a)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{expect_invalid, parse, v5_with};
    use super::*;

    /// `QWEN3_TINY_V5` (max_position_embeddings 512) with `fields` set at the top level.
    fn with(fields: Value) -> String {
        let mut v: Value = serde_json::from_str(&v5_with("rope_parameters", None)).unwrap();
        for (k, x) in fields.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string()
    }

    fn rope(fields: Value) -> (f64, RopeScaling) {
        let c = parse(&with(fields)).unwrap();
        (c.rope_theta, c.rope_scaling)
    }

    #[test]
    fn default_in_both_forms() {
        assert_eq!(rope(json!({})), (10_000.0, RopeScaling::Default));
        assert_eq!(
            rope(json!({"rope_theta": 5e5, "rope_scaling": null})),
            (5e5, RopeScaling::Default)
        );
        assert_eq!(
            rope(json!({"rope_theta": 5e5, "rope_scaling": {"type": "default"}})),
            (5e5, RopeScaling::Default)
        );
        // transformers 5: the dict's theta wins over a stray top-level one.
        assert_eq!(
            rope(json!({"rope_theta": 3.0,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}})),
            (7.0, RopeScaling::Default)
        );
        // An empty rope_scaling does not hide rope_parameters.
        assert_eq!(
            rope(json!({"rope_scaling": {}, "rope_parameters": {"rope_theta": 7.0}})),
            (7.0, RopeScaling::Default)
        );
    }

    fn llama3(original: usize) -> RopeScaling {
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: original,
        }
    }

    #[test]
    fn llama3_in_both_forms() {
        // Llama-3.1-8B's transformers-4 form.
        let v4 = json!({"rope_theta": 5e5, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
            "rope_type": "llama3"}});
        assert_eq!(rope(v4), (5e5, llama3(8192)));
        let v5 = json!({"rope_parameters": {"factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
            "rope_type": "llama3", "rope_theta": 5e5}});
        assert_eq!(rope(v5), (5e5, llama3(32)));
        // original_max_position_embeddings falls back to max_position_embeddings (512).
        let no_original = json!({"rope_scaling": {"type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0}});
        assert_eq!(rope(no_original), (10_000.0, llama3(512)));
        // A top-level original_max_position_embeddings wins over the dict's.
        let top = json!({"original_max_position_embeddings": 64, "rope_scaling": {
            "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32}});
        assert_eq!(rope(top), (10_000.0, llama3(64)));
        let missing = json!({"rope_scaling": {"type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0}});
        expect_invalid(&with(missing), "\"llama3\" needs \"high_freq_factor\"");
        let flat = json!({"rope_scaling": {"type": "llama3", "factor": 8.0,
            "low_freq_factor": 2.0, "high_freq_factor": 2.0}});
        expect_invalid(&with(flat), "needs them to differ");
    }

    #[test]
    fn yarn_in_both_forms_with_transformers_defaults() {
        // Qwen3's documented YaRN setting, transformers-4 form.
        let v4 = json!({"rope_theta": 1e6, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 32768}});
        let expect = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 32768,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: true,
        };
        assert_eq!(rope(v4), (1e6, expect.clone()));
        assert!((expect.attention_factor() - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
        let v5 = json!({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6,
            "factor": 2.0, "original_max_position_embeddings": 128, "beta_fast": 16,
            "beta_slow": 2.0, "mscale": 0.707, "mscale_all_dim": 1.0,
            "attention_factor": 1.5, "truncate": false}});
        assert_eq!(
            rope(v5),
            (
                1e6,
                RopeScaling::Yarn {
                    factor: 2.0,
                    original_max_position_embeddings: 128,
                    beta_fast: 16.0,
                    beta_slow: 2.0,
                    mscale: Some(0.707),
                    mscale_all_dim: Some(1.0),
                    attention_factor: Some(1.5),
                    truncate: false,
                }
            )
        );
        // transformers: beta 0 → default, truncate null → false, factor null → the ratio of
        // the context lengths, original falls back to max_position_embeddings.
        let odd = json!({"rope_scaling": {"type": "yarn", "factor": null, "beta_fast": 0,
            "truncate": null, "original_max_position_embeddings": 128}});
        match rope(odd).1 {
            RopeScaling::Yarn {
                factor,
                beta_fast,
                truncate,
                ..
            } => assert_eq!((factor, beta_fast, truncate), (4.0, 32.0, false)),
            other => panic!("{other:?}"),
        }
        match rope(json!({"rope_scaling": {"type": "yarn", "factor": 2.0}})).1 {
            RopeScaling::Yarn {
                original_max_position_embeddings,
                ..
            } => assert_eq!(original_max_position_embeddings, 512),
            other => panic!("{other:?}"),
        }
        expect_invalid(
            &with(json!({"rope_scaling": {"type": "yarn"}})),
            "\"yarn\" needs \"factor\"",
        );
        expect_invalid(
            &with(json!({"rope_scaling": {"type": "yarn", "factor": -1.0}})),
            "factor must be positive",
        );
    }

    #[test]
    fn yarn_attention_factor_from_mscale() {
        let yarn = |mscale, mscale_all_dim| RopeScaling::Yarn {
            factor: 40.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale,
            mscale_all_dim,
            attention_factor: None,
            truncate: true,
        };
        let m = |s: f64| 0.1 * s * 40f64.ln() + 1.0;
        assert_eq!(yarn(Some(1.0), Some(1.0)).attention_factor(), 1.0);
        assert!(
            (yarn(Some(0.707), Some(1.0)).attention_factor() - m(0.707) / m(1.0)).abs() < 1e-15
        );
        // Only one of them set (or zero): the plain mscale.
        assert_eq!(yarn(Some(0.707), None).attention_factor(), m(1.0));
        assert_eq!(yarn(Some(0.707), Some(0.0)).attention_factor(), m(1.0));
        assert_eq!(RopeScaling::Default.attention_factor(), 1.0);
        assert_eq!(RopeScaling::yarn_get_mscale(0.5, 1.0), 1.0);
    }

    #[test]
    fn unimplemented_kinds_and_partial_rotation_are_errors() {
        for (fields, kind) in [
            (
                json!({"rope_scaling": {"type": "linear", "factor": 2.0}}),
                "linear",
            ),
            (
                json!({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4}}),
                "dynamic",
            ),
            (
                json!({"rope_scaling": {"rope_type": "longrope"}}),
                "longrope",
            ),
        ] {
            expect_invalid(
                &with(fields),
                &format!(
                    "rope type \"{kind}\" is not implemented; implemented are \"default\", \
                     \"llama3\", \"yarn\""
                ),
            );
        }
        // A non-empty rope_scaling wins over rope_parameters, as in transformers.
        expect_invalid(
            &with(json!({"rope_scaling": {"type": "linear", "factor": 2.0},
                         "rope_parameters": {"rope_type": "default"}})),
            "rope_scaling: rope type \"linear\"",
        );
        expect_invalid(
            &with(json!({"partial_rotary_factor": 0.5})),
            "partial_rotary_factor is 0.5",
        );
        expect_invalid(
            &with(
                json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.25}}),
            ),
            "partial_rotary_factor is 0.25",
        );
        rope(json!({"partial_rotary_factor": 1.0}));
        expect_invalid(
            &with(json!({"rope_parameters": {"full_attention": {"rope_type": "default"}}})),
            "nested per layer type",
        );
        expect_invalid(
            &with(json!({"rope_scaling": {"type": 3}})),
            "type must be a string",
        );
        expect_invalid(
            &with(json!({"rope_scaling": [1]})),
            "rope_scaling must be an object",
        );
    }
}
