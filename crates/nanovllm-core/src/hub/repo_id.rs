//! Hub repository ids (`owner/name`) and when a model argument is one.
//!
//! Invariant: a [`RepoId`] holds exactly one `/`, and both sides follow the hub's naming
//! rules (ASCII letters, digits, `-`, `_`, `.`; no `--` or `..`; not starting or ending with
//! `-` or `.`; at most 96 characters), so it maps one-to-one onto the cache folder
//! `models--owner--name`.

use std::fmt;
use std::path::Path;

/// A model repository on the hub, `owner/name` (e.g. `Qwen/Qwen3-0.6B`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoId {
    id: String,
}

impl RepoId {
    /// `text` as a repo id, or `None` when it is not shaped like one.
    pub fn parse(text: &str) -> Option<Self> {
        let (owner, name) = text.split_once('/')?;
        (valid_part(owner) && valid_part(name)).then(|| Self {
            id: text.to_owned(),
        })
    }

    /// The repo id a model argument names: `None` when the path exists (a local model
    /// wins, as in vLLM), is not shaped like `owner/name`, or ends in `.json` (a missing
    /// config file for `load_format = dummy`, whose error should name that file).
    pub fn from_model_arg(arg: &Path) -> Option<Self> {
        if arg.exists() || arg.extension().is_some_and(|e| e == "json") {
            return None;
        }
        Self::parse(arg.to_str()?)
    }

    /// `owner/name`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The cache folder of this model: `models--owner--name`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.id.replace('/', "--"))
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// One side of `owner/name` by the hub's rules.
fn valid_part(part: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !part.is_empty()
        && part.len() <= 96
        && part.chars().all(allowed)
        && !part.contains("--")
        && !part.contains("..")
        && !part.starts_with(['-', '.'])
        && !part.ends_with(['-', '.'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_name_ids_parse_and_map_to_the_cache_folder() {
        let id = RepoId::parse("Qwen/Qwen3-0.6B").unwrap();
        assert_eq!(id.as_str(), "Qwen/Qwen3-0.6B");
        assert_eq!(id.cache_folder(), "models--Qwen--Qwen3-0.6B");
        assert!(RepoId::parse("meta-llama/Llama-3.2-1B-Instruct").is_some());
        assert!(RepoId::parse("a_b/c.d").is_some());
    }

    #[test]
    fn paths_and_malformed_ids_are_not_repo_ids() {
        for text in [
            "gpt2",
            "/abs/path",
            "a/b/c",
            "./model",
            "../x",
            "owner/",
            "/name",
            "own er/name",
            "owner/na--me",
            "owner/-name",
            "owner/name.",
            "ow..ner/name",
            "C:\\models\\x",
        ] {
            assert_eq!(RepoId::parse(text), None, "{text}");
        }
        assert!(RepoId::parse(&format!("o/{}", "n".repeat(97))).is_none());
    }

    #[test]
    fn an_existing_path_or_a_json_file_is_never_a_repo_id() {
        // `cargo test` runs a crate's tests in its manifest directory.
        let exists = RepoId::from_model_arg(Path::new("src/lib.rs"));
        assert_eq!(exists, None);
        assert_eq!(
            RepoId::from_model_arg(Path::new("configs/missing.json")),
            None
        );
        assert_eq!(
            RepoId::from_model_arg(Path::new("no-such-owner/no-such-model")),
            RepoId::parse("no-such-owner/no-such-model")
        );
    }
}
