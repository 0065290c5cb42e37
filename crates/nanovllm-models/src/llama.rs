//! Llama (`LlamaForCausalLM`: Llama 2, 3, 3.1, 3.2): the shared pre-norm decoder
//! ([`crate::decoder`]) with grouped-query attention, no q/k norm and no biases, RoPE as the
//! config says (Llama 3.1/3.2's `llama3` scaling included), and the dense SwiGLU [`Mlp`].
//! Embeddings tied (Llama 3.2 1B/3B) or not.
//!
//! `attention_bias: true` and `mlp_bias: true` are refused (not implemented); a
//! `sliding_window` in the config is ignored, as transformers' Llama ignores it.

use crate::config::ModelConfig;
use crate::decoder::DecoderLm;
use crate::error::ModelError;
use crate::features::{Features, FeedForwardKind, SlidingWindow, ALL_ROPE_TYPES};
use crate::layers::Mlp;
use crate::loader::WeightSource;
use crate::model::{Model, ModelContext};

pub const ARCHITECTURE: &str = "LlamaForCausalLM";

pub type LlamaForCausalLM = DecoderLm<Mlp>;

/// What Llama supports: every rope kind, no q/k norm, no biases, a dense MLP.
pub const FEATURES: Features = Features {
    qk_norm: false,
    qkv_bias: false,
    attention_bias: false,
    mlp_bias: false,
    sliding_window: SlidingWindow::Ignored,
    feed_forward: FeedForwardKind::Dense,
    rope_types: ALL_ROPE_TYPES,
};

/// Loads a Llama model for this rank.
pub fn load_llama(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<LlamaForCausalLM, ModelError> {
    DecoderLm::load_dense(config, source, ctx, &FEATURES)
}

/// Registry entry point.
pub fn load(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, ModelError> {
    Ok(Box::new(load_llama(config, source, ctx)?))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use nanovllm_kernels::{AttentionMetadata, CpuBackend, DType, KvCache, Tensor};
    use serde_json::{json, Value};

    use super::*;
    use crate::model::ForwardInput;
    use crate::test_util::cpu_ctx;
    use crate::LoadFormat;

    /// A small Llama config (f32, GQA 4:2, head_dim 16, untied) with `extra` fields set.
    pub(crate) fn tiny(architecture: &str, extra: Value) -> ModelConfig {
        let mut v = json!({
            "architectures": [architecture], "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 50, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "torch_dtype": "float32", "tie_word_embeddings": false
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        ModelConfig::from_json_str(&v.to_string(), Path::new("inline")).unwrap()
    }

    /// One sequence of `positions.len()` tokens prefilled into block 0 (block size 16);
    /// the logits of its last token.
    pub(crate) fn prefill_logits(model: &dyn Model, ids: &[u32], positions: &[u32]) -> Vec<f32> {
        let backend = CpuBackend::new();
        let spec = model.kv_cache_spec();
        let n = ids.len();
        let max_pos = *positions.iter().max().unwrap() as usize + 1;
        let blocks = max_pos.div_ceil(16);
        let mut cache = KvCache::new(
            &backend,
            spec.num_layers,
            blocks,
            16,
            spec.num_kv_heads,
            spec.head_dim,
            DType::F32,
        )
        .unwrap();
        let slots: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let input = ForwardInput {
            input_ids: Tensor::from_u32(ids.to_vec(), &[n]).unwrap(),
            positions: Tensor::from_u32(positions.to_vec(), &[n]).unwrap(),
            attn: AttentionMetadata {
                is_prefill: true,
                num_seqs: 1,
                block_size: 16,
                cu_seqlens_q: Tensor::from_u32(vec![0, n as u32], &[2]).unwrap(),
                context_lens: Tensor::from_u32(vec![max_pos as u32], &[1]).unwrap(),
                block_tables: Tensor::from_u32((0..blocks as u32).collect(), &[1, blocks]).unwrap(),
                slot_mapping: Tensor::from_i64(slots, &[n]).unwrap(),
                max_seqlen_q: n,
                max_context_len: max_pos,
            },
            logits_indices: Tensor::from_u32(vec![n as u32 - 1], &[1]).unwrap(),
        };
        let logits = model.forward(&input, &mut cache).unwrap();
        assert_eq!(logits.shape(), &[1, model.config().vocab_size]);
        let logits = logits.to_vec_f32().unwrap();
        assert!(logits.iter().all(|x| x.is_finite()));
        logits
    }

    fn dummy(config: &ModelConfig) -> Box<dyn Model> {
        crate::load_model(
            config,
            Path::new("/nonexistent"),
            LoadFormat::Dummy,
            &cpu_ctx(),
        )
        .unwrap()
    }

    const IDS: [u32; 5] = [3, 17, 42, 5, 9];
    const POSITIONS: [u32; 5] = [0, 1, 2, 3, 4];

    #[test]
    fn dummy_llama_loads_through_the_registry_and_runs() {
        let config = tiny(ARCHITECTURE, json!({}));
        let model = dummy(&config);
        assert_eq!(model.config().architecture, ARCHITECTURE);
        let spec = model.kv_cache_spec();
        assert_eq!(
            (spec.num_layers, spec.num_kv_heads, spec.head_dim),
            (2, 2, 16)
        );
        let logits = prefill_logits(model.as_ref(), &IDS, &POSITIONS);
        // Deterministic dummy weights: the same model again gives the same logits.
        assert_eq!(
            logits,
            prefill_logits(dummy(&config).as_ref(), &IDS, &POSITIONS)
        );
    }

    #[test]
    fn tied_and_untied_embeddings_and_no_qk_norm() {
        let source = crate::DummySource::new(DType::F32, 0);
        for tied in [false, true] {
            let config = tiny(ARCHITECTURE, json!({"tie_word_embeddings": tied}));
            let model = load_llama(&config, &source, &cpu_ctx()).unwrap();
            assert_eq!(model.lm_head_shares_embedding(), tied);
            assert!(model.layers().iter().all(|l| !l.self_attn.has_qk_norm()));
        }
    }

    /// Llama 3.1's rope scaling reaches the model: it changes the logits from position 1 on
    /// (the low frequencies are divided by `factor`), with the same weights.
    #[test]
    fn llama3_rope_scaling_changes_the_logits() {
        let default = tiny(ARCHITECTURE, json!({}));
        let scaled = tiny(
            ARCHITECTURE,
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
        );
        let a = prefill_logits(dummy(&default).as_ref(), &IDS, &POSITIONS);
        let b = prefill_logits(dummy(&scaled).as_ref(), &IDS, &POSITIONS);
        assert_ne!(a, b);
        // A single token at position 0 is not rotated at all: equal logits.
        let a = prefill_logits(dummy(&default).as_ref(), &[7], &[0]);
        let b = prefill_logits(dummy(&scaled).as_ref(), &[7], &[0]);
        assert_eq!(a, b);
    }

    #[test]
    fn biases_are_refused_naming_the_field_and_architecture() {
        for (field, name) in [
            (json!({"attention_bias": true}), "attention_bias = true"),
            (json!({"mlp_bias": true}), "mlp_bias = true"),
        ] {
            let config = tiny(ARCHITECTURE, field);
            let err = crate::load_model(&config, Path::new("."), LoadFormat::Dummy, &cpu_ctx())
                .err()
                .expect("refused");
            let msg = err.to_string();
            assert!(
                matches!(err, ModelError::UnsupportedFeature { .. })
                    && msg.contains(name)
                    && msg.contains(ARCHITECTURE),
                "{msg}"
            );
        }
        // transformers' Llama never windows: a stray sliding_window is ignored.
        let windowed = tiny(ARCHITECTURE, json!({"sliding_window": 8}));
        assert_eq!(windowed.sliding_window, Some(8));
        assert_eq!(windowed.max_model_len_limit(), 256);
        dummy(&windowed);
    }

    /// Llama-3.2-1B's config.json (transformers 4 form, as published): 1,235,814,400
    /// parameters (tied), plus the rope table.
    #[test]
    fn llama_3_2_1b_config_parses_and_counts() {
        let json = r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false,
            "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001,
            "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
            "initializer_range": 0.02, "intermediate_size": 8192,
            "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
            "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
            "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0,
            "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
            "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256}"#;
        let c = ModelConfig::from_json_str(json, Path::new("inline")).unwrap();
        assert_eq!(
            c.rope_scaling,
            crate::config::RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }
        );
        assert_eq!(c.num_elements(), Some(1_235_814_400 + 131072 * 64));
        crate::features::check_features(&c, ARCHITECTURE, &FEATURES).unwrap();
    }
}
