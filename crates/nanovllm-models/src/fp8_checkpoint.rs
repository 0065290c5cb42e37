//! [`Fp8CheckpointSource`]: an FP8 checkpoint (`quantization_config.quant_method =
//! "fp8"`) read as [`DType::Fp8G128`] weights, never widened.
//!
//! On disk each quantized linear `X.weight` is `F8_E4M3 [N, K]` with its scales in
//! `X.weight_scale_inv` (block-wise, `[ceil(N / bn), ceil(K / bk)]` for
//! `weight_block_size = [bn, bk]`, as Qwen's `Qwen3-*-FP8`) or `X.weight_scale` (one
//! per tensor, shape `[]` or `[1]`); either way `w = e4m3(q) · s` in f32. In memory a
//! `Fp8G128` row holds `K / 128` blocks of `s: f32` + 128 e4m3 codes with the same
//! `w = s · e4m3(q)`, so re-blocking copies each row's 128-column group with the scale of
//! the `[bn, bk]` block it lies in: the weights dequantize to exactly the checkpoint's
//! values. This needs `K % 128 == 0` and `bk % 128 == 0` (a 128-column group inside one
//! scale block); anything else is a clear error naming the weight.
//!
//! The source reports such a weight as `Fp8G128`, hides its scale tensor from
//! [`WeightSource::names`] (reading the weight reads it, so strict loading sees it
//! used), and passes every other tensor through: weights kept in bf16
//! (`modules_to_not_convert`, the LM head, norms) load as they are. An `F8_E4M3`
//! tensor without a scale is an error.

use std::collections::HashSet;
use std::ops::Range;

use nanovllm_kernels::{CpuStorage, DType};

use crate::config::CheckpointQuantization;
use crate::error::ModelError;
use crate::loader::{buffer_dtype_mismatch, Slice, WeightSource};

/// Weights per `Fp8G128` block.
const GROUP: usize = 128;

/// An FP8 checkpoint's tensors, its quantized weights re-blocked as [`DType::Fp8G128`].
pub struct Fp8CheckpointSource<'a> {
    inner: &'a dyn WeightSource,
    /// `weight_block_size`; `None`: per-tensor scales.
    block: Option<[usize; 2]>,
    /// The scale tensors, read with their weights (hidden from `names`).
    scales: HashSet<String>,
}

impl<'a> Fp8CheckpointSource<'a> {
    /// Wraps `inner` (the checkpoint) for `quantization` (its `quantization_config`).
    /// Errors: block-wise scales whose column block is not a multiple of 128.
    pub fn new(
        inner: &'a dyn WeightSource,
        quantization: &CheckpointQuantization,
    ) -> Result<Self, ModelError> {
        let CheckpointQuantization::Fp8 {
            weight_block_size, ..
        } = quantization;
        if let Some([_, cols]) = weight_block_size {
            if cols % GROUP != 0 {
                return Err(ModelError::Quantization {
                    name: "quantization_config.weight_block_size".into(),
                    msg: format!(
                        "{weight_block_size:?}: this engine stores FP8 weights in groups of \
                         {GROUP} along K, so the scale blocks' columns must be a multiple \
                         of {GROUP}"
                    ),
                });
            }
        }
        let scales = inner
            .names()
            .into_iter()
            .filter(|name| inner.dtype(name).ok() == Some(DType::F8E4M3))
            .filter_map(|name| scale_name(inner, name, weight_block_size.is_some()))
            .collect();
        Ok(Self {
            inner,
            block: *weight_block_size,
            scales,
        })
    }

    /// The scale tensor of FP8 weight `name`, if `name` is one.
    fn scale_of(&self, name: &str) -> Option<String> {
        [format!("{name}_scale_inv"), format!("{name}_scale")]
            .into_iter()
            .find(|s| self.scales.contains(s))
    }

    /// Every scale `s` of `name: [n, k]` as `(scale columns, values)`: block-wise
    /// `[ceil(n / bn), ceil(k / bk)]`, or one per tensor.
    fn read_scales(&self, name: &str, scale: &str, n: usize, k: usize) -> Result<Vec<f32>, ModelError> {
        let read = |shape: &[usize]| {
            self.inner
                .read(scale, shape, &Slice::Full)
                .and_then(|t| Ok(t.to_vec_f32()?))
        };
        let values = match self.block {
            Some([bn, bk]) => read(&[n.div_ceil(bn), k.div_ceil(bk)]),
            // A per-tensor scale is a scalar, or a one-element vector.
            None => read(&[]).or_else(|_| read(&[1])),
        };
        values.map_err(|e| ModelError::Quantization {
            name: name.to_owned(),
            msg: format!("cannot read its scales {scale}: {e}"),
        })
    }
}

/// `{name}_scale_inv` (block-wise) or `{name}_scale` (per tensor), whichever `inner` holds.
fn scale_name(inner: &dyn WeightSource, name: &str, block_wise: bool) -> Option<String> {
    let scale = if block_wise {
        format!("{name}_scale_inv")
    } else {
        format!("{name}_scale")
    };
    inner.contains(&scale).then_some(scale)
}

impl WeightSource for Fp8CheckpointSource<'_> {
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn names(&self) -> Vec<&str> {
        self.inner
            .names()
            .into_iter()
            .filter(|name| !self.scales.contains(*name))
            .collect()
    }

    fn total_bytes(&self) -> Option<u64> {
        self.inner.total_bytes()
    }

    fn dtype(&self, name: &str) -> Result<DType, ModelError> {
        match self.inner.dtype(name)? {
            DType::F8E4M3 if self.scale_of(name).is_some() => Ok(DType::Fp8G128),
            DType::F8E4M3 => Err(ModelError::Quantization {
                name: name.to_owned(),
                msg: format!(
                    "an FP8 tensor without its scales ({name}_scale_inv for \
                     weight_block_size, else {name}_scale); the checkpoint is incomplete"
                ),
            }),
            other => Ok(other),
        }
    }

    fn read_into(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        out: &mut CpuStorage,
    ) -> Result<(), ModelError> {
        let Some(scale) = self.scale_of(name) else {
            self.dtype(name)?; // an FP8 tensor without scales: say so
            return self.inner.read_into(name, shape, slice, out);
        };
        let &[n, k] = shape else {
            return Err(ModelError::Quantization {
                name: name.to_owned(),
                msg: format!("an FP8 weight must be 2-d [out, in], asked for shape {shape:?}"),
            });
        };
        crate::linear_weights::check_whole_blocks(name, shape, slice, DType::Fp8G128)?;
        let (rows, cols): (Range<usize>, Range<usize>) = match slice {
            Slice::Full => (0..n, 0..k),
            Slice::Rows(r) => (r.clone(), 0..k),
            Slice::Cols(c) => (0..n, c.clone()),
        };
        let codes = self.inner.read(name, shape, slice)?;
        let codes = match codes.cpu("fp8 checkpoint")? {
            CpuStorage::Bytes { bytes, .. } => bytes,
            other => return Err(buffer_dtype_mismatch(other, name, DType::F8E4M3)),
        };
        let scales = self.read_scales(name, &scale, n, k)?;
        let bytes = match out {
            CpuStorage::Bytes { dtype, bytes } if *dtype == DType::Fp8G128 => bytes,
            other => return Err(buffer_dtype_mismatch(other, name, DType::Fp8G128)),
        };
        let scale_at = |row: usize, col: usize| match self.block {
            Some([bn, bk]) => scales[(row / bn) * k.div_ceil(bk) + col / bk],
            None => scales[0],
        };
        bytes.reserve(DType::Fp8G128.storage_bytes(rows.len() * cols.len()));
        for (row, row_codes) in rows.zip(codes.chunks_exact(cols.len().max(1))) {
            for (g, group) in row_codes.chunks_exact(GROUP).enumerate() {
                bytes.extend_from_slice(&scale_at(row, cols.start + g * GROUP).to_le_bytes());
                bytes.extend_from_slice(group);
            }
        }
        Ok(())
    }
}
