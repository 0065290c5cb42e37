//! Engine logprobs ([`TokenLogprobs`]) in the two OpenAI shapes: the legacy
//! completions object (parallel lists, top alternatives as `{token: logprob}`
//! maps that also hold the sampled token, as vLLM does) and the chat
//! `content` list (token, logprob, UTF-8 bytes, `top_logprobs`).
//!
//! A token's string is its own decoded text (special tokens decode to "").
//! JSON has no -inf, so an impossible token's logprob is written as -9999.0.

use nanovllm_core::{TokenLogprobs, Tokenizer};
use serde_json::{Map, Value as Json};

use super::openai_types::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs};

/// What a logprob of -inf is written as.
const NEG_INF_LOGPROB: f32 = -9999.0;

fn finite(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        NEG_INF_LOGPROB
    }
}

fn token_text(tokenizer: &Tokenizer, token_id: u32) -> String {
    tokenizer.decode(&[token_id]).unwrap_or_default()
}

/// The completions object for `logprobs`, with text offsets counted from `offset`
/// (the length of the text before these tokens). Returns the offset after them.
pub fn completion_logprobs(
    tokenizer: &Tokenizer,
    logprobs: &[TokenLogprobs],
    offset: usize,
) -> (CompletionLogprobs, usize) {
    let mut out = CompletionLogprobs::default();
    let offset = logprobs.iter().fold(offset, |offset, lp| {
        push_completion_entry(
            &mut out,
            tokenizer,
            lp.token_id,
            Some(lp),
            usize::MAX,
            offset,
        )
    });
    (out, offset)
}

/// Appends one token's entry to `out`: `logprobs` `None` (the first token of an echoed
/// prompt) gives null logprobs; at most `num_top` alternatives are listed. Returns the
/// text offset after the token.
pub fn push_completion_entry(
    out: &mut CompletionLogprobs,
    tokenizer: &Tokenizer,
    token_id: u32,
    logprobs: Option<&TokenLogprobs>,
    num_top: usize,
    offset: usize,
) -> usize {
    let token = token_text(tokenizer, token_id);
    let top = logprobs.map(|lp| {
        let mut top = Map::new();
        // Most likely first: when two tokens share a string, the likelier one stays.
        for alt in lp.top.iter().take(num_top) {
            top.entry(token_text(tokenizer, alt.token_id))
                .or_insert_with(|| Json::from(finite(alt.logprob) as f64));
        }
        top.entry(token.clone())
            .or_insert_with(|| Json::from(finite(lp.logprob) as f64));
        top
    });
    out.text_offset.push(offset);
    let next = offset + token.len();
    out.tokens.push(token);
    out.token_logprobs
        .push(logprobs.map(|lp| finite(lp.logprob) as f64));
    out.top_logprobs.push(top);
    next
}

/// The chat `logprobs.content` list.
pub fn chat_logprobs(tokenizer: &Tokenizer, logprobs: &[TokenLogprobs]) -> ChatLogprobs {
    ChatLogprobs {
        content: logprobs
            .iter()
            .map(|lp| {
                let token = token_text(tokenizer, lp.token_id);
                ChatTokenLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob: finite(lp.logprob),
                    top_logprobs: lp
                        .top
                        .iter()
                        .map(|alt| {
                            let token = token_text(tokenizer, alt.token_id);
                            ChatTopLogprob {
                                bytes: token.as_bytes().to_vec(),
                                token,
                                logprob: finite(alt.logprob),
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}
