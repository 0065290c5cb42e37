//! Qwen3-MoE (`Qwen3MoeForCausalLM`: Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention
//! (q/k norms) over the shared decoder, with a feed-forward block chosen per layer by
//! [`ModelConfig::is_sparse_layer`] (transformers' rule: not in `mlp_only_layers`, and
//! `(i + 1) % decoder_sparse_step == 0`):
//! - sparse: the shared [`SparseMoeBlock`] under `mlp.` with Qwen's expert names
//!   (`mlp.experts.{e}.{gate,up,down}_proj`), `moe_intermediate_size` wide, top-k weights
//!   renormalised only when `norm_topk_prob` is true;
//! - dense: the SwiGLU [`Mlp`], `intermediate_size` wide.

use nanovllm_kernels::{Backend, Tensor};

use crate::config::ModelConfig;
use crate::decoder::{DecoderLm, DecoderSpec, FeedForward};
use crate::error::ModelError;
use crate::features::{Features, FeedForwardKind, MoeRouting, SlidingWindow, ALL_ROPE_TYPES};
use crate::layers::{ExpertNames, Mlp, SparseMoeBlock};
use crate::loader::{WeightLoader, WeightSource};
use crate::model::{Model, ModelContext};

pub const ARCHITECTURE: &str = "Qwen3MoeForCausalLM";

pub type Qwen3MoeForCausalLM = DecoderLm<Qwen3MoeFeedForward>;

const ROUTING: MoeRouting = MoeRouting::NormTopkProb;

/// What Qwen3-MoE supports: Qwen3's attention (q/k norms, no biases, no window, every rope
/// kind) and sparse MoE layers with dense ones in between, routed per `norm_topk_prob`.
pub const FEATURES: Features = Features {
    qk_norm: true,
    qkv_bias: false,
    attention_bias: false,
    mlp_bias: false,
    sliding_window: SlidingWindow::Reject,
    feed_forward: FeedForwardKind::Moe {
        routing: ROUTING,
        dense_layers: true,
    },
    rope_types: ALL_ROPE_TYPES,
};

/// One layer's feed-forward block.
#[derive(Debug)]
pub enum Qwen3MoeFeedForward {
    Dense(Mlp),
    Sparse(SparseMoeBlock),
}

impl FeedForward for Qwen3MoeFeedForward {
    fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            Self::Dense(mlp) => mlp.forward(backend, x),
            Self::Sparse(moe) => moe.forward(backend, x),
        }
    }
}

/// Loads a Qwen3-MoE model for this rank.
pub fn load_qwen3_moe(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<Qwen3MoeForCausalLM, ModelError> {
    let load_ffn = |loader: &WeightLoader, layer: usize, prefix: &str| {
        Ok(if config.is_sparse_layer(layer) {
            Qwen3MoeFeedForward::Sparse(SparseMoeBlock::load(
                loader,
                &format!("{prefix}.mlp"),
                ExpertNames::QWEN3_MOE,
                config,
                ROUTING.top_k_weights(config),
                ctx.comm.clone(),
            )?)
        } else {
            Qwen3MoeFeedForward::Dense(Mlp::load(loader, prefix, config, ctx)?)
        })
    };
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
    Ok(Box::new(load_qwen3_moe(config, source, ctx)?))
}

#[cfg(test)]
mod tests {
    use nanovllm_kernels::TopKWeights;

    use super::*;
    use crate::test_util::load_decoder_fixture;

    /// Each layer's block follows transformers' rule, with the fixture's widths and routing.
    #[test]
    fn fixtures_have_dense_and_sparse_layers_routed_per_norm_topk_prob() {
        // (fixture, sparse layers, experts, top-k, expert width, dense width, weighting)
        let expect = [
            (
                "qwen3-moe-tiny",
                vec![true, false, true],
                8,
                2,
                32,
                96,
                TopKWeights::Probabilities,
            ),
            (
                "qwen3-moe-tiny-bf16",
                vec![false, true, false],
                16,
                4,
                16,
                64,
                TopKWeights::Renormalized,
            ),
        ];
        for (name, sparse, experts, top_k, expert_width, dense_width, weights) in expect {
            let model = load_decoder_fixture(name, load_qwen3_moe);
            let config = model.config().clone();
            let kinds: Vec<bool> = model
                .layers()
                .iter()
                .map(|l| matches!(l.ffn, Qwen3MoeFeedForward::Sparse(_)))
                .collect();
            assert_eq!(kinds, sparse, "{name}");
            for (i, layer) in model.layers().iter().enumerate() {
                assert!(layer.self_attn.has_qk_norm(), "{name} layer {i}");
                match &layer.ffn {
                    Qwen3MoeFeedForward::Sparse(moe) => {
                        let width = expert_width;
                        assert_eq!(config.moe_intermediate_size, width, "{name}");
                        assert_eq!(moe.gate().shape(), &[experts, config.hidden_size]);
                        assert_eq!(moe.w13().shape(), &[experts, 2 * width, config.hidden_size]);
                        assert_eq!(moe.top_k(), top_k);
                        assert_eq!(moe.top_k_weights(), weights, "{name}");
                    }
                    Qwen3MoeFeedForward::Dense(mlp) => {
                        let width = dense_width;
                        assert_eq!(config.intermediate_size, width, "{name}");
                        assert_eq!(mlp.gate_up_proj().weight().shape()[0], 2 * width);
                    }
                }
            }
        }
    }
}
