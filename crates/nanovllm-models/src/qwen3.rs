//! Qwen3 (`Qwen3ForCausalLM`): the shared pre-norm decoder ([`crate::decoder`]) with
//! grouped-query attention, per-head RMSNorm on q and k (before RoPE), and the dense
//! SwiGLU [`Mlp`].

use crate::config::ModelConfig;
use crate::decoder::DecoderLm;
use crate::error::ModelError;
use crate::features::{Features, FeedForwardKind, SlidingWindow, ALL_ROPE_TYPES};
use crate::layers::Mlp;
use crate::loader::WeightSource;
use crate::model::{Model, ModelContext};

pub const ARCHITECTURE: &str = "Qwen3ForCausalLM";

pub type Qwen3ForCausalLM = DecoderLm<Mlp>;

/// What Qwen3 supports: q/k norms, every rope kind (YaRN for long context), no biases
/// (`attention_bias: true` is refused), no sliding window (`use_sliding_window: true` is
/// refused), a dense MLP.
pub const FEATURES: Features = Features {
    qk_norm: true,
    qkv_bias: false,
    attention_bias: false,
    mlp_bias: false,
    sliding_window: SlidingWindow::Reject,
    feed_forward: FeedForwardKind::Dense,
    rope_types: ALL_ROPE_TYPES,
};

/// Loads a Qwen3 model for this rank.
pub fn load_qwen3(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<Qwen3ForCausalLM, ModelError> {
    DecoderLm::load_dense(config, source, ctx, &FEATURES)
}

/// Registry entry point.
pub fn load(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, ModelError> {
    Ok(Box::new(load_qwen3(config, source, ctx)?))
}

#[cfg(test)]
mod tests {
    use nanovllm_kernels::{CpuBackend, DType, KvCache, Tensor};

    use super::*;
    use crate::model::ForwardInput;
    use crate::test_util::load_decoder_fixture;

    #[test]
    fn tied_lm_head_shares_the_embedding_buffer() {
        // qwen3-tiny has no lm_head.weight; qwen3-tiny-bf16 is untied.
        assert!(load_decoder_fixture("qwen3-tiny", load_qwen3).lm_head_shares_embedding());
        let untied = load_decoder_fixture("qwen3-tiny-bf16", load_qwen3);
        assert!(!untied.lm_head_shares_embedding());
        // Weights stay in the checkpoint dtype.
        assert_eq!(untied.lm_head().weight().dtype(), DType::BF16);
        assert_eq!(
            untied.layers()[0].self_attn.qkv_proj().weight().dtype(),
            DType::BF16
        );
    }

    #[test]
    fn kv_cache_spec_and_mismatch() {
        let model = load_decoder_fixture("qwen3-tiny", load_qwen3);
        let spec = model.kv_cache_spec();
        assert_eq!(
            (spec.num_layers, spec.num_kv_heads, spec.head_dim),
            (3, 2, 32)
        );
        let backend = CpuBackend::new();
        let mut wrong = KvCache::new(&backend, 3, 1, 16, 1, 32, DType::F32).unwrap();
        let input = ForwardInput {
            input_ids: Tensor::from_u32(vec![1], &[1]).unwrap(),
            positions: Tensor::from_u32(vec![0], &[1]).unwrap(),
            attn: nanovllm_kernels::AttentionMetadata {
                is_prefill: true,
                num_seqs: 1,
                block_size: 16,
                cu_seqlens_q: Tensor::from_u32(vec![0, 1], &[2]).unwrap(),
                context_lens: Tensor::from_u32(vec![1], &[1]).unwrap(),
                block_tables: Tensor::from_u32(vec![0], &[1, 1]).unwrap(),
                slot_mapping: Tensor::from_i64(vec![0], &[1]).unwrap(),
                max_seqlen_q: 1,
                max_context_len: 1,
            },
            logits_indices: Tensor::from_u32(vec![0], &[1]).unwrap(),
        };
        match model.forward(&input, &mut wrong) {
            Err(ModelError::KvCacheMismatch {
                field,
                expected,
                found,
            }) => assert_eq!((field, expected, found), ("num_kv_heads", 2, 1)),
            other => panic!("expected KvCacheMismatch, got {other:?}"),
        }
        // An id outside the vocab is an error from the embedding, not a panic.
        let mut cache = KvCache::new(&backend, 3, 1, 16, 2, 32, DType::F32).unwrap();
        let mut bad = input.clone();
        bad.input_ids = Tensor::from_u32(vec![512], &[1]).unwrap();
        assert!(matches!(
            model.forward(&bad, &mut cache),
            Err(ModelError::Kernel(_))
        ));
        assert!(model.forward(&input, &mut cache).is_ok());
    }

    /// Qwen3 with YaRN for long context (transformers-5 form): with the same dummy weights,
    /// the scaled table changes the logits.
    #[test]
    fn yarn_rope_scaling_reaches_qwen3() {
        use serde_json::json;

        use crate::llama::tests::{prefill_logits, tiny};
        let dummy = |config: &ModelConfig| {
            crate::load_model(
                config,
                std::path::Path::new("/nonexistent"),
                crate::LoadFormat::Dummy,
                &crate::test_util::cpu_ctx(),
            )
            .unwrap()
        };
        let default = tiny(ARCHITECTURE, json!({}));
        let v5 = json!({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0,
            "factor": 4.0, "original_max_position_embeddings": 64}});
        let yarn = tiny(ARCHITECTURE, v5);
        let (ids, positions) = ([3, 17, 42, 5, 9], [0, 1, 2, 3, 4]);
        let a = prefill_logits(dummy(&default).as_ref(), &ids, &positions);
        let b = prefill_logits(dummy(&yarn).as_ref(), &ids, &positions);
        assert_ne!(a, b);
    }
}
