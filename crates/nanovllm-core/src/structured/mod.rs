//! Structured output (constrained decoding) with llguidance: a request's
//! [`StructuredOutput`](nanovllm_scheduler::StructuredOutput) (JSON object, JSON schema,
//! regex, choice, Lark) becomes a per-request llguidance `Matcher` whose token mask is
//! applied in the sampling op (`SamplingRow::allowed_tokens`, on every backend).
//!
//! The life of a constrained request:
//! 1. **Validation** (`LLMEngine::add_request` / `validate_request`): [`grammar`] turns the
//!    spec into an llguidance grammar (compact JSON; `strict` forbids unlisted properties),
//!    [`compiler`] compiles it against the tokenizer. A grammar that does not compile is a
//!    [`RequestError::InvalidGrammar`](crate::RequestError::InvalidGrammar) naming the
//!    problem; nothing is queued.
//! 2. **Each step that samples it** ([`matchers`], [`masks`]): its mask is computed on the
//!    host while the forward pass runs: on a device, after the forward is queued and before
//!    sampling waits for it, rows spread over the (then idle) rayon pool; on the CPU, on one
//!    thread beside the forward pass, which keeps the pool busy. Prompt chunks
//!    that do not sample compute no mask.
//! 3. **After sampling**: the matcher consumes the sampled token. A complete grammar (no
//!    token may follow, or it chose an end-of-sequence token the grammar allowed) finishes
//!    the request with `FinishReason::Stop`, also when `max_tokens` ran out at that very
//!    token. A token the matcher refuses, or a mask that fails, aborts that request with an
//!    error; the rest of the batch goes on.
//!
//! Under tensor parallelism only rank 0 samples (the workers' tokens are discarded), so only
//! rank 0's engine holds matchers. Unconstrained steps pay one emptiness check.

pub mod compiler;
pub mod grammar;
pub mod masks;
pub mod matchers;

pub use compiler::GrammarCompiler;
pub use masks::StepMasks;
pub use matchers::{GrammarMatchers, GrammarStep};

/// The engine's structured-output state: the compiler (its tokenizer side built on first
/// use) and the matchers of the requests in flight.
#[derive(Debug, Default)]
pub struct Grammars {
    pub compiler: GrammarCompiler,
    pub matchers: GrammarMatchers,
}
