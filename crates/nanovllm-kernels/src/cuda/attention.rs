//! CUDA paged attention: launchers for `kernels/attention.cu`.
//!
//! - Prefill: flash-attention-2 on tensor cores (`prefill_attention_d{64,128}`), keys read
//!   through the block table so a cached prefix is included.
//! - Decode: flash-decoding (`decode_attention_d{D}_g{G}`): one CTA per (sequence, KV
//!   head, context split) serving the whole GQA group, then `decode_attention_combine`
//!   when the context is split ([`plan::decode_plan`]).
//! - Anything else (head_dim not 64/128(/256 decode), f32 cache, GQA group > 16):
//!   `attention_generic_{bf16,f32,fp8}`, exact but slow.
//! - An FP8 (e4m3) cache runs the `*_fp8_*` instantiations of the same kernels, which
//!   widen e4m3 in registers; the layer's `k_scale` is folded into `scale` here and
//!   `v_scale` is their extra last argument.
//!
//! Invariants: `q` and the output are bf16 `[rows, heads * head_dim]`; metadata tensors are
//! U32 on the device. Grids are sized from shapes and the host upper bounds
//! `max_seqlen_q` / `max_context_len`; per-sequence lengths are read on the device, so a
//! captured decode graph stays valid when replayed with new lengths. Outside capture the
//! metadata values are checked on the host before any launch, in every build, from the
//! host copies the tensors keep when written by `copy_from_host` (see `check_values`), so
//! bad metadata is the same error as on the CPU and the engine's steps never synchronise.

mod plan;
mod validate;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use crate::attention::AttentionMetadata;
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::kv_cache::LayerKvCache;
use crate::tensor::Tensor;

use super::device::{device_buf, device_buf_mut, CudaBackend};
use super::launch::{as_i32, cuda_err};
use validate::{Geometry, MetadataValues};

pub(crate) fn prefill_attention(
    be: &CudaBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    scale: f32,
) -> Result<Tensor> {
    const OP: &str = "prefill_attention";
    let geometry = validate::geometry(OP, cache)?;
    let (rows, heads) = validate::heads(OP, q, &geometry)?;
    // The new keys/values are read back from the cache; check they match it anyway.
    crate::validate::attention::new_kv_shapes(OP, k, v, rows, geometry.row_width())?;
    let max_blocks = validate::metadata_shapes(OP, meta, &geometry, rows, true)?;
    check_values(be, OP, meta, &geometry, rows, max_blocks, true)?;
    if rows == 0 || meta.num_seqs == 0 {
        return be.alloc_zeros(&[rows, heads * geometry.head_dim], DType::BF16);
    }
    let mut out = be.alloc(&[rows, heads * geometry.head_dim], DType::BF16)?;
    let scales = cache.effective_scales();
    let scale = scale * scales.k;
    match plan::prefill_kernel(geometry.head_dim, geometry.dtype) {
        Some(name) => {
            let (tiles, grid_heads, seqs) =
                plan::prefill_grid(meta.max_seqlen_q, rows, heads, meta.num_seqs);
            let cfg = LaunchConfig {
                grid_dim: (
                    grid_u32(OP, "query tiles", tiles, u32::MAX as usize)?,
                    grid_u32(OP, "heads", grid_heads, 65_535)?,
                    grid_u32(OP, "sequences", seqs, 65_535)?,
                ),
                block_dim: (plan::PREFILL_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let func = be.function(name)?;
            let (num_tokens, max_blocks_i, block_size, num_blocks, heads_i, kv_heads) = (
                as_i32(OP, "rows", rows)?,
                as_i32(OP, "max_blocks", max_blocks)?,
                as_i32(OP, "block_size", geometry.block_size)?,
                as_i32(OP, "num_blocks", geometry.num_blocks)?,
                as_i32(OP, "heads", heads)?,
                as_i32(OP, "kv_heads", geometry.kv_heads)?,
            );
            let mut launch = be.stream().launch_builder(&func);
            launch
                .arg(device_buf(q, OP)?)
                .arg(device_buf(&cache.k, OP)?)
                .arg(device_buf(&cache.v, OP)?)
                .arg(device_buf_mut(&mut out, OP)?)
                .arg(device_buf(&meta.cu_seqlens_q, OP)?)
                .arg(device_buf(&meta.context_lens, OP)?)
                .arg(device_buf(&meta.block_tables, OP)?)
                .arg(&num_tokens)
                .arg(&max_blocks_i)
                .arg(&block_size)
                .arg(&num_blocks)
                .arg(&heads_i)
                .arg(&kv_heads)
                .arg(&scale);
            if geometry.dtype == DType::F8E4M3 {
                launch.arg(&scales.v);
            }
            // SAFETY: the arguments match the kernel's signature in attention.cu (the fp8
            // one also takes `v_scale`); shapes were validated above and the kernel bounds
            // every device-data-driven index.
            unsafe { launch.launch(cfg) }.map_err(cuda_err(OP))?;
        }
        None => generic(
            be, OP, q, cache, meta, &geometry, heads, max_blocks, true, scale, &mut out,
        )?,
    }
    Ok(out)
}

pub(crate) fn decode_attention(
    be: &CudaBackend,
    q: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    scale: f32,
) -> Result<Tensor> {
    const OP: &str = "decode_attention";
    let geometry = validate::geometry(OP, cache)?;
    let (rows, heads) = validate::heads(OP, q, &geometry)?;
    let max_blocks = validate::metadata_shapes(OP, meta, &geometry, rows, false)?;
    check_values(be, OP, meta, &geometry, rows, max_blocks, false)?;
    let head_dim = geometry.head_dim;
    if rows == 0 {
        return be.alloc_zeros(&[0, heads * head_dim], DType::BF16);
    }
    let mut out = be.alloc(&[rows, heads * head_dim], DType::BF16)?;
    let scales = cache.effective_scales();
    let scale = scale * scales.k;
    let group = heads / geometry.kv_heads;
    let Some(name) = plan::decode_kernel(head_dim, group, geometry.dtype) else {
        generic(
            be, OP, q, cache, meta, &geometry, heads, max_blocks, false, scale, &mut out,
        )?;
        return Ok(out);
    };
    let plan = plan::decode_plan(
        rows,
        geometry.kv_heads,
        group,
        head_dim,
        meta.max_context_len,
    );
    let (acc_len, stats_len) = plan.workspace_len(rows, heads, head_dim);
    // Partial results of the splits (none when the kernel writes the output directly).
    let mut partial_acc = be.alloc(&[acc_len], DType::F32)?;
    let mut partial_max = be.alloc(&[stats_len], DType::F32)?;
    let mut partial_sum = be.alloc(&[stats_len], DType::F32)?;
    let ints = DecodeInts {
        max_blocks: as_i32(OP, "max_blocks", max_blocks)?,
        block_size: as_i32(OP, "block_size", geometry.block_size)?,
        num_blocks: as_i32(OP, "num_blocks", geometry.num_blocks)?,
        heads: as_i32(OP, "heads", heads)?,
        kv_heads: as_i32(OP, "kv_heads", geometry.kv_heads)?,
        head_dim: as_i32(OP, "head_dim", head_dim)?,
        partition_size: as_i32(OP, "partition_size", plan.partition_size)?,
        num_splits: as_i32(OP, "num_splits", plan.num_splits)?,
    };
    {
        let cfg = LaunchConfig {
            grid_dim: (
                grid_u32(OP, "sequences", rows, u32::MAX as usize)?,
                grid_u32(OP, "kv_heads", geometry.kv_heads, 65_535)?,
                grid_u32(OP, "context splits", plan.num_splits, 65_535)?,
            ),
            block_dim: (plan::DECODE_THREADS, 1, 1),
            shared_mem_bytes: plan.smem_bytes as u32,
        };
        let func = be.function(&name)?;
        let mut launch = be.stream().launch_builder(&func);
        launch
            .arg(device_buf(q, OP)?)
            .arg(device_buf(&cache.k, OP)?)
            .arg(device_buf(&cache.v, OP)?)
            .arg(device_buf_mut(&mut out, OP)?)
            .arg(device_buf_mut(&mut partial_acc, OP)?)
            .arg(device_buf_mut(&mut partial_max, OP)?)
            .arg(device_buf_mut(&mut partial_sum, OP)?)
            .arg(device_buf(&meta.context_lens, OP)?)
            .arg(device_buf(&meta.block_tables, OP)?)
            .arg(&ints.max_blocks)
            .arg(&ints.block_size)
            .arg(&ints.num_blocks)
            .arg(&ints.heads)
            .arg(&ints.kv_heads)
            .arg(&ints.partition_size)
            .arg(&ints.num_splits)
            .arg(&scale);
        if geometry.dtype == DType::F8E4M3 {
            launch.arg(&scales.v);
        }
        // SAFETY: the arguments match `decode_attention_{,fp8_}d{D}_g{G}` (the fp8 one
        // also takes `v_scale`); the dynamic shared memory is what the plan computed for
        // this group, head_dim and partition.
        unsafe { launch.launch(cfg) }.map_err(cuda_err(OP))?;
    }
    if plan.num_splits > 1 {
        let cfg = LaunchConfig {
            grid_dim: (
                grid_u32(OP, "sequences", rows, u32::MAX as usize)?,
                grid_u32(OP, "heads", heads, 65_535)?,
                1,
            ),
            block_dim: (grid_u32(OP, "head_dim", head_dim, 1024)?, 1, 1),
            shared_mem_bytes: 0,
        };
        let func = be.function("decode_attention_combine")?;
        let mut launch = be.stream().launch_builder(&func);
        launch
            .arg(device_buf(&partial_acc, OP)?)
            .arg(device_buf(&partial_max, OP)?)
            .arg(device_buf(&partial_sum, OP)?)
            .arg(device_buf(&meta.context_lens, OP)?)
            .arg(device_buf_mut(&mut out, OP)?)
            .arg(&ints.max_blocks)
            .arg(&ints.block_size)
            .arg(&ints.heads)
            .arg(&ints.head_dim)
            .arg(&ints.partition_size)
            .arg(&ints.num_splits);
        // SAFETY: the arguments match `decode_attention_combine`; the workspace holds
        // `num_splits` partials per (sequence, head), of which it reads the valid ones.
        unsafe { launch.launch(cfg) }.map_err(cuda_err(OP))?;
    }
    Ok(out)
}

/// The `int` launch parameters of the decode kernels (bound to locals for the builder).
struct DecodeInts {
    max_blocks: i32,
    block_size: i32,
    num_blocks: i32,
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    partition_size: i32,
    num_splits: i32,
}

/// The generic kernel (any head_dim, bf16, f32 or e4m3 cache): one CTA per (query row,
/// head). `scale` already includes an FP8 cache's `k_scale`.
#[allow(clippy::too_many_arguments)]
fn generic(
    be: &CudaBackend,
    op: &'static str,
    q: &Tensor,
    cache: &LayerKvCache,
    meta: &AttentionMetadata,
    geometry: &Geometry,
    heads: usize,
    max_blocks: usize,
    prefill: bool,
    scale: f32,
    out: &mut Tensor,
) -> Result<()> {
    let rows = q.shape()[0];
    let max_keys = meta.max_context_len.max(1);
    let smem = plan::generic_smem(max_keys).ok_or_else(|| KernelError::Invalid {
        op,
        msg: format!(
            "max_context_len {} is too long for the generic attention kernel used for \
             head_dim {} with a {} cache; use head_dim 64 or 128 with a bf16 cache",
            meta.max_context_len, geometry.head_dim, geometry.dtype
        ),
    })?;
    let name = plan::generic_kernel(geometry.dtype);
    let cfg = LaunchConfig {
        grid_dim: (
            grid_u32(op, "rows", rows, u32::MAX as usize)?,
            grid_u32(op, "heads", heads, 65_535)?,
            1,
        ),
        block_dim: (plan::GENERIC_THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let ints = [
        i32::from(prefill),
        as_i32(op, "num_seqs", meta.num_seqs)?,
        as_i32(op, "max_blocks", max_blocks)?,
        as_i32(op, "block_size", geometry.block_size)?,
        as_i32(op, "num_blocks", geometry.num_blocks)?,
        as_i32(op, "heads", heads)?,
        as_i32(op, "kv_heads", geometry.kv_heads)?,
        as_i32(op, "head_dim", geometry.head_dim)?,
        as_i32(op, "max_keys", max_keys)?,
    ];
    let func = be.function(name)?;
    let mut launch = be.stream().launch_builder(&func);
    launch
        .arg(device_buf(q, op)?)
        .arg(device_buf(&cache.k, op)?)
        .arg(device_buf(&cache.v, op)?)
        .arg(device_buf_mut(out, op)?)
        .arg(device_buf(&meta.cu_seqlens_q, op)?)
        .arg(device_buf(&meta.context_lens, op)?)
        .arg(device_buf(&meta.block_tables, op)?);
    for value in &ints {
        launch.arg(value);
    }
    launch.arg(&scale);
    let v_scale = cache.effective_scales().v;
    if geometry.dtype == DType::F8E4M3 {
        launch.arg(&v_scale);
    }
    // SAFETY: the arguments match `attention_generic_*` (the fp8 one also takes
    // `v_scale`); the scores of up to `max_keys` keys fit the dynamic shared memory, and
    // the kernel clamps every key count to it.
    unsafe { launch.launch(cfg) }.map_err(cuda_err(op))?;
    Ok(())
}

/// The metadata value checks (see [`validate`]), in every build, outside graph capture
/// (a captured graph replays with values not known yet; the kernels clamp lengths and
/// block ids, so bad values there give wrong numbers, never an out-of-bounds access).
/// The values come from the tensors' host copies, which the runner's `copy_from_host`
/// leaves (no device access, no synchronisation); metadata written on the device is read
/// back instead.
fn check_values(
    be: &CudaBackend,
    op: &'static str,
    meta: &AttentionMetadata,
    geometry: &Geometry,
    rows: usize,
    max_blocks: usize,
    prefill: bool,
) -> Result<()> {
    if be.is_capturing() {
        return Ok(());
    }
    let cu = if prefill {
        Some(be.u32_values(&meta.cu_seqlens_q, op)?)
    } else {
        None
    };
    let context_lens = be.u32_values(&meta.context_lens, op)?;
    let block_tables = be.u32_values(&meta.block_tables, op)?;
    let values = MetadataValues {
        cu_seqlens_q: cu.as_deref(),
        context_lens: &context_lens,
        block_tables: &block_tables,
        max_blocks,
    };
    validate::metadata_values(op, &values, meta, geometry, rows)
}

/// A grid dimension, or an error when it exceeds CUDA's limit for that axis.
fn grid_u32(op: &'static str, what: &'static str, n: usize, limit: usize) -> Result<u32> {
    if n > limit {
        return Err(KernelError::Invalid {
            op,
            msg: format!("{n} {what} exceed the CUDA grid limit of {limit}"),
        });
    }
    Ok(n.max(1) as u32)
}
