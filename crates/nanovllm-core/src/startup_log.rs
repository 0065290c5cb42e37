//! The engine's start-up block: one compact run of info lines, logged by the engine itself
//! so that a library user sees what the command line shows (the facts vLLM prints at start):
//!
//! ```text
//! model: models/Qwen3-0.6B (Qwen3ForCausalLM, bf16 weights)
//! weights: 1.40 GiB loaded in 0.84 s
//! device: cpu, 16 CPU threads, f32 activations
//! KV cache: 2048 blocks of 16 tokens (32768 tokens), bf16, 3.50 GiB
//! Maximum concurrency for 4096 tokens per request: 8.00x
//! ```
//!
//! The first two lines come from [`LLMEngine::new`](crate::LLMEngine::new), which reads the
//! checkpoint; the others from `from_parts`, which every engine goes through. A caller that
//! knows its requests adds the concurrency at their average length with
//! [`concurrency_line`] and [`LLMEngine::max_concurrency`](crate::LLMEngine::max_concurrency).

use std::path::Path;
use std::time::Duration;

use nanovllm_kernels::{DType, Device};
use nanovllm_models::{LoadFormat, ModelConfig};

/// `bytes` in the largest binary unit that keeps a number ≥ 1 (B, KiB, MiB, GiB, TiB),
/// with two decimals above bytes.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// How many requests of `tokens_per_request` tokens the cache holds at once, as vLLM counts
/// it: each request takes whole blocks, so `num_blocks / ⌈tokens / block_size⌉`.
pub fn max_concurrency(num_blocks: usize, block_size: usize, tokens_per_request: usize) -> f64 {
    let blocks_per_request = tokens_per_request.div_ceil(block_size.max(1)).max(1);
    num_blocks as f64 / blocks_per_request as f64
}

/// vLLM's line: `Maximum concurrency for N tokens per request: X.XXx`.
pub fn concurrency_line(tokens_per_request: usize, concurrency: f64) -> String {
    format!("Maximum concurrency for {tokens_per_request} tokens per request: {concurrency:.2}x")
}

/// The model line: where it comes from, its architecture and the checkpoint's dtype.
pub(crate) fn log_model(model: &Path, config: &ModelConfig) {
    tracing::info!(
        "model: {} ({}, {} weights)",
        model.display(),
        config.architecture,
        config.dtype
    );
}

/// The weights line, after loading `bytes` in `elapsed` (this rank's share under tensor
/// parallelism).
pub(crate) fn log_weights(bytes: u64, elapsed: Duration, format: LoadFormat, tp: usize) {
    let what = match format {
        LoadFormat::Safetensors => "loaded",
        LoadFormat::Dummy => "of random values (--load-format dummy) made",
    };
    let share = if tp > 1 {
        format!(" (rank 0's shard of {tp})")
    } else {
        String::new()
    };
    tracing::info!(
        "weights: {} {what} in {:.2} s{share}",
        format_bytes(bytes),
        elapsed.as_secs_f64()
    );
}

/// What the KV cache is, for [`log_device_and_cache`].
pub(crate) struct KvCacheShape {
    pub num_blocks: usize,
    pub block_size: usize,
    pub bytes_per_block: usize,
    pub dtype: DType,
    pub max_model_len: usize,
}

/// The device, KV-cache and concurrency lines.
pub(crate) fn log_device_and_cache(device: Device, activations: DType, kv: &KvCacheShape) {
    tracing::info!(
        "device: {device}, {} CPU threads, {activations} activations",
        rayon::current_num_threads()
    );
    tracing::info!(
        "KV cache: {} blocks of {} tokens ({} tokens), {}, {}",
        kv.num_blocks,
        kv.block_size,
        kv.num_blocks.saturating_mul(kv.block_size),
        kv.dtype,
        format_bytes((kv.num_blocks as u64).saturating_mul(kv.bytes_per_block as u64))
    );
    tracing::info!(
        "{}",
        concurrency_line(
            kv.max_model_len,
            max_concurrency(kv.num_blocks, kv.block_size, kv.max_model_len)
        )
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_take_the_largest_unit_above_one() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.00 KiB");
        assert_eq!(format_bytes(3 << 29), "1.50 GiB");
        assert_eq!(format_bytes(5 << 40), "5.00 TiB");
        assert_eq!(format_bytes(5000 << 40), "5000.00 TiB");
    }

    #[test]
    fn concurrency_counts_whole_blocks_per_request() {
        // 100 blocks of 16 tokens: a 4096-token request takes 256 blocks.
        assert_eq!(max_concurrency(100, 16, 4096), 100.0 / 256.0);
        // 33 tokens take 3 blocks of 16, not 33/16 of one.
        assert_eq!(max_concurrency(30, 16, 33), 10.0);
        assert_eq!(max_concurrency(30, 16, 0), 30.0);
        assert_eq!(
            concurrency_line(4096, 8.0),
            "Maximum concurrency for 4096 tokens per request: 8.00x"
        );
    }
}
