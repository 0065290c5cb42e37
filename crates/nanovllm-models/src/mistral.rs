//! Mistral (`MistralForCausalLM`, e.g. Mistral-7B-v0.1): Llama-shaped ([`crate::llama`]:
//! grouped-query attention, no q/k norm, no biases, the dense SwiGLU MLP) with a
//! `sliding_window` (4096 in v0.1) on every layer.
//!
//! Windowed attention is not implemented. Up to the window it equals full attention, so
//! the architecture declares [`SlidingWindow::ClampMaxModelLen`]: the engine clamps
//! `max_model_len` to the window (with a notice) and no output differs from transformers.

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::features::{Features, FeedForwardKind, SlidingWindow, ALL_ROPE_TYPES};
use crate::llama::{load_llama, LlamaForCausalLM};
use crate::loader::WeightSource;
use crate::model::{Model, ModelContext};

pub const ARCHITECTURE: &str = "MistralForCausalLM";

/// Llama's layers and weight names.
pub type MistralForCausalLM = LlamaForCausalLM;

/// What Mistral supports: Llama's features, with the window served by clamping
/// `max_model_len` to it.
pub const FEATURES: Features = Features {
    qk_norm: false,
    qkv_bias: false,
    attention_bias: false,
    mlp_bias: false,
    sliding_window: SlidingWindow::ClampMaxModelLen,
    feed_forward: FeedForwardKind::Dense,
    rope_types: ALL_ROPE_TYPES,
};

/// Registry entry point.
pub fn load(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, ModelError> {
    let model: MistralForCausalLM = load_llama(config, source, ctx)?;
    Ok(Box::new(model))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::llama::tests::{prefill_logits, tiny};
    use crate::test_util::cpu_ctx;
    use crate::LoadFormat;

    fn dummy(config: &ModelConfig) -> Box<dyn Model> {
        crate::load_model(
            config,
            Path::new("/nonexistent"),
            LoadFormat::Dummy,
            &cpu_ctx(),
        )
        .unwrap()
    }

    /// Mistral-7B-v0.1's config.json (transformers 4 form, as published).
    const MISTRAL_7B_V0_1: &str = r#"{"architectures": ["MistralForCausalLM"],
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
        "initializer_range": 0.02, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false,
        "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0", "use_cache": true,
        "vocab_size": 32000}"#;

    #[test]
    fn mistral_7b_window_clamps_the_model_length() {
        let c = ModelConfig::from_json_str(MISTRAL_7B_V0_1, Path::new("inline")).unwrap();
        assert_eq!(c.sliding_window, Some(4096));
        assert_eq!(c.max_model_len_limit(), 4096);
        crate::features::check_features(&c, ARCHITECTURE, &FEATURES).unwrap();
        // 7,241,732,096 parameters, plus the rope table.
        assert_eq!(c.num_elements(), Some(7_241_732_096 + 32768 * 128));
        // Without a window nothing is clamped.
        let full = ModelConfig {
            sliding_window: None,
            ..c
        };
        assert_eq!(full.max_model_len_limit(), 32768);
    }

    /// Within the window Mistral is Llama: the same dummy weights give the same logits.
    #[test]
    fn dummy_mistral_equals_llama_within_the_window() {
        let mistral = tiny(ARCHITECTURE, json!({"sliding_window": 16}));
        let llama = tiny(crate::llama::ARCHITECTURE, json!({}));
        let model = dummy(&mistral);
        assert_eq!(model.config().architecture, ARCHITECTURE);
        assert_eq!(model.config().max_model_len_limit(), 16);
        let (ids, positions) = ([3, 17, 42, 5, 9], [0, 1, 2, 3, 4]);
        assert_eq!(
            prefill_logits(model.as_ref(), &ids, &positions),
            prefill_logits(dummy(&llama).as_ref(), &ids, &positions)
        );
    }

    #[test]
    fn other_architectures_still_refuse_windows() {
        // Qwen3 with use_sliding_window true, Mixtral with a window: clear errors.
        let qwen3 = tiny(
            crate::qwen3::ARCHITECTURE,
            json!({"use_sliding_window": true, "sliding_window": 16}),
        );
        let mixtral = tiny(
            crate::mixtral::ARCHITECTURE,
            json!({"sliding_window": 16, "num_local_experts": 2, "num_experts_per_tok": 1}),
        );
        for config in [qwen3, mixtral] {
            let msg = crate::load_model(&config, Path::new("."), LoadFormat::Dummy, &cpu_ctx())
                .err()
                .expect("refused")
                .to_string();
            assert!(
                msg.contains("sliding_window = 16") && msg.contains(&config.architecture),
                "{msg}"
            );
            assert_eq!(config.max_model_len_limit(), 256);
        }
    }
}
