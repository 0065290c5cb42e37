//! [`DummySource`]: random weights of whatever shape is asked for, for
//! benchmarks without a checkpoint.
//!
//! Element `i` (row-major index in the *full* tensor) of tensor `name` is a
//! pure function of `(seed, name, i)` (a counter-based splitmix64 hash), so
//! generation parallelises freely with rayon and every tensor-parallel rank's
//! slice agrees with the full tensor: a TP run sees the same model as TP=1.
//!
//! Values: 2-d and larger tensors are uniform in `±1/sqrt(fan_in)` (fan_in =
//! product of dims after the first), which keeps activations O(1) through
//! many layers; 1-d tensors (norm weights) are uniform in `1 ± 0.1`.
//! Everything is produced in the requested dtype, with no f32 copy.

use half::{bf16, f16};
use nanovllm_kernels::{CpuStorage, DType};
use rayon::prelude::*;

use crate::error::ModelError;
use crate::loader::{buffer_dtype_mismatch, Slice, WeightSource};

#[derive(Clone, Copy, Debug)]
pub struct DummySource {
    dtype: DType,
    seed: u64,
}

impl DummySource {
    /// Weights in `dtype` (f32, bf16 or f16), seeded.
    pub fn new(dtype: DType, seed: u64) -> Self {
        Self { dtype, seed }
    }
}

/// Elements generated per rayon task: large enough to amortise scheduling.
const CHUNK: usize = 1 << 14;

impl WeightSource for DummySource {
    fn contains(&self, _name: &str) -> bool {
        true
    }

    /// None: every name is generated on demand, so strict loading has nothing to check.
    fn names(&self) -> Vec<&str> {
        Vec::new()
    }

    fn dtype(&self, _name: &str) -> Result<DType, ModelError> {
        Ok(self.dtype)
    }

    fn read_into(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        out: &mut CpuStorage,
    ) -> Result<(), ModelError> {
        slice.out_shape(name, shape)?;
        // View the tensor as [rows, cols]; a slice is a rectangle of that view.
        let (rows, cols) = match shape {
            [] => (1, 1),
            [n] => (1, *n),
            [first, rest @ ..] => (*first, rest.iter().product()),
        };
        let (row_range, col_range) = match slice {
            Slice::Full => (0..rows, 0..cols),
            Slice::Rows(r) if shape.len() == 1 => (0..1, r.clone()),
            Slice::Rows(r) => (r.clone(), 0..cols),
            Slice::Cols(c) => (0..rows, c.clone()),
        };
        let (offset, scale) = if shape.len() <= 1 {
            (1.0, 0.1)
        } else {
            (0.0, 1.0 / (cols as f32).sqrt())
        };
        let rect = Rect {
            key: splitmix64(self.seed ^ fnv1a(name)),
            offset,
            scale,
            cols,
            first_row: row_range.start,
            num_rows: row_range.len(),
            col_range,
        };
        match (out, self.dtype) {
            (CpuStorage::F32(v), DType::F32) => rect.append(v, |x| x),
            (CpuStorage::BF16(v), DType::BF16) => rect.append(v, bf16::from_f32),
            (CpuStorage::F16(v), DType::F16) => rect.append(v, f16::from_f32),
            (out, dtype) => return Err(buffer_dtype_mismatch(out, name, dtype)),
        }
        Ok(())
    }
}

/// The rectangle of a `[rows, cols]` view that one read produces.
struct Rect {
    key: u64,
    offset: f32,
    scale: f32,
    cols: usize,
    first_row: usize,
    num_rows: usize,
    col_range: std::ops::Range<usize>,
}

impl Rect {
    /// Appends the rectangle's values to `out`, generated in parallel straight into its
    /// spare capacity (no zero-fill pass, no intermediate buffer).
    fn append<T: Send>(&self, out: &mut Vec<T>, convert: impl Fn(f32) -> T + Sync) {
        let width = self.col_range.len();
        let len = self.num_rows * width;
        if len == 0 {
            return;
        }
        out.reserve(len);
        // Whole rows per task, so each element's full index is a running counter.
        let rows_per_task = CHUNK.div_ceil(width);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(rows_per_task * width)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (j, row) in chunk.chunks_exact_mut(width).enumerate() {
                    let r = self.first_row + task * rows_per_task + j;
                    let base = (r * self.cols + self.col_range.start) as u64;
                    for (i, o) in (base..).zip(row.iter_mut()) {
                        o.write(convert(self.offset + self.scale * uniform_pm1(self.key, i)));
                    }
                }
            });
        // SAFETY: `reserve` made room for `len` more elements; the `chunk`s tile
        // `spare_capacity_mut()[..len]` exactly and each is whole rows (`len` and the
        // chunk size are multiples of `width`), so `chunks_exact_mut` leaves no
        // remainder and every element was written above.
        unsafe { out.set_len(out.len() + len) };
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Uniform in [-1, 1): the top 24 bits of a hash of (key, i).
fn uniform_pm1(key: u64, i: u64) -> f32 {
    let bits = splitmix64(key ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 40;
    bits as f32 * (2.0 / (1u64 << 24) as f32) - 1.0
}
