//! Layers shared by the architectures, each loading its own weights for this
//! rank through a [`crate::loader::WeightLoader`] and computing with
//! [`nanovllm_kernels::Backend`] ops.
//!
//! Activations are `[tokens, features]` in the backend's activation dtype;
//! weights stay in their checkpoint dtype. Tensor-parallel layers hold only
//! this rank's shard and call the [`nanovllm_kernels::Communicator`] where the
//! math needs it (after a row-parallel matmul, to gather vocab-parallel logits).

mod attention;
mod embedding;
mod linear;
mod mlp;
mod moe;
mod norm;
mod rotary;

pub use attention::Attention;
pub use embedding::{ParallelLmHead, VocabParallelEmbedding};
pub use linear::{Linear, MergedColumnParallelLinear, QkvParallelLinear, RowParallelLinear};
pub use mlp::Mlp;
pub use moe::{ExpertNames, SparseMoeBlock};
pub use norm::RmsNorm;
pub use rotary::RotaryEmbedding;
