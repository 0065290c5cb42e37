//! Completions' `echo: true`: each choice's text starts with its prompt, and
//! with `logprobs` its logprobs start with the prompt tokens' entries, as vLLM
//! returns them: the first prompt token with null `token_logprobs` and
//! `top_logprobs` (nothing precedes it), every later one with its logprob
//! given the tokens before it and its top alternatives. The prompt logprobs
//! come from the engine (`SamplingParams::prompt_logprobs`), once per
//! sequence, before its first token.
//!
//! The echoed text is the prompt as given (a text prompt) or its tokens
//! decoded with special tokens kept (a token-id prompt); text offsets of the
//! logprobs count the tokens' own strings, as for generated tokens.

use nanovllm_core::{TokenLogprobs, Tokenizer};

use super::logprobs_format::push_completion_entry;
use super::openai_types::CompletionLogprobs;

/// What a completions request echoes, per prompt.
#[derive(Clone, Debug)]
pub struct Echo {
    /// Each prompt's text and token ids.
    prompts: Vec<(String, Vec<u32>)>,
    /// Choices per prompt: choice `c` echoes prompt `c / n`.
    n: usize,
    /// `Some(k)`: logprobs with `k` alternatives are returned.
    num_top_logprobs: Option<usize>,
}

impl Echo {
    pub fn new(
        prompts: Vec<(String, Vec<u32>)>,
        n: usize,
        num_top_logprobs: Option<usize>,
    ) -> Self {
        Self {
            prompts,
            n: n.max(1),
            num_top_logprobs,
        }
    }

    fn prompt(&self, choice: usize) -> Option<&(String, Vec<u32>)> {
        self.prompts.get(choice / self.n)
    }

    /// The text choice `choice` starts with.
    pub fn text(&self, choice: usize) -> &str {
        self.prompt(choice).map_or("", |(text, _)| text)
    }

    /// The prompt tokens' logprobs entries of choice `choice` (`None` without `logprobs`),
    /// from the engine's `prompt_logprobs` (one entry per prompt token, the first `None`),
    /// and the text offset after them.
    pub fn logprobs(
        &self,
        tokenizer: &Tokenizer,
        choice: usize,
        prompt_logprobs: &[Option<TokenLogprobs>],
    ) -> Option<(CompletionLogprobs, usize)> {
        let num_top = self.num_top_logprobs?;
        let ids = self.prompt(choice).map_or(&[][..], |(_, ids)| ids);
        let mut out = CompletionLogprobs::default();
        let mut offset = 0;
        for (i, &id) in ids.iter().enumerate() {
            let lp = prompt_logprobs.get(i).and_then(Option::as_ref);
            offset = push_completion_entry(&mut out, tokenizer, id, lp, num_top, offset);
        }
        Some((out, offset))
    }
}

/// `first` followed by `rest` (whose offsets already count from the end of `first`).
pub fn concat(mut first: CompletionLogprobs, rest: CompletionLogprobs) -> CompletionLogprobs {
    first.tokens.extend(rest.tokens);
    first.token_logprobs.extend(rest.token_logprobs);
    first.top_logprobs.extend(rest.top_logprobs);
    first.text_offset.extend(rest.text_offset);
    first
}

#[cfg(test)]
mod tests {
    use nanovllm_core::TopLogprob;
    use serde_json::{json, Value as Json};

    use super::*;
    use crate::serve::tests::tokenizer;

    fn lp(token_id: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprobs {
        TokenLogprobs {
            token_id,
            logprob,
            top: top
                .iter()
                .map(|&(token_id, logprob)| TopLogprob { token_id, logprob })
                .collect(),
        }
    }

    #[test]
    fn prompt_entries_start_with_a_null_and_count_offsets() {
        let tok = tokenizer();
        let ids = tok.encode("The sky is").unwrap();
        assert!(ids.len() >= 3, "{ids:?}");
        let other = tok.encode(" blue").unwrap()[0];
        let echo = Echo::new(vec![("The sky is".into(), ids.clone())], 2, Some(1));
        // Choice 1 is prompt 0's second choice.
        assert_eq!(echo.text(1), "The sky is");
        // Entries for the first three tokens only: the others read as nulls.
        let prompt_logprobs = vec![
            None,
            Some(lp(ids[1], -2.0, &[(other, -1.0), (ids[1], -2.0)])),
            Some(lp(ids[2], -0.5, &[(ids[2], -0.5), (other, -3.0)])),
        ];
        let (out, offset) = echo.logprobs(&tok, 1, &prompt_logprobs).unwrap();
        let strings: Vec<String> = ids.iter().map(|&id| tok.decode(&[id]).unwrap()).collect();
        assert_eq!(out.tokens, strings);
        assert_eq!(out.token_logprobs[..3], [None, Some(-2.0), Some(-0.5)]);
        assert!(out.token_logprobs[3..].iter().all(Option::is_none));
        // One alternative (num_top), plus the prompt's own token when it is not that one.
        let top: Vec<Json> = out.top_logprobs.iter().map(|t| json!(t.clone())).collect();
        assert_eq!(top[0], Json::Null);
        assert_eq!(
            top[1],
            json!({tok.decode(&[other]).unwrap(): -1.0, strings[1].clone(): -2.0})
        );
        assert_eq!(top[2], json!({strings[2].clone(): -0.5}));
        let mut offsets = vec![0];
        for s in &strings {
            offsets.push(offsets.last().unwrap() + s.len());
        }
        assert_eq!(offset, offsets.pop().unwrap());
        assert_eq!(out.text_offset, offsets);
        // Without `logprobs` there are no entries; missing prompt logprobs read as nulls.
        assert!(Echo::new(vec![("x".into(), ids.clone())], 1, None)
            .logprobs(&tok, 0, &[])
            .is_none());
        let (out, _) = echo.logprobs(&tok, 0, &[]).unwrap();
        assert_eq!(out.token_logprobs, vec![None; ids.len()]);
    }

    #[test]
    fn concat_keeps_the_order() {
        let tok = tokenizer();
        let ids = tok.encode("a b").unwrap();
        let echo = Echo::new(vec![("a b".into(), ids.clone())], 1, Some(0));
        let (head, offset) = echo.logprobs(&tok, 0, &[]).unwrap();
        let (tail, _) = crate::serve::logprobs_format::completion_logprobs(
            &tok,
            &[lp(ids[0], -1.0, &[])],
            offset,
        );
        let all = concat(head, tail);
        assert_eq!(all.tokens.len(), ids.len() + 1);
        assert_eq!(all.text_offset.last(), Some(&offset));
        assert_eq!(all.token_logprobs.last(), Some(&Some(-1.0)));
    }
}
