//! [`Quantization`]: in-situ weight quantization at load time (`--quantization`).
//!
//! A bf16/f16/f32 checkpoint's linear weights (attention projections, MLP, experts) and
//! its LM head (a tied head as a quantized copy) are quantized a few rows at a time while
//! they load, so the unquantized model is never in memory; embeddings, norms, biases and
//! MoE routers keep the checkpoint's dtype (see `nanovllm_models::linear_weights`). A
//! checkpoint that is already quantized (`quantization_config` in `config.json`: FP8)
//! loads as it is and refuses the flag. Formats: [`nanovllm_kernels::quant`].

use nanovllm_kernels::DType;
use nanovllm_models::WeightQuantization;
use serde::{Deserialize, Serialize};

/// The block format linear weights are quantized to while loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// int8, one f16 scale per 32 weights ([`DType::Int8G32`]).
    Int8,
    /// int4, one f16 scale and minimum per 32 weights ([`DType::Int4G32`]).
    Int4,
    /// FP8 e4m3, one f32 scale per 128 weights ([`DType::Fp8G128`]).
    Fp8,
}

impl Quantization {
    /// The weight dtype this format stores linear weights in.
    pub fn dtype(self) -> DType {
        match self {
            Quantization::Int8 => DType::Int8G32,
            Quantization::Int4 => DType::Int4G32,
            Quantization::Fp8 => DType::Fp8G128,
        }
    }

    /// What the model loader quantizes: every linear weight and the LM head, in
    /// [`Quantization::dtype`].
    pub fn weights(self) -> WeightQuantization {
        WeightQuantization::new(self.dtype())
    }
}
