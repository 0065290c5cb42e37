//! The dense SwiGLU MLP shared by the dense architectures (Qwen3, Llama, Mistral):
//! ```text
//! h = down_proj(silu(gate_proj(x)) * up_proj(x))      gate ‖ up packed in one matmul
//! ```
//! Checkpoint names: `{prefix}.mlp.{gate_proj,up_proj,down_proj}.weight`. Tensor
//! parallelism: the intermediate features are split across ranks (`gate_up_proj`
//! column-parallel, `down_proj` row-parallel and all-reduced).

use nanovllm_kernels::{Backend, Tensor};

use crate::config::ModelConfig;
use crate::decoder::FeedForward;
use crate::error::ModelError;
use crate::layers::{MergedColumnParallelLinear, RowParallelLinear};
use crate::loader::WeightLoader;
use crate::model::ModelContext;

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

    /// `gate_proj ‖ up_proj`, this rank's rows.
    pub fn gate_up_proj(&self) -> &MergedColumnParallelLinear {
        &self.gate_up_proj
    }

    /// `down_proj`, this rank's input-feature columns.
    pub fn down_proj(&self) -> &RowParallelLinear {
        &self.down_proj
    }
}

impl FeedForward for Mlp {
    fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        let gate_up = self.gate_up_proj.forward(backend, x)?;
        let act = backend.silu_mul(&gate_up)?;
        self.down_proj.forward(backend, &act)
    }
}
