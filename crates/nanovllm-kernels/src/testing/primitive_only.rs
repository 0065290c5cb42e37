//! [`PrimitiveOnly`]: a backend that implements only the [`Backend`] methods without a
//! default body, so that running the shared suite on it tests the defaults (e.g.
//! `add_rms_norm` as `add_inplace` then `rms_norm`) the way a new backend would use them.
//! [`Bf16Logits`]: a backend that claims bf16 activations, for the sampling suite.

use crate::{
    AttentionMetadata, Backend, DType, Device, LayerKvCache, Result, SampleOutput, SamplingRow,
    Tensor, TensorParts, TopKWeights,
};

/// Forwards every required method of [`Backend`] to the inner backend and overrides none
/// of the defaulted ones. Run the suite on it with
/// `backend_test_suite!(PrimitiveOnly(CpuBackend::new()))`.
#[derive(Debug)]
pub struct PrimitiveOnly<B>(pub B);

/// `fn name(&self, arg: Type, ...) -> Ret;` becomes a method calling the inner backend's.
macro_rules! forward {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(fn $name(&self $(, $arg: $ty)*) -> $ret { self.0.$name($($arg),*) })*
    };
}

/// Forwards every required method of [`Backend`] but `activation_dtype` (which each wrapper
/// decides) to `self.0`: one list for both wrappers here.
macro_rules! forward_required_ops {
    () => {
        forward! {
            fn device(&self) -> Device;
            fn upload(&self, host: Tensor) -> Result<Tensor>;
            fn copy_from_host(&self, src: &Tensor, dst: &mut Tensor) -> Result<()>;
            fn to_host(&self, t: &Tensor) -> Result<Tensor>;
            fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor>;
            fn synchronize(&self) -> Result<()>;
            fn embedding(&self, ids: &Tensor, table: &Tensor) -> Result<Tensor>;
            fn embedding_shard(&self, ids: &Tensor, table: &Tensor, vocab_start: usize) -> Result<Tensor>;
            fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor>;
            fn rope(&self, x: &mut Tensor, positions: &Tensor, cos_sin: &Tensor, head_dim: usize) -> Result<()>;
            fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor>;
            fn silu_mul(&self, gate_up: &Tensor) -> Result<Tensor>;
            fn add_inplace(&self, x: &mut Tensor, y: &Tensor) -> Result<()>;
            fn add_bias(&self, x: &mut Tensor, bias: &Tensor) -> Result<()>;
            fn split_last_dim(&self, x: &Tensor, sizes: &[usize]) -> Result<TensorParts>;
            fn index_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor>;
            fn store_kv(&self, k: &Tensor, v: &Tensor, cache: &mut LayerKvCache, slot_mapping: &Tensor) -> Result<()>;
            fn prefill_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, cache: &LayerKvCache, meta: &AttentionMetadata, scale: f32) -> Result<Tensor>;
            fn decode_attention(&self, q: &Tensor, cache: &LayerKvCache, meta: &AttentionMetadata, scale: f32) -> Result<Tensor>;
            fn moe_route(&self, router_logits: &Tensor, top_k: usize, weights: TopKWeights) -> Result<(Tensor, Tensor)>;
            fn moe_experts(&self, x: &Tensor, w13: &Tensor, w2: &Tensor, topk_ids: &Tensor, topk_weights: &Tensor) -> Result<Tensor>;
            fn sample(&self, logits: Tensor, rows: &[SamplingRow<'_>]) -> Result<SampleOutput>;
        }
    };
}

impl<B: Backend> Backend for PrimitiveOnly<B> {
    fn activation_dtype(&self) -> DType {
        self.0.activation_dtype()
    }
    forward_required_ops!();
}

/// The inner backend with [`Backend::activation_dtype`] reporting bf16, and every required
/// method forwarded. Only for the sampling suite (`testing::sampling`), whose bodies then
/// round their logits to bf16 and upload bf16 tensors, as they do on CUDA: on the CPU
/// backend, `sample` reads bf16 logits, but its other ops want f32 activations.
#[derive(Debug)]
pub struct Bf16Logits<B>(pub B);

impl<B: Backend> Backend for Bf16Logits<B> {
    fn activation_dtype(&self) -> DType {
        DType::BF16
    }
    forward_required_ops!();
}
