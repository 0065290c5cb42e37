//! What each architecture supports, declared in its own file ([`Features`]) and carried
//! by its registry row; [`check_features`] compares a parsed [`ModelConfig`] with the
//! declaration before anything is loaded.
//!
//! Config parsing (`config.rs`) keeps only architecture-independent checks (malformed
//! values, activations, unimplemented rope kinds); whether a model may have biases, a
//! window, experts or a scaled rope is the architecture's to say, and a refusal names the
//! config field and the architecture.

use nanovllm_kernels::TopKWeights;

use crate::config::{ModelConfig, IMPLEMENTED_ROPE_TYPES};
use crate::error::ModelError;

/// An architecture's declaration: what its checkpoints hold beyond the shared decoder's
/// weights, and which config features its file implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Per-head RMSNorm of q and k before RoPE (`self_attn.{q,k}_norm.weight`).
    pub qk_norm: bool,
    /// q, k and v carry biases whatever the config says (Qwen2); `false` where only
    /// `attention_bias` could add them.
    pub qkv_bias: bool,
    /// Whether `attention_bias: true` (biases on q, k, v and o) is implemented.
    pub attention_bias: bool,
    /// Whether `mlp_bias: true` is implemented.
    pub mlp_bias: bool,
    /// What the architecture does with an effective `sliding_window`.
    pub sliding_window: SlidingWindow,
    /// The feed-forward block and, for MoE, its routing.
    pub feed_forward: FeedForwardKind,
    /// Rope kinds (config names, see [`IMPLEMENTED_ROPE_TYPES`]) the architecture accepts.
    pub rope_types: &'static [&'static str],
}

/// What an architecture does with [`ModelConfig::sliding_window`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlidingWindow {
    /// transformers' class never windows (Llama): the field is ignored, as there.
    Ignored,
    /// Windowed attention is not implemented: a window is an error.
    Reject,
    /// Every layer uses the window (Mistral): `max_model_len` is clamped to it, where full
    /// attention and windowed attention give the same outputs
    /// ([`ModelConfig::max_model_len_limit`]).
    ClampMaxModelLen,
}

/// The feed-forward block of the architecture's layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedForwardKind {
    /// A dense SwiGLU MLP in every layer; a config with experts is refused.
    Dense,
    /// A sparse mixture of experts.
    Moe {
        /// How the top-k router weights are normalised.
        routing: MoeRouting,
        /// Whether dense MLP layers may sit between sparse ones (`decoder_sparse_step`,
        /// `mlp_only_layers`, `moe_intermediate_size`: Qwen3-MoE); otherwise every layer is
        /// sparse and its experts are `intermediate_size` wide (Mixtral).
        dense_layers: bool,
    },
}

/// How an MoE block weighs its chosen experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeRouting {
    /// Softmax over all experts, top-k, renormalised to sum to 1 (Mixtral); the config's
    /// `norm_topk_prob` is not read.
    AlwaysRenormalise,
    /// Softmax, top-k, renormalised only when `norm_topk_prob` is true (Qwen3-MoE).
    NormTopkProb,
}

impl MoeRouting {
    /// How `config`'s router weighs the chosen experts.
    pub fn top_k_weights(self, config: &ModelConfig) -> TopKWeights {
        match self {
            MoeRouting::AlwaysRenormalise => TopKWeights::Renormalized,
            MoeRouting::NormTopkProb => TopKWeights::from_norm_topk_prob(config.norm_topk_prob),
        }
    }
}

/// Every rope kind the shared rotary embedding implements.
pub const ALL_ROPE_TYPES: &[&str] = &IMPLEMENTED_ROPE_TYPES;

/// Errors unless `config` asks only for what `features` declares; the message names the
/// field and `architecture`.
pub fn check_features(
    config: &ModelConfig,
    architecture: &str,
    features: &Features,
) -> Result<(), ModelError> {
    let refuse = |field: String, msg: &str| {
        Err(ModelError::UnsupportedFeature {
            architecture: architecture.to_owned(),
            field,
            msg: msg.to_owned(),
        })
    };
    if config.attention_bias && !features.attention_bias {
        return refuse(
            "attention_bias = true".into(),
            "biased attention projections are not implemented for it",
        );
    }
    if config.mlp_bias && !features.mlp_bias {
        return refuse(
            "mlp_bias = true".into(),
            "biased MLP projections are not implemented for it",
        );
    }
    let rope = config.rope_scaling.name();
    if !features.rope_types.contains(&rope) {
        return refuse(
            format!("rope type {rope:?}"),
            &format!("it implements {}", features.rope_types.join(", ")),
        );
    }
    if let (Some(window), SlidingWindow::Reject) = (config.sliding_window, features.sliding_window)
    {
        return refuse(
            format!("sliding_window = {window}"),
            "sliding-window attention is not implemented for it (set use_sliding_window to \
             false, or sliding_window to null, for full attention)",
        );
    }
    check_feed_forward(config, features.feed_forward, &refuse)
}

fn check_feed_forward(
    config: &ModelConfig,
    kind: FeedForwardKind,
    refuse: &dyn Fn(String, &str) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let experts = config.num_local_experts;
    match kind {
        FeedForwardKind::Dense if experts > 0 => refuse(
            format!("num_local_experts = {experts}"),
            "it has a dense MLP, not a mixture of experts",
        ),
        FeedForwardKind::Dense => Ok(()),
        FeedForwardKind::Moe { .. } if experts == 0 || config.num_experts_per_tok == 0 => refuse(
            format!(
                "num_local_experts = {experts}, num_experts_per_tok = {}",
                config.num_experts_per_tok
            ),
            "it is a mixture of experts and needs both to be positive",
        ),
        FeedForwardKind::Moe {
            dense_layers: false,
            ..
        } => {
            if config.decoder_sparse_step != 1 || !config.mlp_only_layers.is_empty() {
                return refuse(
                    format!(
                        "decoder_sparse_step = {}, mlp_only_layers = {:?}",
                        config.decoder_sparse_step, config.mlp_only_layers
                    ),
                    "every layer of it is sparse (dense layers in between are not implemented)",
                );
            }
            if config.moe_intermediate_size > 0 {
                return refuse(
                    format!("moe_intermediate_size = {}", config.moe_intermediate_size),
                    "its experts are intermediate_size wide; remove moe_intermediate_size",
                );
            }
            Ok(())
        }
        FeedForwardKind::Moe {
            dense_layers: true, ..
        } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RopeScaling;

    const DENSE: Features = Features {
        qk_norm: false,
        qkv_bias: false,
        attention_bias: false,
        mlp_bias: false,
        sliding_window: SlidingWindow::Reject,
        feed_forward: FeedForwardKind::Dense,
        rope_types: &["default"],
    };

    fn config() -> ModelConfig {
        let json = r#"{"architectures": ["X"], "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 20,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-6}"#;
        ModelConfig::from_json_str(json, std::path::Path::new("inline")).unwrap()
    }

    fn refusal(config: &ModelConfig, features: &Features) -> String {
        match check_features(config, "XForCausalLM", features) {
            Err(e @ ModelError::UnsupportedFeature { .. }) => e.to_string(),
            other => panic!("expected UnsupportedFeature, got {other:?}"),
        }
    }

    #[test]
    fn plain_config_passes_and_each_feature_is_refused_by_name() {
        let plain = config();
        check_features(&plain, "XForCausalLM", &DENSE).unwrap();
        let cases: [(ModelConfig, &str); 5] = [
            (
                ModelConfig {
                    attention_bias: true,
                    ..plain.clone()
                },
                "attention_bias = true",
            ),
            (
                ModelConfig {
                    mlp_bias: true,
                    ..plain.clone()
                },
                "mlp_bias = true",
            ),
            (
                ModelConfig {
                    sliding_window: Some(32),
                    ..plain.clone()
                },
                "sliding_window = 32",
            ),
            (
                ModelConfig {
                    rope_scaling: RopeScaling::Llama3 {
                        factor: 8.0,
                        low_freq_factor: 1.0,
                        high_freq_factor: 4.0,
                        original_max_position_embeddings: 32,
                    },
                    ..plain.clone()
                },
                "rope type \"llama3\"",
            ),
            (
                ModelConfig {
                    num_local_experts: 4,
                    num_experts_per_tok: 2,
                    ..plain.clone()
                },
                "num_local_experts = 4",
            ),
        ];
        for (config, field) in cases {
            let msg = refusal(&config, &DENSE);
            assert!(
                msg.starts_with("XForCausalLM does not support ") && msg.contains(field),
                "{msg}"
            );
        }
        // What the declaration allows passes.
        let lenient = Features {
            attention_bias: true,
            mlp_bias: true,
            sliding_window: SlidingWindow::ClampMaxModelLen,
            rope_types: ALL_ROPE_TYPES,
            ..DENSE
        };
        let all = ModelConfig {
            attention_bias: true,
            mlp_bias: true,
            sliding_window: Some(32),
            rope_scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 32,
            },
            ..plain.clone()
        };
        check_features(&all, "XForCausalLM", &lenient).unwrap();
        let ignored = Features {
            sliding_window: SlidingWindow::Ignored,
            ..DENSE
        };
        let window = ModelConfig {
            sliding_window: Some(32),
            ..plain
        };
        check_features(&window, "XForCausalLM", &ignored).unwrap();
    }

    #[test]
    fn moe_declarations() {
        let mixtral = Features {
            feed_forward: FeedForwardKind::Moe {
                routing: MoeRouting::AlwaysRenormalise,
                dense_layers: false,
            },
            ..DENSE
        };
        let interleaved = Features {
            feed_forward: FeedForwardKind::Moe {
                routing: MoeRouting::NormTopkProb,
                dense_layers: true,
            },
            ..DENSE
        };
        let moe = ModelConfig {
            num_local_experts: 4,
            num_experts_per_tok: 2,
            ..config()
        };
        check_features(&moe, "XForCausalLM", &mixtral).unwrap();
        assert!(refusal(&config(), &mixtral).contains("num_local_experts = 0"));
        let stepped = ModelConfig {
            decoder_sparse_step: 2,
            ..moe.clone()
        };
        assert!(refusal(&stepped, &mixtral).contains("decoder_sparse_step = 2"));
        check_features(&stepped, "XForCausalLM", &interleaved).unwrap();
        let narrow = ModelConfig {
            moe_intermediate_size: 8,
            ..moe
        };
        assert!(refusal(&narrow, &mixtral).contains("moe_intermediate_size = 8"));
        check_features(&narrow, "XForCausalLM", &interleaved).unwrap();
    }
}
