//! # nanovllm-core
//!
//! The engine. Owns [`EngineConfig`], the user-facing [`LLM`] (batch
//! `generate`) and [`LLMEngine`] (step API: add_request / step / abort), the
//! [`ModelRunner`] (batch preparation on the device; the backend samples there, see
//! [`sampling`] for seeds, steps, logit bias and penalties, and [`runner`] for prompt
//! logprobs), KV-cache sizing ([`kv_sizing`]), the [`Tokenizer`],
//! structured output with llguidance ([`structured`]: grammars, per-request matchers, token
//! masks), the bench.py throughput run ([`bench`]) and perplexity through prompt logprobs
//! ([`perplexity`]).
//!
//! It wires the scheduler (plain data) to a model (tensors): the scheduler
//! never sees a tensor and the model never sees a scheduling decision.
//!
//! ```no_run
//! use nanovllm_core::{EngineConfig, LLM, SamplingParams};
//! let mut llm = LLM::new(EngineConfig::new("models/Qwen3-0.6B"))?;
//! let outputs = llm.generate(["Hello, my name is"], SamplingParams::greedy(32))?;
//! println!("{}", outputs[0].text);
//! # Ok::<(), nanovllm_core::EngineError>(())
//! ```

pub mod bench;
pub mod chat_template;
pub mod config;
pub mod decode_graph;
pub mod device;
pub mod engine;
mod error;
pub mod host_memory;
#[cfg(feature = "hub")]
pub mod hub;
pub mod kv_sizing;
pub mod llm;
pub mod logprobs;
pub mod perplexity;
pub mod runner;
pub mod sampling;
pub mod startup_log;
pub mod structured;
pub mod threads;
pub mod tokenizer;
pub mod tp;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod testing;

pub use bench::{BenchOptions, BenchReport, Workload, WorkloadSpec};
pub use chat_template::{ChatMessage, ChatTemplate};
pub use config::{
    DeviceKind, EngineConfig, GenerationConfigSource, KvCacheDType, ModelDType, Quantization,
};
pub use engine::{
    sampling_params_from, EngineStats, KvCacheUsage, LLMEngine, Prompt, RequestId, RequestOutput,
    StepOutputs, StepTimes,
};
pub use error::{EngineError, RequestError, Result};
pub use kv_sizing::cpu_num_kvcache_blocks;
pub use llm::{Output, ParamsArg, Progress, LLM};
pub use logprobs::{TokenLogprobs, TopLogprob};
pub use runner::{ModelRunner, SeqExtras, StepSamples, PROMPT_LOGITS_ROWS_PER_PASS};
pub use tokenizer::{IncrementalDetokenizer, Tokenizer};

// Re-exported so that front ends need only this crate.
pub use nanovllm_models::{LoadFormat, LoadProgress, LoadProgressFn};
pub use nanovllm_scheduler::{
    BatchKind, FinishReason, SamplingOverrides, SamplingParams, SchedulerError, StructuredOutput,
};
