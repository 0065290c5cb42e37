//! The hub's listing of one revision of a repo: `GET {endpoint}/api/models/{owner}/{name}/
//! revision/{revision}?blobs=true`, which names the commit and, per file, its size and, for
//! LFS files, its sha256. Also how the hub's HTTP errors map onto [`HubError`].

use serde::Deserialize;

use super::verify::Expected;
use super::{HubError, HubOptions, RepoId};

/// One revision of a repo as the hub lists it.
#[derive(Clone, Debug, Deserialize)]
pub struct Listing {
    /// The commit the revision points at.
    pub sha: String,
    pub siblings: Vec<Sibling>,
}

/// One file of the listing.
#[derive(Clone, Debug, Deserialize)]
pub struct Sibling {
    /// Path inside the repo.
    pub rfilename: String,
    pub size: Option<u64>,
    /// The git blob id: the hub's etag of a file stored in git.
    #[serde(rename = "blobId")]
    pub blob_id: Option<String>,
    pub lfs: Option<Lfs>,
}

/// A file stored in LFS: its sha256 is the hub's etag.
#[derive(Clone, Debug, Deserialize)]
pub struct Lfs {
    pub sha256: String,
    pub size: u64,
}

impl Listing {
    pub fn names(&self) -> Vec<String> {
        self.siblings.iter().map(|s| s.rfilename.clone()).collect()
    }

    pub fn sibling(&self, name: &str) -> Option<&Sibling> {
        self.siblings.iter().find(|s| s.rfilename == name)
    }
}

impl Sibling {
    /// What a correct download of this file is.
    pub fn expected(&self) -> Expected {
        Expected {
            size: self.lfs.as_ref().map(|l| l.size).or(self.size),
            sha256: self.lfs.as_ref().map(|l| l.sha256.to_ascii_lowercase()),
        }
    }

    /// The etag that names this file's blob in the cache (`blobs/{etag}`).
    pub fn etag(&self) -> Option<&str> {
        self.lfs
            .as_ref()
            .map(|l| l.sha256.as_str())
            .or(self.blob_id.as_deref())
    }
}

/// Asks the hub for `revision` of `repo`.
pub fn fetch(
    api: &hf_hub::api::sync::ApiRepo,
    repo: &RepoId,
    revision: &str,
    options: &HubOptions,
) -> Result<Listing, HubError> {
    let response = api
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| http_error(e, repo, revision, options))?;
    response.into_json().map_err(|e| HubError::Protocol {
        repo: repo.to_string(),
        endpoint: options.endpoint.clone(),
        what: "a repo listing that is not the JSON it documents".into(),
        detail: e.to_string(),
    })
}

/// A failed request as the error that says what to do.
pub fn http_error(
    error: ureq::Error,
    repo: &RepoId,
    revision: &str,
    options: &HubOptions,
) -> HubError {
    let endpoint = options.endpoint.clone();
    let repo_s = repo.to_string();
    match error {
        ureq::Error::Status(status, response) => {
            // The hub names the refusal in `X-Error-Code` (it answers 401 for a repo that
            // does not exist when asked without a token, so the status alone cannot tell).
            let code = response.header("X-Error-Code").unwrap_or("").to_owned();
            let message = response.header("X-Error-Message").unwrap_or("").to_owned();
            match (status, code.as_str()) {
                (_, "RepoNotFound" | "RevisionNotFound") | (404, _) => HubError::NotFound {
                    repo: repo_s,
                    revision: revision.to_owned(),
                    endpoint,
                    status,
                },
                (401 | 403, _) => HubError::Unauthorized {
                    repo: repo_s,
                    endpoint,
                    status,
                    detail: [code, message]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .map(|s| format!(", {s}"))
                        .collect(),
                },
                _ => HubError::Protocol {
                    repo: repo_s,
                    endpoint,
                    what: format!("HTTP {status}"),
                    detail: if message.is_empty() { code } else { message },
                },
            }
        }
        ureq::Error::Transport(transport) => HubError::Unreachable {
            repo: repo_s,
            cache: options.cache_dir.clone(),
            endpoint,
            cause: one_line(&transport.to_string()),
        },
    }
}

/// `text` on one line (ureq's transport errors can span several).
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
