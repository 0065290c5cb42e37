//! The engine's error type. Every variant names what is wrong and what to do.
//!
//! One convention for causes, in every crate: a message includes its cause, and no
//! variant also returns it from `source()` (no `#[source]`, `#[from]` only on
//! `#[error(transparent)]`), so a printer that walks the chain (anyhow's `{:#}` in the
//! CLI) and one that does not (`to_string()` in serve's bodies, `tracing` lines) both
//! say each cause exactly once.

use std::path::PathBuf;

use nanovllm_kernels::KernelError;
use nanovllm_models::ModelError;
use nanovllm_scheduler::{SchedulerError, SeqId};

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Bytes as GiB, for messages.
fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Everything the engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A hub model (`owner/name`) could not be had from the cache or the hub.
    #[cfg(feature = "hub")]
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    /// An [`crate::EngineConfig`] field holds a value outside its accepted range.
    #[error("invalid engine config: {field} = {value}: expected {expected}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A config file (TOML engine config, tokenizer_config.json, ...) cannot be read or parsed.
    #[error("cannot load {path}: {msg}")]
    ConfigFile { path: PathBuf, msg: String },
    /// The configuration asks for something this build cannot do.
    #[error("unsupported: {what}")]
    Unsupported { what: String },
    #[error("tokenizer error ({path}): {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    /// A request was rejected before anything ran. `index` is the prompt's
    /// position in an `LLM::generate` call, `None` for a single `add_request`.
    #[error("invalid request{}: {reason}", index.map(|i| format!(" #{i}")).unwrap_or_default())]
    InvalidRequest {
        index: Option<usize>,
        reason: RequestError,
    },
    /// `LLM::generate` got a list of sampling params whose length differs from the prompts'.
    #[error("got {num_params} sampling params for {num_prompts} prompts: pass one SamplingParams for all, or exactly one per prompt")]
    ParamsCountMismatch {
        num_prompts: usize,
        num_params: usize,
    },
    /// The KV-cache budget does not hold a single block.
    #[error("a KV-cache budget of {budget_bytes} bytes holds no block of {bytes_per_block} bytes: raise kv_cache_memory_gib, or lower kvcache_block_size")]
    KvCacheTooSmall {
        budget_bytes: u64,
        bytes_per_block: usize,
    },
    /// An explicit `max_model_len` longer than the whole KV cache (vLLM refuses it too).
    #[error("max_model_len = {max_model_len} does not fit in the KV cache, which holds {cache_tokens} tokens ({num_blocks} blocks of {block_size}): give the cache more memory (--kv-cache-memory-gib on the CPU, --gpu-memory-utilization on a GPU), lower --max-model-len to at most {cache_tokens}, or leave it unset to get what fits")]
    MaxModelLenExceedsKvCache {
        max_model_len: usize,
        cache_tokens: usize,
        num_blocks: usize,
        block_size: usize,
    },
    /// GPU memory within `gpu_memory_utilization` leaves no room for a single KV block.
    #[error("gpu_memory_utilization = {gpu_memory_utilization} allows {allowed_bytes} of the GPU's {total_bytes} bytes, but {used_bytes} are in use (weights, CUDA context, other processes) and a prefill of max_num_batched_tokens needs {peak_activation_bytes} more for activations: no room for one KV block of {bytes_per_block} bytes. Raise gpu_memory_utilization, lower max_num_batched_tokens, or free GPU memory")]
    GpuMemoryTooSmall {
        gpu_memory_utilization: f64,
        total_bytes: u64,
        allowed_bytes: u64,
        used_bytes: u64,
        peak_activation_bytes: u64,
        bytes_per_block: usize,
    },
    /// A large host allocation (weights, the CPU KV cache) would not fit in the memory the
    /// machine has available: refused before allocating, instead of aborting.
    #[error("{what} needs {:.1} GiB but the machine has {:.1} GiB available: {fix}", gib(*needed_bytes), gib(*available_bytes))]
    HostMemoryTooSmall {
        what: String,
        needed_bytes: u64,
        available_bytes: u64,
        fix: String,
    },
    /// The logits of a sequence have no finite maximum (NaN or -inf everywhere, or a +inf):
    /// the model produced garbage. The engine aborts that request alone.
    #[error("sequence {seq_id}: logits hold no finite maximum (NaN or all -inf, or +inf); the model or its weights are broken")]
    NonFiniteLogits { seq_id: SeqId },
    /// A request's grammar refused the token sampled for it, or failed to give a token
    /// mask (an llguidance error; should not happen). The engine aborts that request alone.
    #[error("sequence {seq_id}: structured output failed: {msg}")]
    Grammar { seq_id: SeqId, msg: String },
    /// A benchmark setting ([`crate::bench`]) that the workload or the model cannot run.
    #[error("invalid benchmark {what} = {value}: expected {expected}")]
    InvalidBenchmark {
        what: &'static str,
        value: String,
        expected: String,
    },
    /// A tensor-parallel rank failed, died, or could not be reached; names the rank.
    #[error("tensor parallelism: {0}")]
    TensorParallel(String),
    /// An engine invariant broke (a bug, not a user error).
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Why a single request was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    // The scheduler owns the prompt rules and their wording (`Scheduler::check_prompt`);
    // these two variants keep their own names so callers can match them without it.
    #[error("{}", SchedulerError::EmptyPrompt)]
    EmptyPrompt,
    #[error("token id {token_id} at prompt position {position} is out of range: the model's vocab_size is {vocab_size}")]
    TokenOutOfVocab {
        token_id: u32,
        position: usize,
        vocab_size: usize,
    },
    #[error("{}", SchedulerError::PromptTooLong { prompt_len: *prompt_len, max_model_len: *max_model_len })]
    PromptTooLong {
        prompt_len: usize,
        max_model_len: usize,
    },
    /// A text prompt too long to fit `max_model_len` tokens whatever it says, refused before
    /// tokenizing ([`crate::Tokenizer::max_text_bytes`]).
    #[error("prompt of {bytes} bytes cannot fit max_model_len = {max_model_len} tokens (at most {max_bytes} bytes can): shorten it or raise max_model_len")]
    PromptTextTooLong {
        bytes: usize,
        max_bytes: usize,
        max_model_len: usize,
    },
    #[error("a text prompt needs a tokenizer but none is loaded: set `tokenizer` to a directory holding tokenizer.json, or pass token ids")]
    NoTokenizer,
    #[error("cannot tokenize the prompt: {0}")]
    Tokenize(String),
    /// A `logit_bias` entry for a token the model does not have.
    #[error("logit_bias names token {token_id}, outside the model's vocabulary of {vocab_size} tokens (ids 0..{vocab_size}): remove it or use an id below {vocab_size}")]
    LogitBiasOutOfVocab { token_id: u32, vocab_size: usize },
    /// More top logprobs than a step computes per token.
    #[error("{requested} top logprobs asked for; at most {max} are supported")]
    TooManyLogprobs { requested: usize, max: usize },
    /// The chat template refused the messages (`raise_exception`) or failed on them.
    #[error("cannot apply the chat template: {0}")]
    ChatTemplate(String),
    /// Refused by the scheduler: bad sampling params, or a prompt the KV cache can never hold.
    #[error(transparent)]
    Rejected(SchedulerError),
    /// The structured output (`form`: json_object, json_schema, regex, choice, grammar)
    /// does not compile; `msg` is llguidance's (or the parser's) account of why.
    #[error("invalid {form} structured output: {msg}; fix it and resend the request")]
    InvalidGrammar { form: &'static str, msg: String },
    /// Structured output needs the tokenizer (the grammar is matched against its tokens).
    #[error("structured output needs a tokenizer but none is loaded: set `tokenizer` to a directory holding tokenizer.json")]
    StructuredOutputNeedsTokenizer,
}

impl From<SchedulerError> for RequestError {
    fn from(error: SchedulerError) -> Self {
        match error {
            SchedulerError::EmptyPrompt => RequestError::EmptyPrompt,
            SchedulerError::PromptTooLong {
                prompt_len,
                max_model_len,
            } => RequestError::PromptTooLong {
                prompt_len,
                max_model_len,
            },
            other => RequestError::Rejected(other),
        }
    }
}

impl EngineError {
    /// Wraps a request rejection, naming the prompt's index when there is one.
    pub fn invalid_request(index: Option<usize>, reason: RequestError) -> Self {
        EngineError::InvalidRequest { index, reason }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use nanovllm_kernels::DType;

    use super::*;

    /// What anyhow's `{:#}` prints: each error of the chain, joined by ": ".
    fn render_chain(error: &dyn Error) -> String {
        let mut parts = vec![error.to_string()];
        let mut cause = error.source();
        while let Some(e) = cause {
            parts.push(e.to_string());
            cause = e.source();
        }
        parts.join(": ")
    }

    fn missing_file() -> ModelError {
        ModelError::Io {
            path: "/nonexistent/config.json".into(),
            error: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
    }

    #[test]
    fn every_error_that_wraps_a_cause_says_it_once() {
        let not_found = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        let kernel = || KernelError::UnsupportedDType {
            op: "matmul",
            dtype: DType::U32,
        };
        let kernel_text = kernel().to_string();
        let scheduler = SchedulerError::PromptExceedsCache {
            prompt_len: 9,
            needed_blocks: 2,
            block_size: 8,
            num_blocks: 1,
        };
        let scheduler_text = scheduler.to_string();
        let cases: Vec<(Box<dyn Error>, &str)> = vec![
            (Box::new(missing_file()), &not_found),
            (Box::new(EngineError::Model(missing_file())), &not_found),
            (Box::new(ModelError::Kernel(kernel())), &kernel_text),
            (Box::new(EngineError::Kernel(kernel())), &kernel_text),
            (
                Box::new(EngineError::Model(ModelError::Kernel(kernel()))),
                &kernel_text,
            ),
            (
                Box::new(EngineError::Scheduler(scheduler.clone())),
                &scheduler_text,
            ),
            (
                Box::new(RequestError::Rejected(scheduler.clone())),
                &scheduler_text,
            ),
            (
                Box::new(EngineError::invalid_request(
                    Some(3),
                    RequestError::Rejected(scheduler),
                )),
                &scheduler_text,
            ),
        ];
        for (error, cause) in cases {
            let shown = error.to_string();
            let walked = render_chain(error.as_ref());
            assert_eq!(shown.matches(cause).count(), 1, "{cause:?} in {shown:?}");
            assert_eq!(walked.matches(cause).count(), 1, "{cause:?} in {walked:?}");
        }
        assert_eq!(
            render_chain(&EngineError::Model(missing_file())),
            format!("cannot read /nonexistent/config.json: {not_found}")
        );
    }

    #[test]
    fn scheduler_refusals_keep_their_request_error_variant_and_wording() {
        let too_long = SchedulerError::PromptTooLong {
            prompt_len: 9,
            max_model_len: 8,
        };
        for (error, expected) in [
            (SchedulerError::EmptyPrompt, RequestError::EmptyPrompt),
            (
                too_long.clone(),
                RequestError::PromptTooLong {
                    prompt_len: 9,
                    max_model_len: 8,
                },
            ),
            (
                SchedulerError::InvalidConfig("x".into()),
                RequestError::Rejected(SchedulerError::InvalidConfig("x".into())),
            ),
        ] {
            let message = error.to_string();
            let converted = RequestError::from(error);
            assert_eq!(converted, expected);
            assert_eq!(converted.to_string(), message);
        }
        assert_eq!(
            RequestError::from(too_long).to_string(),
            "prompt of 9 tokens is longer than max_model_len = 8: shorten it or raise max_model_len"
        );
    }
}
