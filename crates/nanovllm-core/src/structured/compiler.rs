//! [`GrammarCompiler`]: compiles a request's [`StructuredOutput`] into an llguidance
//! [`Matcher`] against the engine's tokenizer.
//!
//! The tokenizer side (llguidance's token trie over every vocabulary entry, and its
//! `ParserFactory`) is built once per engine, lazily, by the first constrained request:
//! for Qwen3's 151k-entry vocabulary it takes a noticeable fraction of a second (logged at
//! debug with its time), which an engine that never sees a constrained request, or a
//! tokenizer-less one, should not pay at start-up. A build that fails is remembered and
//! every constrained request is refused with its message.
//!
//! The trie covers the model's whole `vocab_size` (entries beyond the tokenizer's are
//! padding, never allowed), so a mask has exactly the sampling op's `vocab_size.div_ceil(32)`
//! words. The engine's end-of-sequence tokens are the grammar's: a mask allows them where
//! the grammar may end.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use llguidance::{Matcher, ParserFactory};
use nanovllm_scheduler::StructuredOutput;
use toktrie_hf_tokenizers::ByteTokenizer;

use super::grammar::top_level_grammar;
use crate::error::RequestError;
use crate::tokenizer::Tokenizer;

/// Builds matchers; the tokenizer side is built on first use (see the module docs).
#[derive(Default)]
pub struct GrammarCompiler {
    factory: OnceLock<Result<Arc<ParserFactory>, String>>,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("built", &self.factory.get().map(Result::is_ok))
            .finish()
    }
}

impl GrammarCompiler {
    /// A matcher at the start of `spec`'s grammar, or why the grammar cannot be used
    /// (malformed, does not compile, no tokenizer).
    pub fn matcher(
        &self,
        spec: &StructuredOutput,
        tokenizer: Option<&Tokenizer>,
        eos_token_ids: &[u32],
        vocab_size: usize,
    ) -> Result<Matcher, RequestError> {
        let tokenizer = tokenizer.ok_or(RequestError::StructuredOutputNeedsTokenizer)?;
        let factory = self
            .factory
            .get_or_init(|| build_factory(tokenizer, eos_token_ids, vocab_size))
            .as_ref()
            .map_err(|msg| RequestError::InvalidGrammar {
                form: form_name(spec),
                msg: format!("the tokenizer cannot drive a grammar: {msg}"),
            })?;
        let invalid = |msg: String| RequestError::InvalidGrammar {
            form: form_name(spec),
            msg,
        };
        let grammar = top_level_grammar(spec).map_err(invalid)?;
        let parser = factory
            .create_parser(grammar)
            .map_err(|e| invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(msg) => Err(invalid(msg)),
            None => Ok(matcher),
        }
    }
}

/// llguidance's tokenizer side for `tokenizer`, over `vocab_size` tokens, ending at
/// `eos_token_ids` (those the tokenizer knows; its own EOS when none).
fn build_factory(
    tokenizer: &Tokenizer,
    eos_token_ids: &[u32],
    vocab_size: usize,
) -> Result<Arc<ParserFactory>, String> {
    let start = Instant::now();
    let mut bytes =
        ByteTokenizer::from_tokenizer(tokenizer.hf().clone()).map_err(|e| e.to_string())?;
    let known = bytes.tokrx_info().vocab_size;
    let eos: Vec<u32> = eos_token_ids
        .iter()
        .copied()
        .filter(|&id| id < known)
        .collect();
    // `set_eos_tokens` asserts a non-empty list of known ids: checked just above.
    if !eos.is_empty() {
        bytes.set_eos_tokens(&eos);
    }
    let env = bytes
        .into_tok_env(Some(vocab_size))
        .map_err(|e| e.to_string())?;
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
    // llguidance's own logging goes to stderr: errors reach the request's message instead.
    factory.quiet();
    tracing::debug!(
        vocab_size,
        elapsed_ms = start.elapsed().as_secs_f64() * 1e3,
        "built the grammar tokenizer (llguidance token trie)"
    );
    Ok(Arc::new(factory))
}

/// The name of `spec`'s form in messages.
fn form_name(spec: &StructuredOutput) -> &'static str {
    match spec {
        StructuredOutput::JsonObject => "json_object",
        StructuredOutput::JsonSchema { .. } => "json_schema",
        StructuredOutput::Regex(_) => "regex",
        StructuredOutput::Choice(_) => "choice",
        StructuredOutput::Lark(_) => "grammar",
    }
}
