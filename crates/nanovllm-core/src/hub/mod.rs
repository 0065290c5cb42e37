//! Models from the Hugging Face Hub (feature `hub`, on by default).
//!
//! A model argument that is not an existing path and is shaped like `owner/name`
//! ([`RepoId::from_model_arg`]) is a hub model. [`resolve_engine_config`], called first
//! thing by [`crate::LLMEngine::new`] (and by the CLI before it reads the tokenizer
//! directory), rewrites `model` and `tokenizer` to local snapshot directories:
//!
//! 1. the local cache first ([`cache`]: the layout `huggingface-cli` writes, under
//!    `HF_HUB_CACHE` / `HF_HOME`): a snapshot of the revision holding what the engine needs
//!    ([`files::is_complete`]) is used without any network;
//! 2. else, unless `HF_HUB_OFFLINE` is set, the hub at `HF_ENDPOINT` is asked for the
//!    revision's listing and only the missing needed files are downloaded ([`download`]),
//!    each checked against the listing's size and, for LFS files, sha256.
//!
//! Invariants: after resolution `model` and `tokenizer` are local paths, so tensor-parallel
//! workers (which receive the resolved config) never download; nothing but the files
//! [`files`] names is fetched; a file that fails its check is deleted, never left in the
//! cache. Settings come from [`HubOptions::from_env`].

pub mod cache;
mod download;
mod error;
pub mod files;
mod listing;
#[cfg(any(test, feature = "hub-mock"))]
pub mod mock;
mod options;
mod progress;
mod repo_id;
#[cfg(test)]
mod tests;
pub mod verify;

use std::path::{Path, PathBuf};

pub use error::HubError;
pub use files::Wanted;
pub use options::{HubOptions, DEFAULT_ENDPOINT};
pub use repo_id::RepoId;

use crate::EngineConfig;
use nanovllm_models::LoadFormat;

/// The revision used when none is given: the default branch.
pub const DEFAULT_REVISION: &str = "main";

/// The local directory holding what `wanted` needs of `revision` of `repo`: the cached
/// snapshot when it is complete, else downloaded (only what is missing), unless offline.
pub fn snapshot(
    repo: &RepoId,
    revision: &str,
    wanted: Wanted,
    options: &HubOptions,
) -> Result<PathBuf, HubError> {
    let cached = cache::snapshot_dir(&options.cache_dir, repo, revision);
    if let Some(dir) = &cached {
        if files::is_complete(dir, wanted) {
            tracing::debug!("{repo} ({revision}) from the cache: {}", dir.display());
            return Ok(dir.clone());
        }
    }
    if options.offline {
        return Err(HubError::Offline {
            repo: repo.to_string(),
            revision: revision.to_owned(),
            cache: options.cache_dir.clone(),
            missing: if cached.is_some() {
                "incomplete"
            } else {
                "not"
            },
        });
    }
    download::fetch_snapshot(repo, revision, wanted, options)
}

/// Asks the hub which commit `revision` is now and downloads what `wanted` needs of it that
/// the cache lacks; returns its snapshot directory. Ignores `options.offline` (see
/// [`snapshot`] for the cache-first lookup that honours it).
pub fn fetch(
    repo: &RepoId,
    revision: &str,
    wanted: Wanted,
    options: &HubOptions,
) -> Result<PathBuf, HubError> {
    download::fetch_snapshot(repo, revision, wanted, options)
}

/// `arg` as a local path: `None` when it is not a hub model (an existing path, or not
/// shaped like `owner/name`), else its snapshot directory ([`snapshot`]).
pub fn resolve(
    arg: &Path,
    revision: Option<&str>,
    wanted: Wanted,
    options: &HubOptions,
) -> Result<Option<PathBuf>, HubError> {
    match RepoId::from_model_arg(arg) {
        None => Ok(None),
        Some(repo) => {
            let revision = revision.unwrap_or(DEFAULT_REVISION);
            snapshot(&repo, revision, wanted, options).map(Some)
        }
    }
}

/// Rewrites `config.model` (at `config.revision`) and `config.tokenizer` (at the default
/// branch) to local directories when they are hub ids; a no-op for local paths, so calling
/// it twice is harmless. With `load_format = dummy` no weights are fetched.
pub fn resolve_engine_config(
    config: &mut EngineConfig,
    options: &HubOptions,
) -> Result<(), HubError> {
    let weights = config.load_format != LoadFormat::Dummy;
    let wanted = Wanted::Model { weights };
    if let Some(dir) = resolve(&config.model, config.revision.as_deref(), wanted, options)? {
        tracing::info!("model {} is {}", config.model.display(), dir.display());
        config.model = dir;
    }
    if let Some(tokenizer) = &config.tokenizer {
        if let Some(dir) = resolve(tokenizer, None, Wanted::Tokenizer, options)? {
            config.tokenizer = Some(dir);
        }
    }
    Ok(())
}

/// Downloads the model into `dir` as plain files (no cache layout), as
/// `huggingface-cli download --local-dir` does; returns `dir`. Nothing is fetched when `dir`
/// already holds the model. The download itself goes through a cache under
/// `dir/.cache/huggingface/hub` (so it resumes), whose blobs are then moved into place.
pub fn download_to_dir(
    repo: &RepoId,
    revision: &str,
    dir: &Path,
    options: &HubOptions,
) -> Result<PathBuf, HubError> {
    let wanted = Wanted::Model { weights: true };
    if files::is_complete(dir, wanted) {
        return Ok(dir.to_path_buf());
    }
    let staging = dir.join(".cache").join("huggingface").join("hub");
    let options = options.clone().with_cache_dir(&staging);
    let snapshot = snapshot(repo, revision, wanted, &options)?;
    let entries =
        std::fs::read_dir(&snapshot).map_err(|e| HubError::io("cannot list", &snapshot, e))?;
    let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    // config.json last: `is_complete(dir)` then means every move before it happened.
    names.sort_by_key(|n| n.to_str() == Some(files::CONFIG));
    for name in names {
        let target = dir.join(&name);
        let link = snapshot.join(&name);
        let blob =
            std::fs::canonicalize(&link).map_err(|e| HubError::io("cannot read", &link, e))?;
        std::fs::rename(&blob, &target)
            .map_err(|e| HubError::io("cannot move into", &target, e))?;
    }
    let repo_cache = cache::repo_dir(&staging, repo);
    std::fs::remove_dir_all(&repo_cache)
        .map_err(|e| HubError::io("cannot remove", &repo_cache, e))?;
    Ok(dir.to_path_buf())
}
