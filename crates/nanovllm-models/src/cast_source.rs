//! [`CastSource`]: a [`WeightSource`] whose float tensors read as one dtype (`--dtype`),
//! converted tensor by tensor while loading: the model then holds (and computes with)
//! weights of that precision, never a copy in the checkpoint's dtype beside them.
//!
//! Conversion rounds to nearest even (`half`'s `from_f32`, as torch's `.to(dtype)`);
//! widening is exact. Tensors that are not floats keep their stored dtype.

use half::{bf16, f16};
use nanovllm_kernels::{CpuStorage, DType};

use crate::error::ModelError;
use crate::loader::{buffer_dtype_mismatch, empty_storage, Slice, WeightSource};

/// `inner`'s tensors, every float one read as `dtype` (f32, bf16 or f16).
pub struct CastSource<'a> {
    inner: &'a dyn WeightSource,
    dtype: DType,
}

impl<'a> CastSource<'a> {
    pub fn new(inner: &'a dyn WeightSource, dtype: DType) -> Self {
        Self { inner, dtype }
    }
}

impl WeightSource for CastSource<'_> {
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn names(&self) -> Vec<&str> {
        self.inner.names()
    }

    fn dtype(&self, name: &str) -> Result<DType, ModelError> {
        let stored = self.inner.dtype(name)?;
        Ok(if stored.is_float() {
            self.dtype
        } else {
            stored
        })
    }

    fn read_into(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        out: &mut CpuStorage,
    ) -> Result<(), ModelError> {
        let stored = self.inner.dtype(name)?;
        if stored == out.dtype() {
            return self.inner.read_into(name, shape, slice, out);
        }
        let len = slice.out_shape(name, shape)?.iter().product();
        let mut read = empty_storage(stored, len)?;
        self.inner.read_into(name, shape, slice, &mut read)?;
        append_converted(&read, out).ok_or_else(|| buffer_dtype_mismatch(out, name, stored))
    }
}

/// Appends `src` converted to `out`'s dtype; `None` unless both are f32, bf16 or f16.
fn append_converted(src: &CpuStorage, out: &mut CpuStorage) -> Option<()> {
    use CpuStorage::{BF16, F16, F32};
    match (src, out) {
        (F32(s), F32(o)) => o.extend_from_slice(s),
        (BF16(s), BF16(o)) => o.extend_from_slice(s),
        (F16(s), F16(o)) => o.extend_from_slice(s),
        (BF16(s), F32(o)) => o.extend(s.iter().map(|x| x.to_f32())),
        (F16(s), F32(o)) => o.extend(s.iter().map(|x| x.to_f32())),
        (F32(s), BF16(o)) => o.extend(s.iter().map(|&x| bf16::from_f32(x))),
        (F16(s), BF16(o)) => o.extend(s.iter().map(|x| bf16::from_f32(x.to_f32()))),
        (F32(s), F16(o)) => o.extend(s.iter().map(|&x| f16::from_f32(x))),
        (BF16(s), F16(o)) => o.extend(s.iter().map(|x| f16::from_f32(x.to_f32()))),
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DummySource;

    #[test]
    fn float_tensors_read_as_the_target_dtype_rounded_to_nearest() {
        let stored = DummySource::new(DType::F32, 3);
        let full = stored.read("w", &[4, 6], &Slice::Full).unwrap();
        let want: Vec<f32> = full.to_vec_f32().unwrap();
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let cast = CastSource::new(&stored, dtype);
            assert_eq!(cast.dtype("w").unwrap(), dtype);
            let t = cast.read("w", &[4, 6], &Slice::Full).unwrap();
            assert_eq!((t.dtype(), t.shape()), (dtype, &[4, 6][..]));
            let got = t.to_vec_f32().unwrap();
            for (g, w) in got.iter().zip(&want) {
                let expected = match dtype {
                    DType::BF16 => bf16::from_f32(*w).to_f32(),
                    DType::F16 => f16::from_f32(*w).to_f32(),
                    _ => *w,
                };
                assert_eq!(g.to_bits(), expected.to_bits());
            }
        }
    }

    #[test]
    fn widening_a_narrow_checkpoint_is_exact_and_slices_stay_slices() {
        let stored = DummySource::new(DType::BF16, 5);
        let rows = Slice::Rows(1..3);
        let narrow = stored.read("w", &[4, 8], &rows).unwrap();
        let wide = CastSource::new(&stored, DType::F32)
            .read("w", &[4, 8], &rows)
            .unwrap();
        assert_eq!((wide.dtype(), wide.shape()), (DType::F32, &[2, 8][..]));
        assert_eq!(wide.to_vec_f32().unwrap(), narrow.to_vec_f32().unwrap());
    }
}
