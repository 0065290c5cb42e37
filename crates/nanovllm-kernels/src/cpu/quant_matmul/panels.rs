//! The packed GEMM's W panels ([`crate::cpu::packed_gemm`]) filled from block-quantized
//! rows: the prefill path dequantizes each weight once per call, into the same
//! `[⌈cols/NR⌉][kc][NR]` f32 panels the bf16 path widens into, and then runs the same
//! micro-kernel. Dequantization is [`crate::quant::dequantize_block`] itself, a block at
//! a time into a stack buffer, then scattered into the panel lines; the packing is
//! O(N·K) per call against the micro-kernel's O(M·N·K), so for M > 32 it is a few
//! percent of the call.

use crate::dtype::DType;
use crate::quant::dequantize_block;

use super::super::packed_gemm::{ColumnBlock, WLine, NR};

/// The largest block of any quantized dtype, in elements.
const MAX_BLOCK_ELEMS: usize = 128;

/// Dequantizes W rows `block.n0 .. block.n0 + block.cols`, elements `k0 .. k0 + kc`, of
/// `bytes` (rows of `k / elems` blocks of `dtype`) into `[⌈cols/NR⌉][kc][NR]` panels
/// (zeros past the block's last row). `k0` and `kc` are multiples of the block size and
/// the rows exist (the packed GEMM checks [`super::super::packed_gemm::WeightRows::holds`]).
pub(crate) fn pack_panels(
    dtype: DType,
    bytes: &[u8],
    k: usize,
    block: ColumnBlock,
    k0: usize,
    kc: usize,
    packed: &mut Vec<WLine>,
) {
    let Some(geometry) = dtype.block() else {
        unreachable!("pack_panels: {dtype} is not block-quantized");
    };
    debug_assert!(geometry.elems <= MAX_BLOCK_ELEMS);
    debug_assert!(k0 % geometry.elems == 0 && kc % geometry.elems == 0);
    let row_bytes = k / geometry.elems * geometry.bytes;
    let first_block = k0 / geometry.elems;
    let blocks = kc / geometry.elems;
    let panels = block.cols.div_ceil(NR);
    packed.resize(panels * kc, WLine([0.0; NR]));
    let mut values = [0f32; MAX_BLOCK_ELEMS];
    let values = &mut values[..geometry.elems];
    for p in 0..panels {
        let panel = &mut packed[p * kc..(p + 1) * kc];
        let rows = NR.min(block.cols - p * NR);
        for j in 0..rows {
            let row = (block.n0 + p * NR + j) * row_bytes + first_block * geometry.bytes;
            let src = &bytes[row..row + blocks * geometry.bytes];
            for (b, block_bytes) in src.chunks_exact(geometry.bytes).enumerate() {
                dequantize_block(dtype, block_bytes, values);
                let lines = &mut panel[b * geometry.elems..(b + 1) * geometry.elems];
                for (line, &v) in lines.iter_mut().zip(values.iter()) {
                    line.0[j] = v;
                }
            }
        }
        if rows < NR {
            for line in panel.iter_mut() {
                line.0[rows..].fill(0.0);
            }
        }
    }
}
