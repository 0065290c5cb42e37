//! Qwen2 (`Qwen2ForCausalLM`: Qwen2, Qwen2.5): Llama-shaped ([`crate::llama`]: grouped-query
//! attention, no q/k norm, the dense SwiGLU [`Mlp`]) with biases on the q, k and v
//! projections (`self_attn.{q,k,v}_proj.bias`, always present: transformers' class
//! hard-codes them; `o_proj` has none).
//!
//! Qwen2.5 configs carry `sliding_window` with `use_sliding_window: false`: full
//! attention, as in transformers. `use_sliding_window: true` is refused.

use crate::config::ModelConfig;
use crate::decoder::{DecoderLm, DecoderSpec};
use crate::error::ModelError;
use crate::features::{Features, FeedForwardKind, SlidingWindow, ALL_ROPE_TYPES};
use crate::layers::Mlp;
use crate::loader::{WeightLoader, WeightSource};
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
    let load_ffn =
        |loader: &WeightLoader, _layer: usize, prefix: &str| Mlp::load(loader, prefix, config, ctx);
    let spec = DecoderSpec {
        features: &FEATURES,
        load_ffn: &load_ffn,
    };
    DecoderLm::load(config, source, ctx, spec)
}

/// Registry entry point.
pub fn load(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, ModelError> {
    Ok(Box::new(load_qwen2(config, source, ctx)?))
}
