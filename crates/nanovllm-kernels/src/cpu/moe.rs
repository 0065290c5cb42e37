//! Mixture-of-experts ops (Mixtral, Qwen3-MoE): routing and the grouped expert computation.
//!
//! - [`route`]: softmax over the experts in f32, top-k, renormalised or not.
//! - [`experts`]: bucket the (token, expert) pairs by expert (a stable counting sort),
//!   gather each expert's token rows into one contiguous block, run the two expert GEMMs
//!   as grouped GEMMs over all blocks at once ([`grouped_gemm`]; block-quantized expert
//!   weights: one quantized matmul per expert, [`grouped_quant`]), then weight and sum
//!   each token's `k` results. Work is proportional to the pairs routed, never to `T · E`; an
//!   expert nobody picked is not read at all.

mod experts;
mod grouped_gemm;
mod grouped_quant;
mod route;
#[cfg(test)]
mod tests;

pub(crate) use experts::moe_experts;
pub(crate) use route::moe_route;
