//! The `Backend` seam: one device and the fixed op set models are written in.
//!
//! Conventions shared by every implementation:
//! - Activations are 2-d `[tokens, features]`, row-major, in the backend's
//!   activation dtype ([`Backend::activation_dtype`]: f32 on the CPU, bf16 on CUDA).
//! - Weights may be stored in a narrower dtype (bf16/f16) and are converted
//!   inside the kernels; there is never a widened shadow copy.
//! - Linear weights follow PyTorch: `[out_features, in_features]`, and
//!   [`Backend::matmul`] computes `x · Wᵀ`.
//! - Integer inputs (token ids, positions, offsets, block tables) are `U32`;
//!   slot mappings are `I64` so that −1 can mark "write nothing".
//!
//! Methods with a default body, built from the other methods (a backend may override
//! them with something faster, and the CPU and CUDA backends do where noted):
//! - [`Backend::upload_weight`]: [`Backend::upload`] (CUDA overrides: bf16 weights);
//! - [`Backend::add_rms_norm`]: [`Backend::add_inplace`] then [`Backend::rms_norm`]
//!   (both override with a fused kernel);
//! - [`Backend::token_logprobs`]: [`Backend::sample`] with greedy rows that score a given
//!   token ([`SamplingRow::logprob_token`]), on every backend.
//!
//! Every other op has no default: none follows from the rest without changing its
//! semantics or its cost. `testing::PrimitiveOnly` runs the shared op suite through the
//! defaults.

use std::sync::Arc;

use crate::attention::AttentionMetadata;
use crate::capability::{CollectiveGroups, DeviceMemory, GraphCapture};
use crate::dtype::DType;
use crate::error::Result;
use crate::kv_cache::LayerKvCache;
use crate::sampling::{RowLogprobs, SampleOutput, SamplingRow};
use crate::tensor::{Tensor, TensorParts};
use crate::validate;

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The weights [`Backend::moe_route`] gives the `top_k` experts it picks from a row's
/// softmax probabilities `p` (transformers' `norm_topk_prob`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopKWeights {
    /// `p_j / Σ_j p_j`, summed in j order: each row sums to 1 (Mixtral; Qwen3-MoE with
    /// `norm_topk_prob: true`).
    Renormalized,
    /// `p_j` as they are (Qwen3-MoE with `norm_topk_prob: false`).
    Probabilities,
}

impl TopKWeights {
    /// The variant a checkpoint's `norm_topk_prob` names.
    pub fn from_norm_topk_prob(norm_topk_prob: bool) -> Self {
        if norm_topk_prob {
            TopKWeights::Renormalized
        } else {
            TopKWeights::Probabilities
        }
    }
}

pub trait Backend: Send + Sync + std::fmt::Debug {
    fn device(&self) -> Device;
    /// The dtype activations and logits are computed in.
    fn activation_dtype(&self) -> DType;

    // ---- memory -------------------------------------------------------------
    /// Moves a CPU tensor onto this device (a no-op move on the CPU backend).
    fn upload(&self, host: Tensor) -> Result<Tensor>;
    /// Moves a model weight onto this device in the dtype its kernels read. The CPU keeps the
    /// checkpoint dtype; CUDA stores float weights as bf16. Everything else uses [`Backend::upload`].
    fn upload_weight(&self, host: Tensor) -> Result<Tensor> {
        self.upload(host)
    }
    /// Copies a CPU tensor into an existing tensor of this device with the same shape and
    /// dtype, keeping `dst`'s buffer (static inputs of a captured CUDA graph live there).
    fn copy_from_host(&self, src: &Tensor, dst: &mut Tensor) -> Result<()>;
    /// Copies a tensor of this device back to a CPU tensor.
    fn to_host(&self, t: &Tensor) -> Result<Tensor>;
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor>;
    /// Waits for all queued work (no-op on the CPU).
    fn synchronize(&self) -> Result<()>;
    /// The engine has gone idle: free what the backend keeps for reuse between steps. The CPU
    /// frees its buffer pool and returns free heap memory to the system; by default (and on
    /// CUDA, whose memory is the KV cache's by design) nothing happens.
    fn release_idle_memory(&self) {}

    // ---- dense ops ----------------------------------------------------------
    /// `ids: U32 [T]`, `table: [V, H]` → `[T, H]` in the activation dtype.
    /// An id ≥ V is an error, never an out-of-bounds read.
    fn embedding(&self, ids: &Tensor, table: &Tensor) -> Result<Tensor>;
    /// Vocab-parallel lookup: `table: [R, H]` holds vocabulary rows `vocab_start..vocab_start + R`.
    /// An id in that range gives its row; any other id gives a zero row (another rank owns it;
    /// the all-reduce that follows sums the shards). Returns `[T, H]` in the activation dtype.
    fn embedding_shard(&self, ids: &Tensor, table: &Tensor, vocab_start: usize) -> Result<Tensor>;
    /// RMSNorm over the last dim: `x / sqrt(mean(x²) + eps) * weight`; `x: [M, N]`, `weight: [N]`.
    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor>;
    /// Fused residual add + RMSNorm: `residual += x`, then returns `rms_norm(residual)`.
    /// The default runs [`Backend::add_inplace`] then [`Backend::rms_norm`]; a backend
    /// overrides it with one pass over the rows.
    fn add_rms_norm(
        &self,
        x: &Tensor,
        residual: &mut Tensor,
        weight: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        // The shapes first, so that a call rms_norm would reject leaves `residual` as it
        // was (as the fused versions do) and errors name this op.
        validate::add_rms_norm_shapes("add_rms_norm", x, residual, weight)?;
        self.add_inplace(residual, x)?;
        self.rms_norm(residual, weight, eps)
    }
    /// Rotary embedding, neox style (rotate halves), in place.
    /// `x: [T, heads * head_dim]`, `positions: U32 [T]`,
    /// `cos_sin: f32 [max_positions, head_dim]` whose row p is `cos(p·inv_freq) ‖ sin(p·inv_freq)`
    /// (each half `head_dim / 2` long), computed once by the model.
    fn rope(
        &self,
        x: &mut Tensor,
        positions: &Tensor,
        cos_sin: &Tensor,
        head_dim: usize,
    ) -> Result<()>;
    /// `x: [M, K]`, `w: [N, K]` (any float dtype) → `x · wᵀ: [M, N]` in the activation dtype.
    fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor>;
    /// `gate_up: [M, 2N]` (gate in the first half of each row) → `silu(gate) * up: [M, N]`.
    fn silu_mul(&self, gate_up: &Tensor) -> Result<Tensor>;
    /// `x += y`, same shape.
    fn add_inplace(&self, x: &mut Tensor, y: &Tensor) -> Result<()>;
    /// Adds a bias to every row, in place (Qwen2's q/k/v projections):
    /// `x: [T, N]`, `bias: [N]` → `x[t, n] += bias[n]`, the sum taken in f32 and rounded
    /// once to x's dtype. `x` is in the activation dtype (f32, bf16 or f16 accepted),
    /// `bias` in a weight dtype (f32, bf16 or f16). Allocates nothing and never waits for
    /// the device (safe inside a captured CUDA graph). Mismatched shapes and non-float
    /// dtypes are errors.
    fn add_bias(&self, x: &mut Tensor, bias: &Tensor) -> Result<()>;
    /// Splits the last dim of `x: [M, sum(sizes)]` into `[M, sizes[i]]` tensors.
    fn split_last_dim(&self, x: &Tensor, sizes: &[usize]) -> Result<TensorParts>;
    /// Gathers rows: `x: [M, N]`, `rows: U32 [R]` → `[R, N]`.
    fn index_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor>;

    // ---- paged attention ----------------------------------------------------
    /// Writes `k, v: [T, kv_heads * head_dim]` into the paged cache at `slot_mapping: I64 [T]`
    /// (slot = block * block_size + offset). A slot of −1 writes nothing.
    fn store_kv(
        &self,
        k: &Tensor,
        v: &Tensor,
        cache: &mut LayerKvCache,
        slot_mapping: &Tensor,
    ) -> Result<()>;
    /// Variable-length causal attention over packed sequences with GQA.
    /// `q: [T, heads * head_dim]`; `k, v` are the new tokens' keys/values, already stored
    /// in `cache` by [`Backend::store_kv`]. Sequence `i`'s queries sit at positions
    /// `context_len - q_len .. context_len` and attend keys `0..=pos`, read from the
    /// paged cache through its block table (so a cached prefix is included).
    /// Returns `[T, heads * head_dim]`.
    fn prefill_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &LayerKvCache,
        meta: &AttentionMetadata,
        scale: f32,
    ) -> Result<Tensor>;
    /// Paged decode attention with GQA: one query per sequence (`q: [S, heads * head_dim]`)
    /// attending all `context_len` keys of its sequence in the cache.
    fn decode_attention(
        &self,
        q: &Tensor,
        cache: &LayerKvCache,
        meta: &AttentionMetadata,
        scale: f32,
    ) -> Result<Tensor>;

    // ---- mixture of experts -------------------------------------------------
    /// Sparse-MoE routing (Mixtral, Qwen3-MoE). `router_logits: [T, E]` (activation dtype) →
    /// `(topk_ids: U32 [T, top_k], topk_weights: F32 [T, top_k])`. Per row, as transformers:
    /// softmax over all `E` experts in f32, the `top_k` largest probabilities in descending
    /// order (equal probabilities: the lower expert id first), weighted as `weights` says:
    /// renormalised to sum to 1, or the probabilities themselves. `1 ≤ top_k ≤ E`.
    fn moe_route(
        &self,
        router_logits: &Tensor,
        top_k: usize,
        weights: TopKWeights,
    ) -> Result<(Tensor, Tensor)>;
    /// The experts of a sparse MoE block, grouped by expert. `x: [T, H]`;
    /// `w13: [E, 2I, H]`, expert `e`'s rows `0..I` the gate projection (w1) and `I..2I` the up
    /// projection (w3), so [`Backend::silu_mul`] semantics apply; `w2: [E, H, I]` (down);
    /// `topk_ids: U32 [T, k]` (each `< E`) and `topk_weights: F32 [T, k]` from
    /// [`Backend::moe_route`]. Returns `[T, H]`:
    /// `out[t] = Σ_j topk_weights[t, j] · w2[e]·silu_mul(w13[e]·x[t])` with `e = topk_ids[t, j]`.
    /// Tokens are bucketed by expert and each expert multiplies its own tokens only: an
    /// expert no token picked is never read, and no work is spent on unpicked pairs.
    fn moe_experts(
        &self,
        x: &Tensor,
        w13: &Tensor,
        w2: &Tensor,
        topk_ids: &Tensor,
        topk_weights: &Tensor,
    ) -> Result<Tensor>;

    // ---- sampling -----------------------------------------------------------
    /// Samples one token per row of `logits: [R, V]` (activation dtype) with `rows[r]`, as
    /// defined in [`crate::sampling`]: processing (token mask, logit bias, penalties), greedy
    /// or temperature → top-k → top-p → min-p → inverse CDF with a Philox uniform, and the
    /// logprobs of the rows that ask. Consumes the logits, which it may edit in place.
    /// Only the tokens (and requested logprobs) reach the host; on a device, that copy is the
    /// op's one synchronisation.
    fn sample(&self, logits: Tensor, rows: &[SamplingRow<'_>]) -> Result<SampleOutput>;
    /// Scores known tokens (prompt logprobs): row `r` of `logits: [R, V]` gives the logprob
    /// of `targets[r]` from the log-softmax of the raw logits (no temperature, no
    /// processing; summed in f64, NaN as −∞) and the `num_top` most likely tokens
    /// (`≤` [`crate::sampling::MAX_NUM_LOGPROBS`]; most likely first, equal values by lower
    /// id). `None` for a row without a finite maximum. `targets.len()` must be `R`; a target
    /// `≥ V` is an error. Consumes the logits. The default is [`Backend::sample`] with
    /// greedy rows whose [`SamplingRow::logprob_token`] is the target: the same numbers as
    /// the logprobs of a greedy sampled row.
    fn token_logprobs(
        &self,
        logits: Tensor,
        targets: &[u32],
        num_top: usize,
    ) -> Result<Vec<Option<RowLogprobs>>> {
        let rows: Vec<SamplingRow<'_>> = targets
            .iter()
            .map(|&target| SamplingRow {
                num_logprobs: Some(num_top),
                logprob_token: Some(target),
                ..SamplingRow::default()
            })
            .collect();
        Ok(self.sample(logits, &rows)?.logprobs)
    }

    // ---- optional capabilities (see `capability.rs`) ------------------------
    /// The device's own memory, when it has one to divide (a GPU); `None` on the CPU,
    /// whose KV cache is sized from the host budget instead.
    fn device_memory(&self) -> Option<&dyn DeviceMemory> {
        None
    }
    /// Recording ops into replayable graphs (CUDA graphs); `None` runs every step eagerly.
    fn graph_capture(&self) -> Option<&dyn GraphCapture> {
        None
    }
    /// The device's collective library for tensor-parallel groups (NCCL); `None` uses the
    /// engine's own communicators (threads, or TCP between processes).
    fn collective_groups(self: Arc<Self>) -> Option<Arc<dyn CollectiveGroups>> {
        None
    }
}
