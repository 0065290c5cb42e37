//! Weight loading: safetensors through mmap (single file or sharded with
//! `model.safetensors.index.json`), or dummy random weights of the config's
//! shapes. Tensor-parallel slicing happens here, at load time.
//!
//! A [`WeightSource`] reads (a slice of) one named tensor into a host tensor
//! in its stored dtype; a [`WeightLoader`] turns that into what the layers
//! need on this rank and uploads it through [`Backend::upload`]:
//!
//! - [`WeightLoader::full`]: replicated on every rank.
//! - [`WeightLoader::column_shard`]: column-parallel, dim 0 (output features)
//!   split evenly; rank `r` holds rows `r*N/W .. (r+1)*N/W`.
//! - [`WeightLoader::row_shard`]: row-parallel, dim 1 (input features) split
//!   evenly the same way.
//! - [`WeightLoader::packed_column_shard`]: several column-parallel weights
//!   (`q/k/v_proj` → `qkv_proj`, `gate/up_proj` → `gate_up_proj`) concatenated
//!   along dim 0, each rank holding *its own* slice of every part in order
//!   (rank r: its q rows, then its k rows, then its v rows).
//! - [`WeightLoader::stacked_row_shard`]: row-parallel weights of one shape (the
//!   experts' `w2`) stacked along a new first dim, `[n, out, in / W]`.
//! - [`WeightLoader::vocab_shard`]: vocab-parallel rows of `[vocab, hidden]`.
//!   **Padding rule:** each rank holds `ceil(vocab / W)` rows; rank `r` reads
//!   rows `r*per .. min((r+1)*per, vocab)` and the rest of its rows are zero.
//!   Gathered logits therefore have `per * W >= vocab` columns and the
//!   padding columns are dropped after the gather.
//!
//! Weights keep the dtype stored in the checkpoint (bf16 stays bf16, no f32
//! copy); the matmul kernels widen on the fly.

use std::ops::Range;

use nanovllm_kernels::cpu::vec_with_capacity;
use nanovllm_kernels::{Backend, CpuStorage, DType, Tensor};

use crate::config::ModelConfig;
use crate::error::ModelError;

/// Where weights come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadFormat {
    /// The model directory's `*.safetensors`.
    #[default]
    Safetensors,
    /// Random weights of the config's shapes, no checkpoint read (benchmarks).
    Dummy,
}

/// This process's place in a tensor-parallel group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    pub rank: usize,
    pub world_size: usize,
}

impl Default for ShardSpec {
    fn default() -> Self {
        Self {
            rank: 0,
            world_size: 1,
        }
    }
}

impl ShardSpec {
    /// This rank's part of `0..total` split evenly; `what` names the count in the error
    /// raised when `world_size` does not divide `total`.
    pub fn even_range(&self, what: &str, total: usize) -> Result<Range<usize>, ModelError> {
        check_divisible(what, total, self.world_size)?;
        let per = total / self.world_size;
        Ok(self.rank * per..(self.rank + 1) * per)
    }

    /// Rows per rank of a vocab-parallel table: `ceil(vocab / world_size)`.
    pub fn vocab_per_rank(&self, vocab: usize) -> usize {
        vocab.div_ceil(self.world_size)
    }

    /// The vocab rows this rank really holds (the rest of its rows are padding).
    pub fn vocab_range(&self, vocab: usize) -> Range<usize> {
        let per = self.vocab_per_rank(vocab);
        let start = (self.rank * per).min(vocab);
        start..((self.rank + 1) * per).min(vocab)
    }
}

/// `Shard` error unless `world_size` divides `count`; the message lists the sizes that would.
pub fn check_divisible(what: &str, count: usize, world_size: usize) -> Result<(), ModelError> {
    if world_size == 0 {
        return Err(ModelError::Shard("world size must be at least 1".into()));
    }
    if count % world_size != 0 {
        let works: Vec<usize> = (1..=count).filter(|w| count % w == 0).collect();
        return Err(ModelError::Shard(format!(
            "world size {world_size} does not divide {what} ({count}); world sizes that \
             divide it: {works:?}"
        )));
    }
    Ok(())
}

/// Checks that `tensor_parallel_size` divides every count split across ranks (attention
/// heads, KV heads, the MLP / experts' intermediate size). The error names the first
/// count that fails and lists the sizes that divide them all, e.g. "tensor_parallel_size
/// = 3 does not divide num_key_value_heads = 8 of this model; use 1, 2, 4 or 8".
pub fn check_tensor_parallel_size(
    config: &ModelConfig,
    tensor_parallel_size: usize,
) -> Result<(), ModelError> {
    let counts = [
        ("num_attention_heads", config.num_attention_heads),
        ("num_key_value_heads", config.num_key_value_heads),
        ("intermediate_size", config.intermediate_size),
    ];
    let common = counts.iter().fold(0, |g, &(_, c)| gcd(g, c));
    let works: Vec<usize> = (1..=common).filter(|w| common % w == 0).collect();
    if tensor_parallel_size == 0 {
        return Err(ModelError::Shard(format!(
            "tensor_parallel_size must be at least 1; use {}",
            or_list(&works)
        )));
    }
    match counts.iter().find(|(_, c)| c % tensor_parallel_size != 0) {
        None => Ok(()),
        Some((what, count)) => Err(ModelError::Shard(format!(
            "tensor_parallel_size = {tensor_parallel_size} does not divide {what} = {count} \
             of this model; use {}",
            or_list(&works)
        ))),
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `[1, 2, 4]` → "1, 2 or 4".
fn or_list(xs: &[usize]) -> String {
    match xs {
        [] => "none (a count is zero)".into(),
        [x] => x.to_string(),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(usize::to_string).collect();
            format!("{} or {last}", init.join(", "))
        }
    }
}

/// Which part of a tensor a rank reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slice {
    Full,
    /// Rows (dim 0) of a tensor of any rank ≥ 1.
    Rows(Range<usize>),
    /// Columns (dim 1) of a 2-d tensor.
    Cols(Range<usize>),
}

impl Slice {
    /// The shape of this slice of a `shape` tensor, checking that the range fits.
    pub fn out_shape(&self, name: &str, shape: &[usize]) -> Result<Vec<usize>, ModelError> {
        let (dim, range) = match self {
            Slice::Full => return Ok(shape.to_vec()),
            Slice::Rows(r) => (0, r),
            Slice::Cols(r) => (1, r),
        };
        let fits = match self {
            Slice::Rows(_) => !shape.is_empty(),
            _ => shape.len() == 2,
        };
        if !fits || range.start > range.end || range.end > shape[dim] {
            return Err(ModelError::Shard(format!(
                "cannot take {self:?} of tensor {name} with shape {shape:?}"
            )));
        }
        let mut out = shape.to_vec();
        out[dim] = range.len();
        Ok(out)
    }
}

/// A checkpoint: named tensors readable in slices.
pub trait WeightSource: Send + Sync {
    /// Whether the source holds `name` (a dummy source holds every name).
    fn contains(&self, name: &str) -> bool;
    /// The dtype `name` is stored in. Errors: [`ModelError::MissingTensor`],
    /// [`ModelError::UnsupportedDType`].
    fn dtype(&self, name: &str) -> Result<DType, ModelError>;
    /// Appends `slice` of tensor `name`, whose full shape must be `shape`, row-major to
    /// `out`, which must hold [`WeightSource::dtype`]`(name)`. Appending lets packed
    /// weights be assembled in one buffer without an intermediate copy. Errors:
    /// [`ModelError::MissingTensor`], [`ModelError::WrongShape`],
    /// [`ModelError::UnsupportedDType`], [`ModelError::MixedDTypes`] (wrong `out`).
    fn read_into(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        out: &mut CpuStorage,
    ) -> Result<(), ModelError>;

    /// Reads `slice` of tensor `name` (full shape `shape`) into a host tensor in its stored dtype.
    fn read(&self, name: &str, shape: &[usize], slice: &Slice) -> Result<Tensor, ModelError> {
        let out_shape = slice.out_shape(name, shape)?;
        let mut out = empty_storage(self.dtype(name)?, out_shape.iter().product())?;
        self.read_into(name, shape, slice, &mut out)?;
        Ok(Tensor::from_cpu(out, &out_shape)?)
    }
}

/// An empty float buffer of `dtype` with room for `capacity` elements (on huge pages
/// when big: see [`vec_with_capacity`]).
pub fn empty_storage(dtype: DType, capacity: usize) -> Result<CpuStorage, ModelError> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(vec_with_capacity(capacity)),
        DType::BF16 => CpuStorage::BF16(vec_with_capacity(capacity)),
        DType::F16 => CpuStorage::F16(vec_with_capacity(capacity)),
        other => {
            return Err(ModelError::UnsupportedDType {
                name: "(weight buffer)".into(),
                dtype: other.to_string(),
            })
        }
    })
}

/// The error for appending tensor `name` of `dtype` to a buffer of another dtype.
pub(crate) fn buffer_dtype_mismatch(out: &CpuStorage, name: &str, dtype: DType) -> ModelError {
    ModelError::MixedDTypes {
        first: "(the buffer being filled)".into(),
        first_dtype: out.dtype(),
        second: name.to_owned(),
        second_dtype: dtype,
    }
}

/// Loads layer weights for one rank onto one backend.
pub struct WeightLoader<'a> {
    source: &'a dyn WeightSource,
    backend: &'a dyn Backend,
    shard: ShardSpec,
}

impl<'a> WeightLoader<'a> {
    pub fn new(source: &'a dyn WeightSource, backend: &'a dyn Backend, shard: ShardSpec) -> Self {
        Self {
            source,
            backend,
            shard,
        }
    }

    pub fn shard(&self) -> ShardSpec {
        self.shard
    }

    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(name)
    }

    /// The whole tensor, replicated on every rank.
    pub fn full(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        self.upload(self.source.read(name, shape, &Slice::Full)?)
    }

    /// Column-parallel: this rank's rows of `[out, in]`.
    pub fn column_shard(&self, name: &str, shape: [usize; 2]) -> Result<Tensor, ModelError> {
        self.upload(self.read_column_shard(name, shape)?)
    }

    /// Row-parallel: this rank's columns of `[out, in]`.
    pub fn row_shard(&self, name: &str, shape: [usize; 2]) -> Result<Tensor, ModelError> {
        let cols = self
            .shard
            .even_range(&format!("the input features of {name}"), shape[1])?;
        self.upload(self.source.read(name, &shape, &Slice::Cols(cols))?)
    }

    /// Packed column-parallel: `parts[i] = (name, out_features)`, all with `in_features`
    /// columns; returns this rank's rows of every part, concatenated in order, assembled
    /// in one buffer.
    pub fn packed_column_shard(
        &self,
        parts: &[(&str, usize)],
        in_features: usize,
    ) -> Result<Tensor, ModelError> {
        let Some(&(first, _)) = parts.first() else {
            return Err(ModelError::Shard("no weights to pack".into()));
        };
        let dtype = self.source.dtype(first)?;
        let mut slices = Vec::with_capacity(parts.len());
        let mut rows = 0;
        for &(name, out) in parts {
            let part_dtype = self.source.dtype(name)?;
            if part_dtype != dtype {
                return Err(ModelError::MixedDTypes {
                    first: first.to_owned(),
                    first_dtype: dtype,
                    second: name.to_owned(),
                    second_dtype: part_dtype,
                });
            }
            let range = self
                .shard
                .even_range(&format!("the output features of {name}"), out)?;
            rows += range.len();
            slices.push((name, [out, in_features], Slice::Rows(range)));
        }
        let mut buffer = empty_storage(dtype, rows * in_features)?;
        for (name, shape, slice) in &slices {
            self.source.read_into(name, shape, slice, &mut buffer)?;
        }
        self.upload(Tensor::from_cpu(buffer, &[rows, in_features])?)
    }

    /// Row-parallel weights of the same shape stacked along a new first dim (the experts
    /// of a MoE layer): `names[i]: [out, in]` → `[names.len(), out, in / world_size]`, each
    /// holding this rank's input-feature columns, assembled in one buffer.
    pub fn stacked_row_shard(
        &self,
        names: &[String],
        shape: [usize; 2],
    ) -> Result<Tensor, ModelError> {
        let Some(first) = names.first() else {
            return Err(ModelError::Shard("no weights to stack".into()));
        };
        let cols = self
            .shard
            .even_range(&format!("the input features of {first}"), shape[1])?;
        let dtype = self.source.dtype(first)?;
        let mut buffer = empty_storage(dtype, names.len() * shape[0] * cols.len())?;
        for name in names {
            let part_dtype = self.source.dtype(name)?;
            if part_dtype != dtype {
                return Err(ModelError::MixedDTypes {
                    first: first.clone(),
                    first_dtype: dtype,
                    second: name.clone(),
                    second_dtype: part_dtype,
                });
            }
            self.source
                .read_into(name, &shape, &Slice::Cols(cols.clone()), &mut buffer)?;
        }
        self.upload(Tensor::from_cpu(
            buffer,
            &[names.len(), shape[0], cols.len()],
        )?)
    }

    /// Vocab-parallel rows of a `[vocab, hidden]` table, zero-padded to
    /// [`ShardSpec::vocab_per_rank`] rows (see the module docs for the rule).
    pub fn vocab_shard(
        &self,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Tensor, ModelError> {
        let per = self.shard.vocab_per_rank(vocab);
        let rows = self.shard.vocab_range(vocab);
        let mut buffer = empty_storage(self.source.dtype(name)?, per * hidden)?;
        self.source
            .read_into(name, &[vocab, hidden], &Slice::Rows(rows), &mut buffer)?;
        match &mut buffer {
            CpuStorage::F32(v) => v.resize(per * hidden, 0.0),
            CpuStorage::BF16(v) => v.resize(per * hidden, half::bf16::ZERO),
            CpuStorage::F16(v) => v.resize(per * hidden, half::f16::ZERO),
            other => return Err(buffer_dtype_mismatch(other, name, DType::F32)),
        }
        self.upload(Tensor::from_cpu(buffer, &[per, hidden])?)
    }

    fn read_column_shard(&self, name: &str, shape: [usize; 2]) -> Result<Tensor, ModelError> {
        let rows = self
            .shard
            .even_range(&format!("the output features of {name}"), shape[0])?;
        self.source.read(name, &shape, &Slice::Rows(rows))
    }

    fn upload(&self, host: Tensor) -> Result<Tensor, ModelError> {
        Ok(self.backend.upload_weight(host)?)
    }
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;
