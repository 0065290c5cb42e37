//! The local Hugging Face cache, in the layout `huggingface-cli` and `huggingface_hub` write:
//!
//! ```text
//! {cache_dir}/models--owner--name/
//!     refs/{revision}            the commit a branch or tag pointed at when last fetched
//!     snapshots/{commit}/{file}  relative symlinks into blobs/
//!     blobs/{etag}               the file's bytes, named by the hub's etag
//!     blobs/{etag}.part          an interrupted download, resumed from its length
//! ```
//!
//! Only reads here; `hf-hub` writes blobs, snapshots and refs while downloading.

use std::path::{Path, PathBuf};

use super::RepoId;

/// Whether `revision` is a full commit hash (then it names a snapshot directly).
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `{cache_dir}/models--owner--name`.
pub fn repo_dir(cache_dir: &Path, repo: &RepoId) -> PathBuf {
    cache_dir.join(repo.cache_folder())
}

/// The cached snapshot directory of `revision` (a branch, tag or commit), if the cache has
/// one: `refs/{revision}` names its commit unless `revision` is a commit itself.
pub fn snapshot_dir(cache_dir: &Path, repo: &RepoId, revision: &str) -> Option<PathBuf> {
    let repo_dir = repo_dir(cache_dir, repo);
    let commit = if is_commit_hash(revision) {
        revision.to_owned()
    } else {
        std::fs::read_to_string(repo_dir.join("refs").join(revision))
            .ok()?
            .trim()
            .to_owned()
    };
    // A ref holding `..` or `/` must not point outside the snapshots.
    if !is_commit_hash(&commit) {
        return None;
    }
    let dir = repo_dir.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// `owner/name` when `dir` is a snapshot in the cache layout (`…/models--owner--name/
/// snapshots/{commit}`): the name `serve` gives a model resolved from the hub.
pub fn repo_id_of_snapshot(dir: &Path) -> Option<RepoId> {
    let snapshots = dir.parent()?;
    if snapshots.file_name()? != "snapshots" {
        return None;
    }
    let folder = snapshots.parent()?.file_name()?.to_str()?;
    let id = folder.strip_prefix("models--")?.replacen("--", "/", 1);
    RepoId::parse(&id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn refs_name_the_snapshot_and_commits_name_it_directly() {
        let cache = std::env::temp_dir().join(format!("nanovllm-hub-cache-{}", std::process::id()));
        let repo = RepoId::parse("o/m").unwrap();
        let dir = repo_dir(&cache, &repo);
        std::fs::create_dir_all(dir.join("snapshots").join(COMMIT)).unwrap();
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        assert_eq!(snapshot_dir(&cache, &repo, "main"), None, "no ref yet");
        std::fs::write(dir.join("refs/main"), format!("{COMMIT}\n")).unwrap();
        let snap = dir.join("snapshots").join(COMMIT);
        assert_eq!(snapshot_dir(&cache, &repo, "main"), Some(snap.clone()));
        assert_eq!(snapshot_dir(&cache, &repo, COMMIT), Some(snap.clone()));
        std::fs::write(dir.join("refs/evil"), "../../x").unwrap();
        assert_eq!(snapshot_dir(&cache, &repo, "evil"), None);
        assert_eq!(repo_id_of_snapshot(&snap), Some(repo));
        assert_eq!(repo_id_of_snapshot(&cache), None);
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn snapshot_paths_name_their_repo() {
        let p = Path::new("/c/hub/models--Qwen--Qwen3-0.6B/snapshots/abc");
        assert_eq!(repo_id_of_snapshot(p).unwrap().as_str(), "Qwen/Qwen3-0.6B");
        assert_eq!(repo_id_of_snapshot(Path::new("/models/Qwen3-0.6B")), None);
        assert_eq!(
            repo_id_of_snapshot(Path::new("/c/datasets--a--b/snapshots/abc")),
            None
        );
    }
}
