//! CUDA mixture-of-experts ops: launchers for `kernels/moe.cu`.
//!
//! - [`moe_route`]: one warp per token (softmax over E in f32, top-k, renormalised or not).
//! - [`moe_experts`]: count pairs per expert → offsets and GEMM tile offsets → scatter
//!   (token, slot) pairs into expert buckets → grouped gate/up GEMM with the token gather
//!   and silu·mul fused → grouped down GEMM → weighted gather per token in j order.
//!
//! Invariants: no host synchronisation (the bucketing happens on the device; grids are
//! sized by the host bound `T · top_k` rows); results are deterministic (bucket order is
//! not, but no value depends on it); an expert no token picked is never read. `x` and the
//! output are bf16, weights bf16 (stored so by `upload_weight`), ids U32, weights F32.
//! Block-quantized expert weights are refused ([`KernelError::UnsupportedDType`]).

mod plan;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use crate::backend::{Backend, TopKWeights};
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;
use crate::validate::{self, moe::ExpertDims};

use super::check;
use super::device::{device_buf, device_buf_mut, CudaBackend};
use super::launch::{as_i32, cuda_err};

pub(crate) fn moe_route(
    be: &CudaBackend,
    router_logits: &Tensor,
    top_k: usize,
    weights: TopKWeights,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "moe_route";
    let (tokens, experts) = validate::moe::route_shapes(OP, router_logits, top_k)?;
    let name = match router_logits.dtype() {
        DType::BF16 => "moe_route_bf16",
        DType::F32 => "moe_route_f32",
        got => {
            return Err(KernelError::WrongDType {
                op: OP,
                arg: "router_logits",
                expected: "bf16 or f32",
                got,
            })
        }
    };
    let (blocks, smem) =
        plan::route_launch(tokens, experts).ok_or_else(|| KernelError::Invalid {
            op: OP,
            msg: format!(
                "{experts} experts do not fit the routing kernel's shared memory (max 3072)"
            ),
        })?;
    let mut topk_ids = be.alloc(&[tokens, top_k], DType::U32)?;
    let mut topk_weights = be.alloc(&[tokens, top_k], DType::F32)?;
    if tokens == 0 {
        return Ok((topk_ids, topk_weights));
    }
    let cfg = LaunchConfig {
        grid_dim: (grid_x(OP, blocks)?, 1, 1),
        block_dim: (32 * plan::ROUTE_WARPS as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let (tokens_i, experts_i, top_k_i) = (
        as_i32(OP, "tokens", tokens)?,
        as_i32(OP, "experts", experts)?,
        as_i32(OP, "top_k", top_k)?,
    );
    let renormalize = i32::from(weights == TopKWeights::Renormalized);
    let func = be.function(name)?;
    let mut launch = be.stream().launch_builder(&func);
    launch
        .arg(device_buf(router_logits, OP)?)
        .arg(device_buf_mut(&mut topk_ids, OP)?)
        .arg(device_buf_mut(&mut topk_weights, OP)?)
        .arg(&tokens_i)
        .arg(&experts_i)
        .arg(&top_k_i)
        .arg(&renormalize);
    // SAFETY: the arguments match `moe_route_*`; shared memory holds one row of E
    // probabilities per warp.
    unsafe { launch.launch(cfg) }.map_err(cuda_err(OP))?;
    Ok((topk_ids, topk_weights))
}

/// The shared shape checks, plus what the CUDA kernels need: bf16 activations and
/// weights, and rows of whole 16-byte chunks.
fn check_experts(
    x: &Tensor,
    w13: &Tensor,
    w2: &Tensor,
    topk_ids: &Tensor,
    topk_weights: &Tensor,
) -> Result<ExpertDims> {
    const OP: &str = "moe_experts";
    let dims = validate::moe::expert_shapes(OP, x, w13, w2, topk_ids, topk_weights)?;
    let (hidden, intermediate) = (dims.hidden, dims.intermediate);
    check::expect_dtype(OP, "x", x, DType::BF16)?;
    // The grouped GEMMs copy bf16 weight tiles as they are; quantized expert weights
    // would need them widened per tile, which they do not do: say so plainly.
    for w in [w13, w2] {
        if w.dtype().is_quantized() {
            return Err(KernelError::UnsupportedDType {
                op: "moe_experts (block-quantized expert weights on CUDA)",
                dtype: w.dtype(),
            });
        }
    }
    check::expect_dtype(OP, "w13", w13, DType::BF16)?;
    check::expect_dtype(OP, "w2", w2, DType::BF16)?;
    check::expect_dtype(OP, "topk_ids", topk_ids, DType::U32)?;
    check::expect_dtype(OP, "topk_weights", topk_weights, DType::F32)?;
    // The GEMMs copy 16-byte (8 × bf16) chunks of every row.
    if hidden % 8 != 0 || intermediate % 8 != 0 {
        return Err(KernelError::Invalid {
            op: OP,
            msg: format!(
                "hidden {hidden} and intermediate {intermediate} must be multiples of 8 on CUDA"
            ),
        });
    }
    Ok(dims)
}

pub(crate) fn moe_experts(
    be: &CudaBackend,
    x: &Tensor,
    w13: &Tensor,
    w2: &Tensor,
    topk_ids: &Tensor,
    topk_weights: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "moe_experts";
    let ExpertDims {
        tokens,
        hidden,
        experts,
        intermediate,
        top_k,
    } = check_experts(x, w13, w2, topk_ids, topk_weights)?;
    check_ids(be, topk_ids, experts)?;
    let pairs = tokens * top_k;
    if pairs == 0 || hidden == 0 {
        return be.alloc_zeros(&[tokens, hidden], DType::BF16);
    }
    if experts == 0 || intermediate == 0 {
        // top_k ≥ 1 pairs but no expert to send them to (or empty experts): zero output.
        return be.alloc_zeros(&[tokens, hidden], DType::BF16);
    }
    let ints = Ints {
        pairs: as_i32(OP, "tokens · top_k", pairs)?,
        experts: as_i32(OP, "experts", experts)?,
        top_k: as_i32(OP, "top_k", top_k)?,
        hidden: as_i32(OP, "hidden", hidden)?,
        intermediate: as_i32(OP, "intermediate", intermediate)?,
        block_m: plan::GEMM_BLOCK_M as i32,
    };

    let mut counts = be.alloc_zeros(&[experts], DType::U32)?;
    let mut offsets = be.alloc(&[experts + 1], DType::U32)?;
    let mut cursor = be.alloc(&[experts], DType::U32)?;
    let mut tile_offsets = be.alloc(&[experts + 1], DType::U32)?;
    let mut sorted_token = be.alloc(&[pairs], DType::U32)?;
    let mut pair_pos = be.alloc(&[pairs], DType::U32)?;
    let mut act = be.alloc(&[pairs, intermediate], DType::BF16)?;
    let mut ys = be.alloc(&[pairs, hidden], DType::F32)?;
    let mut out = be.alloc(&[tokens, hidden], DType::BF16)?;
    let stream = be.stream();
    let per_pair = LaunchConfig {
        grid_dim: (
            grid_x(OP, pairs.div_ceil(plan::PAIR_THREADS as usize))?,
            1,
            1,
        ),
        block_dim: (plan::PAIR_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };

    // Every launch below passes the arguments of its kernel's signature in moe.cu, in
    // order, with buffers of the sizes the kernels index (pairs, E, E + 1, [P, I], [P, H],
    // [T, H]); ids outside 0..E are skipped by every kernel that reads them.
    let func = be.function("moe_count")?;
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(device_buf(topk_ids, OP)?)
        .arg(&ints.pairs)
        .arg(&ints.experts)
        .arg(device_buf_mut(&mut counts, OP)?);
    // SAFETY: matches `moe_count`; threads past `pairs` return, and `counts` has E slots.
    unsafe { launch.launch(per_pair) }.map_err(cuda_err(OP))?;

    let func = be.function("moe_offsets")?;
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(device_buf(&counts, OP)?)
        .arg(&ints.experts)
        .arg(&ints.block_m)
        .arg(device_buf_mut(&mut offsets, OP)?)
        .arg(device_buf_mut(&mut cursor, OP)?)
        .arg(device_buf_mut(&mut tile_offsets, OP)?);
    // SAFETY: matches `moe_offsets`, one thread: reads E counts, writes E + 1 offsets
    // and tile offsets and E cursors.
    unsafe { launch.launch(LaunchConfig::for_num_elems(1)) }.map_err(cuda_err(OP))?;

    let func = be.function("moe_scatter")?;
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(device_buf(topk_ids, OP)?)
        .arg(&ints.pairs)
        .arg(&ints.top_k)
        .arg(&ints.experts)
        .arg(device_buf_mut(&mut cursor, OP)?)
        .arg(device_buf_mut(&mut sorted_token, OP)?)
        .arg(device_buf_mut(&mut pair_pos, OP)?);
    // SAFETY: matches `moe_scatter`; threads past `pairs` return; the cursors start at
    // the offsets of `moe_offsets`, so each pair gets a distinct slot below `pairs`.
    unsafe { launch.launch(per_pair) }.map_err(cuda_err(OP))?;

    let row_tiles = grid_x(OP, plan::max_row_tiles(pairs, experts))?;
    let gemm = |col_blocks: usize| -> Result<LaunchConfig> {
        Ok(LaunchConfig {
            grid_dim: (row_tiles, grid_y(OP, col_blocks)?, 1),
            block_dim: (plan::GEMM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    };
    let func = be.function("moe_gemm_gate_up")?;
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(device_buf(x, OP)?)
        .arg(device_buf(w13, OP)?)
        .arg(device_buf_mut(&mut act, OP)?)
        .arg(device_buf(&sorted_token, OP)?)
        .arg(device_buf(&offsets, OP)?)
        .arg(device_buf(&tile_offsets, OP)?)
        .arg(&ints.experts)
        .arg(&ints.intermediate)
        .arg(&ints.hidden);
    // SAFETY: matches `moe_gemm_gate_up`; the grid is the host bound on row tiles and
    // blocks past the last tile (`tile_offsets[E]`) exit; rows are whole 16-byte chunks
    // (`check_experts`).
    unsafe { launch.launch(gemm(plan::gate_up_col_blocks(intermediate))?) }
        .map_err(cuda_err(OP))?;

    let func = be.function("moe_gemm_down")?;
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(device_buf(&act, OP)?)
        .arg(device_buf(w2, OP)?)
        .arg(device_buf_mut(&mut ys, OP)?)
        .arg(device_buf(&offsets, OP)?)
        .arg(device_buf(&tile_offsets, OP)?)
        .arg(&ints.experts)
        .arg(&ints.hidden)
        .arg(&ints.intermediate);
    // SAFETY: matches `moe_gemm_down`; as for the gate/up GEMM, over `act` [P, I].
    unsafe { launch.launch(gemm(plan::down_col_blocks(hidden))?) }.map_err(cuda_err(OP))?;

    let func = be.function("moe_combine")?;
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(device_buf(&ys, OP)?)
        .arg(device_buf(&pair_pos, OP)?)
        .arg(device_buf(topk_weights, OP)?)
        .arg(device_buf_mut(&mut out, OP)?)
        .arg(&ints.top_k)
        .arg(&ints.hidden);
    let cfg = LaunchConfig {
        grid_dim: (grid_x(OP, tokens)?, 1, 1),
        block_dim: (plan::PAIR_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: matches `moe_combine`: one block per token over [T, H]; pairs whose id was
    // skipped carry no position and are left out.
    unsafe { launch.launch(cfg) }.map_err(cuda_err(OP))?;
    Ok(out)
}

/// The `int` launch parameters of `moe_experts` (bound to locals for the builder).
struct Ints {
    pairs: i32,
    experts: i32,
    top_k: i32,
    hidden: i32,
    intermediate: i32,
    block_m: i32,
}

/// Debug builds outside graph capture: every id must be `< experts`, as on the CPU
/// (`IndexOutOfRange`). Release builds skip the device-to-host copy; the kernels then
/// drop a pair with an out-of-range id instead of reading out of bounds.
fn check_ids(be: &CudaBackend, topk_ids: &Tensor, experts: usize) -> Result<()> {
    if !cfg!(debug_assertions) || be.is_capturing() || topk_ids.numel() == 0 {
        return Ok(());
    }
    let host = be.to_host(topk_ids)?;
    match host
        .as_u32_slice()?
        .iter()
        .find(|&&e| e as usize >= experts)
    {
        Some(&index) => Err(KernelError::IndexOutOfRange {
            op: "moe_experts",
            index: index as usize,
            size: experts,
        }),
        None => Ok(()),
    }
}

/// A grid x dimension (up to 2³¹ − 1 blocks).
fn grid_x(op: &'static str, n: usize) -> Result<u32> {
    Ok(as_i32(op, "grid blocks", n.max(1))? as u32)
}

/// A grid y dimension (up to 65 535 blocks).
fn grid_y(op: &'static str, n: usize) -> Result<u32> {
    if n > 65_535 {
        return Err(KernelError::Invalid {
            op,
            msg: format!("{n} column blocks exceed the CUDA grid limit of 65535"),
        });
    }
    Ok(n.max(1) as u32)
}
