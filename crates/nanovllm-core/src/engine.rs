//! [`LLMEngine`]: the step API (add_request / step / abort).
//!
//! One `step()` is schedule → [`ModelRunner::execute`] → `Scheduler::postprocess`; where
//! its time went is measured on the way ([`StepTimes`]: a few `Instant::now()` per step).
//! Requests are validated completely in `add_request`, before anything is
//! queued, so a rejected request never disturbs the ones in flight. A request
//! the scheduler finds it can never fit (`SchedulerError::Unschedulable`) is
//! aborted and reported finished with an `error`; the others go on. So is a request whose
//! logits hold no finite maximum at a step (NaN, all −∞: [`EngineError::NonFiniteLogits`]),
//! without touching the rest of its batch.
//!
//! Per request the engine keeps what the scheduler does not: the number of top logprobs
//! asked for, the penalty inputs ([`PenaltyState`], only for requests with a penalty on,
//! updated from the sequence's new tokens before each step) and the prompt logprobs
//! scored so far ([`SamplingParams::prompt_logprobs`]: appended chunk by chunk, given once
//! in [`StepOutputs::prompt_logprobs`] when complete, and in the [`RequestOutput`]).
//!
//! A request id is the scheduler's sequence id (arrival order, never reused).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nanovllm_kernels::sampling::MAX_NUM_LOGPROBS;
use nanovllm_kernels::{Backend, Communicator, DType, NoopCommunicator};
use nanovllm_models::{
    load_model_with_progress, GenerationConfig, LoadProgress, LoadProgressFn, Model, ModelConfig,
    ModelContext, ModelError, ShardSpec,
};
use nanovllm_scheduler::{
    BatchKind, FinishReason, FinishedSeq, SamplingOverrides, SamplingParams, ScheduledBatch,
    Scheduler, SchedulerConfig, SchedulerError, SeqId,
};

use crate::config::{EngineConfig, Quantization};
use crate::error::{EngineError, RequestError, Result};
use crate::kv_sizing::size_kv_cache;
use crate::logprobs::{PromptLogprobs, TokenLogprobs};
use crate::runner::{ModelRunner, SeqExtras, StepSamples};
use crate::sampling::PenaltyState;
use crate::structured::{GrammarStep, Grammars};
use crate::tokenizer::Tokenizer;
use crate::tp::WorkerGroup;

/// Identifies a request for its whole life (the scheduler's sequence id).
pub type RequestId = SeqId;

/// A prompt: text (tokenized by the engine) or token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    Text(String),
    TokenIds(Vec<u32>),
}

impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Text(s)
    }
}
impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_string())
    }
}
impl From<&String> for Prompt {
    fn from(s: &String) -> Self {
        Prompt::Text(s.clone())
    }
}
impl From<Vec<u32>> for Prompt {
    fn from(ids: Vec<u32>) -> Self {
        Prompt::TokenIds(ids)
    }
}
impl From<&Vec<u32>> for Prompt {
    fn from(ids: &Vec<u32>) -> Self {
        Prompt::TokenIds(ids.clone())
    }
}
impl From<&[u32]> for Prompt {
    fn from(ids: &[u32]) -> Self {
        Prompt::TokenIds(ids.to_vec())
    }
}

/// A finished request.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestOutput {
    pub request_id: RequestId,
    pub prompt_token_ids: Vec<u32>,
    /// The generated tokens (the prompt excluded).
    pub token_ids: Vec<u32>,
    /// `token_ids` decoded, special tokens skipped; empty when no tokenizer is loaded.
    pub text: String,
    pub finish_reason: FinishReason,
    /// Prompt tokens served from the prefix cache at its last admission.
    pub num_cached_tokens: usize,
    /// Set when the engine aborted the request itself (e.g. it can never fit the KV cache).
    pub error: Option<String>,
    /// With [`SamplingParams::prompt_logprobs`]: one entry per prompt token, `None` for the
    /// first (nothing precedes it), then each token's logprob given the tokens before it
    /// and the most likely alternatives there (from the log-softmax of the model's raw
    /// logits: no temperature, penalty or bias). `None` when the request did not ask, or
    /// finished before its whole prompt was computed (aborted).
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
}

/// What one `step()` produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutputs {
    /// `(request, token)` for every token generated in this step, in batch order.
    pub new_tokens: Vec<(RequestId, u32)>,
    /// Requests that finished in this step (including ones the engine aborted).
    pub finished: Vec<RequestOutput>,
    /// The kind of batch that ran, `None` when nothing ran.
    pub kind: Option<BatchKind>,
    /// Tokens computed in this step (prompt tokens for prefill, one per sequence for decode).
    pub num_tokens: usize,
    /// Wall time of schedule + execute + postprocess.
    pub elapsed: Duration,
    /// `elapsed` split into host work and the forward pass (see [`StepTimes`]).
    pub times: StepTimes,
    /// `(request, logprobs)` for every new token of a request added with
    /// [`LLMEngine::add_request_with_logprobs`], in batch order.
    pub logprobs: Vec<(RequestId, TokenLogprobs)>,
    /// `(request, prompt logprobs)` for every request with
    /// [`SamplingParams::prompt_logprobs`] whose prompt was completed in this step, in the
    /// shape of [`RequestOutput::prompt_logprobs`]: given once per request, before or with
    /// its first token.
    pub prompt_logprobs: Vec<(RequestId, Vec<Option<TokenLogprobs>>)>,
}

/// Where one step's time went, split at the engine's calls into the scheduler and the
/// runner (never inside the runner's sampling), so that host work shows apart from the
/// forward pass.
///
/// On a device the forward pass is queued asynchronously and the step waits for it when
/// the sampled tokens come back, so [`StepTimes::forward`] is the time spent waiting on the
/// device (plus sampling on the host while sampling runs there), and [`StepTimes::host`]
/// what the host adds to every step. On the CPU `forward` is the forward pass and sampling
/// themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepTimes {
    /// `Scheduler::schedule` (and aborting requests that can never fit).
    pub schedule: Duration,
    /// Gathering each sequence's sampling parameters, and the runner building its inputs
    /// and staging them on the device (copies queued, not waited for).
    pub inputs: Duration,
    /// The rest of the runner's step: the forward pass (on a device: queueing it and waiting
    /// for it) and sampling, until the tokens are on the host.
    pub forward: Duration,
    /// `Scheduler::postprocess` (tokens appended, stop checks, blocks freed) and the
    /// step's outputs (finished requests, their text).
    pub postprocess: Duration,
}

impl StepTimes {
    /// Host work of the step: everything but the forward pass and sampling.
    pub fn host(&self) -> Duration {
        self.schedule + self.inputs + self.postprocess
    }

    /// The whole step.
    pub fn total(&self) -> Duration {
        self.host() + self.forward
    }

    /// Adds `other` part by part.
    pub fn add(&mut self, other: &StepTimes) {
        self.schedule += other.schedule;
        self.inputs += other.inputs;
        self.forward += other.forward;
        self.postprocess += other.postprocess;
    }

    /// `self − earlier`, part by part (zero where `earlier` is larger): the time between two
    /// readings of a cumulative counter.
    pub fn since(&self, earlier: &StepTimes) -> StepTimes {
        StepTimes {
            schedule: self.schedule.saturating_sub(earlier.schedule),
            inputs: self.inputs.saturating_sub(earlier.inputs),
            forward: self.forward.saturating_sub(earlier.forward),
            postprocess: self.postprocess.saturating_sub(earlier.postprocess),
        }
    }
}

/// Cumulative counters since the engine was built.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineStats {
    pub num_steps: u64,
    /// Decode steps, and their [`StepTimes`] summed.
    pub num_decode_steps: u64,
    pub decode_step_times: StepTimes,
    /// Prompt tokens computed (prefix-cache hits excluded, recomputation after preemption included).
    pub num_prefill_tokens: u64,
    pub num_decode_tokens: u64,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    /// Times a running sequence lost its KV cache and had to be recomputed.
    pub num_preemptions: u64,
}

impl EngineStats {
    /// The counters between `earlier` and `self`, two readings of the same engine (zero
    /// where `earlier` is larger).
    pub fn since(&self, earlier: &EngineStats) -> EngineStats {
        EngineStats {
            num_steps: self.num_steps.saturating_sub(earlier.num_steps),
            num_decode_steps: self
                .num_decode_steps
                .saturating_sub(earlier.num_decode_steps),
            decode_step_times: self.decode_step_times.since(&earlier.decode_step_times),
            num_prefill_tokens: self
                .num_prefill_tokens
                .saturating_sub(earlier.num_prefill_tokens),
            num_decode_tokens: self
                .num_decode_tokens
                .saturating_sub(earlier.num_decode_tokens),
            prefill_time: self.prefill_time.saturating_sub(earlier.prefill_time),
            decode_time: self.decode_time.saturating_sub(earlier.decode_time),
            num_preemptions: self.num_preemptions.saturating_sub(earlier.num_preemptions),
        }
    }

    /// Prefill tokens per second over all prefill steps (0 before the first).
    pub fn prefill_tokens_per_s(&self) -> f64 {
        per_second(self.num_prefill_tokens, self.prefill_time)
    }
    /// Decode tokens per second over all decode steps (0 before the first).
    pub fn decode_tokens_per_s(&self) -> f64 {
        per_second(self.num_decode_tokens, self.decode_time)
    }
}

fn per_second(tokens: u64, time: Duration) -> f64 {
    let s = time.as_secs_f64();
    if s > 0.0 {
        tokens as f64 / s
    } else {
        0.0
    }
}

/// KV-cache occupancy, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheUsage {
    pub num_blocks: usize,
    /// Blocks not held by any sequence (cached-but-evictable ones included).
    pub num_free_blocks: usize,
    pub block_size: usize,
}

impl KvCacheUsage {
    /// Fraction of blocks in use, in [0, 1].
    pub fn used_fraction(&self) -> f64 {
        if self.num_blocks == 0 {
            return 0.0;
        }
        (self.num_blocks - self.num_free_blocks) as f64 / self.num_blocks as f64
    }
}

/// The inference engine, driven one step at a time.
#[derive(Debug)]
pub struct LLMEngine {
    config: EngineConfig,
    model_config: ModelConfig,
    generation_config: GenerationConfig,
    tokenizer: Option<Tokenizer>,
    eos_token_ids: Vec<u32>,
    scheduler: Scheduler,
    runner: ModelRunner,
    stats: EngineStats,
    /// Requests that asked for logprobs, with their number of top alternatives.
    num_top_logprobs: HashMap<RequestId, usize>,
    /// Requests with a penalty on, and their penalty inputs.
    penalties: HashMap<RequestId, PenaltyState>,
    /// Requests that asked for prompt logprobs: the entries so far, and whether they were
    /// given out in a [`StepOutputs`] already.
    prompt_logprobs: HashMap<RequestId, (PromptLogprobs, bool)>,
    /// Ranks 1..N under tensor parallelism (this engine is rank 0); dropped (stopped) with it.
    workers: Option<WorkerGroup>,
    /// Structured output: the grammar compiler and one matcher per constrained request.
    grammars: Grammars,
}

impl LLMEngine {
    /// Sizes the CPU thread pool ([`crate::threads::configure_pool`]), reads config.json,
    /// the generation config (`config.generation_config`) and the tokenizer, loads the model
    /// on the configured device (weights in `config.dtype`), sizes the KV cache and builds
    /// the scheduler.
    ///
    /// With `tensor_parallel_size > 1` this is rank 0: it first checks that the size
    /// divides the model's heads, starts ranks 1..N (threads or processes, see
    /// [`crate::tp`]) and loads its own shard; every rank then holds the KV block count
    /// rank 0 sized, each with its share of the KV heads.
    ///
    /// A `model` (or `tokenizer`) that is a Hugging Face Hub id such as `Qwen/Qwen3-0.6B`
    /// is first resolved to a local snapshot: from the HF cache, else downloaded (see
    /// [`crate::hub`]). Logs the start-up block at info (see [`crate::startup_log`]).
    pub fn new(config: EngineConfig) -> Result<Self> {
        Self::with_load_progress(config, &|_| {})
    }

    /// [`LLMEngine::new`], reporting the bytes of weights read so far to `progress` while
    /// the checkpoint loads (for a progress bar; see [`nanovllm_models::progress`]).
    pub fn with_load_progress(
        mut config: EngineConfig,
        progress: LoadProgressFn<'_>,
    ) -> Result<Self> {
        config.validate()?;
        // Hub ids become local snapshot directories before anything reads them (and before
        // workers get the config, so they never download).
        #[cfg(feature = "hub")]
        crate::hub::resolve_engine_config(&mut config, &crate::hub::HubOptions::from_env())?;
        let threads = crate::threads::configure_pool(config.threads)?;
        tracing::debug!(threads, "CPU thread pool");
        let model_config = read_model_config(&config.model_config_path())?;
        crate::startup_log::log_model(&config.model, &model_config);
        let tp = config.tensor_parallel_size;
        // Before any device or worker exists: the error says which sizes would work.
        nanovllm_models::check_tensor_parallel_size(&model_config, tp)?;
        if tp > 1 && !config.enforce_eager {
            // A captured graph would replay rank 0's collectives without the workers'.
            tracing::info!("tensor parallelism runs eagerly: CUDA graphs are off");
            config.enforce_eager = true;
        }
        let backend = crate::device::create_backend(&config, 0)?;
        let model_dir = config.model_dir();
        let generation_config = config.generation_config.load(&model_dir)?;
        let weight_dtype = config.dtype.weight_dtype_on(backend.device())?;
        let tokenizer = load_tokenizer(&config)?;
        // TP = 1 with `processes` still runs the process path (world size 1: a GPU check).
        let (comm, workers): (Arc<dyn Communicator>, _) =
            if tp > 1 || config.tp.mode == crate::tp::TpMode::Processes {
                let (comm, workers) = WorkerGroup::start(&config, &backend)?;
                (comm, Some(workers))
            } else {
                (Arc::new(NoopCommunicator), None)
            };
        let ctx = ModelContext {
            backend: backend.clone(),
            comm,
            shard: ShardSpec {
                rank: 0,
                world_size: tp,
            },
            quantization: config.quantization.map(Quantization::weights),
        };
        if backend.device_memory().is_none() {
            // Host weights: refuse sizes the machine cannot hold before allocating them.
            // Linear weights count in their quantized dtype (an FP8 checkpoint's: fp8_g128).
            let linear = config
                .quantization
                .map(Quantization::dtype)
                .or(model_config.quantization.as_ref().map(|_| DType::Fp8G128));
            let dtype = weight_dtype.unwrap_or(model_config.dtype);
            let bytes = model_config.weight_bytes(dtype, linear);
            let fix = "use a smaller model, or a machine with more memory";
            crate::host_memory::check_fits("loading the model's weights", bytes, fix)?;
        }
        let load_started = Instant::now();
        let bytes_loaded = AtomicU64::new(0);
        let report = |p: LoadProgress| {
            bytes_loaded.fetch_max(p.bytes_read, Ordering::Relaxed);
            progress(p);
        };
        let model = load_model_with_progress(
            &model_config,
            &model_dir,
            config.load_format,
            &ctx,
            weight_dtype,
            &report,
        )?;
        crate::startup_log::log_weights(
            bytes_loaded.load(Ordering::Relaxed),
            load_started.elapsed(),
            config.load_format,
            tp,
        );
        if let Some(q) = config.quantization {
            tracing::info!(
                "weights: linear layers and LM head quantized to {} while loading",
                q.dtype()
            );
        } else if let Some(stored) = &model_config.quantization {
            tracing::info!(
                "weights: a {} checkpoint, linear layers kept quantized as {}",
                stored.method(),
                DType::Fp8G128
            );
        }
        let mut engine = Self::from_parts(config, generation_config, tokenizer, backend, model)?;
        if let Some(mut workers) = workers {
            workers.init(engine.runner.kv_cache().num_blocks)?;
            engine.workers = Some(workers);
        }
        Ok(engine)
    }

    /// Builds an engine around an already loaded model (custom models, tests).
    /// `config.model`, `config.load_format`, `config.dtype`, `config.generation_config` and
    /// `config.threads` are not read; `max_model_len` is resolved against the model's
    /// `max_position_embeddings` (and its sliding window where the architecture serves
    /// windowed models that way, [`ModelConfig::max_model_len_limit`]) and the KV cache
    /// ([`crate::kv_sizing::resolve_max_model_len`]). What the backend can do decides the
    /// rest: a device with its own memory sizes the KV cache from `gpu_memory_utilization`,
    /// one that captures graphs replays decode steps through them (unless `enforce_eager`).
    pub fn from_parts(
        mut config: EngineConfig,
        generation_config: GenerationConfig,
        tokenizer: Option<Tokenizer>,
        backend: Arc<dyn Backend>,
        model: Box<dyn Model>,
    ) -> Result<Self> {
        config.validate()?;
        let model_config = model.config().clone();
        let limit = model_config.max_model_len_limit();
        if let Some(requested) = config.max_model_len {
            if limit < model_config.max_position_embeddings && requested > limit {
                tracing::warn!(
                    "max_model_len clamped from {requested} to the model's sliding window, \
                     {limit} tokens: windowed attention is not implemented, and up to the \
                     window it equals full attention"
                );
            }
            if limit > 0 {
                config.max_model_len = Some(requested.min(limit));
            }
        }
        let eos_token_ids = if !generation_config.eos_token_ids.is_empty() {
            generation_config.eos_token_ids.clone()
        } else if let Some(id) = tokenizer.as_ref().and_then(Tokenizer::eos_token_id) {
            vec![id]
        } else {
            model_config.eos_token_ids.clone()
        };
        let (num_blocks, bytes_per_block) =
            size_kv_cache(&config, backend.as_ref(), model.as_ref())?;
        let (max_model_len, notice) = crate::kv_sizing::resolve_max_model_len(
            config.max_model_len,
            limit,
            num_blocks,
            config.kvcache_block_size,
        )?;
        crate::startup_log::log_device_and_cache(
            backend.device(),
            backend.activation_dtype(),
            &crate::startup_log::KvCacheShape {
                num_blocks,
                block_size: config.kvcache_block_size,
                bytes_per_block,
                dtype: config.kv_cache_dtype.dtype_on(backend.device()),
                max_model_len,
            },
        );
        if let Some(notice) = notice {
            tracing::info!("{notice}");
        }
        config.max_model_len = Some(max_model_len);
        let scheduler = Scheduler::new(SchedulerConfig {
            max_num_seqs: config.max_num_seqs,
            max_num_batched_tokens: config.max_num_batched_tokens,
            max_model_len,
            block_size: config.kvcache_block_size,
            num_blocks,
            eos_token_ids: eos_token_ids.clone(),
            enable_prefix_caching: config.enable_prefix_caching,
        })?;
        let mut runner = runner_for(&config, backend, model, num_blocks)?;
        if !config.enforce_eager {
            runner.enable_decode_graphs(config.max_num_seqs, max_model_len);
        }
        Ok(Self {
            config,
            model_config,
            generation_config,
            tokenizer,
            eos_token_ids,
            scheduler,
            runner,
            stats: EngineStats::default(),
            num_top_logprobs: HashMap::new(),
            penalties: HashMap::new(),
            prompt_logprobs: HashMap::new(),
            workers: None,
            grammars: Grammars::default(),
        })
    }

    /// The effective config (`max_model_len` resolved: always `Some`).
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
    /// The longest sequence this engine serves, prompt plus completion (the resolved
    /// `max_model_len`: see [`crate::kv_sizing::resolve_max_model_len`]).
    pub fn max_model_len(&self) -> usize {
        self.scheduler.config().max_model_len
    }
    pub fn model_config(&self) -> &ModelConfig {
        &self.model_config
    }
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation_config
    }
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }
    /// Tokens that end a request (unless it sets `ignore_eos`).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Sampling defaults of generation_config.json (temperature, top_k, top_p, min_p,
    /// max_new_tokens; `do_sample = false` means greedy), over [`SamplingParams::default`].
    pub fn default_sampling_params(&self) -> SamplingParams {
        sampling_params_from(&self.generation_config)
    }

    /// Checks a request without queueing it (its structured output compiled, too); returns
    /// its prompt token ids.
    pub fn validate_request(
        &self,
        prompt: Prompt,
        params: &SamplingParams,
    ) -> std::result::Result<Vec<u32>, RequestError> {
        self.check_request(prompt, params).map(|(ids, _)| ids)
    }

    /// [`Self::validate_request`], returning the request's grammar matcher too (structured
    /// output: compiled last, after the cheap checks).
    fn check_request(
        &self,
        prompt: Prompt,
        params: &SamplingParams,
    ) -> std::result::Result<(Vec<u32>, Option<llguidance::Matcher>), RequestError> {
        let ids = match prompt {
            Prompt::TokenIds(ids) => ids,
            Prompt::Text(text) => {
                let tokenizer = self.tokenizer.as_ref().ok_or(RequestError::NoTokenizer)?;
                let max_bytes = tokenizer.max_text_bytes(self.max_model_len());
                if text.len() > max_bytes {
                    return Err(RequestError::PromptTextTooLong {
                        bytes: text.len(),
                        max_bytes,
                        max_model_len: self.max_model_len(),
                    });
                }
                tokenizer
                    .encode(&text)
                    .map_err(|e| RequestError::Tokenize(e.to_string()))?
            }
        };
        let vocab_size = self.model_config.vocab_size;
        if let Some((position, &token_id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= vocab_size)
        {
            return Err(RequestError::TokenOutOfVocab {
                token_id,
                position,
                vocab_size,
            });
        }
        if let Some(&(token_id, _)) = params
            .logit_bias
            .iter()
            .find(|&&(id, _)| id as usize >= vocab_size)
        {
            return Err(RequestError::LogitBiasOutOfVocab {
                token_id,
                vocab_size,
            });
        }
        if let Some(requested) = params.prompt_logprobs.filter(|&n| n > MAX_NUM_LOGPROBS) {
            return Err(RequestError::TooManyLogprobs {
                requested,
                max: MAX_NUM_LOGPROBS,
            });
        }
        // Emptiness, length against max_model_len and the KV cache, and the params: the
        // scheduler's rules, checked here so that a refused request is never queued. Then
        // whether it can grow to max_tokens within the whole cache: refused now, not aborted
        // mid-stream.
        self.scheduler.check_prompt(ids.len(), params)?;
        self.scheduler.check_growth(ids.len(), params)?;
        let matcher = match &params.structured_output {
            Some(spec) => Some(self.grammars.compiler.matcher(
                spec,
                self.tokenizer.as_ref(),
                &self.eos_token_ids,
                self.model_config.vocab_size,
            )?),
            None => None,
        };
        Ok((ids, matcher))
    }

    /// Validates and queues a request. A rejected request changes nothing.
    pub fn add_request(
        &mut self,
        prompt: impl Into<Prompt>,
        params: SamplingParams,
    ) -> Result<RequestId> {
        self.add_request_with_logprobs(prompt, params, None)
    }

    /// [`Self::add_request`]; with `Some(n)` every token it generates comes with
    /// its logprob and the `n` most likely alternatives in [`StepOutputs::logprobs`]
    /// (`n ≤` [`MAX_NUM_LOGPROBS`]).
    pub fn add_request_with_logprobs(
        &mut self,
        prompt: impl Into<Prompt>,
        params: SamplingParams,
        num_top_logprobs: Option<usize>,
    ) -> Result<RequestId> {
        if let Some(requested) = num_top_logprobs.filter(|&n| n > MAX_NUM_LOGPROBS) {
            return Err(EngineError::invalid_request(
                None,
                RequestError::TooManyLogprobs {
                    requested,
                    max: MAX_NUM_LOGPROBS,
                },
            ));
        }
        let (ids, matcher) = self
            .check_request(prompt.into(), &params)
            .map_err(|reason| EngineError::invalid_request(None, reason))?;
        let penalties = PenaltyState::new(&params, &ids);
        let prompt_logprobs = params
            .prompt_logprobs
            .map(|_| (PromptLogprobs::new(ids.len()), false));
        let id = self
            .scheduler
            .add(ids, params)
            .map_err(|e| EngineError::invalid_request(None, RequestError::Rejected(e)))?;
        if let Some(matcher) = matcher {
            self.grammars.matchers.insert(id, matcher);
        }
        if let Some(n) = num_top_logprobs {
            self.num_top_logprobs.insert(id, n);
        }
        if let Some(state) = penalties {
            self.penalties.insert(id, state);
        }
        if let Some(state) = prompt_logprobs {
            self.prompt_logprobs.insert(id, state);
        }
        Ok(id)
    }

    /// Runs one step: schedule, execute, postprocess. Returns the new tokens and
    /// the requests that finished. With nothing to do it returns empty outputs.
    pub fn step(&mut self) -> Result<StepOutputs> {
        let start = Instant::now();
        let mut out = StepOutputs::default();
        let scheduled = self.schedule(&mut out.finished)?;
        let scheduled_at = Instant::now();
        out.times.schedule = scheduled_at - start;
        if let Some(batch) = scheduled {
            let samples = self.execute(&batch, &mut out.times)?;
            let executed_at = Instant::now();
            self.abort_non_finite(&samples.non_finite, &mut out.finished)?;
            self.account_prompt_logprobs(&batch, samples.prompt_logprobs, &mut out)?;
            let grammar =
                self.grammars
                    .matchers
                    .advance(&batch, &samples.tokens, &samples.non_finite);
            self.abort_grammar_failures(&grammar, &mut out.finished)?;
            self.account(batch, &samples.tokens, samples.logprobs, &mut out)?;
            self.finish_completed_grammars(&grammar, &mut out.finished)?;
            out.times.postprocess = executed_at.elapsed();
            if !self.scheduler.has_unfinished() {
                // The last request just finished: what the backend keeps between steps is
                // worth nothing until the next one arrives.
                self.runner.backend().release_idle_memory();
            }
        }
        out.elapsed = start.elapsed();
        if let Some(kind) = out.kind {
            self.stats.num_steps += 1;
            let (tokens, time) = match kind {
                BatchKind::Prefill => (
                    &mut self.stats.num_prefill_tokens,
                    &mut self.stats.prefill_time,
                ),
                BatchKind::Decode => {
                    self.stats.num_decode_steps += 1;
                    self.stats.decode_step_times.add(&out.times);
                    (
                        &mut self.stats.num_decode_tokens,
                        &mut self.stats.decode_time,
                    )
                }
            };
            *tokens += out.num_tokens as u64;
            *time += out.elapsed;
        }
        Ok(out)
    }

    /// The next batch, or `None` with nothing to run. A request the scheduler finds it can
    /// never fit is aborted and pushed to `finished` with the reason; the others go on.
    fn schedule(&mut self, finished: &mut Vec<RequestOutput>) -> Result<Option<ScheduledBatch>> {
        loop {
            match self.scheduler.schedule() {
                Ok(batch) => return Ok(batch),
                Err(err @ SchedulerError::Unschedulable { seq_id, .. }) => {
                    let seq = self.scheduler.abort(seq_id).ok_or_else(|| {
                        EngineError::Internal(format!(
                            "scheduler reported sequence {seq_id} unschedulable but does not know it"
                        ))
                    })?;
                    tracing::warn!(request_id = seq_id, "aborting request: {err}");
                    finished.push(self.finish(seq, Some(err.to_string()))?);
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Runs `batch` on rank 0 (and, under tensor parallelism, on the workers' shards):
    /// one token per sequence, and logprobs for the requests that asked. A failed step
    /// aborts the batch's requests, since the scheduler would otherwise resume them from
    /// a position whose tokens never came. Fills `times.inputs` and `times.forward`.
    fn execute(&mut self, batch: &ScheduledBatch, times: &mut StepTimes) -> Result<StepSamples> {
        let start = Instant::now();
        let seqs = batch
            .seqs
            .iter()
            .map(|s| {
                self.scheduler.sequence(s.seq_id).ok_or_else(|| {
                    EngineError::Internal(format!(
                        "scheduled sequence {} is unknown to the scheduler",
                        s.seq_id
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params: Vec<&SamplingParams> = seqs.iter().map(|seq| &seq.params).collect();
        // Penalty inputs catch up with the tokens generated since the last step.
        for seq in &seqs {
            if let Some(state) = self.penalties.get_mut(&seq.seq_id) {
                state.update(seq.completion_token_ids());
            }
        }
        // Only built when some request in flight asked for logprobs, penalties or prompt
        // logprobs.
        let extras: Vec<SeqExtras<'_>> = if self.num_top_logprobs.is_empty()
            && self.penalties.is_empty()
            && self.prompt_logprobs.is_empty()
        {
            Vec::new()
        } else {
            seqs.iter()
                .map(|seq| SeqExtras {
                    num_top_logprobs: self.num_top_logprobs.get(&seq.seq_id).copied(),
                    penalties: self
                        .penalties
                        .get(&seq.seq_id)
                        .map(|state| state.penalties(&seq.params)),
                    prompt_logprobs: seq
                        .params
                        .prompt_logprobs
                        .map(|n| (&seq.token_ids[..seq.num_prompt_tokens], n)),
                })
                .collect()
        };
        // Structured output: `None` unless a constrained sequence samples in this step.
        let vocab_size = self.model_config.vocab_size;
        let mut masks = self.grammars.matchers.step_masks(batch, vocab_size);
        let runner_start = Instant::now();
        self.runner.take_input_time();
        let executed = match self.workers.as_mut() {
            None => self
                .runner
                .execute_with(batch, &params, &extras, masks.as_mut()),
            Some(workers) => workers.begin_step(batch).and_then(|()| {
                match self
                    .runner
                    .execute_with(batch, &params, &extras, masks.as_mut())
                {
                    Ok(out) => workers.end_step().map(|()| out),
                    Err(err) => Err(workers.fail_step(err)),
                }
            }),
        };
        // The runner reports how long it spent on its inputs; the rest of its call is the
        // forward pass and sampling.
        let runner_time = runner_start.elapsed();
        let runner_inputs = self.runner.take_input_time().min(runner_time);
        times.inputs = (runner_start - start) + runner_inputs;
        times.forward = runner_time - runner_inputs;
        executed.or_else(|err| {
            for seq in &batch.seqs {
                if let Some(finished) = self.scheduler.abort(seq.seq_id) {
                    self.finish(finished, Some(err.to_string()))?;
                }
            }
            Err(err)
        })
    }

    /// Aborts the requests whose logits had no finite maximum at this step, before the
    /// scheduler sees the step's tokens: it then skips them, and the rest of the batch goes
    /// on.
    fn abort_non_finite(
        &mut self,
        seq_ids: &[RequestId],
        finished: &mut Vec<RequestOutput>,
    ) -> Result<()> {
        for &seq_id in seq_ids {
            let err = EngineError::NonFiniteLogits { seq_id };
            tracing::warn!(request_id = seq_id, "aborting request: {err}");
            if let Some(seq) = self.scheduler.abort(seq_id) {
                finished.push(self.finish(seq, Some(err.to_string()))?);
            }
        }
        Ok(())
    }

    /// Appends the prompt logprobs scored in this step (`scored[i]` belongs to
    /// `batch.seqs[i]`) and gives out those now complete, once, in `out.prompt_logprobs`.
    fn account_prompt_logprobs(
        &mut self,
        batch: &ScheduledBatch,
        scored: Vec<Vec<TokenLogprobs>>,
        out: &mut StepOutputs,
    ) -> Result<()> {
        if self.prompt_logprobs.is_empty() {
            return Ok(());
        }
        for (seq, entries) in batch.seqs.iter().zip(scored) {
            let Some((acc, given)) = self.prompt_logprobs.get_mut(&seq.seq_id) else {
                continue; // did not ask, or aborted in this step (non-finite logits)
            };
            if seq.prompt_logprob_rows > 0 {
                acc.append(seq.num_computed_tokens + 1, entries)
                    .map_err(|e| EngineError::Internal(format!("request {}: {e}", seq.seq_id)))?;
            }
            if acc.is_complete() && !*given {
                *given = true;
                out.prompt_logprobs
                    .push((seq.seq_id, acc.entries().to_vec()));
            }
        }
        Ok(())
    }

    /// Aborts the requests whose grammar refused their token or gave no mask this step,
    /// before the scheduler sees the step's tokens (as [`Self::abort_non_finite`]).
    fn abort_grammar_failures(
        &mut self,
        grammar: &GrammarStep,
        finished: &mut Vec<RequestOutput>,
    ) -> Result<()> {
        for (seq_id, msg) in &grammar.failed {
            let err = EngineError::Grammar {
                seq_id: *seq_id,
                msg: msg.clone(),
            };
            tracing::warn!(request_id = seq_id, "aborting request: {err}");
            if let Some(seq) = self.scheduler.abort(*seq_id) {
                finished.push(self.finish(seq, Some(err.to_string()))?);
            }
        }
        Ok(())
    }

    /// Finishes the requests whose grammar is complete after this step's token with
    /// `Stop`: those the scheduler kept running are taken out of it, and one that it just
    /// finished for its length (the same token) is reported as stopped.
    fn finish_completed_grammars(
        &mut self,
        grammar: &GrammarStep,
        finished: &mut Vec<RequestOutput>,
    ) -> Result<()> {
        for &seq_id in &grammar.completed {
            if let Some(mut seq) = self.scheduler.abort(seq_id) {
                seq.finish_reason = FinishReason::Stop;
                finished.push(self.finish(seq, None)?);
            } else if let Some(out) = finished.iter_mut().find(|o| o.request_id == seq_id) {
                if out.finish_reason == FinishReason::Length {
                    out.finish_reason = FinishReason::Stop;
                }
            }
        }
        Ok(())
    }

    /// Hands the step's tokens to the scheduler and fills `out`: new tokens, logprobs,
    /// finished requests, the batch's kind and token count.
    fn account(
        &mut self,
        batch: ScheduledBatch,
        sampled: &[u32],
        logprobs: Vec<Option<TokenLogprobs>>,
        out: &mut StepOutputs,
    ) -> Result<()> {
        let kind = batch.kind;
        out.kind = Some(kind);
        out.num_tokens = match kind {
            BatchKind::Prefill => batch.num_tokens(),
            BatchKind::Decode => batch.num_seqs(),
        };
        out.logprobs = batch
            .seqs
            .iter()
            .zip(logprobs)
            .filter_map(|(s, lp)| Some((s.seq_id, lp?)))
            .collect();
        let step_output = self.scheduler.postprocess(batch, sampled)?;
        out.new_tokens = step_output.new_tokens;
        for finished in step_output.finished {
            out.finished.push(self.finish(finished, None)?);
        }
        Ok(())
    }

    /// Aborts a request at any time; returns it as finished (`Abort`), or `None` if unknown.
    pub fn abort(&mut self, request_id: RequestId) -> Result<Option<RequestOutput>> {
        match self.scheduler.abort(request_id) {
            Some(finished) => Ok(Some(self.finish(finished, None)?)),
            None => Ok(None),
        }
    }

    /// Under tensor parallelism, between steps and without blocking: checks the workers (a
    /// local worker process that exited is reaped and named with its exit status) and
    /// returns why the group is broken, now or by an earlier step. `None` while the group is
    /// whole, or without one. A broken group fails every later step: drop this engine and
    /// build a new one from [`LLMEngine::config`] to recover.
    pub fn check_tp_group(&mut self) -> Option<String> {
        self.workers.as_mut()?.check().map(str::to_owned)
    }

    /// Process ids of this host's tensor-parallel worker processes (empty without them).
    pub fn tp_worker_pids(&self) -> Vec<u32> {
        self.workers
            .as_ref()
            .map(WorkerGroup::local_worker_pids)
            .unwrap_or_default()
    }

    /// The device the model runs on.
    pub fn device(&self) -> nanovllm_kernels::Device {
        self.runner.backend().device()
    }

    /// Decode batch sizes replayed through captured CUDA graphs (empty when eager).
    pub fn cuda_graph_batch_sizes(&self) -> Vec<usize> {
        self.runner.cuda_graph_batch_sizes()
    }

    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished()
    }
    pub fn num_waiting(&self) -> usize {
        self.scheduler.num_waiting()
    }
    pub fn num_running(&self) -> usize {
        self.scheduler.num_running()
    }
    /// Counters since the engine was built.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            num_preemptions: self.scheduler.num_preemptions(),
            ..self.stats
        }
    }

    /// How many requests of `tokens_per_request` tokens (prompt and completion) the KV
    /// cache holds at once, as vLLM counts it (whole blocks per request; see
    /// [`crate::startup_log::max_concurrency`]).
    pub fn max_concurrency(&self, tokens_per_request: usize) -> f64 {
        let usage = self.kv_cache_usage();
        crate::startup_log::max_concurrency(usage.num_blocks, usage.block_size, tokens_per_request)
    }

    pub fn kv_cache_usage(&self) -> KvCacheUsage {
        let stats = self.scheduler.block_manager().stats();
        KvCacheUsage {
            num_blocks: stats.num_blocks,
            num_free_blocks: stats.num_free_blocks,
            block_size: self.config.kvcache_block_size,
        }
    }

    /// Forgets a finished sequence's engine-side state and builds its output.
    fn finish(&mut self, f: FinishedSeq, error: Option<String>) -> Result<RequestOutput> {
        self.num_top_logprobs.remove(&f.seq_id);
        self.penalties.remove(&f.seq_id);
        let prompt_logprobs = self
            .prompt_logprobs
            .remove(&f.seq_id)
            .filter(|(acc, _)| acc.is_complete())
            .map(|(acc, _)| acc.into_entries());
        self.grammars.matchers.remove(f.seq_id);
        tracing::debug!(
            request_id = f.seq_id,
            prompt_tokens = f.prompt_token_ids.len(),
            completion_tokens = f.completion_token_ids.len(),
            cached_tokens = f.num_cached_tokens,
            finish_reason = ?f.finish_reason,
            "request finished"
        );
        let text = match &self.tokenizer {
            Some(tok) => tok.decode(&f.completion_token_ids)?,
            None => String::new(),
        };
        Ok(RequestOutput {
            request_id: f.seq_id,
            prompt_token_ids: f.prompt_token_ids,
            token_ids: f.completion_token_ids,
            text,
            finish_reason: f.finish_reason,
            num_cached_tokens: f.num_cached_tokens,
            error,
            prompt_logprobs,
        })
    }
}

/// Sampling defaults from a generation config, over [`SamplingParams::default`].
pub fn sampling_params_from(gen: &GenerationConfig) -> SamplingParams {
    SamplingOverrides {
        // `do_sample = false` is Hugging Face's greedy decoding, whatever the temperature says.
        temperature: if gen.do_sample == Some(false) {
            Some(0.0)
        } else {
            gen.temperature
        },
        top_k: gen.top_k,
        top_p: gen.top_p,
        min_p: gen.min_p,
        max_tokens: gen.max_new_tokens,
        ..SamplingOverrides::default()
    }
    .over(&SamplingParams::default())
}

/// A runner over `num_blocks` KV blocks in the dtype, block size and sampling seed
/// `config` asks for. Rank 0 and every TP worker build theirs here, so their caches match.
pub(crate) fn runner_for(
    config: &EngineConfig,
    backend: Arc<dyn Backend>,
    model: Box<dyn Model>,
    num_blocks: usize,
) -> Result<ModelRunner> {
    let kv_dtype = config.kv_cache_dtype.dtype_on(backend.device());
    let mut runner = ModelRunner::new(
        backend,
        model,
        num_blocks,
        config.kvcache_block_size,
        kv_dtype,
        config.seed,
    )?;
    runner.run_forward_on_pool(config.tensor_parallel_size == 1);
    Ok(runner)
}

/// config.json at `path` (the file itself, so a bare `configs/*.json` works for dummy weights).
pub(crate) fn read_model_config(path: &Path) -> Result<ModelConfig> {
    let json = std::fs::read_to_string(path).map_err(|error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(ModelConfig::from_json_str(&json, path)?)
}

/// The configured tokenizer: required when `tokenizer` is set; else the model
/// directory's when it has a tokenizer.json, else none (token-id prompts only).
fn load_tokenizer(config: &EngineConfig) -> Result<Option<Tokenizer>> {
    match &config.tokenizer {
        Some(dir) => Tokenizer::from_dir(dir).map(Some),
        None => {
            let dir = config.model_dir();
            if dir.join("tokenizer.json").is_file() {
                Tokenizer::from_dir(&dir).map(Some)
            } else {
                tracing::info!(
                    "no tokenizer.json in {}: only token-id prompts are accepted",
                    dir.display()
                );
                Ok(None)
            }
        }
    }
}
