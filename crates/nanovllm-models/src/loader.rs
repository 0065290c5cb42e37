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
//!   (`gate/up_proj` → `gate_up_proj`) concatenated along dim 0, each rank
//!   holding *its own* even slice of every part in order (rank r: its gate
//!   rows, then its up rows).
//! - [`WeightLoader::pack_rows`]: the same with the row range of each part
//!   given, for weights (`[out, in]`) and biases (`[out]`) alike. `q/k/v_proj`
//!   → `qkv_proj` uses it: rank r holds its q heads, then its KV heads' k rows,
//!   then their v rows, where the KV heads follow [`ShardSpec::kv_head_range`].
//! - [`WeightLoader::stacked_row_shard`]: row-parallel weights of one shape (the
//!   experts' `w2`) stacked along a new first dim, `[n, out, in / W]`.
//! - [`WeightLoader::vocab_shard`]: vocab-parallel rows of `[vocab, hidden]`.
//!   **Padding rule:** each rank holds `ceil(vocab / W)` rows; rank `r` reads
//!   rows `r*per .. min((r+1)*per, vocab)` and the rest of its rows are zero.
//!   Gathered logits therefore have `per * W >= vocab` columns and the
//!   padding columns are dropped after the gather.
//!
//! Weights keep the dtype stored in the checkpoint (bf16 stays bf16, no f32
//! copy); the matmul kernels widen on the fly. An explicit weight dtype (`--dtype`) wraps
//! the source in a [`crate::CastSource`], which converts each tensor while it is read.
//! Linear weights are loaded through [`WeightLoader::linear`] (and the LM head through
//! [`WeightLoader::lm_head`]): the same methods, quantized while they load when the loader
//! was given a [`WeightQuantization`] (see [`crate::linear_weights`]). An FP8 checkpoint's
//! weights arrive already quantized ([`crate::Fp8CheckpointSource`]).
//!
//! **KV heads under tensor parallelism.** With `W` ranks and `K` KV heads, either
//! `W` divides `K` (each rank holds `K / W` heads, split evenly like the q heads)
//! or `K` divides `W` and each KV head is replicated on `W / K` ranks, as vLLM
//! does: rank `r` holds the one head `r / (W / K)`. The q heads are always split
//! evenly, and since `(Q / W)` divides `(Q / K)` a rank's q heads all belong to
//! its KV head's group. [`check_tensor_parallel_size`] admits exactly these sizes.
//!
//! **Strict loading.** The [`WeightLoader`] records every tensor name it reads;
//! at the end of a model's load, [`WeightLoader::check_all_used`] turns any
//! tensor of the checkpoint that was not read into [`ModelError::UnusedTensors`],
//! except those [`why_ignorable`] lists (with the reason each may be skipped).
//! Under tensor parallelism every rank reads (a slice of) every tensor it needs,
//! so each rank checks its own loader. A source that generates weights on demand
//! ([`crate::DummySource`]) lists no names, so there is nothing to check.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use nanovllm_kernels::cpu::vec_with_capacity;
use nanovllm_kernels::{Backend, CpuStorage, DType, Tensor};

use crate::config::ModelConfig;
use crate::error::ModelError;
pub use crate::linear_weights::{LinearWeights, WeightQuantization};

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

    /// The KV heads this rank holds (see the module docs): its even share when the world
    /// size divides `num_kv_heads`, else, when the world size is a multiple of it, the one
    /// head `rank / (world_size / num_kv_heads)`, replicated on that many ranks.
    pub fn kv_head_range(&self, num_kv_heads: usize) -> Result<Range<usize>, ModelError> {
        if num_kv_heads > 0 && self.world_size > num_kv_heads && self.world_size % num_kv_heads == 0
        {
            let head = self.rank / (self.world_size / num_kv_heads);
            return Ok(head..head + 1);
        }
        self.even_range("num_key_value_heads", num_kv_heads)
    }

    /// How many KV heads each rank holds, for the sizes [`check_tensor_parallel_size`]
    /// admits: `num_kv_heads / world_size`, or 1 when heads are replicated.
    pub fn kv_heads_per_rank(&self, num_kv_heads: usize) -> usize {
        num_kv_heads.div_ceil(self.world_size.max(1))
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

/// Checks that `tensor_parallel_size` splits this model: it must divide the counts split
/// evenly across ranks (`num_attention_heads`, the MLP / experts' `intermediate_size`),
/// and either divide `num_key_value_heads` or be a multiple of it (each KV head is then
/// replicated on `tensor_parallel_size / num_key_value_heads` ranks). The error names the
/// first count that fails and lists the sizes that work, e.g. "tensor_parallel_size = 3
/// does not divide num_attention_heads = 32 of this model; use 1, 2, 4, 8, 16 or 32".
pub fn check_tensor_parallel_size(
    config: &ModelConfig,
    tensor_parallel_size: usize,
) -> Result<(), ModelError> {
    let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
    let even = [
        ("num_attention_heads", heads),
        ("intermediate_size", config.intermediate_size),
        // 0 (divisible by anything) unless the experts have their own width (Qwen3-MoE).
        ("moe_intermediate_size", config.moe_intermediate_size),
    ];
    let splits_kv = |w: usize| kv_heads % w == 0 || (kv_heads > 0 && w % kv_heads == 0);
    let works = |w: usize| splits_kv(w) && even.iter().all(|&(_, c)| c % w == 0);
    // Every size that works divides num_attention_heads, so none is larger.
    let working: Vec<usize> = (1..=heads).filter(|&w| works(w)).collect();
    let tp = tensor_parallel_size;
    let fail = |what: String| {
        Err(ModelError::Shard(format!(
            "tensor_parallel_size = {tp} {what} of this model; use {}",
            or_list(&working)
        )))
    };
    if tp == 0 {
        return Err(ModelError::Shard(format!(
            "tensor_parallel_size must be at least 1; use {}",
            or_list(&working)
        )));
    }
    if heads % tp != 0 {
        return fail(format!("does not divide num_attention_heads = {heads}"));
    }
    if !splits_kv(tp) {
        return fail(format!(
            "neither divides nor is a multiple of num_key_value_heads = {kv_heads}"
        ));
    }
    match even.iter().find(|(_, c)| c % tp != 0) {
        None => Ok(()),
        Some((what, count)) => fail(format!("does not divide {what} = {count}")),
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
    /// Every tensor name the source stores, sorted; empty for a source that generates
    /// tensors on demand (which holds every name, so strict loading has nothing to check).
    fn names(&self) -> Vec<&str>;
    /// Bytes of every tensor the source stores, where it knows them (a checkpoint on disk);
    /// `None` for a source that generates tensors on demand.
    fn total_bytes(&self) -> Option<u64> {
        None
    }
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

/// An empty buffer of `dtype` (a float or a byte-backed dtype) with room for `capacity`
/// elements (on huge pages when big: see [`vec_with_capacity`]).
pub fn empty_storage(dtype: DType, capacity: usize) -> Result<CpuStorage, ModelError> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(vec_with_capacity(capacity)),
        DType::BF16 => CpuStorage::BF16(vec_with_capacity(capacity)),
        DType::F16 => CpuStorage::F16(vec_with_capacity(capacity)),
        d if d == DType::F8E4M3 || d.is_quantized() => CpuStorage::Bytes {
            dtype: d,
            bytes: vec_with_capacity(d.storage_bytes(capacity)),
        },
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

/// Checkpoint tensors that no layer reads but real checkpoints carry, matched by name
/// suffix, each with why skipping it changes nothing.
const IGNORABLE_SUFFIXES: &[(&str, &str)] = &[
    (
        ".rotary_emb.inv_freq",
        "RoPE inverse frequencies that older transformers saved per layer; they are computed \
         from the config (transformers skips them too)",
    ),
    (
        ".rotary_emb.cos_cached",
        "a RoPE cos table some ColossalAI-trained checkpoints carry; computed from the config \
         (vLLM skips it too)",
    ),
    (
        ".rotary_emb.sin_cached",
        "a RoPE sin table some ColossalAI-trained checkpoints carry; computed from the config \
         (vLLM skips it too)",
    ),
];

/// The tied LM head's stored copy.
const LM_HEAD: &str = "lm_head.weight";

/// Why checkpoint tensor `name` may go unread by a `config` model, or `None` when leaving
/// it unread is an error (strict loading: see the module docs). The whole list: the
/// suffixes of `IGNORABLE_SUFFIXES`, `lm_head.weight` when `tie_word_embeddings` is
/// set (transformers then ties the LM head to the embedding and ignores the stored copy),
/// and the `*.input_scale` of an FP8 checkpoint (`activation_scheme: "static"`).
pub fn why_ignorable(name: &str, config: &ModelConfig) -> Option<&'static str> {
    if name.ends_with(".input_scale") && config.quantization.is_some() {
        return Some(
            "a static FP8 activation scale: weights-only FP8 loading keeps activations in \
             the backend's float dtype and never quantizes them, so it needs no input scale",
        );
    }
    if name == LM_HEAD && config.tie_word_embeddings {
        return Some(
            "tie_word_embeddings is set: transformers ties the LM head to the embedding and \
             ignores the stored copy",
        );
    }
    IGNORABLE_SUFFIXES
        .iter()
        .find(|(suffix, _)| name.ends_with(suffix))
        .map(|&(_, why)| why)
}

/// How many unused tensor names an [`ModelError::UnusedTensors`] lists.
const UNUSED_LISTED: usize = 5;

/// One part of a packed column-parallel tensor: this rank reads `rows` of tensor `name`,
/// whose full first dim (output features) is `out_features`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedPart<'n> {
    pub name: &'n str,
    pub out_features: usize,
    pub rows: Range<usize>,
}

/// Loads layer weights for one rank onto one backend, recording the names it reads.
pub struct WeightLoader<'a> {
    source: &'a dyn WeightSource,
    backend: &'a dyn Backend,
    shard: ShardSpec,
    /// Every tensor read so far (a slice counts), for [`WeightLoader::check_all_used`].
    used: Mutex<HashSet<String>>,
    /// In-situ quantization of the weights loaded through [`WeightLoader::linear`] (and
    /// [`WeightLoader::lm_head`]).
    quantization: Option<WeightQuantization>,
}

impl<'a> WeightLoader<'a> {
    pub fn new(source: &'a dyn WeightSource, backend: &'a dyn Backend, shard: ShardSpec) -> Self {
        Self {
            source,
            backend,
            shard,
            used: Mutex::new(HashSet::new()),
            quantization: None,
        }
    }

    /// Quantizes the linear weights ([`WeightLoader::linear`], [`WeightLoader::lm_head`])
    /// as they load; `None` keeps them as the source gives them.
    pub fn with_quantization(mut self, quantization: Option<WeightQuantization>) -> Self {
        self.quantization = quantization;
        self
    }

    /// The linear layers' weights (attention projections, MLP, experts): the same
    /// loading shapes as the plain methods, quantized to the `--quantization` format
    /// while they load (see [`crate::linear_weights`]). Embeddings, norms, biases and
    /// routers use the plain methods and stay as stored.
    pub fn linear(&self) -> LinearWeights<'_, 'a> {
        LinearWeights::new(self, self.quantization.map(|q| q.dtype))
    }

    /// The LM head's weight: quantized like [`WeightLoader::linear`] only when
    /// [`WeightQuantization::lm_head`] says so.
    pub fn lm_head(&self) -> LinearWeights<'_, 'a> {
        LinearWeights::new(
            self,
            self.quantization.filter(|q| q.lm_head).map(|q| q.dtype),
        )
    }

    /// Whether the LM head is loaded quantized (so a tied head needs its own copy).
    pub fn quantizes_lm_head(&self) -> bool {
        self.lm_head().dtype().is_some()
    }

    /// Strict loading: an error naming the checkpoint's tensors this loader never read,
    /// unless [`why_ignorable`] says why they may be skipped. Call once, after the model
    /// is loaded.
    pub fn check_all_used(&self, config: &ModelConfig) -> Result<(), ModelError> {
        let used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let unused: Vec<&str> = self
            .source
            .names()
            .into_iter()
            .filter(|name| !used.contains(*name) && why_ignorable(name, config).is_none())
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        Err(ModelError::UnusedTensors {
            architecture: config.architecture.clone(),
            count: unused.len(),
            first: unused
                .iter()
                .take(UNUSED_LISTED)
                .map(|n| (*n).to_owned())
                .collect(),
        })
    }

    pub fn shard(&self) -> ShardSpec {
        self.shard
    }

    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(name)
    }

    /// The whole tensor, replicated on every rank.
    pub fn full(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        self.upload(self.read(name, shape, &Slice::Full)?)
    }

    /// Column-parallel: this rank's rows of `[out, in]`.
    pub fn column_shard(&self, name: &str, shape: [usize; 2]) -> Result<Tensor, ModelError> {
        self.column_shard_as(name, shape, None)
    }

    pub(crate) fn column_shard_as(
        &self,
        name: &str,
        shape: [usize; 2],
        quantize: Option<DType>,
    ) -> Result<Tensor, ModelError> {
        let rows = self
            .shard
            .even_range(&format!("the output features of {name}"), shape[0])?;
        self.read_one(name, &shape, &Slice::Rows(rows), quantize)
    }

    /// Row-parallel: this rank's columns of `[out, in]`.
    pub fn row_shard(&self, name: &str, shape: [usize; 2]) -> Result<Tensor, ModelError> {
        self.row_shard_as(name, shape, None)
    }

    pub(crate) fn row_shard_as(
        &self,
        name: &str,
        shape: [usize; 2],
        quantize: Option<DType>,
    ) -> Result<Tensor, ModelError> {
        let cols = self
            .shard
            .even_range(&format!("the input features of {name}"), shape[1])?;
        self.read_one(name, &shape, &Slice::Cols(cols), quantize)
    }

    /// `slice` of `name` in one buffer of its load dtype, uploaded.
    fn read_one(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        quantize: Option<DType>,
    ) -> Result<Tensor, ModelError> {
        let out_shape = slice.out_shape(name, shape)?;
        let dtype = self.load_dtype(name, quantize)?;
        let mut buffer = empty_storage(dtype, out_shape.iter().product())?;
        self.append(name, shape, slice, quantize, &mut buffer)?;
        self.upload(Tensor::from_cpu(buffer, &out_shape)?)
    }

    /// Packed column-parallel: `parts[i] = (name, out_features)`, all with `in_features`
    /// columns, each split evenly across ranks; returns this rank's rows of every part,
    /// concatenated in order, assembled in one buffer.
    pub fn packed_column_shard(
        &self,
        parts: &[(&str, usize)],
        in_features: usize,
    ) -> Result<Tensor, ModelError> {
        self.packed_column_shard_as(parts, in_features, None)
    }

    pub(crate) fn packed_column_shard_as(
        &self,
        parts: &[(&str, usize)],
        in_features: usize,
        quantize: Option<DType>,
    ) -> Result<Tensor, ModelError> {
        let parts = parts
            .iter()
            .map(|&(name, out_features)| {
                Ok(PackedPart {
                    name,
                    out_features,
                    rows: self
                        .shard
                        .even_range(&format!("the output features of {name}"), out_features)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        self.pack_rows_as(&parts, &[in_features], quantize)
    }

    /// The given rows of several tensors of shape `[part.out_features, ..inner]` (`inner`
    /// is `[in_features]` for weights, empty for biases), concatenated along dim 0 in
    /// order and assembled in one buffer: `[Σ rows, ..inner]`. The parts must share a dtype.
    pub fn pack_rows(&self, parts: &[PackedPart], inner: &[usize]) -> Result<Tensor, ModelError> {
        self.pack_rows_as(parts, inner, None)
    }

    pub(crate) fn pack_rows_as(
        &self,
        parts: &[PackedPart],
        inner: &[usize],
        quantize: Option<DType>,
    ) -> Result<Tensor, ModelError> {
        let Some(first) = parts.first() else {
            return Err(ModelError::Shard("no weights to pack".into()));
        };
        let dtype = self.source.dtype(first.name)?;
        for part in parts {
            let part_dtype = self.source.dtype(part.name)?;
            if part_dtype != dtype {
                return Err(ModelError::MixedDTypes {
                    first: first.name.to_owned(),
                    first_dtype: dtype,
                    second: part.name.to_owned(),
                    second_dtype: part_dtype,
                });
            }
        }
        let rows: usize = parts.iter().map(|p| p.rows.len()).sum();
        let row_len: usize = inner.iter().product();
        let mut buffer = empty_storage(self.load_dtype(first.name, quantize)?, rows * row_len)?;
        for part in parts {
            let shape: Vec<usize> = [part.out_features].iter().chain(inner).copied().collect();
            self.append(
                part.name,
                &shape,
                &Slice::Rows(part.rows.clone()),
                quantize,
                &mut buffer,
            )?;
        }
        let shape: Vec<usize> = [rows].iter().chain(inner).copied().collect();
        self.upload(Tensor::from_cpu(buffer, &shape)?)
    }

    /// Row-parallel weights of the same shape stacked along a new first dim (the experts
    /// of a MoE layer): `names[i]: [out, in]` → `[names.len(), out, in / world_size]`, each
    /// holding this rank's input-feature columns, assembled in one buffer.
    pub fn stacked_row_shard(
        &self,
        names: &[String],
        shape: [usize; 2],
    ) -> Result<Tensor, ModelError> {
        self.stacked_row_shard_as(names, shape, None)
    }

    pub(crate) fn stacked_row_shard_as(
        &self,
        names: &[String],
        shape: [usize; 2],
        quantize: Option<DType>,
    ) -> Result<Tensor, ModelError> {
        let Some(first) = names.first() else {
            return Err(ModelError::Shard("no weights to stack".into()));
        };
        let cols = self
            .shard
            .even_range(&format!("the input features of {first}"), shape[1])?;
        let dtype = self.source.dtype(first)?;
        let mut buffer = empty_storage(
            self.load_dtype(first, quantize)?,
            names.len() * shape[0] * cols.len(),
        )?;
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
            self.append(
                name,
                &shape,
                &Slice::Cols(cols.clone()),
                quantize,
                &mut buffer,
            )?;
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
        self.vocab_shard_as(name, vocab, hidden, None)
    }

    pub(crate) fn vocab_shard_as(
        &self,
        name: &str,
        vocab: usize,
        hidden: usize,
        quantize: Option<DType>,
    ) -> Result<Tensor, ModelError> {
        let per = self.shard.vocab_per_rank(vocab);
        let rows = self.shard.vocab_range(vocab);
        let mut buffer = empty_storage(self.load_dtype(name, quantize)?, per * hidden)?;
        self.append(
            name,
            &[vocab, hidden],
            &Slice::Rows(rows),
            quantize,
            &mut buffer,
        )?;
        match &mut buffer {
            CpuStorage::F32(v) => v.resize(per * hidden, 0.0),
            CpuStorage::BF16(v) => v.resize(per * hidden, half::bf16::ZERO),
            CpuStorage::F16(v) => v.resize(per * hidden, half::f16::ZERO),
            // All-zero bytes are a zero weight in every byte-backed format (zero scale).
            CpuStorage::Bytes { dtype, bytes } => {
                bytes.resize(dtype.storage_bytes(per * hidden), 0)
            }
            other => return Err(buffer_dtype_mismatch(other, name, DType::F32)),
        }
        self.upload(Tensor::from_cpu(buffer, &[per, hidden])?)
    }

    /// [`WeightSource::read`], recording `name` as used.
    fn read(&self, name: &str, shape: &[usize], slice: &Slice) -> Result<Tensor, ModelError> {
        self.mark_used(name);
        self.source.read(name, shape, slice)
    }

    /// The dtype `name` loads as: `quantize` when given, else the source's.
    fn load_dtype(&self, name: &str, quantize: Option<DType>) -> Result<DType, ModelError> {
        match quantize {
            Some(dtype) => Ok(dtype),
            None => self.source.dtype(name),
        }
    }

    /// Appends `slice` of `name` to `out` in its load dtype: as the source gives it, or
    /// quantized to `quantize` ([`crate::linear_weights::append_quantized`], a bounded
    /// number of rows at a time). A block-quantized result must hold whole blocks per
    /// row: a tensor-parallel shard that cuts a block is [`ModelError::ShardCutsBlock`].
    fn append(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        quantize: Option<DType>,
        out: &mut CpuStorage,
    ) -> Result<(), ModelError> {
        let stored = self.source.dtype(name)?;
        let target = quantize.unwrap_or(stored);
        crate::linear_weights::check_whole_blocks(name, shape, slice, target)?;
        if target == stored {
            return self.read_into(name, shape, slice, out);
        }
        if !stored.is_float() {
            return Err(ModelError::Quantization {
                name: name.to_owned(),
                msg: format!(
                    "stored as {stored}, which cannot be quantized again to {target}; load \
                     the checkpoint without --quantization"
                ),
            });
        }
        self.mark_used(name);
        crate::linear_weights::append_quantized(self.source, name, shape, slice, target, out)
    }

    /// [`WeightSource::read_into`], recording `name` as used.
    fn read_into(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        out: &mut CpuStorage,
    ) -> Result<(), ModelError> {
        self.mark_used(name);
        self.source.read_into(name, shape, slice, out)
    }

    fn mark_used(&self, name: &str) {
        // Poisoned only if a thread panicked while inserting a name: the set is still a
        // set of names read, which is all strict loading needs.
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if !used.contains(name) {
            used.insert(name.to_owned());
        }
    }

    fn upload(&self, host: Tensor) -> Result<Tensor, ModelError> {
        Ok(self.backend.upload_weight(host)?)
    }
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "strict_loading_tests.rs"]
mod strict_loading_tests;
