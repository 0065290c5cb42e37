//! The `Model` seam.

use std::sync::Arc;

use nanovllm_kernels::{AttentionMetadata, Backend, Communicator, KvCache, Tensor};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::linear_weights::WeightQuantization;
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
    /// Quantize the linear weights while loading (`--quantization`); `None` loads them
    /// as the checkpoint stores them.
    pub quantization: Option<WeightQuantization>,
}

/// A causal LM for this rank.
///
/// A step is split in two so that the runner can capture the first half in a CUDA graph
/// (fixed shapes, static buffers) and run the second eagerly on the rows it wants:
/// [`Model::forward_hidden`] (every layer and the final norm, all packed rows), then
/// [`Model::compute_logits`] (the wanted rows, the LM head, the tensor-parallel gather).
/// [`Model::forward`] is both; a model may override it with a cheaper equivalent (e.g.
/// normalising only the wanted rows) as long as the numbers agree row by row.
pub trait Model: Send + Sync {
    fn config(&self) -> &ModelConfig;
    fn kv_cache_spec(&self) -> KvCacheSpec;
    /// Runs all layers and the final norm: stores the new tokens' K/V in `kv_cache` and
    /// returns the normalised hidden states `[T, hidden_size]` (activation dtype) of all
    /// packed rows. Rows whose slot is −1 (graph padding) write no KV.
    fn forward_hidden(
        &self,
        input: &ForwardInput,
        kv_cache: &mut KvCache,
    ) -> Result<Tensor, ModelError>;
    /// Logits `[R, vocab_size]` (activation dtype) of the rows `logits_indices: U32 [R]` of
    /// `hidden` (the output of [`Model::forward_hidden`]). Under tensor parallelism every
    /// rank returns the full, gathered logits.
    fn compute_logits(
        &self,
        hidden: &Tensor,
        logits_indices: &Tensor,
    ) -> Result<Tensor, ModelError>;
    /// Runs all layers: stores the new tokens' K/V in `kv_cache` and returns
    /// logits `[R, vocab_size]` (activation dtype) for the rows in `input.logits_indices`.
    /// Under tensor parallelism every rank returns the full, gathered logits.
    fn forward(&self, input: &ForwardInput, kv_cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let hidden = self.forward_hidden(input, kv_cache)?;
        self.compute_logits(&hidden, &input.logits_indices)
    }
}
