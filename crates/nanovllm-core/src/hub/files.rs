//! Which files of a repo the engine needs, and whether a directory already holds them.
//!
//! Needed: `config.json`, `generation_config.json`, the tokenizer files, and the weights:
//! the shards `model.safetensors.index.json` names (with the index), or else every top-level
//! `*.safetensors`. Never anything in a subfolder, nor other formats (`*.bin`, `*.pt`,
//! `*.gguf`, ONNX), so a repo carrying a model several times is fetched once. Repos such as
//! Mistral's carry both `consolidated.safetensors` and indexed shards: the index decides.
//!
//! Invariant of the download order (`download::fetch_snapshot`): small files, the index, the
//! weights, then `config.json` last, so a snapshot holding it and its weights
//! ([`is_complete`]) was fetched to the end.

use std::collections::BTreeSet;
use std::path::Path;

/// The weight index, whose `weight_map` names the shards.
pub const INDEX: &str = "model.safetensors.index.json";
/// The model's architecture and shapes.
pub const CONFIG: &str = "config.json";

/// Small files fetched when the repo has them.
const OPTIONAL: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// Which part of a repo to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Config, generation config and tokenizer; the weights too when `weights`
    /// (`load_format = dummy` needs only the config).
    Model { weights: bool },
    /// The tokenizer files alone (a `tokenizer` that is a repo id).
    Tokenizer,
}

/// The shard file names an index's `weight_map` lists, or `None` if `json` is not an index.
pub fn shards_of_index(json: &str) -> Option<BTreeSet<String>> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let map = value.get("weight_map")?.as_object()?;
    map.values()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The small (non-weight) files to fetch from `available`, config.json excluded (it goes last).
pub fn small_files(available: &[String], wanted: Wanted) -> Vec<&str> {
    let tokenizer_only = wanted == Wanted::Tokenizer;
    available
        .iter()
        .map(String::as_str)
        .filter(|name| {
            OPTIONAL.contains(name) && !(tokenizer_only && *name == "generation_config.json")
        })
        .collect()
}

/// Every top-level `*.safetensors` (weights of a repo without an index).
pub fn top_level_safetensors(available: &[String]) -> Vec<&str> {
    available
        .iter()
        .map(String::as_str)
        .filter(|name| !name.contains('/') && name.ends_with(".safetensors"))
        .collect()
}

/// Whether `dir` already holds what `wanted` needs, without asking the hub.
pub fn is_complete(dir: &Path, wanted: Wanted) -> bool {
    match wanted {
        Wanted::Tokenizer => dir.join("tokenizer.json").is_file(),
        Wanted::Model { weights } => {
            dir.join(CONFIG).is_file() && (!weights || has_all_weights(dir))
        }
    }
}

/// The index's shards are all there, or (no index) some `*.safetensors` is.
fn has_all_weights(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join(INDEX)) {
        Ok(json) => shards_of_index(&json)
            .is_some_and(|shards| shards.iter().all(|s| dir.join(s).is_file())),
        Err(_) => std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().ends_with(".safetensors") && e.path().is_file()
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_engines_small_files_are_picked() {
        let repo = names(&[
            "README.md",
            ".gitattributes",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.json",
            "merges.txt",
            "chat_template.jinja",
            "pytorch_model.bin",
            "onnx/tokenizer.json",
        ]);
        assert_eq!(
            small_files(&repo, Wanted::Model { weights: true }),
            [
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "chat_template.jinja"
            ]
        );
        assert_eq!(
            small_files(&repo, Wanted::Tokenizer),
            [
                "tokenizer.json",
                "tokenizer_config.json",
                "chat_template.jinja"
            ]
        );
    }

    #[test]
    fn weights_are_top_level_safetensors_and_an_index_names_its_shards() {
        let repo = names(&[
            "consolidated.safetensors",
            "model-00001-of-00002.safetensors",
            "original/model.safetensors",
            "model.gguf",
        ]);
        assert_eq!(
            top_level_safetensors(&repo),
            [
                "consolidated.safetensors",
                "model-00001-of-00002.safetensors"
            ]
        );
        let index = r#"{"metadata": {}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s1.safetensors"}}"#;
        let shards: Vec<String> = shards_of_index(index).unwrap().into_iter().collect();
        assert_eq!(shards, ["s1.safetensors", "s2.safetensors"]);
        assert_eq!(shards_of_index(r#"{"weight_map": {"a": 1}}"#), None);
        assert_eq!(shards_of_index("not json"), None);
    }

    #[test]
    fn completeness_needs_the_config_and_every_indexed_shard() {
        let dir = std::env::temp_dir().join(format!("nanovllm-hub-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = Wanted::Model { weights: true };
        assert!(!is_complete(&dir, model));
        std::fs::write(dir.join(CONFIG), "{}").unwrap();
        assert!(is_complete(&dir, Wanted::Model { weights: false }));
        assert!(!is_complete(&dir, model), "no weights");
        std::fs::write(
            dir.join(INDEX),
            r#"{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("s1.safetensors"), "").unwrap();
        assert!(!is_complete(&dir, model), "a shard is missing");
        std::fs::write(dir.join("s2.safetensors"), "").unwrap();
        assert!(is_complete(&dir, model));
        assert!(!is_complete(&dir, Wanted::Tokenizer));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
