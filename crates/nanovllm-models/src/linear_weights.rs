//! Linear weights, quantized while they load (`--quantization int8|int4|fp8`).
//!
//! The layers ask for a linear weight explicitly ([`crate::WeightLoader::linear`]; the
//! LM head through [`crate::WeightLoader::lm_head`]): q/k/v (packed), o_proj, gate/up
//! (packed), down, and the experts' stacked `w13 [E, 2I, H]` and `w2 [E, H, I]`.
//! Embeddings, norms, biases and MoE routers load through the plain loader methods and
//! keep their stored dtype. [`LinearWeights`] has the plain methods' shapes and sharding;
//! with a quantization format it reads the float weight a bounded number of rows at a time
//! ([`QUANTIZE_CHUNK_ELEMS`] elements), quantizes them ([`nanovllm_kernels::quant`]) and
//! appends the blocks to the tensor being built, so the unquantized model is never in
//! memory: at most one chunk of floats, or one tensor-parallel column shard of a weight
//! (read whole, then quantized), besides the quantized weights.
//!
//! **Blocks and tensor parallelism.** A block-quantized weight holds whole blocks of
//! `K` along each row. Column shards split rows and are always whole; a row-parallel
//! (`K`-sharded) weight whose shard would cut a block is [`ModelError::ShardCutsBlock`],
//! naming the weight, the shard and the block size. A `K` that is not a multiple of the
//! block at all is a [`ModelError::Quantization`] error.
//!
//! **The LM head** is quantized by default along with the linear layers
//! ([`WeightQuantization::lm_head`]): single-stream decode is bound by the bytes read per
//! token, and Qwen3-0.6B's tied 151936 × 1024 head is 311 MB of bf16, more than all its
//! int4 linear layers together. A tied head then gets its own quantized copy of the
//! embedding table; the embedding stays as stored. The cost, measured as perplexity on
//! `fixtures/qwen3-trained` (unquantized 126.4366; `lm_head_choice_measured_on_the_trained_fixture`
//! in `tests/quantized_loading.rs`, `--ignored`):
//!
//! | format | LM head quantized | LM head as stored |
//! |---|---|---|
//! | int8_g32 | 126.4269 (0.99992×) | 126.4412 (1.00004×) |
//! | int4_g32 | 126.7568 (1.00253×) | 126.6070 (1.00135×) |
//! | fp8_g128 | 126.5387 (1.00081×) | 126.4410 (1.00003×) |
//!
//! Every choice is far inside the bounds (1.01×, 1.10×, 1.02×), so the head follows
//! the bytes. FP8 *checkpoints* keep the head as stored (Qwen's keep it bf16).

use nanovllm_kernels::quant::quantize;
use nanovllm_kernels::{CpuStorage, DType, Tensor};

use crate::error::ModelError;
use crate::loader::{buffer_dtype_mismatch, PackedPart, Slice, WeightLoader, WeightSource};

/// How many float elements are quantized at a time (4 MiB of f32).
pub const QUANTIZE_CHUNK_ELEMS: usize = 1 << 20;

/// In-situ quantization of a model's linear weights while loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightQuantization {
    /// The block-quantized dtype the weights are stored in ([`DType::Int8G32`],
    /// [`DType::Int4G32`] or [`DType::Fp8G128`]).
    pub dtype: DType,
    /// Whether the LM head is quantized too (a tied head as a quantized copy of the
    /// embedding table).
    pub lm_head: bool,
}

impl WeightQuantization {
    /// Every linear weight and the LM head in `dtype`.
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            lm_head: true,
        }
    }
}

/// The loader's methods for linear weights: the plain methods' shapes and sharding, each
/// weight quantized to [`LinearWeights::dtype`] when that is set.
#[derive(Clone, Copy)]
pub struct LinearWeights<'l, 'a> {
    loader: &'l WeightLoader<'a>,
    quantize: Option<DType>,
}

impl<'l, 'a> LinearWeights<'l, 'a> {
    pub(crate) fn new(loader: &'l WeightLoader<'a>, quantize: Option<DType>) -> Self {
        Self { loader, quantize }
    }

    /// The dtype weights are quantized to; `None`: loaded as the source stores them.
    pub fn dtype(&self) -> Option<DType> {
        self.quantize
    }

    /// [`WeightLoader::column_shard`], quantized.
    pub fn column_shard(&self, name: &str, shape: [usize; 2]) -> Result<Tensor, ModelError> {
        self.loader.column_shard_as(name, shape, self.quantize)
    }

    /// [`WeightLoader::row_shard`], quantized.
    pub fn row_shard(&self, name: &str, shape: [usize; 2]) -> Result<Tensor, ModelError> {
        self.loader.row_shard_as(name, shape, self.quantize)
    }

    /// [`WeightLoader::packed_column_shard`], quantized.
    pub fn packed_column_shard(
        &self,
        parts: &[(&str, usize)],
        in_features: usize,
    ) -> Result<Tensor, ModelError> {
        self.loader
            .packed_column_shard_as(parts, in_features, self.quantize)
    }

    /// [`WeightLoader::pack_rows`] of weights `[out, in_features]`, quantized.
    pub fn pack_rows(
        &self,
        parts: &[PackedPart],
        in_features: usize,
    ) -> Result<Tensor, ModelError> {
        self.loader
            .pack_rows_as(parts, &[in_features], self.quantize)
    }

    /// [`WeightLoader::stacked_row_shard`], quantized.
    pub fn stacked_row_shard(
        &self,
        names: &[String],
        shape: [usize; 2],
    ) -> Result<Tensor, ModelError> {
        self.loader
            .stacked_row_shard_as(names, shape, self.quantize)
    }

    /// [`WeightLoader::vocab_shard`] (the LM head), quantized; the padding rows are zero
    /// blocks.
    pub fn vocab_shard(
        &self,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Tensor, ModelError> {
        self.loader
            .vocab_shard_as(name, vocab, hidden, self.quantize)
    }
}

/// Errors unless `slice` of `name: shape` holds whole `dtype` blocks per row (nothing to
/// check for an element dtype).
pub(crate) fn check_whole_blocks(
    name: &str,
    shape: &[usize],
    slice: &Slice,
    dtype: DType,
) -> Result<(), ModelError> {
    let Some(block) = dtype.block() else {
        return Ok(());
    };
    let k = shape.last().copied().unwrap_or(0);
    if shape.len() < 2 || k % block.elems != 0 {
        return Err(ModelError::Quantization {
            name: name.to_owned(),
            msg: format!(
                "shape {shape:?} does not split into {dtype} blocks of {} along its last dim; \
                 load the model without --quantization",
                block.elems
            ),
        });
    }
    if let Slice::Cols(cols) = slice {
        if cols.start % block.elems != 0 || cols.len() % block.elems != 0 {
            return Err(ModelError::ShardCutsBlock {
                name: name.to_owned(),
                shard: cols.len(),
                block: block.elems,
                dtype,
            });
        }
    }
    Ok(())
}

/// Reads `slice` of float tensor `name: shape`, quantizes it to the block dtype `dtype`
/// and appends the blocks to `out` (a [`CpuStorage::Bytes`] of `dtype`). Row slices are
/// read [`QUANTIZE_CHUNK_ELEMS`] at a time; a column slice (a row-parallel shard) is read
/// whole. The caller has checked the blocks ([`check_whole_blocks`]).
pub(crate) fn append_quantized(
    source: &dyn WeightSource,
    name: &str,
    shape: &[usize],
    slice: &Slice,
    dtype: DType,
    out: &mut CpuStorage,
) -> Result<(), ModelError> {
    let bytes = match out {
        CpuStorage::Bytes { dtype: d, bytes } if *d == dtype => bytes,
        other => return Err(buffer_dtype_mismatch(other, name, dtype)),
    };
    let mut push = |floats: Tensor| -> Result<(), ModelError> {
        match quantize(&floats, dtype)?.cpu("append_quantized")? {
            CpuStorage::Bytes { bytes: q, .. } => bytes.extend_from_slice(q),
            other => return Err(buffer_dtype_mismatch(other, name, dtype)),
        }
        Ok(())
    };
    let rows = match slice {
        Slice::Cols(_) => return push(source.read(name, shape, slice)?),
        Slice::Full => 0..shape.first().copied().unwrap_or(0),
        Slice::Rows(rows) => rows.clone(),
    };
    let row_len: usize = shape[1..].iter().product();
    let chunk = (QUANTIZE_CHUNK_ELEMS / row_len.max(1)).max(1);
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + chunk).min(rows.end);
        push(source.read(name, shape, &Slice::Rows(start..end))?)?;
        start = end;
    }
    Ok(())
}

#[cfg(test)]
#[path = "linear_weights_tests.rs"]
mod tests;
