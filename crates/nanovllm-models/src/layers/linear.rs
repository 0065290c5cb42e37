//! Linear layers, `y = x · Wᵀ` with PyTorch's `[out_features, in_features]` weights.
//!
//! - [`Linear`]: one weight as given (replicated, or a column shard).
//! - [`QkvParallelLinear`]: `q/k/v_proj` packed into one column-parallel
//!   weight; this rank's rows are its q heads, then its k heads, then its v heads
//!   (KV heads replicated across ranks when there are fewer than ranks). Optional
//!   q/k/v biases (Qwen2) are packed the same way and added to the packed output.
//! - [`MergedColumnParallelLinear`]: `gate_proj/up_proj` packed the same way.
//! - [`RowParallelLinear`]: input features sharded; partial sums are all-reduced.

use std::ops::Range;
use std::sync::Arc;

use nanovllm_kernels::{Backend, Communicator, Tensor};

use crate::error::ModelError;
use crate::loader::{PackedPart, WeightLoader};

/// A plain linear layer over one weight tensor.
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
}

impl Linear {
    /// Wraps an already loaded `[out, in]` weight.
    pub fn new(weight: Tensor) -> Self {
        Self { weight }
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    /// `x: [M, in]` → `[M, out_local]`.
    pub fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(backend.matmul(x, &self.weight)?)
    }
}

/// Fused q/k/v projection for (grouped-query) attention, with optional q/k/v biases.
#[derive(Debug)]
pub struct QkvParallelLinear {
    linear: Linear,
    /// `[q_size + 2 * kv_size]`, packed like the weight's rows (Qwen2's q/k/v biases).
    bias: Option<Tensor>,
    /// This rank's q features: `local q heads * head_dim`.
    q_size: usize,
    /// This rank's k (= v) features: `local kv heads * head_dim`.
    kv_size: usize,
}

impl QkvParallelLinear {
    /// Loads `{prefix}.q_proj/k_proj/v_proj.weight` (and `.bias` when `bias`) and packs
    /// this rank's heads: its q heads, split evenly, then its KV heads' k rows and v rows
    /// ([`crate::ShardSpec::kv_head_range`]: split evenly, or one head replicated on
    /// several ranks). The biases are packed the same way. The caller has checked the
    /// world size ([`crate::check_tensor_parallel_size`]).
    pub fn load(
        loader: &WeightLoader,
        prefix: &str,
        hidden_size: usize,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        bias: bool,
    ) -> Result<Self, ModelError> {
        let shard = loader.shard();
        let q_heads = shard.even_range("num_attention_heads", num_heads)?;
        let kv_heads = shard.kv_head_range(num_kv_heads)?;
        let features = |heads: &Range<usize>| heads.start * head_dim..heads.end * head_dim;
        let names = |kind: &str| {
            ["q_proj", "k_proj", "v_proj"].map(|proj| format!("{prefix}.{proj}.{kind}"))
        };
        // (out_features, this rank's rows) of q, k and v.
        let sizes = [
            (num_heads * head_dim, features(&q_heads)),
            (num_kv_heads * head_dim, features(&kv_heads)),
            (num_kv_heads * head_dim, features(&kv_heads)),
        ];
        let weight_names = names("weight");
        let weight = loader
            .linear()
            .pack_rows(&packed_parts(&weight_names, &sizes), hidden_size)?;
        let bias = if bias {
            let bias_names = names("bias");
            Some(loader.pack_rows(&packed_parts(&bias_names, &sizes), &[])?)
        } else {
            None
        };
        Ok(Self {
            linear: Linear::new(weight),
            bias,
            q_size: q_heads.len() * head_dim,
            kv_size: kv_heads.len() * head_dim,
        })
    }
    /// `x: [T, hidden]` → `(q [T, q_size], k [T, kv_size], v [T, kv_size])`.
    pub fn forward(
        &self,
        backend: &dyn Backend,
        x: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), ModelError> {
        let mut qkv = self.linear.forward(backend, x)?;
        if let Some(bias) = &self.bias {
            backend.add_bias(&mut qkv, bias)?;
        }
        let mut parts = backend
            .split_last_dim(&qkv, &[self.q_size, self.kv_size, self.kv_size])?
            .into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(q), Some(k), Some(v)) => Ok((q, k, v)),
            _ => Err(ModelError::Shard(
                "split_last_dim returned fewer than the 3 q/k/v parts asked for".into(),
            )),
        }
    }
    pub fn weight(&self) -> &Tensor {
        self.linear.weight()
    }
    /// This rank's packed q/k/v biases, `[q_size + 2 * kv_size]`, when loaded with them.
    /// `forward` does not add them.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

/// `names[i]` with `sizes[i] = (out_features, rows)`, as the loader's packed parts.
fn packed_parts<'n>(
    names: &'n [String; 3],
    sizes: &[(usize, Range<usize>); 3],
) -> [PackedPart<'n>; 3] {
    std::array::from_fn(|i| PackedPart {
        name: &names[i],
        out_features: sizes[i].0,
        rows: sizes[i].1.clone(),
    })
}

/// Several column-parallel projections of the same input packed into one
/// matmul (`gate_proj ‖ up_proj` for SwiGLU: `silu_mul` expects gate first).
#[derive(Debug)]
pub struct MergedColumnParallelLinear {
    linear: Linear,
}

impl MergedColumnParallelLinear {
    /// `parts[i] = (weight name, out_features)`; each is split across ranks separately.
    pub fn load(
        loader: &WeightLoader,
        parts: &[(&str, usize)],
        in_features: usize,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            linear: Linear::new(loader.linear().packed_column_shard(parts, in_features)?),
        })
    }
    pub fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        self.linear.forward(backend, x)
    }
    pub fn weight(&self) -> &Tensor {
        self.linear.weight()
    }
}

/// Input features sharded: each rank computes a partial `x_r · W_rᵀ`, summed across ranks.
#[derive(Debug)]
pub struct RowParallelLinear {
    linear: Linear,
    comm: Arc<dyn Communicator>,
}

impl RowParallelLinear {
    /// Loads this rank's input-feature columns of `name: [out, inp]`.
    pub fn load(
        loader: &WeightLoader,
        name: &str,
        out: usize,
        inp: usize,
        comm: Arc<dyn Communicator>,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            linear: Linear::new(loader.linear().row_shard(name, [out, inp])?),
            comm,
        })
    }
    /// `x: [M, in / world]` (this rank's features) → full `[M, out]` on every rank.
    pub fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut y = self.linear.forward(backend, x)?;
        if self.comm.world_size() > 1 {
            self.comm.all_reduce_sum(&mut y)?;
        }
        Ok(y)
    }
    pub fn weight(&self) -> &Tensor {
        self.linear.weight()
    }
}
