//! Hugging Face `config.json` and `generation_config.json`.
//!
//! Both config.json forms are accepted: transformers 4 (`torch_dtype`,
//! top-level `rope_theta`, optional `rope_scaling`) and transformers 5
//! (`dtype`, `rope_parameters: {rope_theta, rope_type}`, `layer_types`).
//!
//! Defaults follow transformers where a field may be absent:
//! `num_key_value_heads` = `num_attention_heads`, `head_dim` =
//! `hidden_size / num_attention_heads`, `rope_theta` = 10000,
//! `tie_word_embeddings` = false (the Qwen3/Mixtral config default); the rope
//! kinds' defaults are resolved in `config/rope.rs`, the MoE ones as transformers'
//! `Qwen3MoeConfig`.
//! A missing, `null` or `"auto"` dtype means **f32**: the config does not say
//! what the checkpoint holds, and f32 never loses precision (the loader keeps
//! each tensor in the dtype stored in the file anyway; the config dtype only
//! decides what dummy weights are made of).
//!
//! Parsing rejects, with [`ModelError::InvalidConfig`] naming the field, only what no
//! architecture can run: malformed values, activations other than SiLU, rope kinds
//! the engine does not implement. Features some architectures have (biases, windows,
//! scaled rope) are parsed into [`ModelConfig`] for the architecture to accept or refuse.

use std::path::Path;

use nanovllm_kernels::DType;
use serde_json::{Map, Value};

use crate::error::ModelError;
use crate::features::SlidingWindow;

mod quantization;
mod rope;

pub use quantization::CheckpointQuantization;
pub use rope::{RopeScaling, IMPLEMENTED_ROPE_TYPES};

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
    /// `rope_parameters.rope_theta` (transformers 5) or top-level `rope_theta` (4); 10000
    /// when neither is given.
    pub rope_theta: f64,
    /// The rope kind and its parameters, every default resolved ([`RopeScaling`]).
    pub rope_scaling: RopeScaling,
    pub rms_norm_eps: f64,
    /// `attention_bias` (default false): biases on the attention projections, as the
    /// config states it. Architectures whose biases are fixed (Qwen2's q/k/v) declare that
    /// themselves.
    pub attention_bias: bool,
    /// `mlp_bias` (Llama; default false): biases on the MLP projections.
    pub mlp_bias: bool,
    /// The effective attention window, whatever the architecture does with it: the
    /// `sliding_window` size when `use_sliding_window` is true (Qwen), when
    /// `use_sliding_window` is absent (Mistral), or when `layer_types` names a
    /// `sliding_attention` layer; `None` otherwise.
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
    /// The checkpoint's dtype (`torch_dtype` / `dtype`); weights stay in it in memory unless
    /// loaded with another ([`crate::load_model_as`], `--dtype`).
    pub dtype: DType,
    /// Mixture of experts: experts per sparse layer (`num_local_experts`, Mixtral, or
    /// `num_experts`, Qwen3-MoE); 0 for dense models.
    pub num_local_experts: usize,
    /// Mixture of experts: experts chosen per token.
    pub num_experts_per_tok: usize,
    /// Each expert's intermediate size where it differs from the dense MLP's
    /// (`moe_intermediate_size`, Qwen3-MoE); 0 when absent (Mixtral's experts use
    /// `intermediate_size`, see [`ModelConfig::expert_intermediate_size`]).
    pub moe_intermediate_size: usize,
    /// Whether the top-k router weights are renormalised to sum to 1 (`norm_topk_prob`;
    /// default false, as transformers' `Qwen3MoeConfig`). Mixtral always renormalises and
    /// ignores this field.
    pub norm_topk_prob: bool,
    /// Every `decoder_sparse_step`-th layer is sparse (default 1: all of them); see
    /// [`ModelConfig::is_sparse_layer`].
    pub decoder_sparse_step: usize,
    /// Layers that use the dense MLP even when the step would make them sparse
    /// (`mlp_only_layers`, default empty).
    pub mlp_only_layers: Vec<usize>,
    pub bos_token_id: Option<u32>,
    /// eos ids named in config.json (may be a list).
    pub eos_token_ids: Vec<u32>,
    /// `quantization_config`: how the checkpoint is already quantized on disk (`None`:
    /// float weights). Methods other than FP8 are refused while parsing.
    pub quantization: Option<CheckpointQuantization>,
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
        let max_position_embeddings = f.required_usize("max_position_embeddings")?;
        let (rope_theta, rope_scaling) = f.rope(max_position_embeddings)?;
        let config = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: f.required_usize("intermediate_size")?,
            num_hidden_layers: f.required_usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: f.required_usize("vocab_size")?,
            max_position_embeddings,
            rope_theta,
            rope_scaling,
            rms_norm_eps: f.required_f64("rms_norm_eps")?,
            attention_bias: f.optional_bool("attention_bias")?.unwrap_or(false),
            mlp_bias: f.optional_bool("mlp_bias")?.unwrap_or(false),
            sliding_window: f.sliding_window()?,
            tie_word_embeddings: f.optional_bool("tie_word_embeddings")?.unwrap_or(false),
            dtype: f.dtype()?,
            num_local_experts: f.num_experts()?,
            num_experts_per_tok: f.optional_usize("num_experts_per_tok")?.unwrap_or(0),
            moe_intermediate_size: f.optional_usize("moe_intermediate_size")?.unwrap_or(0),
            norm_topk_prob: f.optional_bool("norm_topk_prob")?.unwrap_or(false),
            decoder_sparse_step: f.optional_usize("decoder_sparse_step")?.unwrap_or(1),
            mlp_only_layers: f.usize_list("mlp_only_layers")?,
            bos_token_id: f.optional_u32("bos_token_id")?,
            eos_token_ids: token_ids(obj.get("eos_token_id"), "eos_token_id", file)?,
            quantization: quantization::parse(obj.get("quantization_config"), file)?,
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

    /// The longest sequence the engine may serve: `max_position_embeddings`, and for an
    /// architecture that declares [`SlidingWindow::ClampMaxModelLen`] (Mistral) at most the
    /// window, so that windowed and full attention never differ.
    pub fn max_model_len_limit(&self) -> usize {
        let clamps = crate::registry::features_of(&self.architecture)
            .is_some_and(|f| f.sliding_window == SlidingWindow::ClampMaxModelLen);
        match self.sliding_window {
            Some(window) if clamps => self.max_position_embeddings.min(window),
            _ => self.max_position_embeddings,
        }
    }

    /// Whether layer `i` holds a sparse MoE block rather than the dense MLP, by transformers'
    /// Qwen3-MoE rule: the model has experts, `i` is not in `mlp_only_layers`, and
    /// `(i + 1) % decoder_sparse_step == 0`. With the defaults (step 1, no dense layers)
    /// every layer of a MoE model is sparse, as in Mixtral.
    pub fn is_sparse_layer(&self, i: usize) -> bool {
        self.num_local_experts > 0
            && !self.mlp_only_layers.contains(&i)
            && (i + 1) % self.decoder_sparse_step.max(1) == 0
    }

    /// Each expert's intermediate size: `moe_intermediate_size` when given (Qwen3-MoE),
    /// else `intermediate_size` (Mixtral).
    pub fn expert_intermediate_size(&self) -> usize {
        if self.moe_intermediate_size > 0 {
            self.moe_intermediate_size
        } else {
            self.intermediate_size
        }
    }

    /// Elements the model holds once loaded, unsharded: every weight and bias, plus the
    /// rotary cos/sin table (`max_position_embeddings × head_dim`, f32) the model builds at
    /// load. Dense and sparse layers are counted apart ([`ModelConfig::is_sparse_layer`]);
    /// q/k norms and fixed q/k/v biases as the architecture declares them
    /// ([`crate::registry::features_of`]), the other biases as the config says.
    /// `None` when the count overflows `u64`. An engine compares it with the memory it has
    /// before allocating anything, so a config with absurd sizes is an error, not an abort.
    pub fn num_elements(&self) -> Option<u64> {
        let n = |x: usize| u64::try_from(x).ok();
        let (h, hd) = (n(self.hidden_size)?, n(self.head_dim)?);
        let (nq, nkv) = (n(self.num_attention_heads)?, n(self.num_key_value_heads)?);
        let vocab = n(self.vocab_size)?;
        let embeddings = vocab
            .checked_mul(h)?
            .checked_mul(if self.tie_word_embeddings { 1 } else { 2 })?;
        let (q, kv) = (nq.checked_mul(hd)?, nkv.checked_mul(hd)?);
        let qkv_out = q.checked_add(kv.checked_mul(2)?)?;
        // q, k, v and o projections.
        let mut attention = h.checked_mul(qkv_out.checked_add(q)?)?;
        let features = crate::registry::features_of(&self.architecture);
        if self.attention_bias {
            attention = attention.checked_add(qkv_out)?.checked_add(h)?;
        } else if features.is_some_and(|f| f.qkv_bias) {
            attention = attention.checked_add(qkv_out)?;
        }
        // An architecture this build does not know (a custom model) is counted with q/k
        // norms: at most 2·head_dim elements per layer too many.
        let qk_norm = if features.is_none_or(|f| f.qk_norm) {
            hd.checked_mul(2)?
        } else {
            0
        };
        // SwiGLU: gate, up [I, H] and down [H, I], plus biases [I], [I], [H] when mlp_bias.
        let swiglu = |inter: usize| -> Option<u64> {
            let i = n(inter)?;
            let weights = h.checked_mul(i)?.checked_mul(3)?;
            let biases = if self.mlp_bias {
                i.checked_mul(2)?.checked_add(h)?
            } else {
                0
            };
            weights.checked_add(biases)
        };
        let dense_ffn = swiglu(self.intermediate_size)?;
        let experts = n(self.num_local_experts)?;
        let sparse_ffn = swiglu(self.expert_intermediate_size())?
            .checked_mul(experts)?
            .checked_add(h.checked_mul(experts)?)?;
        let layer_common = attention
            .checked_add(qk_norm)?
            .checked_add(h.checked_mul(2)?)?;
        let layers = n(self.num_hidden_layers)?;
        let sparse = n(self.num_sparse_layers())?;
        let rope = n(self.max_position_embeddings)?.checked_mul(hd)?;
        layer_common
            .checked_mul(layers)?
            .checked_add(sparse_ffn.checked_mul(sparse)?)?
            .checked_add(dense_ffn.checked_mul(layers - sparse)?)?
            .checked_add(embeddings)?
            .checked_add(h)? // the final norm
            .checked_add(rope)
    }

    /// Elements of the linear weights ([`crate::linear_weights`]: the attention
    /// projections, the MLPs and experts, and the LM head, a tied one counted once), the
    /// part of [`ModelConfig::num_elements`] that `--quantization` and FP8 checkpoints
    /// store quantized. `None` on overflow.
    pub fn num_linear_elements(&self) -> Option<u64> {
        let n = |x: usize| u64::try_from(x).ok();
        let h = n(self.hidden_size)?;
        let (q, kv) = (
            n(self.num_attention_heads)?.checked_mul(n(self.head_dim)?)?,
            n(self.num_key_value_heads)?.checked_mul(n(self.head_dim)?)?,
        );
        let attention = h.checked_mul(q.checked_mul(2)?.checked_add(kv.checked_mul(2)?)?)?;
        let swiglu = |inter: usize| h.checked_mul(n(inter)?)?.checked_mul(3);
        let sparse_ffn =
            swiglu(self.expert_intermediate_size())?.checked_mul(n(self.num_local_experts)?)?;
        let (layers, sparse) = (n(self.num_hidden_layers)?, n(self.num_sparse_layers())?);
        attention
            .checked_mul(layers)?
            .checked_add(sparse_ffn.checked_mul(sparse)?)?
            .checked_add(swiglu(self.intermediate_size)?.checked_mul(layers - sparse)?)?
            .checked_add(n(self.vocab_size)?.checked_mul(h)?)
    }

    /// Bytes of the loaded weights, unsharded: every element of
    /// [`ModelConfig::num_elements`] in `dtype`, except the linear ones
    /// ([`ModelConfig::num_linear_elements`]) in `linear_dtype` when given. A quantized
    /// tied LM head is a copy next to the embedding: it counts in both. `None` on overflow.
    pub fn weight_bytes(&self, dtype: DType, linear_dtype: Option<DType>) -> Option<u64> {
        let total = self.num_elements()?;
        let float = |elems: u64| elems.checked_mul(dtype.size_in_bytes() as u64);
        let Some(linear_dtype) = linear_dtype else {
            return float(total);
        };
        let linear = self.num_linear_elements()?;
        let head = u64::try_from(self.vocab_size.checked_mul(self.hidden_size)?).ok()?;
        // A tied head's table stays float as the embedding.
        let float_elems = total
            .checked_sub(linear)?
            .checked_add(if self.tie_word_embeddings { head } else { 0 })?;
        let quantized = usize::try_from(linear).ok()?;
        float(float_elems)?.checked_add(linear_dtype.storage_bytes(quantized) as u64)
    }

    /// How many layers [`ModelConfig::is_sparse_layer`] holds true for, without visiting
    /// each (a config may claim billions of layers before validation rejects it).
    pub fn num_sparse_layers(&self) -> usize {
        if self.num_local_experts == 0 {
            return 0;
        }
        let step = self.decoder_sparse_step.max(1);
        let mut dense: Vec<usize> = self
            .mlp_only_layers
            .iter()
            .copied()
            .filter(|&i| i < self.num_hidden_layers && (i + 1) % step == 0)
            .collect();
        dense.sort_unstable();
        dense.dedup();
        self.num_hidden_layers / step - dense.len()
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
        if self.decoder_sparse_step == 0 {
            return Err(invalid(
                file,
                "decoder_sparse_step must be positive (1 makes every layer sparse), got 0".into(),
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

    /// The effective window (see [`ModelConfig::sliding_window`]). transformers' Qwen
    /// configs drop the size unless `use_sliding_window` is true; Mistral's has no
    /// `use_sliding_window` and windows whenever `sliding_window` is set; transformers 5
    /// configs may name the windowed layers in `layer_types`.
    fn sliding_window(&self) -> Result<Option<usize>, ModelError> {
        let window = self.optional_usize("sliding_window")?;
        let windowed_layer = match self.get("layer_types") {
            None => None,
            Some(v) => {
                let types = v
                    .as_array()
                    .ok_or_else(|| self.wrong_type("layer_types", "a list of strings", v))?;
                let mut first = None;
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        Some("full_attention") => {}
                        Some("sliding_attention") => {
                            first = first.or(Some(i));
                        }
                        _ => {
                            return Err(invalid(
                                self.file,
                                format!(
                                    "layer_types[{i}] is {t}: only \"full_attention\" and \
                                     \"sliding_attention\" layers exist in the implemented \
                                     architectures"
                                ),
                            ))
                        }
                    }
                }
                first
            }
        };
        if let Some(i) = windowed_layer {
            return match window {
                Some(w) => Ok(Some(w)),
                None => Err(invalid(
                    self.file,
                    format!(
                        "layer_types[{i}] is \"sliding_attention\" but sliding_window is not \
                         set"
                    ),
                )),
            };
        }
        Ok(match self.optional_bool("use_sliding_window")? {
            Some(true) | None => window,
            Some(false) => None,
        })
    }

    /// Experts per sparse layer: Mixtral's `num_local_experts` or Qwen3-MoE's `num_experts`
    /// (transformers maps one onto the other); both given must agree.
    fn num_experts(&self) -> Result<usize, ModelError> {
        match (
            self.optional_usize("num_local_experts")?,
            self.optional_usize("num_experts")?,
        ) {
            (Some(a), Some(b)) if a != b => Err(invalid(
                self.file,
                format!("num_local_experts {a} and num_experts {b} disagree; keep one"),
            )),
            (Some(n), _) | (None, Some(n)) => Ok(n),
            (None, None) => Ok(0),
        }
    }

    /// A list of non-negative integers; absent or `null` is empty.
    fn usize_list(&self, name: &str) -> Result<Vec<usize>, ModelError> {
        let Some(v) = self.get(name) else {
            return Ok(Vec::new());
        };
        let expected = "a list of non-negative integers";
        v.as_array()
            .ok_or_else(|| self.wrong_type(name, expected, v))?
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| self.wrong_type(name, expected, v))
            })
            .collect()
    }

    /// Architecture-independent checks of what the parsed fields cannot say: the
    /// activation.
    fn reject_unsupported_features(&self) -> Result<(), ModelError> {
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

    pub(super) fn parse(json: &str) -> Result<ModelConfig, ModelError> {
        ModelConfig::from_json_str(json, &file())
    }

    /// `QWEN3_TINY_V5` with one top-level field replaced (or removed when `value` is None).
    pub(super) fn v5_with(field: &str, value: Option<Value>) -> String {
        let mut v: Value = serde_json::from_str(QWEN3_TINY_V5).unwrap();
        let obj = v.as_object_mut().unwrap();
        match value {
            Some(x) => obj.insert(field.to_owned(), x),
            None => obj.remove(field),
        };
        v.to_string()
    }

    pub(super) fn expect_invalid(json: &str, needle: &str) {
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
                rope_scaling: RopeScaling::Default,
                rms_norm_eps: 1e-6,
                attention_bias: false,
                mlp_bias: false,
                sliding_window: None,
                tie_word_embeddings: true,
                dtype: DType::BF16,
                num_local_experts: 0,
                num_experts_per_tok: 0,
                moe_intermediate_size: 0,
                norm_topk_prob: false,
                decoder_sparse_step: 1,
                mlp_only_layers: vec![],
                bos_token_id: Some(151643),
                eos_token_ids: vec![151645],
                quantization: None,
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
    fn linear_elements_and_quantized_weight_bytes() {
        // Qwen3-0.6B: 28 layers of q 2048×1024, k/v 1024×1024, o 1024×2048 and a 3072-wide
        // SwiGLU, plus the tied 151936×1024 head.
        let c = parse(QWEN3_0_6B).unwrap();
        let per_layer = 1024 * (2 * 2048 + 2 * 1024) + 3 * 1024 * 3072;
        let linear = 28 * per_layer + 151936 * 1024;
        assert_eq!(c.num_linear_elements(), Some(linear));
        let total = c.num_elements().unwrap();
        assert_eq!(c.weight_bytes(DType::BF16, None), Some(2 * total));
        // int4: 20 bytes per 32 linear weights; the tied table stays bf16 next to its copy.
        let head = 151936 * 1024;
        let want = 2 * (total - linear + head) + linear / 32 * 20;
        assert_eq!(
            c.weight_bytes(DType::BF16, Some(DType::Int4G32)),
            Some(want)
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

    /// Scaled rope, windows and biases parse; the architecture decides about them
    /// (`features.rs`).
    #[test]
    fn scaled_rope_windows_and_biases_parse() {
        let yarn = json!({"rope_type": "yarn", "factor": 4.0});
        let c = parse(&v5_with("rope_scaling", Some(yarn))).unwrap();
        assert_eq!(c.rope_scaling.name(), "yarn");
        let window = v5_with_all(&[
            ("use_sliding_window", json!(true)),
            ("sliding_window", json!(4096)),
            ("attention_bias", json!(true)),
            ("mlp_bias", json!(true)),
        ]);
        let c = parse(&window.to_string()).unwrap();
        assert_eq!(
            (c.sliding_window, c.attention_bias, c.mlp_bias),
            (Some(4096), true, true)
        );
    }

    /// `QWEN3_TINY_V5` with every `(field, value)` set at the top level (`null` removes).
    fn v5_with_all(fields: &[(&str, Value)]) -> Value {
        let mut v: Value = serde_json::from_str(QWEN3_TINY_V5).unwrap();
        let obj = v.as_object_mut().unwrap();
        for (k, x) in fields {
            if x.is_null() {
                obj.remove(*k);
            } else {
                obj.insert((*k).to_owned(), x.clone());
            }
        }
        v
    }

    /// The window as [`Fields::sliding_window`] resolves it (bypassing the interim refusal).
    fn window(fields: &[(&str, Value)]) -> Result<Option<usize>, ModelError> {
        let v = v5_with_all(fields);
        Fields {
            obj: v.as_object().unwrap(),
            file: &file(),
        }
        .sliding_window()
    }

    #[test]
    fn effective_sliding_window() {
        // QWEN3_TINY_V5: sliding_window null, use_sliding_window false, full layers.
        assert_eq!(window(&[]).unwrap(), None);
        // Qwen: a size with use_sliding_window false means full attention; true means the window.
        assert_eq!(window(&[("sliding_window", json!(4096))]).unwrap(), None);
        let qwen_on = [
            ("sliding_window", json!(4096)),
            ("use_sliding_window", json!(true)),
        ];
        assert_eq!(window(&qwen_on).unwrap(), Some(4096));
        // Mistral: no use_sliding_window, the size alone windows.
        let mistral = [
            ("sliding_window", json!(4096)),
            ("use_sliding_window", Value::Null),
            ("layer_types", Value::Null),
        ];
        assert_eq!(window(&mistral).unwrap(), Some(4096));
        assert_eq!(
            window(&[
                ("use_sliding_window", Value::Null),
                ("layer_types", Value::Null)
            ])
            .unwrap(),
            None
        );
        // transformers 5: a sliding_attention layer windows even with use_sliding_window false.
        let layers = [
            ("sliding_window", json!(64)),
            (
                "layer_types",
                json!(["full_attention", "sliding_attention"]),
            ),
        ];
        assert_eq!(window(&layers).unwrap(), Some(64));
        let no_size = [(
            "layer_types",
            json!(["sliding_attention", "full_attention"]),
        )];
        let err = window(&no_size).unwrap_err().to_string();
        assert!(
            err.contains("layer_types[0]") && err.contains("not set"),
            "{err}"
        );
        let chunked = [(
            "layer_types",
            json!(["full_attention", "chunked_attention"]),
        )];
        let err = window(&chunked).unwrap_err().to_string();
        assert!(err.contains("layer_types[1]"), "{err}");
    }

    /// Qwen3-30B-A3B's config.json (transformers 4 form, as published).
    const QWEN3_30B_A3B: &str = r#"{
      "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false,
      "attention_dropout": 0.0, "bos_token_id": 151643, "decoder_sparse_step": 1,
      "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
      "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
      "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
      "moe_intermediate_size": 768, "norm_topk_prob": true, "num_attention_heads": 32,
      "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
      "num_key_value_heads": 4, "output_router_logits": false, "rms_norm_eps": 1e-06,
      "rope_scaling": null, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
      "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
      "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false,
      "vocab_size": 151936
    }"#;

    #[test]
    fn qwen3_moe_fields_and_element_count() {
        let c = parse(QWEN3_30B_A3B).unwrap();
        assert_eq!(
            (
                c.num_local_experts,
                c.num_experts_per_tok,
                c.moe_intermediate_size,
                c.expert_intermediate_size(),
                c.norm_topk_prob,
                c.decoder_sparse_step,
            ),
            (128, 8, 768, 768, true, 1)
        );
        assert!((0..48).all(|i| c.is_sparse_layer(i)));
        assert_eq!(c.num_sparse_layers(), 48);
        // Per layer: attention 2048·(2·4096 + 2·512) + q/k norms 256 + layer norms 4096 +
        // router 128·2048 + experts 128·3·2048·768; plus untied embeddings, the final norm and
        // the rope table. 30.53 B, the published "30.5B".
        let layer = 2048 * (2 * 4096 + 2 * 512) + 256 + 4096 + 128 * 2048 + 128 * 3 * 2048 * 768;
        let expect = 48 * layer + 2 * 151936 * 2048 + 2048 + 40960 * 128;
        assert_eq!(c.num_elements(), Some(expect));
        assert_eq!(expect / 10_000_000, 3053);

        // Dense layers in between: step 2 makes layers 1, 3, … sparse; mlp_only_layers
        // turns 3 dense too (0 is dense already, 99 is out of range).
        let mut v: Value = serde_json::from_str(QWEN3_30B_A3B).unwrap();
        v["decoder_sparse_step"] = json!(2);
        v["mlp_only_layers"] = json!([0, 3, 3, 99]);
        v["num_hidden_layers"] = json!(6);
        let c = parse(&v.to_string()).unwrap();
        let sparse: Vec<usize> = (0..6).filter(|&i| c.is_sparse_layer(i)).collect();
        assert_eq!(sparse, vec![1, 5]);
        assert_eq!(c.num_sparse_layers(), 2);
        let dense_ffn = 3 * 2048 * 6144;
        let common = 2048 * (2 * 4096 + 2 * 512) + 256 + 4096;
        let sparse_ffn = 128 * 2048 + 128 * 3 * 2048 * 768;
        assert_eq!(
            c.num_elements(),
            Some(
                6 * common
                    + 2 * sparse_ffn
                    + 4 * dense_ffn
                    + 2 * 151936 * 2048
                    + 2048
                    + 40960 * 128
            )
        );

        // Defaults: norm_topk_prob false (Qwen3MoeConfig), step 1, no dense layers.
        for field in [
            "norm_topk_prob",
            "decoder_sparse_step",
            "mlp_only_layers",
            "moe_intermediate_size",
        ] {
            v.as_object_mut().unwrap().remove(field);
        }
        let c = parse(&v.to_string()).unwrap();
        assert_eq!(
            (
                c.norm_topk_prob,
                c.decoder_sparse_step,
                c.mlp_only_layers.len(),
                c.moe_intermediate_size
            ),
            (false, 1, 0, 0)
        );
        assert_eq!(c.expert_intermediate_size(), 6144);
        v["decoder_sparse_step"] = json!(0);
        expect_invalid(&v.to_string(), "decoder_sparse_step must be positive");
        v["decoder_sparse_step"] = json!(1);
        v["num_local_experts"] = json!(64);
        expect_invalid(
            &v.to_string(),
            "num_local_experts 64 and num_experts 128 disagree",
        );
        v["num_local_experts"] = json!(128);
        parse(&v.to_string()).unwrap();
        v["mlp_only_layers"] = json!([1, -2]);
        expect_invalid(&v.to_string(), "mlp_only_layers must be a list");
    }

    #[test]
    fn mixtral_counts_every_layer_sparse_with_intermediate_size() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/mixtral-8x7b.json");
        let json = std::fs::read_to_string(&path).unwrap();
        let c = ModelConfig::from_json_str(&json, &path).unwrap();
        assert_eq!(c.num_sparse_layers(), 32);
        // Mixtral 8x7B: 46.70 B parameters (no q/k norms: the architecture declares none)
        // plus the rope table.
        let n = c.num_elements().unwrap() - 32768 * 128;
        assert_eq!(n, 46_702_792_704);
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
    fn rejects_other_activations() {
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
