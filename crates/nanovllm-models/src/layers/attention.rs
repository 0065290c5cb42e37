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
//!
//! FP8 KV-cache scales: a checkpoint may carry `{prefix}.k_scale` and `{prefix}.v_scale`
//! (vLLM's names; scalars) or the older `{prefix}.kv_scale` for both. They are read
//! whenever present (so strict loading never trips on them) and reported by
//! [`Attention::kv_scales`]; the engine applies them to an FP8 cache only.

use std::sync::Arc;

use nanovllm_kernels::{Backend, Communicator, KvScales, LayerKvCache, Tensor};

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
    /// The checkpoint's FP8 KV-cache scales, where it has them.
    kv_scales: Option<KvScales>,
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
            kv_scales: load_kv_scales(loader, prefix)?,
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

    /// The checkpoint's FP8 KV-cache scales for this layer (see the module docs).
    pub fn kv_scales(&self) -> Option<KvScales> {
        self.kv_scales
    }
}

/// A name no checkpoint holds: a source that claims it generates every name on demand
/// (dummy weights), and has no KV-cache scales to read.
const PROBE: &str = "k_scale.__not_in_any_checkpoint__";

/// `{prefix}.k_scale` / `{prefix}.v_scale` (either may be absent: 1.0), else
/// `{prefix}.kv_scale` for both, else `None`. Errors: a scale that is not a finite
/// positive scalar.
fn load_kv_scales(loader: &WeightLoader, prefix: &str) -> Result<Option<KvScales>, ModelError> {
    if loader.contains(&format!("{prefix}.{PROBE}")) {
        return Ok(None);
    }
    let read = |suffix: &str| -> Result<Option<f32>, ModelError> {
        let name = format!("{prefix}.{suffix}");
        if !loader.contains(&name) {
            return Ok(None);
        }
        Ok(Some(loader.scalar(&name)?))
    };
    let (k, v) = (read("k_scale")?, read("v_scale")?);
    let scales = if k.is_some() || v.is_some() {
        KvScales {
            k: k.unwrap_or(1.0),
            v: v.unwrap_or(1.0),
        }
    } else if let Some(s) = read("kv_scale")? {
        KvScales { k: s, v: s }
    } else {
        return Ok(None);
    };
    Ok(Some(scales.validate(prefix)?))
}

#[cfg(test)]
mod tests {
    use nanovllm_kernels::KvScales;

    use crate::config::ModelConfig;
    use crate::loader::LoadFormat;
    use crate::registry::load_model;
    use crate::test_util::{cpu_ctx, fixture, write_safetensors, RawTensor, TempDir};

    /// `fixtures/qwen3-tiny` (3 layers) plus `extra` in a second file, loaded strictly.
    fn load_with(extra: &[RawTensor]) -> Result<Option<Vec<KvScales>>, crate::ModelError> {
        let dir = TempDir::new("kv-scales");
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture("qwen3-tiny").join(file), dir.path().join(file)).unwrap();
        }
        write_safetensors(&dir.path().join("extra.safetensors"), extra);
        let config = ModelConfig::from_dir(dir.path()).unwrap();
        let model = load_model(&config, dir.path(), LoadFormat::Safetensors, &cpu_ctx())?;
        Ok(model.kv_cache_scales())
    }

    #[test]
    fn checkpoint_kv_scales_are_read_per_layer() {
        let p = "model.layers";
        let scales = load_with(&[
            // vLLM's names, a 0-d scalar and a one-element vector.
            RawTensor::f32(&format!("{p}.0.self_attn.k_scale"), &[], &[0.5]),
            RawTensor::f32(&format!("{p}.0.self_attn.v_scale"), &[1], &[0.25]),
            // The older single scale for both.
            RawTensor::f32(&format!("{p}.2.self_attn.kv_scale"), &[], &[0.125]),
        ])
        .unwrap();
        assert_eq!(
            scales,
            Some(vec![
                KvScales { k: 0.5, v: 0.25 },
                KvScales::UNIT,
                KvScales { k: 0.125, v: 0.125 },
            ])
        );
    }

    #[test]
    fn without_scales_the_model_reports_none() {
        assert_eq!(load_with(&[]).unwrap(), None);
    }

    #[test]
    fn a_non_positive_scale_is_an_error_naming_the_layer() {
        let err = load_with(&[RawTensor::f32(
            "model.layers.1.self_attn.v_scale",
            &[],
            &[-2.0],
        )])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("model.layers.1.self_attn") && err.contains("v_scale = -2"),
            "{err}"
        );
    }
}
