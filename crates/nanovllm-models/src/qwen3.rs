//! Qwen3 (`Qwen3ForCausalLM`): a dense pre-norm decoder with grouped-query
//! attention, per-head RMSNorm on q and k (before RoPE), SwiGLU MLP.
//!
//! Per layer, with the residual stream kept separately (fused add + norm):
//! ```text
//! x = input_layernorm(h [+ residual])          first layer: residual = h
//! q, k, v = qkv_proj(x); q, k = q_norm(q), k_norm(k)   (per head)
//! q, k = rope(q, k); store_kv(k, v); o = attention(q) · head_dim^-0.5 scaled
//! x = post_attention_layernorm(o_proj(o) + residual)
//! h = down_proj(silu(gate) * up)
//! ```
//! then the final norm, the wanted rows only, and the LM head (tied or not).
//!
//! Tensor parallelism: heads (q and kv) and the MLP's intermediate features
//! are split across ranks; `o_proj` and `down_proj` all-reduce.

use std::sync::Arc;

use nanovllm_kernels::{Backend, KvCache, LayerKvCache, Tensor};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::layers::{
    MergedColumnParallelLinear, ParallelLmHead, QkvParallelLinear, RmsNorm, RotaryEmbedding,
    RowParallelLinear, VocabParallelEmbedding,
};
use crate::loader::{check_divisible, WeightLoader, WeightSource};
use crate::model::{ForwardInput, KvCacheSpec, Model, ModelContext};

pub const ARCHITECTURE: &str = "Qwen3ForCausalLM";

#[derive(Debug)]
struct Attention {
    qkv_proj: QkvParallelLinear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    o_proj: RowParallelLinear,
    scale: f32,
}

#[derive(Debug)]
struct Mlp {
    gate_up_proj: MergedColumnParallelLinear,
    down_proj: RowParallelLinear,
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

#[derive(Debug)]
pub struct Qwen3ForCausalLM {
    config: ModelConfig,
    ctx: ModelContext,
    embed_tokens: VocabParallelEmbedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: ParallelLmHead,
    rotary: RotaryEmbedding,
    /// This rank's KV heads.
    num_kv_heads: usize,
}

/// Registry entry point.
pub fn load(
    config: &ModelConfig,
    source: &dyn WeightSource,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, ModelError> {
    Ok(Box::new(Qwen3ForCausalLM::load(config, source, ctx)?))
}

/// Checks that the world size divides every count that is split across ranks, listing the
/// world sizes that would work otherwise.
fn check_shardable(config: &ModelConfig, world_size: usize) -> Result<(), ModelError> {
    if world_size == 0 {
        return Err(ModelError::Shard("world size must be at least 1".into()));
    }
    let counts = [
        ("num_attention_heads", config.num_attention_heads),
        ("num_key_value_heads", config.num_key_value_heads),
        ("intermediate_size", config.intermediate_size),
    ];
    for (what, count) in counts {
        check_divisible(what, count, world_size).map_err(|_| {
            let gcd = counts.iter().fold(0, |g, &(_, c)| gcd(g, c));
            let works: Vec<usize> = (1..=gcd).filter(|w| gcd % w == 0).collect();
            ModelError::Shard(format!(
                "world size {world_size} does not divide {what} ({count}) of this model; \
                 world sizes that work: {works:?}"
            ))
        })?;
    }
    Ok(())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Qwen3ForCausalLM {
    pub fn load(
        config: &ModelConfig,
        source: &dyn WeightSource,
        ctx: &ModelContext,
    ) -> Result<Self, ModelError> {
        let shard = ctx.shard;
        check_shardable(config, shard.world_size)?;
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
        let backend = ctx.backend.as_ref();
        let loader = WeightLoader::new(source, backend, shard);
        let c = config;
        let (hidden, hd) = (c.hidden_size, c.head_dim);

        let embed_tokens = VocabParallelEmbedding::load(
            &loader,
            "model.embed_tokens.weight",
            c.vocab_size,
            hidden,
        )?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| load_layer(&loader, c, ctx, &format!("model.layers.{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = RmsNorm::load(&loader, "model.norm.weight", hidden, c.rms_norm_eps)?;
        // HF ties when the config says so; a checkpoint without lm_head.weight is tied too.
        let lm_head = if c.tie_word_embeddings || !loader.contains("lm_head.weight") {
            ParallelLmHead::tied(
                &embed_tokens,
                &loader,
                c.vocab_size,
                hidden,
                ctx.comm.clone(),
            )?
        } else {
            ParallelLmHead::load(
                &loader,
                "lm_head.weight",
                c.vocab_size,
                hidden,
                ctx.comm.clone(),
            )?
        };
        let rotary = RotaryEmbedding::new(backend, hd, c.max_position_embeddings, c.rope_theta)?;
        Ok(Self {
            config: config.clone(),
            ctx: ctx.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            num_kv_heads: c.num_key_value_heads / shard.world_size,
        })
    }

    /// Whether the LM head shares the embedding table's buffer (tied, one rank).
    pub fn lm_head_shares_embedding(&self) -> bool {
        Arc::ptr_eq(self.lm_head.weight(), self.embed_tokens.table())
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

fn load_layer(
    loader: &WeightLoader,
    c: &ModelConfig,
    ctx: &ModelContext,
    prefix: &str,
) -> Result<DecoderLayer, ModelError> {
    let (hidden, hd, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
    let attn = format!("{prefix}.self_attn");
    let mlp = format!("{prefix}.mlp");
    Ok(DecoderLayer {
        input_layernorm: RmsNorm::load(
            loader,
            &format!("{prefix}.input_layernorm.weight"),
            hidden,
            eps,
        )?,
        self_attn: Attention {
            qkv_proj: QkvParallelLinear::load(
                loader,
                &attn,
                hidden,
                c.num_attention_heads,
                c.num_key_value_heads,
                hd,
            )?,
            q_norm: RmsNorm::load(loader, &format!("{attn}.q_norm.weight"), hd, eps)?,
            k_norm: RmsNorm::load(loader, &format!("{attn}.k_norm.weight"), hd, eps)?,
            o_proj: RowParallelLinear::load(
                loader,
                &format!("{attn}.o_proj.weight"),
                hidden,
                c.num_attention_heads * hd,
                ctx.comm.clone(),
            )?,
            // As transformers: `head_dim**-0.5` in double precision, used as an f32.
            scale: (hd as f64).powf(-0.5) as f32,
        },
        post_attention_layernorm: RmsNorm::load(
            loader,
            &format!("{prefix}.post_attention_layernorm.weight"),
            hidden,
            eps,
        )?,
        mlp: Mlp {
            gate_up_proj: MergedColumnParallelLinear::load(
                loader,
                &[
                    (&format!("{mlp}.gate_proj.weight"), c.intermediate_size),
                    (&format!("{mlp}.up_proj.weight"), c.intermediate_size),
                ],
                hidden,
            )?,
            down_proj: RowParallelLinear::load(
                loader,
                &format!("{mlp}.down_proj.weight"),
                hidden,
                c.intermediate_size,
                ctx.comm.clone(),
            )?,
        },
    })
}

impl Attention {
    fn forward(
        &self,
        backend: &dyn Backend,
        rotary: &RotaryEmbedding,
        x: &Tensor,
        input: &ForwardInput,
        cache: &mut LayerKvCache,
    ) -> Result<Tensor, ModelError> {
        let (q, k, v) = self.qkv_proj.forward(backend, x)?;
        // Qwen3 normalises each head's q and k before the rotation.
        let mut q = self.q_norm.forward_groups(backend, q)?;
        let mut k = self.k_norm.forward_groups(backend, k)?;
        rotary.forward(backend, &mut q, &input.positions)?;
        rotary.forward(backend, &mut k, &input.positions)?;
        backend.store_kv(&k, &v, cache, &input.attn.slot_mapping)?;
        let o = if input.attn.is_prefill {
            backend.prefill_attention(&q, &k, &v, cache, &input.attn, self.scale)?
        } else {
            backend.decode_attention(&q, cache, &input.attn, self.scale)?
        };
        self.o_proj.forward(backend, &o)
    }
}

impl Mlp {
    fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        let gate_up = self.gate_up_proj.forward(backend, x)?;
        let act = backend.silu_mul(&gate_up)?;
        self.down_proj.forward(backend, &act)
    }
}

impl Model for Qwen3ForCausalLM {
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

    fn forward(&self, input: &ForwardInput, kv_cache: &mut KvCache) -> Result<Tensor, ModelError> {
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
            hidden = layer.mlp.forward(backend, &x)?;
        }
        // Norms are per row, so picking the wanted rows first gives the same numbers for
        // less work than normalising every token.
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
    use std::path::{Path, PathBuf};

    use nanovllm_kernels::{CpuBackend, DType, NoopCommunicator};

    use super::*;
    use crate::loader::ShardSpec;
    use crate::safetensors_source::SafetensorsSource;

    fn ctx() -> ModelContext {
        ModelContext {
            backend: Arc::new(CpuBackend::new()),
            comm: Arc::new(NoopCommunicator),
            shard: ShardSpec::default(),
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(name)
    }

    fn load_fixture(name: &str) -> Qwen3ForCausalLM {
        let dir = fixture(name);
        let config = ModelConfig::from_dir(&dir).unwrap();
        Qwen3ForCausalLM::load(&config, &SafetensorsSource::open(&dir).unwrap(), &ctx()).unwrap()
    }

    #[test]
    fn tied_lm_head_shares_the_embedding_buffer() {
        // qwen3-tiny has no lm_head.weight; qwen3-tiny-bf16 is untied.
        assert!(load_fixture("qwen3-tiny").lm_head_shares_embedding());
        let untied = load_fixture("qwen3-tiny-bf16");
        assert!(!untied.lm_head_shares_embedding());
        // Weights stay in the checkpoint dtype.
        assert_eq!(untied.lm_head.weight().dtype(), DType::BF16);
        assert_eq!(
            untied.layers[0].self_attn.qkv_proj.weight().dtype(),
            DType::BF16
        );
    }

    #[test]
    fn kv_cache_spec_and_mismatch() {
        let model = load_fixture("qwen3-tiny");
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

    #[test]
    fn world_size_must_divide_heads_and_intermediate() {
        let config = ModelConfig::from_dir(&fixture("qwen3-tiny")).unwrap(); // 4 q, 2 kv, 128
        let err = check_shardable(&config, 4).unwrap_err().to_string();
        assert!(
            err.contains("num_key_value_heads (2)") && err.contains("[1, 2]"),
            "{err}"
        );
        assert!(check_shardable(&config, 2).is_ok());
        assert!(check_shardable(&config, 0).is_err());
    }
}
