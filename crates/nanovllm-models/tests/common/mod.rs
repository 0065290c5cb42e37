//! Test harness: builds `ForwardInput`s by hand for packed prefill/decode
//! batches over a paged KV cache, the way the engine's runner will.
#![allow(dead_code)] // each test binary uses a different subset

pub mod golden;

use std::path::PathBuf;
use std::sync::Arc;

use nanovllm_kernels::{AttentionMetadata, Backend, CpuBackend, KvCache, NoopCommunicator, Tensor};
use nanovllm_models::{
    load_model, ForwardInput, LoadFormat, Model, ModelConfig, ModelContext, ShardSpec,
};

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

pub fn cpu_context() -> ModelContext {
    ModelContext {
        backend: Arc::new(CpuBackend::new()),
        comm: Arc::new(NoopCommunicator),
        shard: ShardSpec::default(),
        quantization: None,
    }
}

pub fn load_fixture(name: &str) -> (ModelConfig, Box<dyn Model>) {
    let dir = fixture_dir(name);
    let config = ModelConfig::from_dir(&dir).unwrap();
    let model = load_model(&config, &dir, LoadFormat::Safetensors, &cpu_context()).unwrap();
    (config, model)
}

/// One sequence's part of a step: its block table, how many of its tokens are already
/// in the cache, and the new tokens.
pub struct SeqStep<'a> {
    pub block_table: &'a [u32],
    pub num_cached: usize,
    pub new_tokens: &'a [u32],
}

impl<'a> SeqStep<'a> {
    /// A prefill from an empty cache: every token in `tokens` is new.
    pub fn prefill(block_table: &'a [u32], tokens: &'a [u32]) -> Self {
        Self {
            block_table,
            num_cached: 0,
            new_tokens: tokens,
        }
    }
}

/// Builds the packed `ForwardInput` of one step (prefill when `is_prefill`).
pub fn build_input(
    backend: &dyn Backend,
    block_size: usize,
    is_prefill: bool,
    seqs: &[SeqStep],
) -> ForwardInput {
    let mut input_ids = Vec::new();
    let mut positions = Vec::new();
    let mut cu_seqlens_q = vec![0u32];
    let mut context_lens = Vec::new();
    let mut slot_mapping = Vec::new();
    let mut logits_indices = Vec::new();
    let max_blocks = seqs.iter().map(|s| s.block_table.len()).max().unwrap();
    let mut block_tables = vec![0u32; seqs.len() * max_blocks];
    for (i, s) in seqs.iter().enumerate() {
        assert!(!is_prefill || !s.new_tokens.is_empty());
        assert!(
            is_prefill || s.new_tokens.len() == 1,
            "decode takes one token per sequence"
        );
        let context_len = s.num_cached + s.new_tokens.len();
        assert!(
            context_len <= s.block_table.len() * block_size,
            "block table too short"
        );
        for (j, &tok) in s.new_tokens.iter().enumerate() {
            let pos = s.num_cached + j;
            input_ids.push(tok);
            positions.push(pos as u32);
            let block = s.block_table[pos / block_size] as i64;
            slot_mapping.push(block * block_size as i64 + (pos % block_size) as i64);
        }
        cu_seqlens_q.push(input_ids.len() as u32);
        context_lens.push(context_len as u32);
        logits_indices.push(input_ids.len() as u32 - 1);
        block_tables[i * max_blocks..i * max_blocks + s.block_table.len()]
            .copy_from_slice(s.block_table);
    }
    let t = input_ids.len();
    let up = |x: Tensor| backend.upload(x).unwrap();
    ForwardInput {
        input_ids: up(Tensor::from_u32(input_ids, &[t]).unwrap()),
        positions: up(Tensor::from_u32(positions, &[t]).unwrap()),
        attn: AttentionMetadata {
            is_prefill,
            num_seqs: seqs.len(),
            block_size,
            cu_seqlens_q: up(Tensor::from_u32(cu_seqlens_q, &[seqs.len() + 1]).unwrap()),
            max_seqlen_q: seqs.iter().map(|s| s.new_tokens.len()).max().unwrap(),
            max_context_len: context_lens.iter().copied().max().unwrap() as usize,
            context_lens: up(Tensor::from_u32(context_lens, &[seqs.len()]).unwrap()),
            block_tables: up(Tensor::from_u32(block_tables, &[seqs.len(), max_blocks]).unwrap()),
            slot_mapping: up(Tensor::from_i64(slot_mapping, &[t]).unwrap()),
        },
        logits_indices: up(Tensor::from_u32(logits_indices, &[seqs.len()]).unwrap()),
    }
}

/// A zeroed f32 cache sized for `model`.
pub fn new_cache(
    backend: &dyn Backend,
    model: &dyn Model,
    num_blocks: usize,
    block_size: usize,
) -> KvCache {
    let spec = model.kv_cache_spec();
    KvCache::new(
        backend,
        spec.num_layers,
        num_blocks,
        block_size,
        spec.num_kv_heads,
        spec.head_dim,
        backend.activation_dtype(),
    )
    .unwrap()
}

/// Runs one step and returns the logits rows as host f32 vectors.
pub fn run_step(
    model: &dyn Model,
    backend: &dyn Backend,
    cache: &mut KvCache,
    block_size: usize,
    is_prefill: bool,
    seqs: &[SeqStep],
) -> Vec<Vec<f32>> {
    let input = build_input(backend, block_size, is_prefill, seqs);
    let logits = model.forward(&input, cache).unwrap();
    let logits = backend.to_host(&logits).unwrap();
    let (rows, vocab) = logits.dims2().unwrap();
    assert_eq!(rows, seqs.len());
    logits
        .to_vec_f32()
        .unwrap()
        .chunks_exact(vocab)
        .map(<[f32]>::to_vec)
        .collect()
}

/// Hands out distinct blocks in a fixed order (identity or a seeded permutation).
pub struct BlockPool {
    free: Vec<u32>,
}

impl BlockPool {
    pub fn identity(num_blocks: usize) -> Self {
        Self {
            free: (0..num_blocks as u32).rev().collect(),
        }
    }
    /// A seeded Fisher–Yates shuffle of the block ids (no RNG crate needed).
    pub fn shuffled(num_blocks: usize, seed: u64) -> Self {
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        let mut state = seed;
        for i in (1..ids.len()).rev() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let j = (state >> 33) as usize % (i + 1);
            ids.swap(i, j);
        }
        Self { free: ids }
    }
    pub fn take(&mut self, n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| self.free.pop().expect("pool exhausted"))
            .collect()
    }
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
