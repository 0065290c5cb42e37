//! Qwen3 (`Qwen3ForCausalLM`): the shared pre-norm decoder ([`crate::decoder`]) with
//! grouped-query attention, per-head RMSNorm on q and k (before RoPE), and a dense SwiGLU
//! MLP:
//! ```text
//! h = down_proj(silu(gate_proj(x)) * up_proj(x))      gate ‖ up packed in one matmul
//! ```
//! Tensor parallelism: the MLP's intermediate features are split across ranks
//! (`gate_up_proj` column-parallel, `down_proj` row-parallel and all-reduced).

use nanovllm_kernels::{Backend, Tensor};

use crate::config::ModelConfig;
use crate::decoder::{DecoderLm, DecoderSpec, FeedForward};
use crate::error::ModelError;
use crate::layers::{MergedColumnParallelLinear, RowParallelLinear};
use crate::loader::{WeightLoader, WeightSource};
use crate::model::{Model, ModelContext};

pub const ARCHITECTURE: &str = "Qwen3ForCausalLM";

pub type Qwen3ForCausalLM = DecoderLm<Mlp>;

/// The dense SwiGLU MLP.
#[derive(Debug)]
pub struct Mlp {
    gate_up_proj: MergedColumnParallelLinear,
    down_proj: RowParallelLinear,
}

impl Mlp {
    /// Loads `{prefix}.mlp.{gate_proj,up_proj,down_proj}.weight` for this rank.
    pub fn load(
        loader: &WeightLoader,
        prefix: &str,
        config: &ModelConfig,
        ctx: &ModelContext,
    ) -> Result<Self, ModelError> {
        let (hidden, intermediate) = (config.hidden_size, config.intermediate_size);
        let mlp = format!("{prefix}.mlp");
        Ok(Self {
            gate_up_proj: MergedColumnParallelLinear::load(
                loader,
                &[
                    (&format!("{mlp}.gate_proj.weight"), intermediate),
                    (&format!("{mlp}.up_proj.weight"), intermediate),
                ],
                hidden,
            )?,
            down_proj: RowParallelLinear::load(
                loader,
                &format!("{mlp}.down_proj.weight"),
                hidden,
                intermediate,
                ctx.comm.clone(),
            )?,
        })
    }
}

impl FeedForward for Mlp {
    fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        let gate_up = self.gate_up_proj.forward(backend, x)?;
        let act = backend.silu_mul(&gate_up)?;
        self.down_proj.forward(backend, &act)
    }
}

/// Loads a Qwen3 model for this rank.
pub fn load_qwen3(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<Qwen3ForCausalLM, ModelError> {
    let load_ffn = |loader: &WeightLoader, prefix: &str| Mlp::load(loader, prefix, config, ctx);
    DecoderLm::load(
        config,
        source,
        ctx,
        DecoderSpec {
            qk_norm: true,
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
    Ok(Box::new(load_qwen3(config, source, ctx)?))
}

#[cfg(test)]
mod tests {
    use nanovllm_kernels::{CpuBackend, DType, KvCache};

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
}
