//! The hub client against [`MockHub`]: a real HTTP server on 127.0.0.1 serving the committed
//! fixtures in the hub's layout. Each test has its own cache directory; settings go through
//! [`HubOptions`], never the process environment. No test reaches the internet.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::mock::{MockHub, MockRepo, MOCK_TOKEN};
use super::*;

const MODEL: Wanted = Wanted::Model { weights: true };

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// A fresh, empty cache directory.
fn scratch(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nanovllm-hub-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(hub: &MockHub, tag: &str) -> HubOptions {
    HubOptions::from_vars(|_| None)
        .with_endpoint(hub.endpoint())
        .with_cache_dir(scratch(tag))
        .with_progress(false)
        .with_retries(0)
}

/// The sharded bf16 Qwen3 fixture plus files the engine must not fetch.
fn sharded_repo() -> MockRepo {
    MockRepo::from_dir("tiny/qwen3-sharded", &fixture("qwen3-tiny-bf16"))
        .with_file("README.md", b"# tiny\n", false)
        .with_file("pytorch_model.bin", b"not needed", true)
        .with_file("consolidated.safetensors", b"not in the index", true)
        .with_file("onnx/model.safetensors", b"a subfolder", true)
}

fn single_file_repo() -> MockRepo {
    MockRepo::from_dir("tiny/qwen3", &fixture("qwen3-tiny"))
}

fn repo(id: &str) -> RepoId {
    RepoId::parse(id).unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_download_fetches_only_what_the_engine_needs_byte_for_byte() {
    let hub = MockHub::start(vec![sharded_repo()]);
    let opts = options(&hub, "download");
    let dir = snapshot(&repo("tiny/qwen3-sharded"), "main", MODEL, &opts).unwrap();
    let needed = set(&[
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]);
    let served: BTreeSet<String> = hub.bodies_served().into_iter().collect();
    assert_eq!(served, needed, "fetched exactly the needed files");
    assert_eq!(
        hub.bodies_served().last().unwrap(),
        "config.json",
        "config.json comes last"
    );
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(present, needed);
    for name in &needed {
        let got = std::fs::read(dir.join(name)).unwrap();
        let want = std::fs::read(fixture("qwen3-tiny-bf16").join(name)).unwrap();
        assert!(got == want, "{name} differs from the fixture");
    }
    // The huggingface-cli layout: refs/main names the snapshot's commit.
    let repo_dir = cache::repo_dir(&opts.cache_dir, &repo("tiny/qwen3-sharded"));
    let commit = std::fs::read_to_string(repo_dir.join("refs/main")).unwrap();
    assert_eq!(dir, repo_dir.join("snapshots").join(commit.trim()));
    assert!(std::fs::symlink_metadata(dir.join("config.json"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_cut_connection_is_resumed_from_the_partial_file() {
    let hub = MockHub::start(vec![single_file_repo().cut_once("model.safetensors")]);
    let opts = options(&hub, "resume");
    let id = repo("tiny/qwen3");
    let err = snapshot(&id, "main", MODEL, &opts).unwrap_err();
    assert!(
        matches!(&err, HubError::Download { file, .. } if file == "model.safetensors"),
        "{err}"
    );
    assert!(
        err.to_string().contains("run the command again to resume"),
        "{err}"
    );
    let size = std::fs::metadata(fixture("qwen3-tiny").join("model.safetensors"))
        .unwrap()
        .len();
    let dir = snapshot(&id, "main", MODEL, &opts).unwrap();
    let resumed_from: Vec<u64> = hub
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/lfs-store/"))
        .filter_map(|r| {
            r.range
                .as_deref()?
                .strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse()
                .ok()
        })
        .filter(|&start| start > 0)
        .collect();
    assert_eq!(resumed_from, [size / 2], "resumed where the cut left off");
    let got = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(got == std::fs::read(fixture("qwen3-tiny").join("model.safetensors")).unwrap());
}

#[test]
fn retries_resume_within_one_call() {
    let hub = MockHub::start(vec![single_file_repo().cut_once("model.safetensors")]);
    let opts = options(&hub, "retry").with_retries(2);
    let dir = snapshot(&repo("tiny/qwen3"), "main", MODEL, &opts).unwrap();
    let got = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(got == std::fs::read(fixture("qwen3-tiny").join("model.safetensors")).unwrap());
}

#[test]
fn the_cache_serves_a_complete_model_with_the_hub_stopped() {
    let mut hub = MockHub::start(vec![single_file_repo()]);
    let opts = options(&hub, "cache-hit");
    let id = repo("tiny/qwen3");
    let first = snapshot(&id, "main", MODEL, &opts).unwrap();
    hub.stop();
    assert_eq!(snapshot(&id, "main", MODEL, &opts).unwrap(), first);
    let offline = opts.clone().with_offline(true);
    assert_eq!(snapshot(&id, "main", MODEL, &offline).unwrap(), first);
    // By commit, too.
    let commit = single_file_repo().commit;
    assert_eq!(snapshot(&id, &commit, MODEL, &opts).unwrap(), first);
}

#[test]
fn only_missing_files_are_downloaded() {
    let hub = MockHub::start(vec![single_file_repo()]);
    let opts = options(&hub, "partial");
    let id = repo("tiny/qwen3");
    snapshot(&id, "main", Wanted::Tokenizer, &opts).unwrap();
    let before = hub.bodies_served().len();
    snapshot(&id, "main", MODEL, &opts).unwrap();
    let later: BTreeSet<String> = hub.bodies_served()[before..].iter().cloned().collect();
    assert_eq!(
        later,
        set(&["config.json", "generation_config.json", "model.safetensors"])
    );
}

#[test]
fn a_missing_repo_is_a_404_that_names_what_was_tried() {
    let hub = MockHub::start(vec![single_file_repo()]);
    let opts = options(&hub, "404");
    let err = snapshot(&repo("nobody/nothing"), "main", MODEL, &opts).unwrap_err();
    assert!(
        matches!(err, HubError::NotFound { status: 404, .. }),
        "{err}"
    );
    let msg = err.to_string();
    for needle in [
        "`nobody/nothing` is not a local directory",
        &hub.endpoint(),
        "404",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    let err = snapshot(&repo("tiny/qwen3"), "v9", MODEL, &opts).unwrap_err();
    assert!(err.to_string().contains("revision v9"), "{err}");
}

#[test]
fn a_gated_repo_asks_for_hf_token_and_opens_with_it() {
    let hub = MockHub::start(vec![single_file_repo().gated()]);
    let opts = options(&hub, "gated");
    let id = repo("tiny/qwen3");
    let err = snapshot(&id, "main", MODEL, &opts).unwrap_err();
    assert!(
        matches!(err, HubError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    let msg = err.to_string();
    for needle in ["HF_TOKEN", "accept its terms", "GatedRepo"] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    let with_token = opts.with_token(Some(MOCK_TOKEN.into()));
    snapshot(&id, "main", MODEL, &with_token).unwrap();
    let last = hub.requests().pop().unwrap();
    assert_eq!(last.authorization, Some(format!("Bearer {MOCK_TOKEN}")));
}

#[test]
fn a_corrupt_file_is_an_error_naming_it_and_is_not_kept() {
    let hub = MockHub::start(vec![single_file_repo().corrupt("model.safetensors")]);
    let opts = options(&hub, "corrupt");
    let id = repo("tiny/qwen3");
    let err = snapshot(&id, "main", MODEL, &opts).unwrap_err();
    assert!(
        matches!(&err, HubError::Corrupt { file, what: "sha256", .. } if file == "model.safetensors"),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    let repo_dir = cache::repo_dir(&opts.cache_dir, &id);
    let blobs: Vec<_> = std::fs::read_dir(repo_dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let sha = single_file_repo()
        .file("model.safetensors")
        .unwrap()
        .sha256();
    // hf-hub leaves its `.lock` files; the bytes (blob or part) are gone.
    for kept in [sha.clone(), format!("{sha}.part")] {
        assert!(!blobs.contains(&kept), "{kept} kept: {blobs:?}");
    }
    let snap = repo_dir.join("snapshots").join(single_file_repo().commit);
    assert!(!snap.join("model.safetensors").exists());
}

#[test]
fn offline_mode_never_asks_the_hub() {
    let hub = MockHub::start(vec![single_file_repo()]);
    let opts = options(&hub, "offline").with_offline(true);
    let err = snapshot(&repo("tiny/qwen3"), "main", MODEL, &opts).unwrap_err();
    let msg = err.to_string();
    for needle in [
        "HF_HUB_OFFLINE",
        "nanovllm download tiny/qwen3",
        "not in the Hugging Face cache",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    assert!(hub.requests().is_empty());
    // A config-only snapshot is incomplete for a model with weights.
    let online = opts.clone().with_offline(false);
    snapshot(
        &repo("tiny/qwen3"),
        "main",
        Wanted::Model { weights: false },
        &online,
    )
    .unwrap();
    let err = snapshot(&repo("tiny/qwen3"), "main", MODEL, &opts).unwrap_err();
    assert!(
        err.to_string()
            .contains("incomplete in the Hugging Face cache"),
        "{err}"
    );
}

#[test]
fn no_network_and_no_cache_is_one_line_naming_the_download_command() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = HubOptions::from_vars(|_| None)
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_cache_dir(scratch("unreachable"))
        .with_progress(false);
    let err = resolve(Path::new("Qwen/Qwen3-0.6B"), None, MODEL, &opts).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    for needle in [
        "not a local directory",
        "not in the Hugging Face cache",
        "could not be reached",
        "`nanovllm download Qwen/Qwen3-0.6B`",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
}

#[test]
fn engine_configs_resolve_model_and_tokenizer_ids_and_dummy_skips_weights() {
    let hub = MockHub::start(vec![single_file_repo(), sharded_repo()]);
    let opts = options(&hub, "engine");
    let mut config = EngineConfig::new("tiny/qwen3-sharded");
    config.tokenizer = Some("tiny/qwen3".into());
    resolve_engine_config(&mut config, &opts).unwrap();
    assert!(config
        .model
        .join("model-00003-of-00003.safetensors")
        .is_file());
    assert_eq!(
        cache::repo_id_of_snapshot(&config.model),
        Some(repo("tiny/qwen3-sharded"))
    );
    let tokenizer = config.tokenizer.clone().unwrap();
    assert!(tokenizer.join("tokenizer.json").is_file());
    assert!(!tokenizer.join("model.safetensors").exists());
    let resolved = config.clone();
    resolve_engine_config(&mut config, &opts).unwrap();
    assert_eq!(config, resolved, "resolving twice changes nothing");

    let mut dummy = EngineConfig::new("tiny/qwen3");
    dummy.load_format = LoadFormat::Dummy;
    let opts = options(&hub, "engine-dummy");
    resolve_engine_config(&mut dummy, &opts).unwrap();
    assert!(dummy.model.join("config.json").is_file());
    assert!(!dummy.model.join("model.safetensors").exists());
}

#[test]
fn a_local_dir_gets_plain_files_and_is_not_fetched_twice() {
    let hub = MockHub::start(vec![sharded_repo()]);
    let opts = options(&hub, "local-dir-cache");
    let dir = scratch("local-dir").join("model");
    let id = repo("tiny/qwen3-sharded");
    assert_eq!(download_to_dir(&id, "main", &dir, &opts).unwrap(), dir);
    for name in [
        "config.json",
        "model-00002-of-00003.safetensors",
        "tokenizer.json",
    ] {
        let meta = std::fs::symlink_metadata(dir.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is a plain file");
        let want = std::fs::read(fixture("qwen3-tiny-bf16").join(name)).unwrap();
        assert!(std::fs::read(dir.join(name)).unwrap() == want, "{name}");
    }
    assert!(!cache::repo_dir(&dir.join(".cache/huggingface/hub"), &id).exists());
    assert!(
        !opts.cache_dir.join(id.cache_folder()).exists(),
        "the shared cache is untouched"
    );
    let before = hub.requests().len();
    download_to_dir(&id, "main", &dir, &opts).unwrap();
    assert_eq!(hub.requests().len(), before);
}
