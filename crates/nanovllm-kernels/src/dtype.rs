/// Element types a [`crate::Tensor`] can hold.
///
/// Besides the element dtypes, three **block-quantized weight** dtypes exist (see
/// [`crate::quant`] for their byte layouts and reference math). Their tensors keep the
/// logical shape `[.., K]` of the weight they stand for; the buffer holds whole blocks
/// of [`DType::block`] elements along the last dim, so `K` must be a multiple of the
/// block size. They only ever appear as matmul / expert weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
    U32,
    I64,
    /// FP8 e4m3 (the "fn" variant: no infinities, 0x7f/0xff are NaN, max ±448): the FP8
    /// KV cache, and the element type of FP8 checkpoints on disk.
    F8E4M3,
    /// int8 weights, one f16 scale per 32 along K (llama.cpp's Q8_0 layout).
    Int8G32,
    /// int4 weights, one f16 scale and one f16 minimum per 32 along K (Q4_1's layout).
    Int4G32,
    /// FP8 e4m3 weights, one f32 scale per 128 along K (FP8 checkpoints, re-blocked
    /// by rows from their 2-d `weight_scale_inv` blocks or per-tensor scale).
    Fp8G128,
}

/// The geometry of a block-quantized dtype: `elems` weights stored in `bytes` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    pub elems: usize,
    pub bytes: usize,
}

impl DType {
    /// Bytes per element of an element dtype. For a block-quantized dtype, whose elements
    /// take no whole number of bytes, this is the byte granularity (1); use
    /// [`DType::storage_bytes`] for the size of a buffer.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::I64 => 8,
            DType::F8E4M3 | DType::Int8G32 | DType::Int4G32 | DType::Fp8G128 => 1,
        }
    }
    /// The block geometry of a block-quantized dtype; `None` for element dtypes.
    pub fn block(self) -> Option<Block> {
        match self {
            DType::Int8G32 => Some(Block {
                elems: 32,
                bytes: 34,
            }),
            DType::Int4G32 => Some(Block {
                elems: 32,
                bytes: 20,
            }),
            DType::Fp8G128 => Some(Block {
                elems: 128,
                bytes: 132,
            }),
            _ => None,
        }
    }
    /// A block-quantized weight dtype.
    pub fn is_quantized(self) -> bool {
        self.block().is_some()
    }
    /// Bytes a buffer of `numel` elements takes. For a block-quantized dtype `numel`
    /// is rounded up to whole blocks (callers check divisibility where it matters).
    pub fn storage_bytes(self, numel: usize) -> usize {
        match self.block() {
            Some(block) => numel.div_ceil(block.elems) * block.bytes,
            None => numel * self.size_in_bytes(),
        }
    }
    /// Elements a buffer of `bytes` bytes holds (whole blocks for a quantized dtype).
    pub fn elems_in_bytes(self, bytes: usize) -> usize {
        match self.block() {
            Some(block) => bytes / block.bytes * block.elems,
            None => bytes / self.size_in_bytes(),
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::BF16 | DType::F16)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U32 => "u32",
            DType::I64 => "i64",
            DType::F8E4M3 => "f8_e4m3",
            DType::Int8G32 => "int8_g32",
            DType::Int4G32 => "int4_g32",
            DType::Fp8G128 => "fp8_g128",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_dtypes_count_whole_blocks() {
        assert_eq!(DType::Int8G32.storage_bytes(64), 68);
        assert_eq!(DType::Int4G32.storage_bytes(64), 40);
        assert_eq!(DType::Fp8G128.storage_bytes(256), 264);
        assert_eq!(DType::Int8G32.elems_in_bytes(68), 64);
        assert_eq!(DType::F8E4M3.storage_bytes(10), 10);
        assert_eq!(DType::BF16.storage_bytes(10), 20);
        assert!(!DType::F8E4M3.is_quantized() && DType::Int4G32.is_quantized());
    }
}
