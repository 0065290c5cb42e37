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
    fn read_scales(
        &self,
        name: &str,
        scale: &str,
        n: usize,
        k: usize,
    ) -> Result<Vec<f32>, ModelError> {
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

#[cfg(test)]
mod tests {
    use nanovllm_kernels::quant::e4m3_to_f32;
    use safetensors::Dtype;

    use super::*;
    use crate::safetensors_source::SafetensorsSource;
    use crate::test_util::{write_safetensors, RawTensor, TempDir};

    const W: &str = "model.layers.0.mlp.down_proj.weight";

    /// e4m3 codes, never NaN (0x7f / 0xff).
    fn codes(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 37 + i / 7) % 255) as u8)
            .map(|b| if b & 0x7f == 0x7f { 0x3c } else { b })
            .collect()
    }

    fn fp8(name: &str, shape: &[usize], bytes: Vec<u8>) -> RawTensor {
        RawTensor {
            name: name.into(),
            dtype: Dtype::F8_E4M3,
            shape: shape.to_vec(),
            bytes,
        }
    }

    fn block_wise() -> CheckpointQuantization {
        CheckpointQuantization::Fp8 {
            weight_block_size: Some([128, 128]),
            activation_scheme: "dynamic".into(),
        }
    }

    /// `[130, 256]` codes (so the scale rows are ceil(130 / 128) = 2) with `[2, 2]` scales.
    fn block_checkpoint() -> (TempDir, Vec<u8>, Vec<f32>) {
        let dir = TempDir::new("fp8-blocks");
        let q = codes(130 * 256);
        let s = [0.5f32, 2.0, 0.125, 3.0];
        write_safetensors(
            &dir.path().join("model.safetensors"),
            &[
                fp8(W, &[130, 256], q.clone()),
                RawTensor::f32(&format!("{W}_scale_inv"), &[2, 2], &s),
                RawTensor::bf16("model.norm.weight", &[4], &[1.0; 4]),
            ],
        );
        (dir, q, s.to_vec())
    }

    #[test]
    fn block_scaled_weights_dequantize_exactly_to_code_times_scale() {
        let (dir, q, s) = block_checkpoint();
        let stored = SafetensorsSource::open(dir.path()).unwrap();
        let source = Fp8CheckpointSource::new(&stored, &block_wise()).unwrap();
        assert_eq!(source.dtype(W).unwrap(), DType::Fp8G128);
        assert_eq!(source.dtype("model.norm.weight").unwrap(), DType::BF16);
        // The scale is read with its weight, so strict loading must not ask for it.
        assert_eq!(
            source.names(),
            vec!["model.layers.0.mlp.down_proj.weight", "model.norm.weight"]
        );
        let want = |r: usize, c: usize| e4m3_to_f32(q[r * 256 + c]) * s[(r / 128) * 2 + c / 128];
        let full = source.read(W, &[130, 256], &Slice::Full).unwrap();
        assert_eq!(
            (full.dtype(), full.shape()),
            (DType::Fp8G128, &[130, 256][..])
        );
        let got = full.to_vec_f32().unwrap();
        for r in 0..130 {
            for c in 0..256 {
                assert_eq!(got[r * 256 + c], want(r, c), "row {r} col {c}");
            }
        }
        // Tensor-parallel slices: rows 120..130 straddle the two scale rows; columns
        // 128..256 are rank 1's half of a row-parallel weight.
        let rows = source.read(W, &[130, 256], &Slice::Rows(120..130)).unwrap();
        assert_eq!(rows.to_vec_f32().unwrap(), got[120 * 256..].to_vec());
        let cols = source.read(W, &[130, 256], &Slice::Cols(128..256)).unwrap();
        let cols = cols.to_vec_f32().unwrap();
        for r in 0..130 {
            assert_eq!(
                cols[r * 128..(r + 1) * 128],
                got[r * 256 + 128..(r + 1) * 256]
            );
        }
        // A quarter of 256 cuts the 128-weight groups.
        let err = source
            .read(W, &[130, 256], &Slice::Cols(64..128))
            .unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::ShardCutsBlock {
                    shard: 64,
                    block: 128,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_per_tensor_scale_applies_to_every_block() {
        let dir = TempDir::new("fp8-tensor");
        let q = codes(2 * 128);
        write_safetensors(
            &dir.path().join("model.safetensors"),
            &[
                fp8(W, &[2, 128], q.clone()),
                RawTensor::f32(&format!("{W}_scale"), &[], &[0.25]),
                RawTensor::f32("model.layers.0.mlp.down_proj.input_scale", &[], &[1.0]),
            ],
        );
        let stored = SafetensorsSource::open(dir.path()).unwrap();
        let per_tensor = CheckpointQuantization::Fp8 {
            weight_block_size: None,
            activation_scheme: "static".into(),
        };
        let source = Fp8CheckpointSource::new(&stored, &per_tensor).unwrap();
        let got = source
            .read(W, &[2, 128], &Slice::Full)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let want: Vec<f32> = q.iter().map(|&b| e4m3_to_f32(b) * 0.25).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn fp8_tensors_without_scales_and_uneven_groups_are_refused() {
        let dir = TempDir::new("fp8-bad");
        write_safetensors(
            &dir.path().join("model.safetensors"),
            &[
                fp8(W, &[2, 128], codes(256)),
                fp8("odd.weight", &[1, 64], codes(64)),
            ],
        );
        let stored = SafetensorsSource::open(dir.path()).unwrap();
        let source = Fp8CheckpointSource::new(&stored, &block_wise()).unwrap();
        let err = source.dtype(W).unwrap_err().to_string();
        assert!(err.contains(W) && err.contains("_scale_inv"), "{err}");
        let bad_block = CheckpointQuantization::Fp8 {
            weight_block_size: Some([128, 64]),
            activation_scheme: "dynamic".into(),
        };
        let err = Fp8CheckpointSource::new(&stored, &bad_block)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("weight_block_size") && err.contains("128"),
            "{err}"
        );
    }
}
