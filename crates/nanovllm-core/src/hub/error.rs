//! Why a hub model could not be had. Each message is one line that says what was tried
//! (the local path, the cache, the hub at which endpoint) and what to do.

use std::path::PathBuf;

/// Everything resolving or downloading a hub model can fail at.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Not in the cache, and the hub could not be asked (no network, refused, DNS, TLS).
    #[error("`{repo}` is not a local directory and not in the Hugging Face cache ({cache}), and the hub at {endpoint} could not be reached ({cause}): run `nanovllm download {repo}` where there is network (HF_ENDPOINT picks a mirror), or pass a local model directory")]
    Unreachable {
        repo: String,
        cache: PathBuf,
        endpoint: String,
        cause: String,
    },
    /// `HF_HUB_OFFLINE` is set and the cache lacks (some of) the model.
    #[error("`{repo}` (revision {revision}) is not a local directory and {missing} in the Hugging Face cache ({cache}), and HF_HUB_OFFLINE forbids downloading: unset HF_HUB_OFFLINE, or run `nanovllm download {repo}` first")]
    Offline {
        repo: String,
        revision: String,
        cache: PathBuf,
        /// "not" or "incomplete".
        missing: &'static str,
    },
    /// The hub has no such model repo (or revision).
    #[error("`{repo}` is not a local directory, and the hub at {endpoint} has no model repo `{repo}` at revision {revision} ({status}): check the id and the revision (a private repo also needs HF_TOKEN), or pass a local model directory")]
    NotFound {
        repo: String,
        revision: String,
        endpoint: String,
        status: u16,
    },
    /// The hub refuses without a token, or with this token (gated or private repo).
    #[error("the hub at {endpoint} refuses access to `{repo}` ({status}{detail}): it is gated or private; accept its terms at {endpoint}/{repo} and set HF_TOKEN to a token of that account")]
    Unauthorized {
        repo: String,
        endpoint: String,
        status: u16,
        detail: String,
    },
    /// Any other answer from the hub that is not what it documents.
    #[error("the hub at {endpoint} answered {what} for `{repo}`: {detail}")]
    Protocol {
        repo: String,
        endpoint: String,
        what: String,
        detail: String,
    },
    /// The repo lacks a file the engine needs.
    #[error("model repo `{repo}` at revision {revision} has no {what}: nanovllm needs config.json and safetensors weights (pass a local directory converted to safetensors)")]
    MissingFile {
        repo: String,
        revision: String,
        what: String,
    },
    /// A downloaded file is not what the hub said it is (truncated, or altered in transit or
    /// on the server). The bad copy is deleted, so a rerun fetches it again.
    #[error("{file} of `{repo}` does not match the hub's {what}: expected {expected}, got {actual}; the copy was deleted, run the command again")]
    Corrupt {
        repo: String,
        file: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// A download failed midway; what was fetched stays in the cache and the next run resumes it.
    #[error("downloading {file} of `{repo}` from {endpoint} failed: {cause}; run the command again to resume")]
    Download {
        repo: String,
        file: String,
        endpoint: String,
        cause: String,
    },
    /// A local file-system operation on the cache or the target directory failed.
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: String,
    },
}

impl HubError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        HubError::Io {
            what,
            path: path.into(),
            cause: cause.to_string(),
        }
    }
}
