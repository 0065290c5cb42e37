//! End-to-end tests of hub models in the CLI: `nanovllm download` and `--model owner/name`,
//! against the mock hub (`nanovllm_core::hub::mock`) on 127.0.0.1, with a scratch `HF_HOME`
//! and `HF_ENDPOINT` given to the child process only. No test reaches the internet.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use nanovllm_core::hub::mock::{MockHub, MockRepo, MOCK_TOKEN};

/// `nanovllm ARGS` with `HF_HOME` and (if any) `HF_ENDPOINT`, and no hub variables of the
/// caller's environment leaking in.
fn nanovllm_hub(
    hf_home: &Path,
    endpoint: Option<&str>,
    env: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nanovllm"));
    for var in [
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HF_TOKEN_PATH",
        "HF_ENDPOINT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HF_HOME", hf_home);
    if let Some(endpoint) = endpoint {
        cmd.env("HF_ENDPOINT", endpoint);
    }
    cmd.envs(env.iter().copied())
        .args(args)
        .output()
        .expect("the nanovllm binary runs")
}

fn tiny_repo() -> MockRepo {
    MockRepo::from_dir("tiny/qwen3", &fixture("qwen3-tiny"))
}

fn stdout_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 1, "one line on stdout: {text:?}");
    text.trim_end().to_owned()
}

#[test]
fn download_prints_the_snapshot_and_generate_runs_it_by_id_even_offline() {
    let mut hub = MockHub::start(vec![tiny_repo()]);
    let home = scratch("hub-download");
    let endpoint = hub.endpoint();
    let out = nanovllm_hub(&home, Some(&endpoint), &[], &["download", "tiny/qwen3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = stdout_line(&out);
    assert!(
        dir.starts_with(
            home.join("hub/models--tiny--qwen3/snapshots")
                .to_str()
                .unwrap()
        ),
        "{dir}"
    );
    let weights = std::fs::read(Path::new(&dir).join("model.safetensors")).unwrap();
    assert!(weights == std::fs::read(fixture("qwen3-tiny").join("model.safetensors")).unwrap());
    assert!(
        !stderr(&out).contains('\u{1b}'),
        "no escape codes when stderr is a pipe"
    );
    assert!(
        !Path::new(&dir).join("reference.json").exists(),
        "only what the engine needs"
    );

    // From the cache, with the hub gone and offline mode on.
    hub.stop();
    let generate = [
        "generate",
        "--model",
        "tiny/qwen3",
        "--prompt",
        "the cat",
        "--max-tokens",
        "3",
        "--temperature",
        "0",
        "--device",
        "cpu",
        "--quiet",
    ];
    for env in [&[][..], &[("HF_HUB_OFFLINE", "1")][..]] {
        let out = nanovllm_hub(&home, Some(&endpoint), env, &generate);
        assert!(out.status.success(), "{env:?}: {}", stderr(&out));
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn generate_downloads_a_hub_model_on_first_use() {
    let hub = MockHub::start(vec![tiny_repo()]);
    let home = scratch("hub-generate");
    let out = nanovllm_hub(
        &home,
        Some(&hub.endpoint()),
        &[],
        &[
            "generate",
            "--model",
            "tiny/qwen3",
            "--prompt",
            "a dog",
            "--max-tokens",
            "3",
            "--device",
            "cpu",
            "--quiet",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(home.join("hub/models--tiny--qwen3/refs/main").is_file());
    assert!(hub
        .bodies_served()
        .contains(&"model.safetensors".to_string()));
}

#[test]
fn download_into_a_local_dir() {
    let hub = MockHub::start(vec![tiny_repo()]);
    let home = scratch("hub-local-dir");
    let target = home.join("qwen3");
    let out = nanovllm_hub(
        &home,
        Some(&hub.endpoint()),
        &[],
        &[
            "download",
            "tiny/qwen3",
            "--local-dir",
            target.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_line(&out), target.to_str().unwrap());
    let meta = std::fs::symlink_metadata(target.join("config.json")).unwrap();
    assert!(meta.file_type().is_file());
    assert!(!home.join("hub").exists(), "nothing in the HF cache");
}

#[test]
fn hub_refusals_are_one_line_errors_that_say_what_to_do() {
    let hub = MockHub::start(vec![
        tiny_repo(),
        MockRepo::from_dir("tiny/gated", &fixture("qwen3-tiny")).gated(),
    ]);
    let home = scratch("hub-errors");
    let endpoint = hub.endpoint();
    let out = nanovllm_hub(&home, Some(&endpoint), &[], &["download", "nobody/nothing"]);
    assert_one_line_error(&out, "has no model repo `nobody/nothing`");
    let out = nanovllm_hub(&home, Some(&endpoint), &[], &["download", "tiny/gated"]);
    assert_one_line_error(&out, "set HF_TOKEN");
    let out = nanovllm_hub(
        &home,
        Some(&endpoint),
        &[("HF_TOKEN", MOCK_TOKEN)],
        &["download", "tiny/gated"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = nanovllm_hub(&home, Some(&endpoint), &[], &["download", "not-an-id"]);
    assert_one_line_error(&out, "expected owner/name");
}

#[test]
fn no_network_and_no_cache_names_the_download_command() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = scratch("hub-unreachable");
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = nanovllm_hub(
        &home,
        Some(&endpoint),
        &[],
        &["generate", "--model", "Qwen/Qwen3-0.6B", "--prompt", "x"],
    );
    assert_one_line_error(&out, "run `nanovllm download Qwen/Qwen3-0.6B`");
    let out = nanovllm_hub(
        &home,
        None,
        &[("HF_HUB_OFFLINE", "1")],
        &["generate", "--model", "Qwen/Qwen3-0.6B", "--prompt", "x"],
    );
    assert_one_line_error(&out, "HF_HUB_OFFLINE forbids downloading");
}
