//! Hugging Face `config.json` and `generation_config.json`.
//!
//! Both config.json forms are accepted: transformers 4 (`torch_dtype`,
//! top-level `rope_theta`, optional `rope_scaling`) and transformers 5
//! (`dtype`, `rope_parameters: {rope_theta, rope_type}`, `layer_types`).
//!
//! Defaults follow transformers where a field may be absent:
//! `num_key_value_heads` = `num_attention_heads`, `head_dim` =
//! `hidden_size / num_attention_heads`, `rope_theta` = 10000,
//! `tie_word_embeddings` = false (the Qwen3/Mixtral config default).
//! A missing, `null` or `"auto"` dtype means **f32**: the config does not say
//! what the checkpoint holds, and f32 never loses precision (the loader keeps
//! each tensor in the dtype stored in the file anyway; the config dtype only
//! decides what dummy weights are made of).
//!
//! Everything this crate cannot run is rejected here with
//! [`ModelError::InvalidConfig`] naming the field: rope scaling other than the
//! default, sliding-window or non-`full_attention` layers, attention biases,
//! activations other than SiLU.

use std::path::Path;

use nanovllm_kernels::DType;
use serde_json::{Map, Value};

use crate::error::ModelError;

/// The architecture-independent view of `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// `architectures[0]`, e.g. `Qwen3ForCausalLM`.
    pub architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// From the config when present, else `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// The checkpoint's dtype (`torch_dtype` / `dtype`); weights stay in it in memory.
    pub dtype: DType,
    /// Mixture of experts (Mixtral): experts per layer; 0 for dense models.
    pub num_local_experts: usize,
    /// Mixture of experts: experts chosen per token.
    pub num_experts_per_tok: usize,
    pub bos_token_id: Option<u32>,
    /// eos ids named in config.json (may be a list).
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Parses `config.json` text; `file` only names the file in errors.
    pub fn from_json_str(json: &str, file: &Path) -> Result<Self, ModelError> {
        let value: Value = serde_json::from_str(json).map_err(|e| invalid(file, e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| invalid(file, "expected a JSON object at the top level".into()))?;
        let f = Fields { obj, file };

        let architecture = f.architecture()?;
        let hidden_size = f.required_usize("hidden_size")?;
        let num_attention_heads = f.required_usize("num_attention_heads")?;
        let num_key_value_heads = f
            .optional_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = match f.optional_usize("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(invalid(
                    file,
                    format!(
                        "no head_dim given and hidden_size {hidden_size} is not a multiple of \
                         num_attention_heads {num_attention_heads}; add \"head_dim\""
                    ),
                ))
            }
        };
        let config = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: f.required_usize("intermediate_size")?,
            num_hidden_layers: f.required_usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: f.required_usize("vocab_size")?,
            max_position_embeddings: f.required_usize("max_position_embeddings")?,
            rope_theta: f.rope_theta()?,
            rms_norm_eps: f.required_f64("rms_norm_eps")?,
            tie_word_embeddings: f.optional_bool("tie_word_embeddings")?.unwrap_or(false),
            dtype: f.dtype()?,
            num_local_experts: f.optional_usize("num_local_experts")?.unwrap_or(0),
            num_experts_per_tok: f.optional_usize("num_experts_per_tok")?.unwrap_or(0),
            bos_token_id: f.optional_u32("bos_token_id")?,
            eos_token_ids: token_ids(obj.get("eos_token_id"), "eos_token_id", file)?,
        };
        f.reject_unsupported_features()?;
        config.validate(file)?;
        Ok(config)
    }

    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let file = dir.join("config.json");
        let json = std::fs::read_to_string(&file).map_err(|error| ModelError::Io {
            path: file.clone(),
            error,
        })?;
        Self::from_json_str(&json, &file)
    }

    /// Elements the model holds once loaded, unsharded: every weight, plus the rotary
    /// cos/sin table (`max_position_embeddings × head_dim`, f32) the model builds at load.
    /// `None` when the count overflows `u64`. An engine compares it with the memory it has
    /// before allocating anything, so a config with absurd sizes is an error, not an abort.
    pub fn num_elements(&self) -> Option<u64> {
        let n = |x: usize| u64::try_from(x).ok();
        let (h, i, hd) = (
            n(self.hidden_size)?,
            n(self.intermediate_size)?,
            n(self.head_dim)?,
        );
        let (nq, nkv) = (n(self.num_attention_heads)?, n(self.num_key_value_heads)?);
        let vocab = n(self.vocab_size)?;
        let embeddings = vocab
            .checked_mul(h)?
            .checked_mul(if self.tie_word_embeddings { 1 } else { 2 })?;
        let attention = h.checked_mul(
            nq.checked_mul(2)?
                .checked_add(nkv.checked_mul(2)?)?
                .checked_mul(hd)?,
        )?;
        let experts = n(self.num_local_experts.max(1))?;
        let mlp = h.checked_mul(i)?.checked_mul(3)?.checked_mul(experts)?;
        let router = if self.num_local_experts > 0 {
            h.checked_mul(experts)?
        } else {
            0
        };
        let norms = h.checked_mul(2)?.checked_add(hd.checked_mul(2)?)?;
        let layer = attention
            .checked_add(mlp)?
            .checked_add(router)?
            .checked_add(norms)?;
        let rope = n(self.max_position_embeddings)?.checked_mul(hd)?;
        layer
            .checked_mul(n(self.num_hidden_layers)?)?
            .checked_add(embeddings)?
            .checked_add(h)?
            .checked_add(rope)
    }

    /// Per-model sanity checks that no single field can express.
    fn validate(&self, file: &Path) -> Result<(), ModelError> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(invalid(file, format!("{name} must be positive, got 0")));
            }
        }
        // Token ids, positions and row offsets are u32 in the kernels; a dimension beyond
        // that cannot be indexed (and could not be allocated anyway).
        for (name, value) in positive {
            if u32::try_from(value).is_err() {
                return Err(invalid(
                    file,
                    format!(
                        "{name} = {value} is larger than the engine supports (at most {})",
                        u32::MAX
                    ),
                ));
            }
        }
        if self.num_elements().is_none() {
            return Err(invalid(
                file,
                "the sizes multiply to more weights than can be counted: check hidden_size, \
                 intermediate_size, vocab_size and num_hidden_layers"
                    .to_string(),
            ));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(invalid(
                file,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(invalid(
                file,
                format!(
                    "head_dim {} must be even for rotary embeddings",
                    self.head_dim
                ),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(invalid(
                file,
                format!("rope_theta must be positive, got {}", self.rope_theta),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(invalid(
                file,
                format!(
                    "rms_norm_eps must be non-negative, got {}",
                    self.rms_norm_eps
                ),
            ));
        }
        if self.num_experts_per_tok > self.num_local_experts {
            return Err(invalid(
                file,
                format!(
                    "num_experts_per_tok {} exceeds num_local_experts {}",
                    self.num_experts_per_tok, self.num_local_experts
                ),
            ));
        }
        Ok(())
    }
}

/// `generation_config.json`: eos ids and default sampling values. Every field is optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub max_new_tokens: Option<usize>,
    pub do_sample: Option<bool>,
}

impl GenerationConfig {
    /// Parses `generation_config.json` text; `file` only names the file in errors.
    pub fn from_json_str(json: &str, file: &Path) -> Result<Self, ModelError> {
        let value: Value = serde_json::from_str(json).map_err(|e| invalid(file, e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| invalid(file, "expected a JSON object at the top level".into()))?;
        let f = Fields { obj, file };
        let as_f32 = |v: Option<f64>| v.map(|x| x as f32);
        Ok(GenerationConfig {
            eos_token_ids: token_ids(obj.get("eos_token_id"), "eos_token_id", file)?,
            bos_token_id: f.optional_u32("bos_token_id")?,
            temperature: as_f32(f.optional_f64("temperature")?),
            top_k: f.optional_usize("top_k")?,
            top_p: as_f32(f.optional_f64("top_p")?),
            min_p: as_f32(f.optional_f64("min_p")?),
            max_new_tokens: f.optional_usize("max_new_tokens")?,
            do_sample: f.optional_bool("do_sample")?,
        })
    }

    /// Reads `dir/generation_config.json`; a missing file gives the default (all `None`).
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let file = dir.join("generation_config.json");
        match std::fs::read_to_string(&file) {
            Ok(json) => Self::from_json_str(&json, &file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(ModelError::Io { path: file, error }),
        }
    }
}

fn invalid(file: &Path, msg: String) -> ModelError {
    ModelError::InvalidConfig {
        file: file.to_path_buf(),
        msg,
    }
}

/// `eos_token_id`-style fields: absent/`null`, one id, or a list of ids.
fn token_ids(value: Option<&Value>, name: &str, file: &Path) -> Result<Vec<u32>, ModelError> {
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| invalid(file, format!("{name} must hold token ids (u32), got {v}")))
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

/// Typed, error-naming access to the fields of one JSON object.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    file: &'a Path,
}

impl Fields<'_> {
    /// The field's value, treating JSON `null` as absent (HF writes `null` for unset fields).
    fn get(&self, name: &str) -> Option<&Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn wrong_type(&self, name: &str, expected: &str, found: &Value) -> ModelError {
        invalid(self.file, format!("{name} must be {expected}, got {found}"))
    }

    fn missing(&self, name: &str) -> ModelError {
        invalid(self.file, format!("required field \"{name}\" is missing"))
    }

    fn optional_usize(&self, name: &str) -> Result<Option<usize>, ModelError> {
        self.get(name)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| self.wrong_type(name, "a non-negative integer", v))
            })
            .transpose()
    }

    fn required_usize(&self, name: &str) -> Result<usize, ModelError> {
        self.optional_usize(name)?.ok_or_else(|| self.missing(name))
    }

    fn optional_u32(&self, name: &str) -> Result<Option<u32>, ModelError> {
        self.get(name)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| self.wrong_type(name, "a token id (u32)", v))
            })
            .transpose()
    }

    fn optional_f64(&self, name: &str) -> Result<Option<f64>, ModelError> {
        self.get(name)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.wrong_type(name, "a number", v))
            })
            .transpose()
    }

    fn required_f64(&self, name: &str) -> Result<f64, ModelError> {
        self.optional_f64(name)?.ok_or_else(|| self.missing(name))
    }

    fn optional_bool(&self, name: &str) -> Result<Option<bool>, ModelError> {
        self.get(name)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.wrong_type(name, "true or false", v))
            })
            .transpose()
    }

    fn optional_str(&self, name: &str) -> Result<Option<&str>, ModelError> {
        self.get(name)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.wrong_type(name, "a string", v))
            })
            .transpose()
    }

    fn architecture(&self) -> Result<String, ModelError> {
        let name = "architectures";
        let v = self.get(name).ok_or_else(|| self.missing(name))?;
        v.as_array()
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .map(str::to_owned)
            .ok_or_else(|| self.wrong_type(name, "a non-empty list of class names", v))
    }

    /// transformers 5 `dtype` wins over transformers 4 `torch_dtype`.
    fn dtype(&self) -> Result<DType, ModelError> {
        let name = if self.get("dtype").is_some() {
            "dtype"
        } else {
            "torch_dtype"
        };
        match self.optional_str(name)? {
            None | Some("auto") => Ok(DType::F32),
            Some("float32") => Ok(DType::F32),
            Some("bfloat16") => Ok(DType::BF16),
            Some("float16") => Ok(DType::F16),
            Some(other) => Err(invalid(
                self.file,
                format!(
                    "{name} {other:?} is not supported: use \"float32\", \"bfloat16\" or \"float16\""
                ),
            )),
        }
    }

    /// `rope_parameters.rope_theta` (transformers 5) or top-level `rope_theta` (4).
    fn rope_theta(&self) -> Result<f64, ModelError> {
        if let Some(params) = self.rope_parameters()? {
            let nested = Fields {
                obj: params,
                file: self.file,
            };
            if let Some(theta) = nested.optional_f64("rope_theta")? {
                return Ok(theta);
            }
        }
        Ok(self.optional_f64("rope_theta")?.unwrap_or(10_000.0))
    }

    fn rope_parameters(&self) -> Result<Option<&Map<String, Value>>, ModelError> {
        self.get("rope_parameters")
            .map(|v| {
                v.as_object()
                    .ok_or_else(|| self.wrong_type("rope_parameters", "an object", v))
            })
            .transpose()
    }

    fn reject_unsupported_features(&self) -> Result<(), ModelError> {
        // Rope scaling: transformers 4 `rope_scaling`, transformers 5 `rope_parameters`.
        for field in ["rope_scaling", "rope_parameters"] {
            let Some(v) = self.get(field) else { continue };
            let obj = v
                .as_object()
                .ok_or_else(|| self.wrong_type(field, "an object", v))?;
            let kind = obj
                .get("rope_type")
                .or_else(|| obj.get("type"))
                .filter(|k| !k.is_null());
            match kind.map(|k| k.as_str()) {
                None | Some(Some("default")) => {}
                Some(Some(other)) => {
                    return Err(invalid(
                        self.file,
                        format!(
                            "{field}: rope type {other:?} is not supported (only \"default\" \
                             rotary embeddings are implemented)"
                        ),
                    ))
                }
                Some(None) => {
                    return Err(invalid(
                        self.file,
                        format!("{field}: rope_type must be a string"),
                    ))
                }
            }
        }
        if let Some(v) = self.get("layer_types") {
            let types = v
                .as_array()
                .ok_or_else(|| self.wrong_type("layer_types", "a list of strings", v))?;
            for (i, t) in types.iter().enumerate() {
                if t.as_str() != Some("full_attention") {
                    return Err(invalid(
                        self.file,
                        format!(
                            "layer_types[{i}] is {t}: only \"full_attention\" layers are \
                             supported (no sliding-window attention)"
                        ),
                    ));
                }
            }
        }
        // Qwen configs carry `sliding_window` with `use_sliding_window: false`; Mistral-style
        // configs (no `use_sliding_window`) mean a window whenever `sliding_window` is set.
        match (
            self.optional_bool("use_sliding_window")?,
            self.optional_usize("sliding_window")?,
        ) {
            (Some(true), _) => {
                return Err(invalid(
                    self.file,
                    "use_sliding_window is true: sliding-window attention is not supported".into(),
                ))
            }
            (None, Some(window)) => {
                return Err(invalid(
                    self.file,
                    format!(
                        "sliding_window is {window}: sliding-window attention is not supported \
                         (set it to null for full attention)"
                    ),
                ))
            }
            _ => {}
        }
        if self.optional_bool("attention_bias")? == Some(true) {
            return Err(invalid(
                self.file,
                "attention_bias is true: biased q/k/v/o projections are not implemented".into(),
            ));
        }
        let act = self
            .optional_str("hidden_act")?
            .or(self.optional_str("hidden_activation")?);
        if let Some(act) = act {
            if act != "silu" {
                return Err(invalid(
                    self.file,
                    format!("hidden_act {act:?} is not supported: only \"silu\" is implemented"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;

    fn file() -> PathBuf {
        PathBuf::from("config.json")
    }

    /// The real Qwen3-0.6B config.json (transformers 4 form), kept in the repo for benchmarks.
    const QWEN3_0_6B: &str = include_str!("../../../configs/qwen3-0.6b.json");

    /// A transformers 5 config as written by `Qwen3Config.save_pretrained`.
    const QWEN3_TINY_V5: &str = r#"{
      "architectures": ["Qwen3ForCausalLM"],
      "attention_bias": false,
      "attention_dropout": 0.0,
      "bos_token_id": 1,
      "dtype": "float32",
      "eos_token_id": [2, 3],
      "head_dim": 16,
      "hidden_act": "silu",
      "hidden_size": 64,
      "initializer_range": 0.02,
      "intermediate_size": 128,
      "layer_types": ["full_attention", "full_attention"],
      "max_position_embeddings": 512,
      "max_window_layers": 2,
      "model_type": "qwen3",
      "num_attention_heads": 4,
      "num_hidden_layers": 2,
      "num_key_value_heads": 2,
      "pad_token_id": null,
      "rms_norm_eps": 1e-06,
      "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
      "sliding_window": null,
      "tie_word_embeddings": true,
      "transformers_version": "5.0.0",
      "use_cache": true,
      "use_sliding_window": false,
      "vocab_size": 256
    }"#;

    fn parse(json: &str) -> Result<ModelConfig, ModelError> {
        ModelConfig::from_json_str(json, &file())
    }

    /// `QWEN3_TINY_V5` with one top-level field replaced (or removed when `value` is None).
    fn v5_with(field: &str, value: Option<Value>) -> String {
        let mut v: Value = serde_json::from_str(QWEN3_TINY_V5).unwrap();
        let obj = v.as_object_mut().unwrap();
        match value {
            Some(x) => obj.insert(field.to_owned(), x),
            None => obj.remove(field),
        };
        v.to_string()
    }

    fn expect_invalid(json: &str, needle: &str) {
        match parse(json) {
            Err(ModelError::InvalidConfig { msg, .. }) => {
                assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}")
            }
            other => panic!("expected InvalidConfig mentioning {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn parses_real_qwen3_0_6b_transformers4_form() {
        let c = parse(QWEN3_0_6B).unwrap();
        assert_eq!(
            c,
            ModelConfig {
                architecture: "Qwen3ForCausalLM".into(),
                hidden_size: 1024,
                intermediate_size: 3072,
                num_hidden_layers: 28,
                num_attention_heads: 16,
                num_key_value_heads: 8,
                head_dim: 128,
                vocab_size: 151936,
                max_position_embeddings: 40960,
                rope_theta: 1_000_000.0,
                rms_norm_eps: 1e-6,
                tie_word_embeddings: true,
                dtype: DType::BF16,
                num_local_experts: 0,
                num_experts_per_tok: 0,
                bos_token_id: Some(151643),
                eos_token_ids: vec![151645],
            }
        );
    }

    #[test]
    fn counts_every_weight_element_and_the_rope_table() {
        // Qwen3-0.6B: 596,049,920 parameters (tied embeddings), plus 40960 × 128 rope entries.
        let c = parse(QWEN3_0_6B).unwrap();
        assert_eq!(c.num_elements(), Some(596_049_920 + 40960 * 128));
        let untied = ModelConfig {
            tie_word_embeddings: false,
            ..c.clone()
        };
        assert_eq!(
            untied.num_elements(),
            Some(596_049_920 + 40960 * 128 + 151936 * 1024)
        );
    }

    #[test]
    fn absurd_sizes_are_config_errors_before_anything_is_allocated() {
        expect_invalid(
            &v5_with("hidden_size", Some(json!(1u64 << 40))),
            "hidden_size = 1099511627776 is larger than the engine supports",
        );
        // Each size fits u32, but the weights they multiply to do not fit a u64.
        let json = v5_with("intermediate_size", Some(json!(u32::MAX)));
        let mut v: Value = serde_json::from_str(&json).unwrap();
        v["hidden_size"] = json!(u32::MAX);
        v["num_hidden_layers"] = json!(u32::MAX);
        expect_invalid(&v.to_string(), "more weights than can be counted");
    }

    #[test]
    fn parses_transformers5_form() {
        let c = parse(QWEN3_TINY_V5).unwrap();
        assert_eq!(c.dtype, DType::F32);
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.num_key_value_heads, 2);
        assert_eq!(c.eos_token_ids, vec![2, 3]);
        assert_eq!(c.bos_token_id, Some(1));
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn defaults_for_absent_optional_fields() {
        let mut json = v5_with("head_dim", None);
        for field in [
            "num_key_value_heads",
            "dtype",
            "rope_parameters",
            "tie_word_embeddings",
            "eos_token_id",
            "bos_token_id",
        ] {
            let mut v: Value = serde_json::from_str(&json).unwrap();
            v.as_object_mut().unwrap().remove(field);
            json = v.to_string();
        }
        let c = parse(&json).unwrap();
        assert_eq!(c.head_dim, 64 / 4);
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.dtype, DType::F32);
        assert_eq!(c.rope_theta, 10_000.0);
        assert!(!c.tie_word_embeddings);
        assert!(c.eos_token_ids.is_empty());
        assert_eq!(c.bos_token_id, None);
    }

    #[test]
    fn dtype_strings() {
        for (s, d) in [
            ("float32", DType::F32),
            ("bfloat16", DType::BF16),
            ("float16", DType::F16),
            ("auto", DType::F32),
        ] {
            let c = parse(&v5_with("dtype", Some(Value::from(s)))).unwrap();
            assert_eq!(c.dtype, d, "{s}");
        }
        expect_invalid(&v5_with("dtype", Some(Value::from("float64"))), "float64");
    }

    #[test]
    fn mixtral_expert_fields() {
        let mut v: Value = serde_json::from_str(QWEN3_TINY_V5).unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.insert(
            "architectures".into(),
            serde_json::json!(["MixtralForCausalLM"]),
        );
        obj.insert("num_local_experts".into(), Value::from(8));
        obj.insert("num_experts_per_tok".into(), Value::from(2));
        let c = parse(&v.to_string()).unwrap();
        assert_eq!(c.architecture, "MixtralForCausalLM");
        assert_eq!((c.num_local_experts, c.num_experts_per_tok), (8, 2));
        assert_eq!(parse(QWEN3_TINY_V5).unwrap().num_local_experts, 0);
    }

    #[test]
    fn rejects_missing_required_fields_by_name() {
        for field in [
            "architectures",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "vocab_size",
            "max_position_embeddings",
            "rms_norm_eps",
        ] {
            expect_invalid(&v5_with(field, None), &format!("\"{field}\""));
        }
    }

    #[test]
    fn rejects_wrong_types_and_bad_json() {
        expect_invalid(
            &v5_with("hidden_size", Some(Value::from("64"))),
            "hidden_size",
        );
        expect_invalid(
            &v5_with("eos_token_id", Some(Value::from(-1))),
            "eos_token_id",
        );
        expect_invalid("{not json", "line 1");
        expect_invalid("[1, 2]", "object");
    }

    #[test]
    fn rejects_rope_scaling() {
        let yarn = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        expect_invalid(&v5_with("rope_scaling", Some(yarn)), "yarn");
        let linear = serde_json::json!({"type": "linear", "factor": 2.0});
        expect_invalid(&v5_with("rope_scaling", Some(linear)), "linear");
        let v5 = serde_json::json!({"rope_type": "dynamic", "rope_theta": 1e4});
        expect_invalid(&v5_with("rope_parameters", Some(v5)), "dynamic");
        // `null` and default scaling are fine.
        parse(&v5_with("rope_scaling", Some(Value::Null))).unwrap();
        let default = serde_json::json!({"rope_type": "default"});
        parse(&v5_with("rope_scaling", Some(default))).unwrap();
    }

    #[test]
    fn rejects_sliding_window_layers() {
        let types = serde_json::json!(["full_attention", "sliding_attention"]);
        expect_invalid(&v5_with("layer_types", Some(types)), "layer_types[1]");
        expect_invalid(
            &v5_with("use_sliding_window", Some(Value::Bool(true))),
            "use_sliding_window",
        );
    }

    #[test]
    fn mistral_style_sliding_window_is_rejected_but_qwen_style_is_not() {
        // Qwen: a window size with use_sliding_window false means full attention.
        parse(&v5_with("sliding_window", Some(Value::from(4096)))).unwrap();
        let mut v: Value = serde_json::from_str(&v5_with("use_sliding_window", None)).unwrap();
        v.as_object_mut()
            .unwrap()
            .insert("sliding_window".into(), Value::from(4096));
        expect_invalid(&v.to_string(), "sliding_window is 4096");
    }

    /// Every fixture's config.json and generation_config.json parses (both config forms,
    /// `"head_dim": null`, eos as int or list, Mixtral's expert fields).
    #[test]
    fn fixture_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let expect = [
            ("qwen3-tiny", 32, DType::F32, 0, true),
            ("qwen3-tiny-bf16", 16, DType::BF16, 0, false),
            ("qwen3-tiny-fullvocab", 16, DType::BF16, 0, true),
            ("mixtral-tiny", 16, DType::F32, 8, false),
            ("mixtral-tiny-bf16", 16, DType::BF16, 4, false),
        ];
        for (name, head_dim, dtype, experts, tied) in expect {
            let c = ModelConfig::from_dir(&root.join(name)).unwrap();
            assert_eq!(
                (
                    c.head_dim,
                    c.dtype,
                    c.num_local_experts,
                    c.tie_word_embeddings
                ),
                (head_dim, dtype, experts, tied),
                "{name}"
            );
            assert_eq!(c.rope_theta, 10_000.0, "{name}");
            GenerationConfig::from_dir(&root.join(name)).unwrap();
        }
        let g = GenerationConfig::from_dir(&root.join("qwen3-tiny")).unwrap();
        assert_eq!(
            (g.top_k, g.do_sample, g.eos_token_ids),
            (Some(20), Some(true), vec![511])
        );
    }

    #[test]
    fn rejects_attention_bias_and_other_activations() {
        expect_invalid(
            &v5_with("attention_bias", Some(Value::Bool(true))),
            "attention_bias",
        );
        expect_invalid(&v5_with("hidden_act", Some(Value::from("gelu"))), "gelu");
    }

    #[test]
    fn rejects_inconsistent_shapes() {
        expect_invalid(
            &v5_with("num_key_value_heads", Some(Value::from(3))),
            "multiple",
        );
        expect_invalid(&v5_with("head_dim", Some(Value::from(15))), "even");
        let mut v: Value = serde_json::from_str(&v5_with("head_dim", None)).unwrap();
        v.as_object_mut()
            .unwrap()
            .insert("num_attention_heads".into(), Value::from(5));
        v.as_object_mut()
            .unwrap()
            .insert("num_key_value_heads".into(), Value::from(5));
        expect_invalid(&v.to_string(), "head_dim");
        expect_invalid(&v5_with("vocab_size", Some(Value::from(0))), "vocab_size");
    }

    #[test]
    fn generation_config_parses_and_defaults() {
        let dir = std::env::temp_dir().join(format!("nanovllm-genconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("generation_config.json");
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            GenerationConfig::from_dir(&dir).unwrap(),
            GenerationConfig::default()
        );

        std::fs::write(
            &path,
            r#"{"bos_token_id": 151643, "do_sample": true, "eos_token_id": [151645, 151643],
                "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                "transformers_version": "4.51.0"}"#,
        )
        .unwrap();
        let g = GenerationConfig::from_dir(&dir).unwrap();
        assert_eq!(
            g,
            GenerationConfig {
                eos_token_ids: vec![151645, 151643],
                bos_token_id: Some(151643),
                temperature: Some(0.6),
                top_k: Some(20),
                top_p: Some(0.95),
                min_p: None,
                max_new_tokens: None,
                do_sample: Some(true),
            }
        );

        std::fs::write(&path, "{\"eos_token_id\": 7,").unwrap();
        match GenerationConfig::from_dir(&dir) {
            Err(ModelError::InvalidConfig { file, .. }) => assert_eq!(file, path),
            other => panic!("expected InvalidConfig naming the file, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
