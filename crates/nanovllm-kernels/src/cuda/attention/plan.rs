//! Launch geometry of the attention kernels in `kernels/attention.cu`: which kernel runs,
//! grids, dynamic shared memory and the flash-decoding split. Pure host arithmetic (no
//! GPU needed to test it).
//!
//! Every size here comes from shapes or host upper bounds (`max_seqlen_q`,
//! `max_context_len`), never from device data, so a captured decode graph replays the
//! same launches with new lengths: CTAs past a sequence's end exit on the device.

use crate::dtype::DType;

/// Query rows per prefill CTA (`PF_BM` in attention.cu).
pub(crate) const PREFILL_BLOCK_M: usize = 64;
/// Threads of a prefill CTA (`PF_THREADS`).
pub(crate) const PREFILL_THREADS: u32 = 128;
/// Threads of a decode CTA (`DC_THREADS`).
pub(crate) const DECODE_THREADS: u32 = 128;
/// Threads of a generic-kernel CTA (`GN_THREADS`).
pub(crate) const GENERIC_THREADS: u32 = 128;
/// Dynamic shared memory available without an opt-in attribute.
pub(crate) const SMEM_LIMIT: usize = 48 * 1024;
/// Largest decode partition (keys per CTA): its scores live in shared memory.
const MAX_PARTITION: usize = 512;
/// Smallest decode partition the shared-memory fit may shrink to.
const MIN_PARTITION: usize = 64;
/// Largest GQA group of the decode kernels (`MAXG` instantiations 1, 2, 4, 8, 16).
pub(crate) const MAX_DECODE_GROUP: usize = 16;

/// The tensor-core prefill kernel for this shape, if one exists (bf16 or e4m3 cache,
/// head_dim 64 or 128); otherwise the generic kernel runs.
pub(crate) fn prefill_kernel(head_dim: usize, cache_dtype: DType) -> Option<&'static str> {
    match (head_dim, cache_dtype) {
        (64, DType::BF16) => Some("prefill_attention_d64"),
        (128, DType::BF16) => Some("prefill_attention_d128"),
        (64, DType::F8E4M3) => Some("prefill_attention_fp8_d64"),
        (128, DType::F8E4M3) => Some("prefill_attention_fp8_d128"),
        _ => None,
    }
}

/// The flash-decoding kernel for this shape, if one exists (bf16 or e4m3 cache, head_dim
/// 64, 128 or 256, GQA group ≤ 16, instantiated for the next power of two).
pub(crate) fn decode_kernel(head_dim: usize, group: usize, cache_dtype: DType) -> Option<String> {
    let cache = match cache_dtype {
        DType::BF16 => "",
        DType::F8E4M3 => "fp8_",
        _ => return None,
    };
    if !matches!(head_dim, 64 | 128 | 256) || group == 0 || group > MAX_DECODE_GROUP {
        return None;
    }
    Some(format!(
        "decode_attention_{cache}d{head_dim}_g{}",
        group.next_power_of_two()
    ))
}

/// The generic kernel for a cache dtype (any head shape).
pub(crate) fn generic_kernel(cache_dtype: DType) -> &'static str {
    match cache_dtype {
        DType::F32 => "attention_generic_f32",
        DType::F8E4M3 => "attention_generic_fp8",
        _ => "attention_generic_bf16",
    }
}

/// Prefill grid `(query tiles, heads, sequences)`: tiles for the longest sequence
/// (`max_seqlen_q`, capped by the packed rows); shorter sequences' extra CTAs exit.
pub(crate) fn prefill_grid(
    max_seqlen_q: usize,
    rows: usize,
    heads: usize,
    num_seqs: usize,
) -> (usize, usize, usize) {
    let tiles = max_seqlen_q.min(rows).div_ceil(PREFILL_BLOCK_M);
    (tiles, heads, num_seqs)
}

/// How decode splits each sequence's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DecodePlan {
    /// Keys per CTA.
    pub partition_size: usize,
    /// CTAs per (sequence, KV head): `⌈max_context_len / partition_size⌉`. With 1 the
    /// kernel writes the output directly; otherwise a combine kernel merges the splits.
    pub num_splits: usize,
    /// Dynamic shared memory of a decode CTA.
    pub smem_bytes: usize,
}

impl DecodePlan {
    /// f32 elements of the partial outputs `[seqs, heads, splits, head_dim]` and of each
    /// statistics buffer `[seqs, heads, splits]` (0 when the output is written directly).
    pub(crate) fn workspace_len(
        &self,
        num_seqs: usize,
        heads: usize,
        head_dim: usize,
    ) -> (usize, usize) {
        if self.num_splits == 1 {
            return (0, 0);
        }
        let parts = num_seqs * heads * self.num_splits;
        (parts * head_dim, parts)
    }
}

/// Shared memory of a decode CTA: scores `[group, partition]`, output `[group, head_dim]`,
/// max and sum `[group]`, all f32.
fn decode_smem(group: usize, head_dim: usize, partition: usize) -> usize {
    4 * group * (partition + head_dim + 2)
}

/// Picks the partition size: the largest (up to [`MAX_PARTITION`]) whose scores fit shared
/// memory. It depends on the head shape only, never on the batch or `max_context_len`, so a
/// sequence's keys are reduced in the same order whether the step runs eagerly or replays a
/// graph captured for `max_model_len`: graph and eager decoding give bit-identical outputs
/// (with one valid split, the combine step's weight is `exp(0) = 1` and it reproduces the
/// direct output exactly). The price is fewer CTAs for a lone long sequence.
/// `max_context_len` is an upper bound on every sequence's context.
pub(crate) fn decode_plan(
    num_seqs: usize,
    kv_heads: usize,
    group: usize,
    head_dim: usize,
    max_context_len: usize,
) -> DecodePlan {
    let _ = (num_seqs, kv_heads);
    let max_context = max_context_len.max(1);
    let mut partition = MAX_PARTITION;
    while partition > MIN_PARTITION && decode_smem(group, head_dim, partition) > SMEM_LIMIT {
        partition /= 2;
    }
    DecodePlan {
        partition_size: partition,
        num_splits: max_context.div_ceil(partition),
        smem_bytes: decode_smem(group, head_dim, partition),
    }
}

/// Shared memory of the generic kernel for contexts up to `max_keys`, or `None` when the
/// scores would not fit.
pub(crate) fn generic_smem(max_keys: usize) -> Option<usize> {
    let bytes = 4 * (max_keys.max(1) + 32);
    (bytes <= SMEM_LIMIT).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_kernels_cover_the_common_shapes_only() {
        assert_eq!(
            prefill_kernel(128, DType::BF16),
            Some("prefill_attention_d128")
        );
        assert_eq!(
            prefill_kernel(64, DType::BF16),
            Some("prefill_attention_d64")
        );
        assert_eq!(prefill_kernel(128, DType::F32), None);
        assert_eq!(prefill_kernel(96, DType::BF16), None);
        assert_eq!(
            decode_kernel(128, 4, DType::BF16).as_deref(),
            Some("decode_attention_d128_g4")
        );
        // Groups round up to an instantiated power of two (7 query heads per KV head → 8).
        assert_eq!(
            decode_kernel(64, 7, DType::BF16).as_deref(),
            Some("decode_attention_d64_g8")
        );
        assert_eq!(
            decode_kernel(256, 16, DType::BF16).as_deref(),
            Some("decode_attention_d256_g16")
        );
        assert_eq!(decode_kernel(128, 17, DType::BF16), None);
        assert_eq!(decode_kernel(40, 2, DType::BF16), None);
        assert_eq!(decode_kernel(128, 2, DType::F32), None);
        // FP8 caches have their own instantiations of the same kernels.
        assert_eq!(
            prefill_kernel(128, DType::F8E4M3),
            Some("prefill_attention_fp8_d128")
        );
        assert_eq!(prefill_kernel(96, DType::F8E4M3), None);
        assert_eq!(
            decode_kernel(128, 2, DType::F8E4M3).as_deref(),
            Some("decode_attention_fp8_d128_g2")
        );
        assert_eq!(decode_kernel(40, 2, DType::F8E4M3), None);
        assert_eq!(generic_kernel(DType::F8E4M3), "attention_generic_fp8");
        assert_eq!(generic_kernel(DType::BF16), "attention_generic_bf16");
        assert_eq!(generic_kernel(DType::F32), "attention_generic_f32");
    }

    #[test]
    fn prefill_grid_covers_the_longest_sequence() {
        assert_eq!(prefill_grid(1, 5, 16, 5), (1, 16, 5));
        assert_eq!(prefill_grid(64, 100, 8, 2), (1, 8, 2));
        assert_eq!(prefill_grid(65, 100, 8, 2), (2, 8, 2));
        // An upper bound above the packed rows is capped by them.
        assert_eq!(prefill_grid(10_000, 130, 8, 2), (3, 8, 2));
        for (max_q, rows) in [(1, 1), (63, 70), (64, 64), (300, 372), (4096, 4096)] {
            let (tiles, _, _) = prefill_grid(max_q, rows, 1, 1);
            assert!(tiles * PREFILL_BLOCK_M >= max_q.min(rows), "{max_q} {rows}");
            assert!(
                (tiles - 1) * PREFILL_BLOCK_M < max_q.min(rows),
                "{max_q} {rows}"
            );
        }
    }

    #[test]
    fn decode_plan_ignores_batch_and_context_bound() {
        // The partition is a function of the head shape alone: eager steps and graphs
        // captured for a longer max_context_len reduce each sequence identically.
        let eager = decode_plan(8, 8, 2, 128, 300);
        let captured = decode_plan(64, 8, 2, 128, 40_960);
        assert_eq!(eager.partition_size, captured.partition_size);
        assert_eq!(eager.partition_size, MAX_PARTITION);
        assert_eq!(eager.num_splits, 1);
        assert_eq!(eager.workspace_len(8, 16, 128), (0, 0));
        assert_eq!(captured.num_splits, 40_960 / MAX_PARTITION);
        assert_eq!(
            captured.workspace_len(64, 16, 128),
            (64 * 16 * 80 * 128, 64 * 16 * 80)
        );
        // Large groups with wide heads shrink the partition to fit shared memory.
        assert_eq!(decode_plan(1, 1, 16, 256, 4096).partition_size, 256);
    }

    #[test]
    fn decode_plan_fits_shared_memory_and_covers_the_context() {
        for group in [1, 2, 3, 4, 7, 8, 16] {
            for head_dim in [64, 128, 256] {
                for max_ctx in [0, 1, 63, 64, 65, 511, 512, 513, 4096, 32_768] {
                    for seqs in [1, 3, 64, 512] {
                        let p = decode_plan(seqs, 8, group, head_dim, max_ctx);
                        assert!(p.smem_bytes <= SMEM_LIMIT, "{p:?}");
                        assert!(p.partition_size.is_power_of_two());
                        assert!(p.partition_size * p.num_splits >= max_ctx.max(1), "{p:?}");
                        assert!(
                            p.partition_size * (p.num_splits - 1) < max_ctx.max(1),
                            "{p:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn generic_smem_has_a_limit() {
        assert_eq!(generic_smem(0), Some(4 * 33));
        assert_eq!(generic_smem(300), Some(4 * 332));
        assert!(generic_smem(12_000).is_some());
        assert!(generic_smem(13_000).is_none());
    }
}
