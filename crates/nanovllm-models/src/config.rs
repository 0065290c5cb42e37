//! Hugging Face `config.json` and `generation_config.json`.
//!
//! Both config.json forms are accepted: transformers 4 (`torch_dtype`,
//! top-level `rope_theta`) and transformers 5 (`dtype`,
//! `rope_parameters.rope_theta`, `layer_types`).

use std::path::Path;

use nanovllm_kernels::DType;

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
    pub fn from_json_str(_json: &str, _file: &Path) -> Result<Self, ModelError> {
        todo!()
    }
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let file = dir.join("config.json");
        let json = std::fs::read_to_string(&file).map_err(|source| ModelError::Io {
            path: file.clone(),
            source,
        })?;
        Self::from_json_str(&json, &file)
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
    /// Reads `dir/generation_config.json`; a missing file gives the default (all `None`).
    pub fn from_dir(_dir: &Path) -> Result<Self, ModelError> {
        todo!()
    }
}
