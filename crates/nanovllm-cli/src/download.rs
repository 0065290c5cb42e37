//! `nanovllm download REPO_ID [--revision R] [--local-dir D]`: fetches what the engine needs
//! of a Hugging Face Hub model (config, generation config, tokenizer files, safetensors
//! weights; see `nanovllm_core::hub::files`) with a progress bar per file on stderr, then
//! prints the local directory on stdout, ready for `--model`.
//!
//! Into the HF cache by default (`HF_HOME`, `HF_HUB_CACHE`), where `--model owner/name`
//! finds it later; with `--local-dir`, as plain files in that directory. `HF_ENDPOINT`,
//! `HF_TOKEN` and `HF_HUB_OFFLINE` apply (offline, it only checks the cache).

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use nanovllm_core::hub::{self, HubOptions, RepoId, Wanted, DEFAULT_REVISION};

use crate::logging::{progress_hidden, Verbosity};

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The model's id on the Hugging Face Hub, e.g. Qwen/Qwen3-0.6B.
    pub repo_id: String,
    /// Branch, tag or commit [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    /// Write plain files into this directory instead of the Hugging Face cache.
    #[arg(long, value_name = "DIR")]
    pub local_dir: Option<PathBuf>,
}

/// Downloads, then prints the model directory; `Ok(true)` on success. `-q` hides the bars.
pub fn run(args: DownloadArgs, verbosity: Verbosity) -> anyhow::Result<bool> {
    let repo = RepoId::parse(&args.repo_id).ok_or_else(|| {
        anyhow!(
            "`{}` is not a Hugging Face Hub model id: expected owner/name, e.g. Qwen/Qwen3-0.6B",
            args.repo_id
        )
    })?;
    let revision = args.revision.as_deref().unwrap_or(DEFAULT_REVISION);
    let options = HubOptions::from_env().with_progress(!progress_hidden(verbosity));
    let dir = match &args.local_dir {
        Some(dir) => hub::download_to_dir(&repo, revision, dir, &options)?,
        // Online, ask the hub which commit the revision is now (a cached older commit is
        // not enough); offline, the cache alone.
        None if options.offline => {
            hub::snapshot(&repo, revision, Wanted::Model { weights: true }, &options)?
        }
        None => hub::fetch(&repo, revision, Wanted::Model { weights: true }, &options)?,
    };
    println!("{}", dir.display());
    Ok(true)
}
