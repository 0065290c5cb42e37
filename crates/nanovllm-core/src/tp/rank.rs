//! What every worker rank (thread or process) does, whatever carries its messages:
//! load its shard of the model, allocate its share of the KV cache, and run
//! each batch rank 0 sends it.
//!
//! A worker runs the same [`ModelRunner`] as rank 0 on the same batch, so it
//! takes part in exactly the same collectives in the same order. It samples
//! greedily and throws the tokens away (a row without a finite maximum included): rank 0
//! alone samples for the requests, and the vocab-parallel logits are gathered on every
//! rank anyway.

use std::sync::Arc;

use nanovllm_kernels::{Backend, Communicator};
use nanovllm_models::{load_model_as, Model, ModelContext, ShardSpec};
use nanovllm_scheduler::{SamplingParams, ScheduledBatch};

use crate::config::{EngineConfig, Quantization};
use crate::engine::{read_model_config, runner_for};
use crate::error::Result;
use crate::kv_sizing::size_kv_cache;
use crate::runner::ModelRunner;

/// Rank `rank`'s device: GPU `rank % ranks_per_node` on CUDA.
pub(crate) fn rank_device(config: &EngineConfig, rank: usize) -> Result<Arc<dyn Backend>> {
    let local_rank = rank % config.tp.ranks_per_node(config.tensor_parallel_size);
    crate::device::create_backend(config, local_rank)
}

/// Loads rank `rank`'s shard of the model on `backend`, talking to its peers through `comm`.
pub(crate) fn load_rank_model(
    config: &EngineConfig,
    rank: usize,
    backend: Arc<dyn Backend>,
    comm: Arc<dyn Communicator>,
) -> Result<Box<dyn Model>> {
    let model_config = read_model_config(&config.model_config_path())?;
    let ctx = ModelContext {
        backend,
        comm,
        shard: ShardSpec {
            rank,
            world_size: config.tensor_parallel_size,
        },
        quantization: config.quantization.map(Quantization::weights),
    };
    let weight_dtype = config.dtype.weight_dtype_on(ctx.backend.device())?;
    Ok(load_model_as(
        &model_config,
        &config.model_dir(),
        config.load_format,
        &ctx,
        weight_dtype,
    )?)
}

/// Runs rank 0's KV-cache sizing on this rank too. On a GPU that sizing is a warm-up
/// prefill through the model, whose collectives must pair with rank 0's; the count itself
/// is rank 0's to choose (it arrives with `Init`), so this one is only logged.
pub(crate) fn mirror_kv_sizing(
    config: &EngineConfig,
    backend: &dyn Backend,
    model: &dyn Model,
) -> Result<()> {
    let (own, _) = size_kv_cache(config, backend, model)?;
    tracing::debug!(own, "worker KV sizing (rank 0's count is used)");
    Ok(())
}

/// A loaded worker rank with its KV cache.
pub(crate) struct RankRunner {
    runner: ModelRunner,
    greedy: SamplingParams,
}

impl RankRunner {
    /// Allocates `num_blocks` KV blocks (rank 0's count: every rank holds the same blocks,
    /// each with its share of the KV heads).
    pub(crate) fn new(
        config: &EngineConfig,
        backend: Arc<dyn Backend>,
        model: Box<dyn Model>,
        num_blocks: usize,
    ) -> Result<Self> {
        let runner = runner_for(config, backend, model, num_blocks)?;
        Ok(Self {
            runner,
            greedy: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
        })
    }

    /// Runs `batch` through this rank's shard (its collectives pair with rank 0's).
    pub(crate) fn step(&mut self, batch: &ScheduledBatch) -> Result<()> {
        let params = vec![&self.greedy; batch.num_seqs()];
        self.runner.execute(batch, &params)?;
        // Sampled with a fixed greedy rule; nothing to remember per sequence.
        Ok(())
    }
}
