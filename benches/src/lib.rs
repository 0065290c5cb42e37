//! Criterion benchmarks live in `benches/benches/`; this library only holds
//! shared workload builders for them. Run `cargo bench -p benches`.

use std::sync::Arc;

use nanovllm_core::bench::{Workload, WorkloadSpec, BENCH_PY_TEMPERATURE};
use nanovllm_core::{EngineConfig, LLMEngine};
use nanovllm_kernels::{CpuBackend, DType, KvCache, Tensor};
use nanovllm_models::{
    ForwardInput, GenerationConfig, KvCacheSpec, Model, ModelConfig, ModelError, RopeScaling,
};
use nanovllm_scheduler::{SamplingParams, Scheduler, SchedulerConfig, SchedulerError};

/// `num_seqs` sequences with distinct prompts of `prompt_len_min..prompt_len_min + spread`
/// tokens, all prefilled (running), ready for decode steps: `ignore_eos` and `max_tokens`
/// large, so nothing finishes. The cache has `num_blocks` blocks of `block_size` tokens.
pub fn running_decode_scheduler(
    num_seqs: usize,
    prompt_len_min: usize,
    spread: usize,
    block_size: usize,
    num_blocks: usize,
) -> Result<Scheduler, SchedulerError> {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_num_seqs: num_seqs,
        max_num_batched_tokens: 16384,
        max_model_len: 1 << 20,
        block_size,
        num_blocks,
        eos_token_ids: vec![0],
        enable_prefix_caching: true,
    })?;
    let params = SamplingParams {
        ignore_eos: true,
        max_tokens: 1 << 19,
        ..SamplingParams::greedy(1)
    };
    for i in 0..num_seqs {
        let len = prompt_len_min + (i * 37) % spread.max(1);
        let first = (i * 100_000) as u32 + 1;
        sched.add((first..first + len as u32).collect(), params.clone())?;
    }
    // Prefill steps until every sequence runs.
    while sched.num_waiting() > 0 {
        let Some(batch) = sched.schedule()? else {
            break;
        };
        let sampled = vec![1; batch.num_seqs()];
        sched.postprocess(batch, &sampled)?;
    }
    Ok(sched)
}

/// Vocabulary of [`NullModel`]: small, so that its logits and their sampling (which the
/// engine-step bench reports apart from the host work) stay cheap.
pub const NULL_VOCAB: usize = 1024;

/// A model whose forward pass costs next to nothing: it checks the input's shapes and
/// returns zero logits for the wanted rows. It lets a benchmark run the real engine loop
/// (scheduler, runner input building, sampling, postprocessing) with the forward pass out
/// of the way.
#[derive(Debug)]
pub struct NullModel {
    config: ModelConfig,
}

impl NullModel {
    pub fn new(max_position_embeddings: usize) -> Self {
        Self {
            config: ModelConfig {
                architecture: "NullForCausalLM".into(),
                hidden_size: 1,
                intermediate_size: 1,
                num_hidden_layers: 1,
                num_attention_heads: 1,
                num_key_value_heads: 1,
                head_dim: 1,
                vocab_size: NULL_VOCAB,
                max_position_embeddings,
                rope_theta: 10000.0,
                rope_scaling: RopeScaling::Default,
                rms_norm_eps: 1e-6,
                attention_bias: false,
                mlp_bias: false,
                sliding_window: None,
                tie_word_embeddings: false,
                dtype: DType::F32,
                num_local_experts: 0,
                num_experts_per_tok: 0,
                moe_intermediate_size: 0,
                norm_topk_prob: false,
                decoder_sparse_step: 1,
                mlp_only_layers: vec![],
                bos_token_id: None,
                eos_token_ids: vec![],
                quantization: None,
            },
        }
    }
}

impl Model for NullModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn kv_cache_spec(&self) -> KvCacheSpec {
        KvCacheSpec {
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 1,
        }
    }
    fn forward_hidden(
        &self,
        input: &ForwardInput,
        _kv: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        let rows = input.input_ids.shape()[0];
        Ok(Tensor::zeros_cpu(&[rows, 1], DType::F32))
    }
    fn compute_logits(
        &self,
        _hidden: &Tensor,
        logits_indices: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let rows = logits_indices.shape()[0];
        Ok(Tensor::zeros_cpu(&[rows, NULL_VOCAB], DType::F32))
    }
    fn forward(&self, input: &ForwardInput, _kv: &mut KvCache) -> Result<Tensor, ModelError> {
        self.compute_logits(&input.input_ids, &input.logits_indices)
    }
}

/// An engine on the CPU around [`NullModel`] with bench.py's 256 sequences (prompt lengths
/// of `WorkloadSpec::SEED`, token ids folded into the null vocabulary; bench.py's
/// temperature; `ignore_eos`) all prefilled and running: every `step()` from here is a
/// decode step of 256 sequences, for `decode_steps` steps before any sequence finishes.
/// 256-token KV blocks as in the engine's defaults.
pub fn running_decode_engine(decode_steps: usize) -> Result<LLMEngine, nanovllm_core::EngineError> {
    let spec = WorkloadSpec::SEED;
    let workload = Workload::generate(&spec)?;
    let max_model_len = spec.max_input + decode_steps + 1;
    let block_size = 256;
    let blocks_per_seq = max_model_len.div_ceil(block_size);
    let config = EngineConfig {
        max_model_len: Some(max_model_len),
        kvcache_block_size: block_size,
        num_kvcache_blocks: Some(spec.num_seqs * blocks_per_seq + 1),
        ..EngineConfig::new("null")
    };
    let mut engine = LLMEngine::from_parts(
        config,
        GenerationConfig::default(),
        None,
        Arc::new(CpuBackend::new()),
        Box::new(NullModel::new(max_model_len)),
    )?;
    for prompt in &workload.prompts {
        let ids: Vec<u32> = prompt.iter().map(|&t| t % NULL_VOCAB as u32).collect();
        let params = SamplingParams {
            temperature: BENCH_PY_TEMPERATURE,
            ignore_eos: true,
            max_tokens: decode_steps + 1,
            ..SamplingParams::default()
        };
        engine.add_request(ids, params)?;
    }
    while engine.num_waiting() > 0 {
        engine.step()?;
    }
    Ok(engine)
}
