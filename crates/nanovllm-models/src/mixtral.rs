//! Mixtral (`MixtralForCausalLM`): the shared pre-norm decoder ([`crate::decoder`]) with
//! Llama-style grouped-query attention (no q/k norm, no biases, RoPE with the config's
//! `rope_theta`) and a sparse mixture-of-experts feed-forward block in every layer
//! ([`SparseMoeBlock`]: router softmax in f32, top-`num_experts_per_tok` of
//! `num_local_experts` experts, renormalised weights, SwiGLU experts).
//!
//! Checkpoint names: attention as Llama (`model.layers.N.self_attn.{q,k,v,o}_proj`), and
//! `model.layers.N.block_sparse_moe.gate.weight [E, H]`,
//! `…block_sparse_moe.experts.E.{w1,w3}.weight [I, H]`, `…experts.E.w2.weight [H, I]`.

use nanovllm_kernels::{Backend, Tensor};

use crate::config::ModelConfig;
use crate::decoder::{DecoderLm, DecoderSpec, FeedForward};
use crate::error::ModelError;
use crate::features::{Features, FeedForwardKind, MoeRouting, SlidingWindow, ALL_ROPE_TYPES};
use crate::layers::{ExpertNames, SparseMoeBlock};
use crate::loader::{WeightLoader, WeightSource};
use crate::model::{Model, ModelContext};

pub const ARCHITECTURE: &str = "MixtralForCausalLM";

pub type MixtralForCausalLM = DecoderLm<SparseMoeBlock>;

/// What Mixtral supports: no q/k norms, no biases, no sliding window (a `sliding_window`
/// is refused), every rope kind, and a sparse MoE block in every layer whose top-k weights
/// are always renormalised (`norm_topk_prob` is not read).
pub const FEATURES: Features = Features {
    qk_norm: false,
    qkv_bias: false,
    attention_bias: false,
    mlp_bias: false,
    sliding_window: SlidingWindow::Reject,
    feed_forward: FeedForwardKind::Moe {
        routing: MoeRouting::AlwaysRenormalise,
        dense_layers: false,
    },
    rope_types: ALL_ROPE_TYPES,
};

impl FeedForward for SparseMoeBlock {
    fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        SparseMoeBlock::forward(self, backend, x)
    }
}

/// Loads a Mixtral model for this rank.
pub fn load_mixtral(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<MixtralForCausalLM, ModelError> {
    let load_ffn = |loader: &WeightLoader, _layer: usize, prefix: &str| {
        SparseMoeBlock::load(
            loader,
            &format!("{prefix}.block_sparse_moe"),
            ExpertNames::MIXTRAL,
            config,
            MoeRouting::AlwaysRenormalise.top_k_weights(config),
            ctx.comm.clone(),
        )
    };
    DecoderLm::load(
        config,
        source,
        ctx,
        DecoderSpec {
            features: &FEATURES,
            load_ffn: &load_ffn,
        },
    )
}

/// Registry entry point.
pub fn load(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, ModelError> {
    Ok(Box::new(load_mixtral(config, source, ctx)?))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use nanovllm_kernels::DType;

    use super::*;
    use crate::test_util::{cpu_ctx, fixture, load_decoder_fixture};

    #[test]
    fn fixtures_load_with_stacked_experts_in_the_checkpoint_dtype() {
        // (fixture, dtype, experts, intermediate, hidden, kv heads, head_dim)
        let expect = [
            ("mixtral-tiny", DType::F32, 8, 96, 64, 2, 16),
            ("mixtral-tiny-bf16", DType::BF16, 4, 64, 32, 4, 16),
        ];
        for (name, dtype, experts, inter, hidden, kv_heads, head_dim) in expect {
            let model = load_decoder_fixture(name, load_mixtral);
            let spec = model.kv_cache_spec();
            assert_eq!(
                (spec.num_layers, spec.num_kv_heads, spec.head_dim),
                (2, kv_heads, head_dim)
            );
            assert!(!model.lm_head_shares_embedding(), "{name} is untied");
            for layer in model.layers() {
                assert!(!layer.self_attn.has_qk_norm());
                let moe = &layer.ffn;
                assert_eq!(moe.top_k(), 2);
                assert_eq!(moe.gate().shape(), &[experts, hidden]);
                assert_eq!(moe.w13().shape(), &[experts, 2 * inter, hidden]);
                assert_eq!(moe.w2().shape(), &[experts, hidden, inter]);
                assert_eq!((moe.w13().dtype(), moe.w2().dtype()), (dtype, dtype));
            }
        }
    }

    #[test]
    fn dummy_weights_build_a_mixtral() {
        let dir = fixture("mixtral-tiny");
        let config = ModelConfig::from_dir(&dir).unwrap();
        let model = crate::load_model(&config, &dir, crate::LoadFormat::Dummy, &cpu_ctx()).unwrap();
        assert_eq!(model.config().architecture, ARCHITECTURE);
    }

    /// The committed configs parse into the shapes they are named after.
    #[test]
    fn committed_configs_parse() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        // (file, hidden, layers, heads, kv heads, intermediate, experts, top-k, vocab)
        let expect = [
            ("mixtral-8x7b.json", [4096, 32, 32, 8, 14336, 8, 2, 32000]),
            ("mixtral-small.json", [1024, 4, 16, 8, 2048, 8, 2, 32000]),
        ];
        for (file, want) in expect {
            let path = configs.join(file);
            let json = std::fs::read_to_string(&path).unwrap();
            let c = ModelConfig::from_json_str(&json, &path).unwrap();
            let got = [
                c.hidden_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.intermediate_size,
                c.num_local_experts,
                c.num_experts_per_tok,
                c.vocab_size,
            ];
            assert_eq!(got, want, "{file}");
            assert_eq!(c.architecture, ARCHITECTURE);
            assert_eq!((c.rope_theta, c.rms_norm_eps), (1e6, 1e-5), "{file}");
            assert_eq!(
                (c.dtype, c.tie_word_embeddings),
                (DType::BF16, false),
                "{file}"
            );
            assert_eq!(c.head_dim, c.hidden_size / c.num_attention_heads, "{file}");
        }
    }
}
