//! The tokenizer: a Hugging Face `tokenizer.json` plus the bits of
//! `tokenizer_config.json` the engine needs (eos token, chat template).
//!
//! `encode` follows HF's default (`add_special_tokens = true`); `decode` skips
//! special tokens. [`IncrementalDetokenizer`] turns a token stream into text
//! deltas for streaming: a delta is only emitted once its text no longer ends
//! in U+FFFD, so a multi-byte UTF-8 character split across tokens is never
//! shown half-decoded.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// A loaded tokenizer. Cheap to share by reference; decoding is `&self`.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    dir: PathBuf,
    eos_token_id: Option<u32>,
    chat_template: Option<String>,
    /// Longest vocabulary entry in bytes (see [`Self::max_text_bytes`]).
    longest_token_bytes: usize,
}

impl Tokenizer {
    /// The Hugging Face tokenizer itself (for llguidance's token trie, [`crate::structured`]).
    pub(crate) fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        let inner =
            tokenizers::Tokenizer::from_file(&file).map_err(|e| EngineError::Tokenizer {
                path: file.clone(),
                msg: e.to_string(),
            })?;
        let config_file = dir.join("tokenizer_config.json");
        let (eos_token, chat_template) = if config_file.is_file() {
            read_tokenizer_config(&config_file)?
        } else {
            (None, None)
        };
        let eos_token_id = match eos_token {
            Some(tok) => Some(
                inner
                    .token_to_id(&tok)
                    .ok_or_else(|| EngineError::Tokenizer {
                        path: config_file.clone(),
                        msg: format!(
                            "eos_token {tok:?} is not in the vocabulary of {}",
                            file.display()
                        ),
                    })?,
            ),
            None => None,
        };
        let longest_token_bytes = inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(Self {
            inner,
            dir: dir.to_path_buf(),
            eos_token_id,
            chat_template,
            longest_token_bytes,
        })
    }

    /// The most bytes a text can have and still encode to at most `max_tokens` tokens, so
    /// that a longer prompt is refused before it is tokenized (a multi-megabyte prompt
    /// would otherwise cost seconds of CPU and ~200 bytes of memory per byte).
    ///
    /// Why it never refuses a text that fits: every token covers at most as many bytes of
    /// normalized text as its vocabulary entry has (every scheme spells each byte with at
    /// least one: byte-level BPE one character per byte, SentencePiece `▁` for a space and
    /// `<0x41>` for a byte, WordPiece a `##` prefix), so `max_tokens` tokens cover at most
    /// `max_tokens × longest entry` normalized bytes; and normalization shrinks text at
    /// most about 3 to 1 (NFC: Hangul L+V+T jamo, 9 bytes, compose into one 3-byte
    /// syllable), hence the factor 4. (Qwen3: 256-byte entries, 1 KiB per token.)
    pub fn max_text_bytes(&self, max_tokens: usize) -> usize {
        max_tokens
            .saturating_mul(self.longest_token_bytes)
            .saturating_mul(4)
    }

    /// Token ids of `text`, with the tokenizer's special tokens added as HF does by default.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token ids of `text`; `add_special_tokens: false` leaves out what the tokenizer's
    /// post-processor adds (a BOS token, say), as HF's `add_special_tokens=False`.
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, true)
    }

    /// Text of `ids`; `skip_special_tokens: false` keeps special tokens' text (HF's default
    /// for `decode`).
    pub fn decode_with(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.error(e))
    }

    /// The vocabulary entry of `id` as the tokenizer spells it (byte-level BPE: `Ġ` for a
    /// space), HF's `convert_ids_to_tokens`; `None` past the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of tokenizer_config.json's `eos_token`, if it names one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// The raw Jinja `chat_template` of tokenizer_config.json, unrendered.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn error(&self, e: tokenizers::Error) -> EngineError {
        EngineError::Tokenizer {
            path: self.dir.join("tokenizer.json"),
            msg: e.to_string(),
        }
    }
}

/// `eos_token` (a string, or an AddedToken object with `content`) and `chat_template`.
fn read_tokenizer_config(path: &Path) -> Result<(Option<String>, Option<String>)> {
    let bad = |msg: String| EngineError::ConfigFile {
        path: path.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let eos = match json.get("eos_token") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(obj) => match obj.get("content").and_then(|c| c.as_str()) {
            Some(s) => Some(s.to_string()),
            None => {
                return Err(bad(format!(
                    "eos_token must be a string or an object with a string `content`, got {obj}"
                )))
            }
        },
    };
    // Some checkpoints ship a list of named templates; the default one is the template.
    let template = match json.get("chat_template") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        Some(other) => {
            return Err(bad(format!(
                "chat_template must be a string or a list of named templates, got {other}"
            )))
        }
    };
    Ok((eos, template))
}

/// Turns one request's generated tokens into text deltas, one token at a time.
///
/// It keeps a small window of recent tokens: `ids[prefix_offset..read_offset]` is
/// text already emitted (kept as context so that decoders that look at
/// neighbours, like leading-space handling, see it), `ids[read_offset..]` is not
/// emitted yet. Pushing a token decodes both slices and emits the difference
/// once it is complete UTF-8.
#[derive(Clone, Debug, Default)]
pub struct IncrementalDetokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

/// Prompt tokens kept as decoding context for the first generated tokens.
const PROMPT_CONTEXT_TOKENS: usize = 5;

impl IncrementalDetokenizer {
    /// Starts after `prompt_ids` (only their tail is kept, as context; nothing of them is emitted).
    pub fn new(prompt_ids: &[u32]) -> Self {
        let tail = &prompt_ids[prompt_ids.len().saturating_sub(PROMPT_CONTEXT_TOKENS)..];
        Self {
            ids: tail.to_vec(),
            prefix_offset: 0,
            read_offset: tail.len(),
        }
    }

    /// Appends `token` and returns the newly complete text (empty while a character is still partial).
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String> {
        self.ids.push(token);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        // The prefix's text is normally a prefix of the full text; when a decoder
        // rewrites it (rare cleanup rules) fall back to the bytes past its length.
        let delta = match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            None => String::from_utf8_lossy(&full.as_bytes()[prefix.len()..]).into_owned(),
        };
        // Emitted tokens before the new prefix window are no longer needed.
        self.ids.drain(..self.prefix_offset);
        self.prefix_offset = self.read_offset - self.prefix_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// Text still held back at the end of the stream (a dangling partial character), decoded lossily.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.ids.clear();
        self.prefix_offset = 0;
        self.read_offset = 0;
        Ok(match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            None => String::from_utf8_lossy(full.as_bytes().get(prefix.len()..).unwrap_or(&[]))
                .into_owned(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The Qwen3 tokenizer shipped with the project, or `None` (printing why) when it is
    /// absent outside CI. Under `CI=true` a missing tokenizer fails the test.
    pub(crate) fn qwen3_tokenizer() -> Option<Tokenizer> {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/qwen3-tokenizer");
        if !dir.join("tokenizer.json").is_file() {
            let msg = format!("Qwen3 tokenizer not found at {}", dir.display());
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg} (CI=true requires it)");
            }
            eprintln!("skipping: {msg}");
            return None;
        }
        Some(Tokenizer::from_dir(&dir).expect("the shipped Qwen3 tokenizer loads"))
    }

    #[test]
    fn encodes_and_round_trips() {
        let Some(tok) = qwen3_tokenizer() else { return };
        let text = "Hello, world! 你好";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, vec![9707, 11, 1879, 0, 220, 108386]);
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }

    /// The byte bound never refuses a text that fits: for texts built to pack as many bytes
    /// per token as possible (the longest vocabulary entries repeated, long runs of spaces
    /// and symbols, CJK, emoji, combining marks), `bytes <= max_text_bytes(tokens)`.
    #[test]
    fn the_prompt_byte_bound_covers_every_text_that_fits() {
        let Some(tok) = qwen3_tokenizer() else { return };
        let vocab = tok.inner.get_vocab(false);
        let mut longest: Vec<(&String, &u32)> = vocab.iter().collect();
        longest.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        let mut texts: Vec<String> = longest[..20]
            .iter()
            .map(|(_, &id)| tok.decode(&[id]).unwrap().repeat(50))
            .collect();
        texts.extend([
            " ".repeat(5000),
            "=".repeat(5000),
            "\n".repeat(3000),
            "你好世界".repeat(500),
            "🦀".repeat(500),
            "e\u{301}".repeat(1000),
            // Hangul jamo that NFC composes 3 to 1.
            "\u{1100}\u{1161}\u{11a8}".repeat(1000),
            "ab".repeat(4000),
        ]);
        for text in &texts {
            let n = tok.encode(text).unwrap().len();
            assert!(
                text.len() <= tok.max_text_bytes(n),
                "{} bytes in {n} tokens exceed the bound {}",
                text.len(),
                tok.max_text_bytes(n)
            );
        }
        assert_eq!(tok.max_text_bytes(usize::MAX), usize::MAX);
    }

    #[test]
    fn eos_and_chat_template_come_from_tokenizer_config() {
        let Some(tok) = qwen3_tokenizer() else { return };
        assert_eq!(tok.eos_token_id(), Some(151645)); // <|im_end|>
        assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
        assert_eq!(tok.vocab_size(), 151669);
    }

    #[test]
    fn decode_skips_special_tokens() {
        let Some(tok) = qwen3_tokenizer() else { return };
        let mut ids = vec![151644]; // <|im_start|>
        ids.extend(tok.encode("Hi").unwrap());
        ids.push(151645); // <|im_end|>
        assert_eq!(tok.decode(&ids).unwrap(), "Hi");
    }

    #[test]
    fn special_tokens_kept_on_request_and_ids_spelled_as_in_the_vocabulary() {
        let Some(tok) = qwen3_tokenizer() else { return };
        let ids = vec![151644, 13048, 151645]; // <|im_start|>Hi<|im_end|>
        assert_eq!(
            tok.decode_with(&ids, false).unwrap(),
            "<|im_start|>Hi<|im_end|>"
        );
        assert_eq!(tok.decode_with(&ids, true).unwrap(), "Hi");
        // Qwen3 adds no special tokens: both spellings encode alike.
        assert_eq!(
            tok.encode_with(" hello", false).unwrap(),
            tok.encode(" hello").unwrap()
        );
        assert_eq!(tok.id_to_token(1879).as_deref(), Some("Ġworld"));
        assert_eq!(tok.id_to_token(u32::MAX), None);
    }

    #[test]
    fn incremental_deltas_concatenate_to_the_full_text() {
        let Some(tok) = qwen3_tokenizer() else { return };
        // Rare CJK, emoji and a musical symbol are split into byte-level tokens.
        let prompt = tok.encode("Say:").unwrap();
        let text = " héllo 𝄞 世界 🦀🦀 naïve ｶﾀｶﾅ end";
        let ids = tok.encode(text).unwrap();
        let mut detok = IncrementalDetokenizer::new(&prompt);
        let mut out = String::new();
        let mut held_back = 0;
        for &id in &ids {
            let delta = detok.push(&tok, id).unwrap();
            assert!(
                !delta.contains('\u{FFFD}'),
                "delta {delta:?} holds a partial char"
            );
            if delta.is_empty() {
                held_back += 1;
            }
            out.push_str(&delta);
        }
        out.push_str(&detok.finish(&tok).unwrap());
        assert_eq!(out, tok.decode(&ids).unwrap());
        assert_eq!(out, text);
        assert!(
            held_back > 0,
            "the text should split a character across tokens"
        );
    }

    #[test]
    fn finish_flushes_a_dangling_partial_character() {
        let Some(tok) = qwen3_tokenizer() else { return };
        let ids = tok.encode("𝄞").unwrap();
        assert!(ids.len() > 1, "𝄞 should be several byte tokens: {ids:?}");
        let mut detok = IncrementalDetokenizer::new(&[]);
        for &id in &ids[..ids.len() - 1] {
            assert_eq!(detok.push(&tok, id).unwrap(), "");
        }
        let rest = detok.finish(&tok).unwrap();
        assert!(rest.contains('\u{FFFD}'), "{rest:?}");
    }

    #[test]
    fn missing_files_are_typed_errors() {
        let err = Tokenizer::from_dir(Path::new("/nonexistent/tok")).unwrap_err();
        assert!(matches!(err, EngineError::Tokenizer { .. }), "{err}");
    }
}
