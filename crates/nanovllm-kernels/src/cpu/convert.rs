//! Narrow-float → f32 conversion of weight ranges, used to fill small reusable scratch
//! buffers (a row, a tile) — never a widened copy of a whole weight matrix.

use half::slice::HalfFloatSliceExt;

use super::check::Floats;

/// bf16 is the top half of an f32: widening is a 16-bit shift (exact).
#[inline(always)]
pub(crate) fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

impl Floats<'_> {
    /// Writes elements `start .. start + dst.len()` as f32 into `dst`.
    /// The caller guarantees the range is in bounds (validated shapes).
    pub(crate) fn convert_range(&self, start: usize, dst: &mut [f32]) {
        let end = start + dst.len();
        match self {
            Floats::F32(v) => dst.copy_from_slice(&v[start..end]),
            Floats::BF16(v) => {
                let bits: &[u16] = bytemuck::cast_slice(&v[start..end]);
                // A plain shift loop: LLVM vectorises it.
                for (d, &b) in dst.iter_mut().zip(bits) {
                    *d = bf16_bits_to_f32(b);
                }
            }
            // `half` picks F16C at runtime when the CPU has it.
            Floats::F16(v) => v[start..end].convert_to_f32_slice(dst),
        }
    }
}
