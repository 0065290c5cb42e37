//! The decoder-only causal LM every architecture shares (Qwen3, Qwen2, Llama, Mistral,
//! Mixtral, Qwen3-MoE); an architecture file supplies its feed-forward block per layer
//! ([`FeedForward`]) and its [`Features`] (q/k norms, q/k/v biases).
//!
//! Per layer, with the residual stream kept separately (fused add + norm):
//! ```text
//! x = input_layernorm(h [+ residual])          first layer: residual = h
//! o = self_attn(x)                             see `layers::Attention`
//! x = post_attention_layernorm(o + residual)
//! h = ffn_i(x)                                 dense SwiGLU MLP, or sparse MoE (per layer)
//! ```
//! then the final norm, the wanted rows only (`logits_indices`), and the LM head (tied
//! or not). Tensor parallelism: attention heads and the feed-forward's intermediate
//! features are split across ranks (KV heads are replicated when there are fewer than
//! ranks: see [`crate::loader`]); the row-parallel projections all-reduce, and the
//! vocab-parallel LM head gathers, so every rank returns the full logits.
//!
//! Loading is strict: once every layer is loaded, a checkpoint tensor that no layer read
//! is an error naming it ([`WeightLoader::check_all_used`]).

use std::fmt::Debug;
use std::sync::Arc;

use nanovllm_kernels::{Backend, KvCache, Tensor};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::features::Features;
use crate::layers::{
    Attention, Mlp, ParallelLmHead, RmsNorm, RotaryEmbedding, VocabParallelEmbedding,
};
use crate::loader::{WeightLoader, WeightSource};
use crate::model::{ForwardInput, KvCacheSpec, Model, ModelContext};

/// A layer's feed-forward block: `x: [T, hidden]` → `[T, hidden]` (all-reduced under
/// tensor parallelism).
pub trait FeedForward: Debug + Send + Sync {
    fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError>;
}

#[derive(Debug)]
pub struct DecoderLayer<F> {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub ffn: F,
}

/// How an architecture differs from the shared decoder.
pub struct DecoderSpec<'a, F> {
    /// The architecture's declaration: the attention block reads `qk_norm` (per-head
    /// RMSNorm of q and k before RoPE, Qwen3) and `qkv_bias` (Qwen2) from it.
    pub features: &'a Features,
    /// Loads layer `i`'s feed-forward block; the arguments are `i` and the layer's weight
    /// prefix (`model.layers.{i}`).
    pub load_ffn: &'a dyn Fn(&WeightLoader, usize, &str) -> Result<F, ModelError>,
}

#[derive(Debug)]
pub struct DecoderLm<F> {
    config: ModelConfig,
    ctx: ModelContext,
    embed_tokens: VocabParallelEmbedding,
    layers: Vec<DecoderLayer<F>>,
    norm: RmsNorm,
    lm_head: ParallelLmHead,
    rotary: RotaryEmbedding,
    /// How many KV heads this rank holds ([`crate::ShardSpec::kv_head_range`]).
    num_kv_heads: usize,
}

/// Checks that the world size divides every count that is split across ranks, listing the
/// world sizes that would work otherwise.
pub(crate) fn check_shardable(config: &ModelConfig, world_size: usize) -> Result<(), ModelError> {
    crate::loader::check_tensor_parallel_size(config, world_size)
}

/// The shard spec and the communicator must describe the same place in the group.
fn check_rank(ctx: &ModelContext) -> Result<(), ModelError> {
    let shard = ctx.shard;
    if shard.rank >= shard.world_size {
        return Err(ModelError::Shard(format!(
            "rank {} is out of range for world size {}",
            shard.rank, shard.world_size
        )));
    }
    let (comm_rank, comm_world) = (ctx.comm.rank(), ctx.comm.world_size());
    if (comm_rank, comm_world) != (shard.rank, shard.world_size) {
        return Err(ModelError::Shard(format!(
            "the shard spec says rank {} of {} but the communicator is rank {comm_rank} \
             of {comm_world}",
            shard.rank, shard.world_size
        )));
    }
    Ok(())
}

impl DecoderLm<Mlp> {
    /// Loads a decoder with the dense SwiGLU [`Mlp`] in every layer (Qwen3, Llama, Mistral,
    /// Qwen2): what those architectures differ in is only their `features`.
    pub fn load_dense(
        config: &ModelConfig,
        source: &dyn WeightSource,
        ctx: &ModelContext,
        features: &Features,
    ) -> Result<Self, ModelError> {
        let load_ffn = |loader: &WeightLoader, _layer: usize, prefix: &str| {
            Mlp::load(loader, prefix, config, ctx)
        };
        let spec = DecoderSpec {
            features,
            load_ffn: &load_ffn,
        };
        Self::load(config, source, ctx, spec)
    }
}

impl<F: FeedForward> DecoderLm<F> {
    pub fn load(
        config: &ModelConfig,
        source: &dyn WeightSource,
        ctx: &ModelContext,
        spec: DecoderSpec<F>,
    ) -> Result<Self, ModelError> {
        let shard = ctx.shard;
        check_shardable(config, shard.world_size)?;
        check_rank(ctx)?;
        let backend = ctx.backend.as_ref();
        let loader = WeightLoader::new(source, backend, shard).with_quantization(ctx.quantization);
        let c = config;
        let hidden = c.hidden_size;

        let embed_tokens = VocabParallelEmbedding::load(
            &loader,
            "model.embed_tokens.weight",
            c.vocab_size,
            hidden,
            ctx.comm.clone(),
        )?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let prefix = format!("model.layers.{i}");
                Ok(DecoderLayer {
                    input_layernorm: RmsNorm::load(
                        &loader,
                        &format!("{prefix}.input_layernorm.weight"),
                        hidden,
                        c.rms_norm_eps,
                    )?,
                    self_attn: Attention::load(
                        &loader,
                        &format!("{prefix}.self_attn"),
                        c,
                        spec.features,
                        ctx.comm.clone(),
                    )?,
                    post_attention_layernorm: RmsNorm::load(
                        &loader,
                        &format!("{prefix}.post_attention_layernorm.weight"),
                        hidden,
                        c.rms_norm_eps,
                    )?,
                    ffn: (spec.load_ffn)(&loader, i, &prefix)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let norm = RmsNorm::load(&loader, "model.norm.weight", hidden, c.rms_norm_eps)?;
        // HF ties when the config says so; a checkpoint without lm_head.weight is tied too.
        let tied = c.tie_word_embeddings || !loader.contains("lm_head.weight");
        let lm_head = if tied && loader.quantizes_lm_head() {
            // A quantized copy of the table; the embedding stays as stored.
            ParallelLmHead::load(
                &loader,
                "model.embed_tokens.weight",
                c.vocab_size,
                hidden,
                ctx.comm.clone(),
            )?
        } else if tied {
            ParallelLmHead::tied(&embed_tokens, c.vocab_size, ctx.comm.clone())
        } else {
            ParallelLmHead::load(
                &loader,
                "lm_head.weight",
                c.vocab_size,
                hidden,
                ctx.comm.clone(),
            )?
        };
        let rotary = RotaryEmbedding::new(
            backend,
            c.head_dim,
            c.max_position_embeddings,
            c.rope_theta,
            &c.rope_scaling,
        )?;
        loader.check_all_used(c)?;
        Ok(Self {
            config: config.clone(),
            ctx: ctx.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            num_kv_heads: shard.kv_head_range(c.num_key_value_heads)?.len(),
        })
    }

    pub fn layers(&self) -> &[DecoderLayer<F>] {
        &self.layers
    }

    /// Whether the LM head shares the embedding table's buffer (tied).
    pub fn lm_head_shares_embedding(&self) -> bool {
        Arc::ptr_eq(self.lm_head.weight(), self.embed_tokens.table())
    }

    pub fn lm_head(&self) -> &ParallelLmHead {
        &self.lm_head
    }

    pub fn embed_tokens(&self) -> &VocabParallelEmbedding {
        &self.embed_tokens
    }

    /// Every decoder layer over all packed rows: the last layer's feed-forward output and
    /// the residual stream (`None` only for a model without layers), not yet added or
    /// normalised.
    fn run_layers(
        &self,
        input: &ForwardInput,
        kv_cache: &mut KvCache,
    ) -> Result<(Tensor, Option<Tensor>), ModelError> {
        self.check_kv_cache(kv_cache)?;
        let backend = self.ctx.backend.as_ref();
        let mut hidden = self.embed_tokens.forward(backend, &input.input_ids)?;
        let mut residual: Option<Tensor> = None;
        for (layer, cache) in self.layers.iter().zip(kv_cache.layers.iter_mut()) {
            let (x, mut r) = match residual.take() {
                // First layer: the embedding output starts the residual stream.
                None => (layer.input_layernorm.forward(backend, &hidden)?, hidden),
                Some(mut r) => {
                    let x = layer
                        .input_layernorm
                        .forward_add(backend, &hidden, &mut r)?;
                    (x, r)
                }
            };
            let attn_out = layer
                .self_attn
                .forward(backend, &self.rotary, &x, input, cache)?;
            let x = layer
                .post_attention_layernorm
                .forward_add(backend, &attn_out, &mut r)?;
            residual = Some(r);
            hidden = layer.ffn.forward(backend, &x)?;
        }
        Ok((hidden, residual))
    }

    fn check_kv_cache(&self, kv_cache: &KvCache) -> Result<(), ModelError> {
        let checks = [
            ("layers", self.layers.len(), kv_cache.layers.len()),
            ("num_kv_heads", self.num_kv_heads, kv_cache.num_kv_heads),
            ("head_dim", self.config.head_dim, kv_cache.head_dim),
        ];
        for (field, expected, found) in checks {
            if expected != found {
                return Err(ModelError::KvCacheMismatch {
                    field,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }
}

impl<F: FeedForward> Model for DecoderLm<F> {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn kv_cache_spec(&self) -> KvCacheSpec {
        KvCacheSpec {
            num_layers: self.layers.len(),
            num_kv_heads: self.num_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    fn forward_hidden(
        &self,
        input: &ForwardInput,
        kv_cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        let backend = self.ctx.backend.as_ref();
        let (hidden, residual) = self.run_layers(input, kv_cache)?;
        match residual {
            Some(mut r) => Ok(self.norm.forward_add(backend, &hidden, &mut r)?),
            None => self.norm.forward(backend, &hidden),
        }
    }

    fn compute_logits(
        &self,
        hidden: &Tensor,
        logits_indices: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let backend = self.ctx.backend.as_ref();
        let x = backend.index_rows(hidden, logits_indices)?;
        self.lm_head.forward(backend, &x)
    }

    fn forward(&self, input: &ForwardInput, kv_cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let backend = self.ctx.backend.as_ref();
        let (hidden, residual) = self.run_layers(input, kv_cache)?;
        // Norms are per row, so picking the wanted rows first gives the same numbers for
        // less work than normalising every token (as `forward_hidden` must).
        let hidden = backend.index_rows(&hidden, &input.logits_indices)?;
        let x = match residual {
            Some(r) => {
                let mut r = backend.index_rows(&r, &input.logits_indices)?;
                self.norm.forward_add(backend, &hidden, &mut r)?
            }
            None => self.norm.forward(backend, &hidden)?,
        };
        self.lm_head.forward(backend, &x)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use nanovllm_kernels::{AttentionMetadata, CpuBackend, DType};

    use super::*;
    use crate::test_util::load_decoder_fixture;

    /// A prefill of two sequences (5 and 3 tokens) into blocks 0 and 1, wanting rows
    /// `logits_rows` (packed indices).
    fn two_seq_prefill(logits_rows: Vec<u32>) -> ForwardInput {
        let ids: Vec<u32> = vec![3, 17, 42, 5, 9, 11, 2, 30];
        let positions: Vec<u32> = vec![0, 1, 2, 3, 4, 0, 1, 2];
        let slots: Vec<i64> = vec![0, 1, 2, 3, 4, 16, 17, 18];
        let num_rows = logits_rows.len();
        ForwardInput {
            input_ids: Tensor::from_u32(ids, &[8]).unwrap(),
            positions: Tensor::from_u32(positions, &[8]).unwrap(),
            attn: AttentionMetadata {
                is_prefill: true,
                num_seqs: 2,
                block_size: 16,
                cu_seqlens_q: Tensor::from_u32(vec![0, 5, 8], &[3]).unwrap(),
                context_lens: Tensor::from_u32(vec![5, 3], &[2]).unwrap(),
                block_tables: Tensor::from_u32(vec![0, 1], &[2, 1]).unwrap(),
                slot_mapping: Tensor::from_i64(slots, &[8]).unwrap(),
                max_seqlen_q: 5,
                max_context_len: 5,
            },
            logits_indices: Tensor::from_u32(logits_rows, &[num_rows]).unwrap(),
        }
    }

    /// `forward` (rows picked before the final norm) equals `compute_logits` of
    /// `forward_hidden` (all rows normalised): the split the CUDA-graph runner uses.
    fn check_split<F: FeedForward>(model: &DecoderLm<F>) {
        let backend = CpuBackend::new();
        let spec = model.kv_cache_spec();
        let new_cache = || {
            KvCache::new(
                &backend,
                spec.num_layers,
                2,
                16,
                spec.num_kv_heads,
                spec.head_dim,
                DType::F32,
            )
            .unwrap()
        };
        let input = two_seq_prefill(vec![4, 7]);
        let (mut cache_a, mut cache_b) = (new_cache(), new_cache());
        let direct = model.forward(&input, &mut cache_a).unwrap();
        let hidden = model.forward_hidden(&input, &mut cache_b).unwrap();
        assert_eq!(hidden.shape(), &[8, model.config().hidden_size]);
        let split = model
            .compute_logits(&hidden, &input.logits_indices)
            .unwrap();
        assert_eq!(direct.shape(), &[2, model.config().vocab_size]);
        assert_eq!(split.shape(), direct.shape());
        // Same per-row f32 arithmetic in either order: equal up to 1e-6 relative.
        let (a, b) = (direct.to_vec_f32().unwrap(), split.to_vec_f32().unwrap());
        let scale = a.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-6 * scale, "logit {i}: {x} vs {y}");
        }
        // Both wrote the same KV.
        for (la, lb) in cache_a.layers.iter().zip(&cache_b.layers) {
            assert_eq!(la.k.to_vec_f32().unwrap(), lb.k.to_vec_f32().unwrap());
            assert_eq!(la.v.to_vec_f32().unwrap(), lb.v.to_vec_f32().unwrap());
        }
    }

    #[test]
    fn forward_equals_compute_logits_of_forward_hidden() {
        check_split(&load_decoder_fixture(
            "qwen3-tiny",
            crate::qwen3::load_qwen3,
        ));
        check_split(&load_decoder_fixture(
            "mixtral-tiny",
            crate::mixtral::load_mixtral,
        ));
    }

    #[test]
    fn world_size_must_split_heads_and_intermediate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny");
        let config = ModelConfig::from_dir(&dir).unwrap(); // 4 q, 2 kv, 128
        let err = check_shardable(&config, 3).unwrap_err().to_string();
        assert!(
            err.contains("tensor_parallel_size = 3 does not divide num_attention_heads = 4")
                && err.contains("use 1, 2 or 4"),
            "{err}"
        );
        // 4 ranks: each KV head on two of them.
        assert!(check_shardable(&config, 2).is_ok());
        assert!(check_shardable(&config, 4).is_ok());
        assert!(check_shardable(&config, 0).is_err());
    }
}
