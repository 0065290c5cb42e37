//! Sizing the paged KV cache: every rule about how many blocks an engine gets lives here.
//!
//! - `num_kvcache_blocks` in the config overrides everything below.
//! - On a device with memory of its own ([`Backend::device_memory`], a GPU), the cache fills
//!   `gpu_memory_utilization` of it (nano-vLLM's `warmup_model` + `allocate_kv_cache`).
//!   After the weights are loaded, a warm-up prefill of `max_num_batched_tokens` tokens (the
//!   largest step the scheduler ever runs) goes through the model with a small temporary KV
//!   cache, and the backend's peak allocation above what was in use before it is the
//!   activation memory a step needs. Then, with `free`/`total` read from the driver:
//!   ```text
//!   used        = total − free          weights, context, allocator caches, other processes
//!   num_blocks  = ⌊(total · utilization − used − peak_activation) / bytes_per_block⌋
//!   ```
//!   so weights + activations + KV cache stay within `utilization` of the device. `used` is
//!   read after the temporary cache and the warm-up's activations are dropped, so neither is
//!   counted twice. Under tensor parallelism the warm-up cannot run on one rank alone (its
//!   collectives would wait for the others), so the activations are estimated instead.
//! - On the CPU, the cache gets `kv_cache_memory_gib` of host memory.
//!
//! Zero blocks is always an error that names the setting to change.

use nanovllm_kernels::{AttentionMetadata, Backend, DType, DeviceMemory, KvCache, Tensor};
use nanovllm_models::{ForwardInput, Model};

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};

/// How many KV blocks fit for `model` on `backend`, and the bytes each takes. On a device
/// with its own memory this runs a warm-up prefill through the model (without tensor
/// parallelism; see the module docs).
pub(crate) fn size_kv_cache(
    config: &EngineConfig,
    backend: &dyn Backend,
    model: &dyn Model,
) -> Result<(usize, usize)> {
    let spec = model.kv_cache_spec();
    let kv_dtype = config.kv_cache_dtype.dtype_on(backend.device());
    let bytes_per_block = KvCache::bytes_per_block(
        spec.num_layers,
        config.kvcache_block_size,
        spec.num_kv_heads,
        spec.head_dim,
        kv_dtype,
    );
    let num_blocks = num_kvcache_blocks(config, backend, model, kv_dtype, bytes_per_block)?;
    if backend.device_memory().is_none() {
        // The cache lives in host memory, one per rank on this host.
        let ranks = config.tp.ranks_per_node(config.tensor_parallel_size).max(1) as u64;
        let bytes = (num_blocks as u64)
            .checked_mul(bytes_per_block as u64)
            .and_then(|b| b.checked_mul(ranks));
        let fix = "lower --kv-cache-memory-gib (or num_kvcache_blocks)";
        crate::host_memory::check_fits("the KV cache", bytes, fix)?;
    }
    Ok((num_blocks, bytes_per_block))
}

/// KV blocks for an engine on `backend`: `config.num_kvcache_blocks` when set; on a device
/// with its own memory, from `gpu_memory_utilization` after a measured warm-up
/// ([`measure_device_memory`]); else from the CPU budget `kv_cache_memory_gib`.
pub fn num_kvcache_blocks(
    config: &EngineConfig,
    backend: &dyn Backend,
    model: &dyn Model,
    kv_dtype: DType,
    bytes_per_block: usize,
) -> Result<usize> {
    if let Some(n) = config.num_kvcache_blocks {
        return Ok(n);
    }
    let Some(device_memory) = backend.device_memory() else {
        return cpu_num_kvcache_blocks(config.kv_cache_memory_gib, bytes_per_block);
    };
    let memory = if config.tensor_parallel_size > 1 {
        let (free, total) = device_memory.mem_info()?;
        GpuMemory {
            total_bytes: total as u64,
            free_bytes: free as u64,
            peak_activation_bytes: estimate_peak_activation_bytes(
                model.config(),
                config.tensor_parallel_size,
                config,
            ),
        }
    } else {
        measure_device_memory(device_memory, backend, model, config, kv_dtype)?
    };
    tracing::info!(?memory, "device memory for KV-cache sizing");
    gpu_num_kvcache_blocks(memory, config.gpu_memory_utilization, bytes_per_block)
}

/// The longest sequence the engine serves, from the config's `max_model_len` (`requested`),
/// the model's own length (`model_limit`, 0 when it states none) and the KV cache
/// (`num_blocks` of `block_size`), with the notice to log when the cache capped it.
///
/// - Unset: the model's length, capped at what the cache holds for one sequence (with a
///   notice saying how to get more), as vLLM derives it.
/// - Set: clamped to the model's length; longer than the whole cache is an error with the
///   numbers, as in vLLM, since every sequence that long would be refused.
pub fn resolve_max_model_len(
    requested: Option<usize>,
    model_limit: usize,
    num_blocks: usize,
    block_size: usize,
) -> Result<(usize, Option<String>)> {
    let cache_tokens = num_blocks.saturating_mul(block_size);
    let model_len = if model_limit > 0 {
        model_limit
    } else {
        usize::MAX
    };
    match requested {
        Some(len) => {
            let len = len.min(model_len);
            if len > cache_tokens {
                return Err(EngineError::MaxModelLenExceedsKvCache {
                    max_model_len: len,
                    cache_tokens,
                    num_blocks,
                    block_size,
                });
            }
            Ok((len, None))
        }
        None if model_len <= cache_tokens => Ok((model_len, None)),
        None => {
            let model = if model_limit > 0 {
                format!("the model allows {model_limit}")
            } else {
                "the model states no limit".to_string()
            };
            let notice = format!(
                "max_model_len = {cache_tokens}, what the KV cache holds for one sequence \
                 ({num_blocks} blocks of {block_size}; {model}): give the cache more memory \
                 (--kv-cache-memory-gib on the CPU, --gpu-memory-utilization on a GPU) for \
                 longer sequences"
            );
            Ok((cache_tokens, Some(notice)))
        }
    }
}

/// Number of KV blocks of `bytes_per_block` that fit in `kv_cache_memory_gib` of host
/// memory. Zero blocks is an error.
pub fn cpu_num_kvcache_blocks(kv_cache_memory_gib: f64, bytes_per_block: usize) -> Result<usize> {
    let budget_bytes = (kv_cache_memory_gib * (1u64 << 30) as f64) as u64;
    let num_blocks = if bytes_per_block == 0 {
        0
    } else {
        budget_bytes / bytes_per_block as u64
    };
    if num_blocks == 0 {
        return Err(EngineError::KvCacheTooSmall {
            budget_bytes,
            bytes_per_block,
        });
    }
    Ok(usize::try_from(num_blocks).unwrap_or(usize::MAX))
}

/// An upper estimate of a prefill step's activation bytes on one of `world_size` ranks
/// (bf16 activations, f32 logits), for when the warm-up cannot run (tensor parallelism,
/// where rank 0 alone would block in a collective). Per token of the largest step it
/// counts the hidden state, residual, normed input and layer output (4·H), q/k/v and the
/// attention output of this rank's heads (one KV head when they are replicated), and the feed-forward's gate‖up plus activation
/// (3·I per routed expert), then doubles everything for temporaries that overlap; plus
/// twice the logits of `max_num_seqs` rows.
pub fn estimate_peak_activation_bytes(
    model: &nanovllm_models::ModelConfig,
    world_size: usize,
    config: &EngineConfig,
) -> u64 {
    let tp = world_size.max(1) as u64;
    let tokens = config.max_num_batched_tokens as u64;
    let (h, hd) = (model.hidden_size as u64, model.head_dim as u64);
    // This rank's heads: q split evenly, KV split evenly or one replicated head.
    let local_q = model.num_attention_heads as u64 / tp;
    let local_kv = nanovllm_models::ShardSpec {
        rank: 0,
        world_size: world_size.max(1),
    }
    .kv_heads_per_rank(model.num_key_value_heads) as u64;
    let routed = model.num_experts_per_tok.max(1) as u64;
    let per_token = 4 * h
        + (2 * local_q + 2 * local_kv) * hd
        + 3 * model.intermediate_size as u64 * routed / tp;
    let logits =
        config.max_num_seqs.min(config.max_num_batched_tokens) as u64 * model.vocab_size as u64 * 4;
    2 * (tokens * per_token * 2 + logits)
}

/// What the sizing reads from the device after the warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuMemory {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Peak bytes the warm-up prefill allocated above what was in use before it.
    pub peak_activation_bytes: u64,
}

/// KV blocks of `bytes_per_block` that fit in `gpu_memory_utilization` of the device
/// besides what is used and the activation peak. Zero blocks is an error naming
/// `gpu_memory_utilization`.
pub fn gpu_num_kvcache_blocks(
    memory: GpuMemory,
    gpu_memory_utilization: f64,
    bytes_per_block: usize,
) -> Result<usize> {
    let allowed_bytes = (memory.total_bytes as f64 * gpu_memory_utilization) as u64;
    let used_bytes = memory.total_bytes.saturating_sub(memory.free_bytes);
    let budget = allowed_bytes
        .saturating_sub(used_bytes)
        .saturating_sub(memory.peak_activation_bytes);
    let num_blocks = match bytes_per_block {
        0 => 0,
        b => budget / b as u64,
    };
    if num_blocks == 0 {
        return Err(EngineError::GpuMemoryTooSmall {
            gpu_memory_utilization,
            total_bytes: memory.total_bytes,
            allowed_bytes,
            used_bytes,
            peak_activation_bytes: memory.peak_activation_bytes,
            bytes_per_block,
        });
    }
    Ok(usize::try_from(num_blocks).unwrap_or(usize::MAX))
}

/// Prompt lengths of the warm-up prefill: `max_num_batched_tokens` tokens in sequences of
/// at most `max_model_len` tokens, at most `max_num_seqs` of them (the largest prefill step
/// the scheduler can build).
pub fn warmup_seq_lens(
    max_num_batched_tokens: usize,
    max_model_len: usize,
    max_num_seqs: usize,
) -> Vec<usize> {
    let mut lens = Vec::new();
    let mut left = max_num_batched_tokens;
    while left > 0 && lens.len() < max_num_seqs && max_model_len > 0 {
        let len = left.min(max_model_len);
        lens.push(len);
        left -= len;
    }
    lens
}

/// KV blocks the warm-up needs: every warm-up sequence writes into the same blocks
/// `0..n` (the values are never read back for anything that matters; only memory is
/// measured), so the temporary cache stays small.
pub fn warmup_num_blocks(seq_lens: &[usize], block_size: usize) -> usize {
    let longest = seq_lens.iter().copied().max().unwrap_or(1);
    longest.div_ceil(block_size.max(1)).max(1)
}

/// The warm-up prefill as a [`ForwardInput`] on `backend`: token id 0 everywhere, each
/// sequence a fresh prompt (context = its own tokens) in blocks `0..n`, logits for the last
/// token of each sequence.
pub fn warmup_input(
    backend: &dyn Backend,
    seq_lens: &[usize],
    block_size: usize,
) -> Result<ForwardInput> {
    let num_seqs = seq_lens.len();
    let num_tokens: usize = seq_lens.iter().sum();
    let num_blocks = warmup_num_blocks(seq_lens, block_size);
    let mut positions = Vec::with_capacity(num_tokens);
    let mut slot_mapping = Vec::with_capacity(num_tokens);
    let mut cu_seqlens_q = Vec::with_capacity(num_seqs + 1);
    let mut logits_indices = Vec::with_capacity(num_seqs);
    cu_seqlens_q.push(0u32);
    for &len in seq_lens {
        positions.extend(0..len as u32);
        slot_mapping.extend(0..len as i64);
        let end = positions.len() as u32;
        cu_seqlens_q.push(end);
        logits_indices.push(end - 1);
    }
    let context_lens: Vec<u32> = seq_lens.iter().map(|&l| l as u32).collect();
    let block_tables: Vec<u32> = (0..num_seqs).flat_map(|_| 0..num_blocks as u32).collect();
    let longest = seq_lens.iter().copied().max().unwrap_or(0);
    let up = |t: Tensor| backend.upload(t);
    Ok(ForwardInput {
        input_ids: up(Tensor::from_u32(vec![0; num_tokens], &[num_tokens])?)?,
        positions: up(Tensor::from_u32(positions, &[num_tokens])?)?,
        attn: AttentionMetadata {
            is_prefill: true,
            num_seqs,
            block_size,
            cu_seqlens_q: up(Tensor::from_u32(cu_seqlens_q, &[num_seqs + 1])?)?,
            context_lens: up(Tensor::from_u32(context_lens, &[num_seqs])?)?,
            block_tables: up(Tensor::from_u32(block_tables, &[num_seqs, num_blocks])?)?,
            slot_mapping: up(Tensor::from_i64(slot_mapping, &[num_tokens])?)?,
            max_seqlen_q: longest,
            max_context_len: longest,
        },
        logits_indices: up(Tensor::from_u32(logits_indices, &[num_seqs])?)?,
    })
}

/// Runs the warm-up prefill on a device with its own memory and measures it: returns the
/// memory snapshot the sizing needs. The temporary KV cache is allocated before the peak is
/// reset, so only activations count.
pub fn measure_device_memory(
    device_memory: &dyn DeviceMemory,
    backend: &dyn Backend,
    model: &dyn Model,
    config: &EngineConfig,
    kv_dtype: DType,
) -> Result<GpuMemory> {
    let spec = model.kv_cache_spec();
    let block_size = config.kvcache_block_size;
    // The longest sequence a step can hold: unset, the model's length (the cache that
    // would cap it is what is being sized).
    let longest = match (config.max_model_len, model.config().max_model_len_limit()) {
        (Some(len), _) => len,
        (None, 0) => config.max_num_batched_tokens,
        (None, limit) => limit,
    };
    let seq_lens = warmup_seq_lens(config.max_num_batched_tokens, longest, config.max_num_seqs);
    let peak_activation_bytes = {
        let mut cache = KvCache::new(
            backend,
            spec.num_layers,
            warmup_num_blocks(&seq_lens, block_size),
            block_size,
            spec.num_kv_heads,
            spec.head_dim,
            kv_dtype,
        )?;
        let input = warmup_input(backend, &seq_lens, block_size)?;
        backend.synchronize()?;
        device_memory.reset_peak_memory();
        let before = device_memory.memory_stats().in_use_bytes;
        let logits = model.forward(&input, &mut cache)?;
        backend.synchronize()?;
        drop(logits);
        let peak = device_memory.memory_stats().peak_bytes;
        peak.saturating_sub(before) as u64
    };
    backend.synchronize()?;
    let (free, total) = device_memory.mem_info()?;
    Ok(GpuMemory {
        total_bytes: total as u64,
        free_bytes: free as u64,
        peak_activation_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn max_model_len_unset_is_the_models_capped_by_the_cache_with_a_notice() {
        // The cache holds more than the model: the model's length, no notice.
        assert_eq!(
            resolve_max_model_len(None, 512, 32, 16).unwrap(),
            (512, None)
        );
        // The cache holds less: capped, and the notice says how to get more.
        let (len, notice) = resolve_max_model_len(None, 40960, 31, 16).unwrap();
        assert_eq!(len, 496);
        let notice = notice.unwrap();
        assert!(
            notice.contains("max_model_len = 496") && notice.contains("the model allows 40960"),
            "{notice}"
        );
        assert!(notice.contains("--kv-cache-memory-gib"), "{notice}");
        let (len, notice) = resolve_max_model_len(None, 0, 4, 16).unwrap();
        assert_eq!(len, 64);
        assert!(notice.unwrap().contains("states no limit"));
    }

    #[test]
    fn an_explicit_max_model_len_is_clamped_to_the_model_and_must_fit_the_cache() {
        assert_eq!(
            resolve_max_model_len(Some(100), 512, 32, 16).unwrap(),
            (100, None)
        );
        assert_eq!(
            resolve_max_model_len(Some(4096), 512, 32, 16).unwrap(),
            (512, None)
        );
        assert_eq!(
            resolve_max_model_len(Some(496), 512, 31, 16).unwrap(),
            (496, None)
        );
        let err = resolve_max_model_len(Some(512), 512, 31, 16).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EngineError::MaxModelLenExceedsKvCache { .. }));
        assert!(
            msg.contains("max_model_len = 512")
                && msg.contains("holds 496 tokens (31 blocks of 16)")
                && msg.contains("--kv-cache-memory-gib")
                && msg.contains("at most 496"),
            "{msg}"
        );
    }

    #[test]
    fn kv_blocks_from_a_host_memory_budget() {
        let per_block = KvCache::bytes_per_block(2, 16, 2, 64, DType::F32);
        assert_eq!(per_block, 2 * 2 * 16 * 2 * 64 * 4);
        // 1 GiB / 32 KiB = 32768 blocks.
        assert_eq!(cpu_num_kvcache_blocks(1.0, per_block).unwrap(), 32768);
        // Partial blocks are dropped: 1.5 blocks' worth → 1 block.
        let gib_per_block = per_block as f64 / (1u64 << 30) as f64;
        assert_eq!(
            cpu_num_kvcache_blocks(1.5 * gib_per_block, per_block).unwrap(),
            1
        );
    }

    #[test]
    fn a_host_budget_below_one_block_is_an_error() {
        let err = cpu_num_kvcache_blocks(1e-9, 1 << 20).unwrap_err();
        match err {
            EngineError::KvCacheTooSmall {
                budget_bytes,
                bytes_per_block,
            } => {
                assert_eq!(bytes_per_block, 1 << 20);
                assert!(budget_bytes < 1 << 20);
            }
            other => panic!("expected KvCacheTooSmall, got {other:?}"),
        }
        assert!(cpu_num_kvcache_blocks(1.0, 0).is_err());
    }

    #[test]
    fn blocks_fill_the_allowed_memory_minus_used_and_activations() {
        // 80 GiB device, 0.9 → 72 GiB allowed; 10 GiB used (weights, context), 4 GiB
        // activation peak → 58 GiB for KV: 58 · 1024 blocks of 1 MiB.
        let memory = GpuMemory {
            total_bytes: 80 * GIB,
            free_bytes: 70 * GIB,
            peak_activation_bytes: 4 * GIB,
        };
        assert_eq!(
            gpu_num_kvcache_blocks(memory, 0.9, 1 << 20).unwrap(),
            58 * 1024
        );
        // Partial blocks are dropped.
        assert_eq!(
            gpu_num_kvcache_blocks(memory, 0.9, 3 << 20).unwrap(),
            (58 * 1024) / 3
        );
        // All of the device: 80 − 10 − 4 = 66 GiB.
        assert_eq!(
            gpu_num_kvcache_blocks(memory, 1.0, GIB as usize).unwrap(),
            66
        );
    }

    #[test]
    fn not_enough_memory_names_gpu_memory_utilization() {
        // 0.1 of 80 GiB = 8 GiB allowed, but 10 GiB are already used.
        let memory = GpuMemory {
            total_bytes: 80 * GIB,
            free_bytes: 70 * GIB,
            peak_activation_bytes: GIB,
        };
        let err = gpu_num_kvcache_blocks(memory, 0.1, 1 << 20).unwrap_err();
        assert!(
            matches!(err, EngineError::GpuMemoryTooSmall { used_bytes, .. } if used_bytes == 10 * GIB)
        );
        let msg = err.to_string();
        assert!(msg.contains("gpu_memory_utilization = 0.1"), "{msg}");
        assert!(msg.contains("Raise gpu_memory_utilization"), "{msg}");
        // Room for less than one block is the same error.
        let tight = GpuMemory {
            total_bytes: 10 * GIB,
            free_bytes: 10 * GIB - (1 << 20),
            peak_activation_bytes: 0,
        };
        assert!(gpu_num_kvcache_blocks(tight, 1.0, 10 * GIB as usize).is_err());
        assert!(gpu_num_kvcache_blocks(tight, 1.0, 0).is_err());
    }

    #[test]
    fn the_tensor_parallel_activation_estimate_scales_with_tokens_and_ranks() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/qwen3-0.6b.json");
        let json = std::fs::read_to_string(&path).unwrap();
        let model = nanovllm_models::ModelConfig::from_json_str(&json, &path).unwrap();
        let config = EngineConfig::new("m");
        // Qwen3-0.6B, 16384 tokens: per token 4·1024 + (32 + 16)·128 + 3·3072 = 19456
        // elements; 2 · (16384 · 19456 · 2 bytes + 512 · 151936 · 4 bytes).
        let one = estimate_peak_activation_bytes(&model, 1, &config);
        assert_eq!(one, 2 * (16384 * 19456 * 2 + 512 * 151936 * 4));
        // More ranks: less per rank, never more.
        assert!(estimate_peak_activation_bytes(&model, 2, &config) < one);
        let half = EngineConfig {
            max_num_batched_tokens: 8192,
            ..config
        };
        assert!(estimate_peak_activation_bytes(&model, 1, &half) < one);
        // Fewer KV heads than ranks: each rank holds one replicated KV head, so at 4 ranks
        // with 2 KV heads: 4·1024 + (2·16/4 + 2·1)·128 + 3·3072/4 = 7680 elements a token.
        let mqa = nanovllm_models::ModelConfig {
            num_key_value_heads: 2,
            ..model
        };
        assert_eq!(
            estimate_peak_activation_bytes(&mqa, 4, &half),
            2 * (8192 * 7680 * 2 + 512 * 151936 * 4)
        );
    }

    #[test]
    fn warmup_fills_the_token_budget_with_model_len_sequences() {
        assert_eq!(warmup_seq_lens(16384, 4096, 512), vec![4096; 4]);
        assert_eq!(warmup_seq_lens(10000, 4096, 512), vec![4096, 4096, 1808]);
        // Chunked prefill: a budget below max_model_len is one chunk.
        assert_eq!(warmup_seq_lens(1000, 4096, 512), vec![1000]);
        // No more sequences than max_num_seqs.
        assert_eq!(warmup_seq_lens(100, 10, 3), vec![10, 10, 10]);
        assert_eq!(warmup_num_blocks(&[4096, 4096, 1808], 256), 16);
        assert_eq!(warmup_num_blocks(&[17], 16), 2);
    }

    #[test]
    fn the_warmup_input_is_a_valid_prefill() {
        let backend = nanovllm_kernels::CpuBackend::new();
        let input = warmup_input(&backend, &[5, 3], 4).unwrap();
        assert_eq!(input.input_ids.as_u32_slice().unwrap(), &[0; 8]);
        assert_eq!(
            input.positions.as_u32_slice().unwrap(),
            &[0, 1, 2, 3, 4, 0, 1, 2]
        );
        assert_eq!(
            input.attn.slot_mapping.as_i64_slice().unwrap(),
            &[0, 1, 2, 3, 4, 0, 1, 2]
        );
        assert_eq!(input.attn.cu_seqlens_q.as_u32_slice().unwrap(), &[0, 5, 8]);
        assert_eq!(input.attn.context_lens.as_u32_slice().unwrap(), &[5, 3]);
        assert_eq!(input.attn.block_tables.shape(), &[2, 2]);
        assert_eq!(input.logits_indices.as_u32_slice().unwrap(), &[4, 7]);
        assert_eq!(
            (input.attn.max_seqlen_q, input.attn.max_context_len),
            (5, 5)
        );
    }

    /// The warm-up runs through a real model (the Qwen3 fixture, on the CPU).
    #[test]
    fn the_warmup_runs_through_a_model() {
        use std::sync::Arc;

        use nanovllm_kernels::{CpuBackend, DType, KvCache, NoopCommunicator};
        use nanovllm_models::{load_model, LoadFormat, ModelConfig, ModelContext, ShardSpec};

        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny");
        let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new());
        let ctx = ModelContext {
            backend: backend.clone(),
            comm: Arc::new(NoopCommunicator),
            shard: ShardSpec::default(),
            quantization: None,
        };
        let config = ModelConfig::from_dir(&dir).unwrap();
        let model = load_model(&config, &dir, LoadFormat::Safetensors, &ctx).unwrap();
        let seq_lens = warmup_seq_lens(40, 16, 8);
        let spec = model.kv_cache_spec();
        let mut cache = KvCache::new(
            backend.as_ref(),
            spec.num_layers,
            warmup_num_blocks(&seq_lens, 16),
            16,
            spec.num_kv_heads,
            spec.head_dim,
            DType::F32,
        )
        .unwrap();
        let input = warmup_input(backend.as_ref(), &seq_lens, 16).unwrap();
        let logits = model.forward(&input, &mut cache).unwrap();
        assert_eq!(logits.shape(), &[3, config.vocab_size]);

        // The whole sizing on the CPU: the override wins, else the host budget.
        let engine = EngineConfig {
            num_kvcache_blocks: Some(5),
            ..EngineConfig::new("m")
        };
        let (blocks, per_block) = size_kv_cache(&engine, backend.as_ref(), model.as_ref()).unwrap();
        assert_eq!(blocks, 5);
        let engine = EngineConfig {
            num_kvcache_blocks: None,
            kv_cache_memory_gib: 64.0 * per_block as f64 / GIB as f64,
            ..engine
        };
        let (blocks, _) = size_kv_cache(&engine, backend.as_ref(), model.as_ref()).unwrap();
        assert_eq!(blocks, 64);
    }
}
