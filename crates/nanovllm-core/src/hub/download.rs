//! Fetching a revision's needed files into the cache through hf-hub's blocking API, and
//! checking each against the hub's listing.
//!
//! hf-hub does the HTTP (the `Range: bytes=0-0` metadata request, redirects to the LFS
//! store, the download) and writes the cache layout; it resumes from `blobs/{etag}.part`.
//! It does not check what it wrote, read `HF_TOKEN` or know `HF_HUB_OFFLINE`: this module
//! adds those. A file already in the snapshot with the listed size is not fetched again.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};

use super::files::{self, Wanted, CONFIG, INDEX};
use super::listing::{self, one_line, Listing};
use super::progress::FileBar;
use super::verify;
use super::{cache, HubError, HubOptions, RepoId};

/// Downloads what `wanted` needs of `revision` of `repo` (skipping what the snapshot
/// already holds) and returns the snapshot directory.
pub fn fetch_snapshot(
    repo: &RepoId,
    revision: &str,
    wanted: Wanted,
    options: &HubOptions,
) -> Result<PathBuf, HubError> {
    let api = ApiBuilder::new()
        .with_endpoint(options.endpoint.clone())
        .with_cache_dir(options.cache_dir.clone())
        .with_token(options.token.clone())
        .with_progress(false)
        .with_retries(options.retries)
        .with_user_agent("nanovllm", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| HubError::Unreachable {
            repo: repo.to_string(),
            cache: options.cache_dir.clone(),
            endpoint: options.endpoint.clone(),
            cause: one_line(&e.to_string()),
        })?;
    let api_repo = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_owned(),
    ));
    let listing = listing::fetch(&api_repo, repo, revision, options)?;
    let fetcher = Fetcher {
        api: &api_repo,
        repo,
        revision,
        listing: &listing,
        options,
        snapshot: cache::repo_dir(&options.cache_dir, repo)
            .join("snapshots")
            .join(&listing.sha),
    };
    let names = listing.names();
    let missing = |what: &str| HubError::MissingFile {
        repo: repo.to_string(),
        revision: revision.to_owned(),
        what: what.to_owned(),
    };
    let small = files::small_files(&names, wanted);
    if wanted == Wanted::Tokenizer {
        if !small.contains(&"tokenizer.json") {
            return Err(missing("tokenizer.json"));
        }
        for name in small {
            fetcher.fetch(name)?;
        }
        return Ok(fetcher.snapshot);
    }
    if !names.iter().any(|n| n == CONFIG) {
        return Err(missing(CONFIG));
    }
    for name in &small {
        fetcher.fetch(name)?;
    }
    if wanted == (Wanted::Model { weights: true }) {
        for shard in fetcher.weights(&names)? {
            fetcher.fetch(&shard)?;
        }
    }
    fetcher.fetch(CONFIG)?;
    Ok(fetcher.snapshot)
}

/// One revision's downloads.
struct Fetcher<'a> {
    api: &'a ApiRepo,
    repo: &'a RepoId,
    revision: &'a str,
    listing: &'a Listing,
    options: &'a HubOptions,
    /// `snapshots/{listing.sha}`.
    snapshot: PathBuf,
}

impl Fetcher<'_> {
    /// The weight files: the index (fetched here) and its shards, else every top-level
    /// `*.safetensors`.
    fn weights(&self, names: &[String]) -> Result<Vec<String>, HubError> {
        let missing = || HubError::MissingFile {
            repo: self.repo.to_string(),
            revision: self.revision.to_owned(),
            what: "*.safetensors weights".into(),
        };
        if names.iter().any(|n| n == INDEX) {
            let path = self.fetch(INDEX)?;
            let json = std::fs::read_to_string(&path)
                .map_err(|e| HubError::io("cannot read", &path, e))?;
            let shards = files::shards_of_index(&json).ok_or_else(|| HubError::Protocol {
                repo: self.repo.to_string(),
                endpoint: self.options.endpoint.clone(),
                what: format!("an {INDEX} without a weight_map of file names"),
                detail: path.display().to_string(),
            })?;
            if let Some(absent) = shards.iter().find(|s| !names.contains(s)) {
                return Err(HubError::MissingFile {
                    repo: self.repo.to_string(),
                    revision: self.revision.to_owned(),
                    what: format!("{absent}, a shard its {INDEX} names"),
                });
            }
            return Ok(shards.into_iter().collect());
        }
        let weights = files::top_level_safetensors(names);
        if weights.is_empty() {
            return Err(missing());
        }
        Ok(weights.into_iter().map(str::to_owned).collect())
    }

    /// Makes `name` present and checked in the snapshot; returns its path there.
    fn fetch(&self, name: &str) -> Result<PathBuf, HubError> {
        let sibling = self
            .listing
            .sibling(name)
            .ok_or_else(|| HubError::MissingFile {
                repo: self.repo.to_string(),
                revision: self.revision.to_owned(),
                what: name.to_owned(),
            })?;
        let expected = sibling.expected();
        let in_snapshot = self.snapshot.join(name);
        // A cached copy of the listed size is trusted (hashing gigabytes of weights on every
        // start would cost more than it finds); a fresh download is hashed below.
        let cached_size = std::fs::metadata(&in_snapshot).map(|m| m.len()).ok();
        if cached_size.is_some() && cached_size == expected.size {
            return Ok(in_snapshot);
        }
        if cached_size.is_some() {
            remove_cached(&in_snapshot);
        }
        self.drop_overlong_part(sibling.etag(), expected.size);
        tracing::info!(
            "downloading {name} of {} from {}",
            self.repo,
            self.options.endpoint
        );
        let result = if self.options.progress {
            self.api.download_with_progress(name, FileBar::new())
        } else {
            self.api.download_with_progress(name, ())
        };
        let path = result.map_err(|e| self.download_error(name, e))?;
        if path != in_snapshot {
            return Err(HubError::Protocol {
                repo: self.repo.to_string(),
                endpoint: self.options.endpoint.clone(),
                what: format!(
                    "{name} from commit {} while listing commit",
                    path_commit(&path)
                ),
                detail: format!(
                    "{} (revision {} moved during the download; run the command again)",
                    self.listing.sha, self.revision
                ),
            });
        }
        let verdict =
            verify::check(&path, &expected).map_err(|e| HubError::io("cannot read", &path, e))?;
        if let Err(mismatch) = verdict {
            remove_cached(&path);
            return Err(HubError::Corrupt {
                repo: self.repo.to_string(),
                file: name.to_owned(),
                what: mismatch.what,
                expected: mismatch.expected,
                actual: mismatch.actual,
            });
        }
        Ok(path)
    }

    /// hf-hub refuses to resume a `.part` longer than the file (`InvalidResume`) and would
    /// refuse again on every run: start that file over instead.
    fn drop_overlong_part(&self, etag: Option<&str>, size: Option<u64>) {
        let (Some(etag), Some(size)) = (etag, size) else {
            return;
        };
        let part = cache::repo_dir(&self.options.cache_dir, self.repo)
            .join("blobs")
            .join(format!("{etag}.part"));
        if std::fs::metadata(&part).is_ok_and(|m| m.len() > size) {
            let _ = std::fs::remove_file(&part);
        }
    }

    fn download_error(&self, name: &str, error: ApiError) -> HubError {
        match error {
            ApiError::RequestError(e) => match *e {
                e @ ureq::Error::Status(..) => {
                    listing::http_error(e, self.repo, self.revision, self.options)
                }
                e => self.failed(name, e.to_string()),
            },
            ApiError::TooManyRetries(inner) => self.failed(name, inner.to_string()),
            other => self.failed(name, other.to_string()),
        }
    }

    fn failed(&self, name: &str, cause: String) -> HubError {
        HubError::Download {
            repo: self.repo.to_string(),
            file: name.to_owned(),
            endpoint: self.options.endpoint.clone(),
            cause: one_line(&cause),
        }
    }
}

/// The commit directory a snapshot path lies in, for messages.
fn path_commit(path: &Path) -> String {
    path.parent()
        .and_then(Path::file_name)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Deletes a snapshot entry and the blob it links to, so the next run fetches it anew.
fn remove_cached(in_snapshot: &Path) {
    if let Ok(blob) = std::fs::canonicalize(in_snapshot) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(in_snapshot);
}
