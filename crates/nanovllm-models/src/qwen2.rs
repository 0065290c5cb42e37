//! Qwen2 (`Qwen2ForCausalLM`: Qwen2, Qwen2.5): Llama-shaped ([`crate::llama`]: grouped-query
//! attention, no q/k norm, the dense SwiGLU [`Mlp`]) with biases on the q, k and v
//! projections (`self_attn.{q,k,v}_proj.bias`, always present: transformers' class
//! hard-codes them; `o_proj` has none).
//!
//! Qwen2.5 configs carry `sliding_window` with `use_sliding_window: false`: full
//! attention, as in transformers. `use_sliding_window: true` is refused.

use crate::config::ModelConfig;
use crate::decoder::DecoderLm;
use crate::error::ModelError;
use crate::features::{Features, FeedForwardKind, SlidingWindow, ALL_ROPE_TYPES};
use crate::layers::Mlp;
use crate::loader::WeightSource;
use crate::model::{Model, ModelContext};

pub const ARCHITECTURE: &str = "Qwen2ForCausalLM";

pub type Qwen2ForCausalLM = DecoderLm<Mlp>;

/// What Qwen2 supports: q/k/v biases, every rope kind, no q/k norm, no window, a dense MLP.
pub const FEATURES: Features = Features {
    qk_norm: false,
    qkv_bias: true,
    attention_bias: false,
    mlp_bias: false,
    sliding_window: SlidingWindow::Reject,
    feed_forward: FeedForwardKind::Dense,
    rope_types: ALL_ROPE_TYPES,
};

/// Loads a Qwen2 model for this rank.
pub fn load_qwen2(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<Qwen2ForCausalLM, ModelError> {
    DecoderLm::load_dense(config, source, ctx, &FEATURES)
}

/// Registry entry point.
pub fn load(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, ModelError> {
    Ok(Box::new(load_qwen2(config, source, ctx)?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::test_util::{cpu_ctx, load_decoder_fixture};
    use crate::LoadFormat;

    #[test]
    fn the_fixture_loads_its_qkv_biases_packed_after_the_weights_rows() {
        // qwen2-tiny: 4 q heads, 1 kv head, head_dim 16.
        let model = load_decoder_fixture("qwen2-tiny", load_qwen2);
        for layer in model.layers() {
            assert!(!layer.self_attn.has_qk_norm());
            let qkv = layer.self_attn.qkv_proj();
            let bias = qkv.bias().expect("Qwen2 has q/k/v biases");
            assert_eq!(bias.shape(), &[(4 + 2) * 16]);
            assert_eq!(bias.shape()[0], qkv.weight().shape()[0]);
            assert!(bias.to_vec_f32().unwrap().iter().any(|&b| b != 0.0));
        }
    }

    #[test]
    fn a_used_sliding_window_is_refused_and_an_unused_one_ignored() {
        let config = |use_window: bool| {
            crate::llama::tests::tiny(
                ARCHITECTURE,
                json!({"sliding_window": 32, "use_sliding_window": use_window}),
            )
        };
        let load = |c: &ModelConfig| {
            crate::load_model(
                c,
                std::path::Path::new("/none"),
                LoadFormat::Dummy,
                &cpu_ctx(),
            )
        };
        assert!(load(&config(false)).is_ok());
        match load(&config(true)) {
            Err(e @ ModelError::UnsupportedFeature { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("sliding_window") && msg.contains(ARCHITECTURE),
                    "{msg}"
                );
            }
            Err(e) => panic!("expected UnsupportedFeature, got {e}"),
            Ok(_) => panic!("expected UnsupportedFeature, got a model"),
        }
    }
}
