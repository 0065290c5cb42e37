//! The self-attention block of the decoder architectures (Llama-style, as Qwen3 and
//! Mixtral use it):
//! ```text
//! q, k, v = qkv_proj(x) [+ q/k/v biases]                packed, this rank's heads; biases (Qwen2)
//! q, k = q_norm(q), k_norm(k)                           per head, only with `qk_norm` (Qwen3)
//! q, k = rope(q, k); store_kv(k, v)
//! o = attention(q, paged K/V) · head_dim^-0.5 scaled   prefill or decode
//! o_proj(o)                                             row-parallel, all-reduced
//! ```
//! No o_proj bias. GQA: `num_key_value_heads` divides `num_attention_heads`; under tensor
//! parallelism each rank holds `heads / W` q heads and `kv_heads / W` kv heads, or one kv
//! head replicated on `W / kv_heads` ranks when `W` exceeds `kv_heads` (see
//! [`crate::loader`]), so a rank's q heads always share its kv heads' groups.

use std::sync::Arc;

use nanovllm_kernels::{Backend, Communicator, LayerKvCache, Tensor};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::features::Features;
use crate::layers::{QkvParallelLinear, RmsNorm, RotaryEmbedding, RowParallelLinear};
use crate::loader::WeightLoader;
use crate::model::ForwardInput;

/// Per-head RMSNorms of q and k, applied before the rotation.
#[derive(Debug)]
struct QkNorm {
    q_norm: RmsNorm,
    k_norm: RmsNorm,
}

#[derive(Debug)]
pub struct Attention {
    qkv_proj: QkvParallelLinear,
    qk_norm: Option<QkNorm>,
    o_proj: RowParallelLinear,
    scale: f32,
}

impl Attention {
    /// Loads `{prefix}.{q,k,v,o}_proj.weight`, `{prefix}.{q,k}_norm.weight` when
    /// `features.qk_norm` and `{prefix}.{q,k,v}_proj.bias` when `features.qkv_bias`, for
    /// this rank. The caller has checked the world size
    /// ([`crate::check_tensor_parallel_size`]).
    pub fn load(
        loader: &WeightLoader,
        prefix: &str,
        config: &ModelConfig,
        features: &Features,
        comm: Arc<dyn Communicator>,
    ) -> Result<Self, ModelError> {
        let c = config;
        let (hidden, hd, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
        let qk_norm = if features.qk_norm {
            Some(QkNorm {
                q_norm: RmsNorm::load(loader, &format!("{prefix}.q_norm.weight"), hd, eps)?,
                k_norm: RmsNorm::load(loader, &format!("{prefix}.k_norm.weight"), hd, eps)?,
            })
        } else {
            None
        };
        Ok(Self {
            qkv_proj: QkvParallelLinear::load(
                loader,
                prefix,
                hidden,
                c.num_attention_heads,
                c.num_key_value_heads,
                hd,
                features.qkv_bias,
            )?,
            qk_norm,
            o_proj: RowParallelLinear::load(
                loader,
                &format!("{prefix}.o_proj.weight"),
                hidden,
                c.num_attention_heads * hd,
                comm,
            )?,
            // As transformers: `head_dim**-0.5` in double precision, used as an f32.
            scale: (hd as f64).powf(-0.5) as f32,
        })
    }

    /// `x: [T, hidden]` → `[T, hidden]`; stores the new tokens' K/V in `cache`.
    pub fn forward(
        &self,
        backend: &dyn Backend,
        rotary: &RotaryEmbedding,
        x: &Tensor,
        input: &ForwardInput,
        cache: &mut LayerKvCache,
    ) -> Result<Tensor, ModelError> {
        let (mut q, mut k, v) = self.qkv_proj.forward(backend, x)?;
        if let Some(norm) = &self.qk_norm {
            q = norm.q_norm.forward_groups(backend, q)?;
            k = norm.k_norm.forward_groups(backend, k)?;
        }
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

    /// `o_proj`, this rank's input-feature columns.
    pub fn o_proj(&self) -> &RowParallelLinear {
        &self.o_proj
    }
    pub fn qkv_proj(&self) -> &QkvParallelLinear {
        &self.qkv_proj
    }

    pub fn has_qk_norm(&self) -> bool {
        self.qk_norm.is_some()
    }
}
