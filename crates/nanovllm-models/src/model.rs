//! The `Model` seam.

use std::sync::Arc;

use nanovllm_kernels::{AttentionMetadata, Backend, Communicator, KvCache, Tensor};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::loader::ShardSpec;

/// One step's inputs, on the backend's device, built by the runner.
#[derive(Clone, Debug)]
pub struct ForwardInput {
    /// U32 `[T]`: packed token ids of all scheduled sequences.
    pub input_ids: Tensor,
    /// U32 `[T]`: the position of each token in its sequence.
    pub positions: Tensor,
    pub attn: AttentionMetadata,
    /// U32 `[R]`: packed rows whose logits are wanted (each sequence's last token).
    pub logits_indices: Tensor,
}

/// What the runner needs to size and lay out the KV cache for this rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheSpec {
    pub num_layers: usize,
    /// KV heads held by this rank.
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Everything a model constructor gets besides its config and weights.
#[derive(Clone, Debug)]
pub struct ModelContext {
    pub backend: Arc<dyn Backend>,
    pub comm: Arc<dyn Communicator>,
    pub shard: ShardSpec,
}

pub trait Model: Send + Sync {
    fn config(&self) -> &ModelConfig;
    fn kv_cache_spec(&self) -> KvCacheSpec;
    /// Runs all layers: stores the new tokens' K/V in `kv_cache` and returns
    /// logits `[R, vocab_size]` (activation dtype) for the rows in `input.logits_indices`.
    /// Under tensor parallelism every rank returns the full, gathered logits.
    fn forward(&self, input: &ForwardInput, kv_cache: &mut KvCache) -> Result<Tensor, ModelError>;
}
