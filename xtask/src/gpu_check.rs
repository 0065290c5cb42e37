//! `cargo xtask gpu-check`: builds here everything a GPU machine needs to check the CUDA
//! build, into one folder (`target/gpu-check/`), and prints the one command that runs it
//! there.
//!
//! The folder holds, all built with `--release --features cuda`, stripped and gzipped
//! (`run.sh` unpacks them into a temporary directory):
//! - `bin/nanovllm` and `bin/xtask` (the throughput run is `xtask bench` on dummy
//!   Qwen3-0.6B weights);
//! - `tests/*`: the CUDA test binaries (the kernels' unit tests and `cuda_vs_reference`,
//!   `cuda_vs_cpu` and `cuda_runtime`, the engine's `cuda_engine` and `cuda_tp`: every test
//!   target named `cuda*`);
//! - `fixtures/` and `configs/` the tests and the bench read (the test binaries find them
//!   through `NANOVLLM_REPO_ROOT`, which `run.sh` points at the folder);
//! - `run.sh` (from the template `gpu_check/run.sh`, whose header says what it does): the
//!   GPUs and the CUDA libraries it will load (cuBLAS found when off the loader's path,
//!   `libnccl.so.2` exposed as `libnccl.so`), every test binary under a time limit with
//!   `NANOVLLM_REQUIRE_GPU=1` (a test that would skip for want of a GPU fails instead), the
//!   bench with CUDA graphs and with `--enforce-eager`; a full log and a summary in `$OUT`.
//!
//! A device call carries the repository's working tree *and* the bundle, 64 MiB in all:
//! [`transfer_size_verdict`] checks that total, not the bundle alone. The lent machines are
//! H100s and H200s (sm_90), so the kernels are compiled for `CUDA_COMPUTE_CAP=90a` only
//! ([`BUNDLE_COMPUTE_CAPS`]; an explicit `CUDA_COMPUTE_CAP` wins): every test binary embeds
//! the fatbins, and the default sm_80 cubins would add a third to each.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;

/// What one device call carries: the working tree (tracked and untracked-not-ignored
/// files) plus the bundle.
const MAX_TRANSFER_BYTES: u64 = 64 << 20;

/// `run.sh`'s time limits (seconds; each can be overridden there by an environment
/// variable). Sized so that the whole check fits one 10-minute device command with room to
/// run it again within a 15-minute device budget: the tests take about 2 minutes and each
/// bench about 1 when all is well, and no step may start past `BUDGET_S`.
const TEST_TIMEOUT_S: u32 = 150;
const BENCH_TIMEOUT_S: u32 = 120;
const BUDGET_S: u32 = 360;
// Checked when compiling: the budget leaves a 10-minute command a minute for unpacking and
// transfers, two whole runs and a machine start (~2 minutes) fit 15 minutes of device time,
// and one test binary or both benches cannot use up the budget alone.
const _: () = assert!(
    BUDGET_S <= 10 * 60 - 60
        && 2 * BUDGET_S + 2 * 60 <= 15 * 60
        && TEST_TIMEOUT_S < BUDGET_S
        && 2 * BENCH_TIMEOUT_S < BUDGET_S
);

/// The template `run.sh` is made from (`@NAME@` placeholders, see [`run_script`]).
const RUN_SH_TEMPLATE: &str = include_str!("gpu_check/run.sh");

#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// Where to put the bundle (relative to the repository root).
    #[arg(long, default_value = "target/gpu-check")]
    pub out: PathBuf,
    /// Sequences of each throughput run (bench.py's workload shape, fewer sequences so that
    /// both runs, graphs and eager, fit the check's time budget).
    #[arg(long, default_value_t = 256)]
    pub bench_num_seqs: usize,
}

/// Fixtures the CUDA tests read.
const FIXTURES: [&str; 11] = [
    "qwen3-tiny",
    "qwen3-tiny-bf16",
    "qwen3-tiny-d128",
    "mixtral-tiny",
    "mixtral-tiny-bf16",
    "llama-tiny",
    "qwen2-tiny",
    "mistral-tiny",
    "qwen3-moe-tiny",
    "qwen3-moe-tiny-bf16",
    "qwen3-yarn-tiny",
];

/// One test executable: `(package, target name)` and where cargo put it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestBinary {
    pub package: String,
    pub target: String,
    pub executable: PathBuf,
}

/// Whether a test target belongs in the bundle: the kernels' unit tests (they hold the
/// `cuda::` module tests) and every test target named `cuda*`.
pub fn wanted_test(package: &str, target: &str, kind: &str) -> bool {
    (package == "nanovllm-kernels" && kind == "lib") || target.starts_with("cuda")
}

/// Test executables from `cargo test --no-run --message-format=json` output.
pub fn test_binaries_from_json(stdout: &str) -> anyhow::Result<Vec<TestBinary>> {
    let mut out = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let msg: serde_json::Value = serde_json::from_str(line).context("cargo's JSON output")?;
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(executable) = msg["executable"].as_str() else {
            continue;
        };
        let target = msg["target"]["name"].as_str().unwrap_or_default();
        let kind = msg["target"]["kind"][0].as_str().unwrap_or_default();
        // package_id: "path+file:///…/crates/nanovllm-kernels#0.1.0" (or "name 0.1.0 (…)").
        let id = msg["package_id"].as_str().unwrap_or_default();
        let package = package_name(id);
        if wanted_test(&package, target, kind) {
            out.push(TestBinary {
                package,
                target: target.to_string(),
                executable: PathBuf::from(executable),
            });
        }
    }
    Ok(out)
}

/// The order `run.sh` runs them in (cargo's JSON order varies between builds): the
/// kernels' tests first, as they are quick and say the most about a failure further up,
/// then the engine's; by target name within a package.
pub fn order_tests(tests: &mut [TestBinary]) {
    tests.sort_by(|a, b| {
        let key = |t: &TestBinary| (t.package != "nanovllm-kernels", t.target.clone());
        key(a).cmp(&key(b))
    });
}

/// The package name in a cargo package id (either spec form).
fn package_name(id: &str) -> String {
    if id.contains(' ') {
        // The old form: "name version (source)".
        return id.split(' ').next().unwrap_or_default().to_string();
    }
    if let Some((_, rest)) = id.rsplit_once('/') {
        // …/crates/nanovllm-kernels#0.1.0  or  …/crates/nanovllm-kernels#name@0.1.0
        let tail = rest.split('#').collect::<Vec<_>>();
        if let Some(after) = tail.get(1) {
            if let Some((name, _)) = after.split_once('@') {
                return name.to_string();
            }
        }
        return tail[0].to_string();
    }
    id.to_string()
}

/// The GPU targets of the bundle's kernels when `CUDA_COMPUTE_CAP` is not set: the lent
/// machines' H100/H200 (a cubin for sm_90a and PTX for compute_90).
pub const BUNDLE_COMPUTE_CAPS: &str = "90a";

/// `cargo`, with the bundle's GPU targets (see the module docs).
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if std::env::var_os("CUDA_COMPUTE_CAP").is_none() {
        cmd.env("CUDA_COMPUTE_CAP", BUNDLE_COMPUTE_CAPS);
    }
    cmd
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    eprintln!("+ {what}");
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

pub fn run_gpu_check(args: GpuCheckArgs) -> anyhow::Result<()> {
    let root = repo_root()?;
    std::env::set_current_dir(&root).context("entering the repository root")?;
    if std::env::var_os("NVCC").is_none() && std::env::var_os("CUDA_HOME").is_none() {
        eprintln!(
            "note: NVCC is not set; the kernels' build looks for nvcc on PATH \
             (pip install \"nvidia-cuda-nvcc==13.0.*\" \"nvidia-cuda-cccl==13.0.*\" \
             \"nvidia-nvvm==13.0.*\" \"nvidia-cuda-crt==13.0.*\", then export NVCC=…/nvidia/cu13/bin/nvcc)"
        );
    }
    run(
        cargo().args([
            "build",
            "--release",
            "--features",
            "cuda",
            "-p",
            "nanovllm-cli",
            "-p",
            "xtask",
        ]),
        "cargo build --release --features cuda -p nanovllm-cli -p xtask",
    )?;
    let output = cargo()
        .args([
            "test",
            "--release",
            "--features",
            "cuda",
            "-p",
            "nanovllm-kernels",
            "-p",
            "nanovllm-core",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting cargo test --no-run")?;
    if !output.status.success() {
        bail!("cargo test --release --features cuda --no-run failed");
    }
    let mut tests = test_binaries_from_json(&String::from_utf8_lossy(&output.stdout))?;
    order_tests(&mut tests);
    if tests.is_empty() {
        bail!("found no CUDA test binaries in cargo's output");
    }

    let out = root.join(&args.out);
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    for dir in ["bin", "tests", "fixtures", "configs"] {
        std::fs::create_dir_all(out.join(dir))?;
    }
    let release = root.join("target/release");
    for bin in ["nanovllm", "xtask"] {
        copy_stripped(&release.join(bin), &out.join("bin").join(bin))?;
    }
    let mut test_names = Vec::new();
    for t in &tests {
        let name = format!("{}-{}", t.package, t.target);
        copy_stripped(&t.executable, &out.join("tests").join(&name))?;
        test_names.push(name);
    }
    for f in FIXTURES {
        copy_dir(
            &root.join("fixtures").join(f),
            &out.join("fixtures").join(f),
        )?;
    }
    std::fs::copy(
        root.join("configs/qwen3-0.6b.json"),
        out.join("configs/qwen3-0.6b.json"),
    )
    .context("copying configs/qwen3-0.6b.json")?;
    let script = run_script(&test_names, args.bench_num_seqs)?;
    std::fs::write(out.join("run.sh"), script)?;

    let bundle = dir_size(&out)?;
    let (tree, tree_files) = tree_size(&root, &out)?;
    println!(
        "gpu-check bundle: {} ({}, {} test binaries: {})",
        args.out.display(),
        mib(bundle),
        test_names.len(),
        test_names.join(", ")
    );
    let verdict = transfer_size_verdict(tree, tree_files, bundle, MAX_TRANSFER_BYTES);
    match verdict {
        Ok(line) => println!("{line}"),
        Err(line) => bail!("{line}"),
    }
    println!(
        "run on the GPU machine, from the repository root, carrying {}:",
        args.out.display()
    );
    println!("    bash {}/run.sh", args.out.display());
    println!(
        "    (output: $OUT/summary.txt first, then $OUT/gpu-check.log; without OUT, {}/results/)",
        args.out.display()
    );
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Whether the working tree (`tree` bytes in `tree_files` files) plus the bundle fit what
/// one device call carries (`limit` bytes): `Ok` with a line giving both and their sum, or
/// `Err` with the same figures and the excess.
pub fn transfer_size_verdict(
    tree: u64,
    tree_files: usize,
    bundle: u64,
    limit: u64,
) -> Result<String, String> {
    let total = tree.saturating_add(bundle);
    let figures = format!(
        "transfer: working tree {} ({tree_files} files) + bundle {} = {} of the {} one device call carries",
        mib(tree),
        mib(bundle),
        mib(total),
        mib(limit)
    );
    if total > limit {
        return Err(format!(
            "{figures}: over by {}; drop test binaries, strip harder or shrink the tree",
            mib(total - limit)
        ));
    }
    Ok(figures)
}

/// Bytes and files of what a device call sends besides the bundle: the files git tracks
/// or would track (tracked, and untracked but not ignored) as they are on disk, plus a
/// `shared/` folder inside the checkout, ignored or not. Paths inside `bundle` are left
/// out (they are counted as the bundle).
fn tree_size(root: &Path, bundle: &Path) -> anyhow::Result<(u64, usize)> {
    let output = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()
        .context("starting git ls-files (the working tree's size counts towards 64 MiB)")?;
    if !output.status.success() {
        bail!(
            "git ls-files failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut files) = (0u64, 0usize);
    let mut count = |path: PathBuf| {
        if path.starts_with(bundle) || !seen.insert(path.clone()) {
            return;
        }
        // A tracked file deleted from the working tree does not travel.
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            bytes += meta.len();
            files += 1;
        }
    };
    for name in output.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        count(root.join(String::from_utf8_lossy(name).as_ref()));
    }
    let shared = root.join("shared");
    if shared.is_dir() {
        for file in files_under(&shared)? {
            count(file);
        }
    }
    Ok((bytes, files))
}

/// Every file (or link) under `dir`, recursively.
fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.extend(files_under(&entry.path())?);
        } else {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// The workspace root: where `cargo xtask` runs from (`CARGO_MANIFEST_DIR/..` at build time
/// as the fallback).
fn repo_root() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize()
        .with_context(|| format!("finding the repository root at {}", dir.display()))
}

/// Copies a binary to `dst.gz`: debug info stripped (most of a release binary, as
/// profile.release has debug = 1; symbol names stay for backtraces), then gzipped (each
/// binary embeds the kernels' fatbins, so six of them would not fit 64 MiB uncompressed).
fn copy_stripped(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    let stripped = Command::new("strip").arg("--strip-debug").arg(dst).status();
    if !matches!(stripped, Ok(s) if s.success()) {
        eprintln!(
            "warning: could not strip {}; the bundle may be large",
            dst.display()
        );
    }
    let zipped = Command::new("gzip")
        .args(["-9", "-n", "-f"])
        .arg(dst)
        .status()
        .context("starting gzip")?;
    if !zipped.success() {
        bail!("gzip {} failed ({zipped})", dst.display());
    }
    Ok(())
}

fn copy_dir(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// `run.sh` for the bundle: [`RUN_SH_TEMPLATE`] with the test binaries, the bench size
/// and the time limits filled in. Test names are pasted into the script, so they must be
/// plain (letters, digits, `-`, `_`).
pub fn run_script(test_names: &[String], bench_num_seqs: usize) -> anyhow::Result<String> {
    if let Some(bad) = test_names.iter().find(|n| {
        n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }) {
        bail!("test binary name {bad:?} is not plain enough to paste into run.sh");
    }
    if bench_num_seqs == 0 {
        bail!("--bench-num-seqs must be at least 1");
    }
    let tests = test_names
        .iter()
        .map(|n| format!("    {n}"))
        .collect::<Vec<_>>()
        .join("\n");
    let script = RUN_SH_TEMPLATE
        .replace("@TESTS@", &tests)
        .replace("@BENCH_NUM_SEQS@", &bench_num_seqs.to_string())
        .replace("@TEST_TIMEOUT_S@", &TEST_TIMEOUT_S.to_string())
        .replace("@BENCH_TIMEOUT_S@", &BENCH_TIMEOUT_S.to_string())
        .replace("@BUDGET_S@", &BUDGET_S.to_string());
    Ok(script)
}

#[cfg(test)]
mod run_sh_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_binaries_are_picked_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/nanovllm-kernels#0.1.0","target":{"kind":["lib"],"name":"nanovllm_kernels"},"profile":{"test":true},"executable":"/t/nanovllm_kernels-1"}
{"reason":"compiler-artifact","package_id":"path+file:///w/crates/nanovllm-kernels#0.1.0","target":{"kind":["test"],"name":"cuda_vs_reference"},"profile":{"test":true},"executable":"/t/cuda_vs_reference-2"}
{"reason":"compiler-artifact","package_id":"path+file:///w/crates/nanovllm-core#0.1.0","target":{"kind":["lib"],"name":"nanovllm_core"},"profile":{"test":true},"executable":"/t/nanovllm_core-3"}
{"reason":"compiler-artifact","package_id":"path+file:///w/crates/nanovllm-core#0.1.0","target":{"kind":["test"],"name":"cuda_engine"},"profile":{"test":true},"executable":"/t/cuda_engine-4"}
{"reason":"compiler-artifact","package_id":"path+file:///w/crates/nanovllm-core#0.1.0","target":{"kind":["test"],"name":"golden_engine"},"profile":{"test":true},"executable":"/t/golden-5"}
{"reason":"compiler-artifact","package_id":"registry+https://github.com/rust-lang/crates.io-index#serde@1.0.0","target":{"kind":["lib"],"name":"serde"},"profile":{"test":false},"executable":null}
{"reason":"build-finished","success":true}"#;
        let got = test_binaries_from_json(json).unwrap();
        let names: Vec<(String, String)> = got
            .iter()
            .map(|t| (t.package.clone(), t.target.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("nanovllm-kernels".into(), "nanovllm_kernels".into()),
                ("nanovllm-kernels".into(), "cuda_vs_reference".into()),
                ("nanovllm-core".into(), "cuda_engine".into()),
            ]
        );
        assert_eq!(got[2].executable, PathBuf::from("/t/cuda_engine-4"));
        let mut ordered = got.clone();
        ordered.rotate_left(1);
        order_tests(&mut ordered);
        let targets: Vec<&str> = ordered.iter().map(|t| t.target.as_str()).collect();
        assert_eq!(
            targets,
            ["cuda_vs_reference", "nanovllm_kernels", "cuda_engine"]
        );
    }

    #[test]
    fn package_names_from_both_id_forms() {
        assert_eq!(
            package_name("path+file:///w/crates/nanovllm-core#0.1.0"),
            "nanovllm-core"
        );
        assert_eq!(
            package_name("path+file:///w/crates/core#nanovllm-core@0.1.0"),
            "nanovllm-core"
        );
        assert_eq!(
            package_name("nanovllm-core 0.1.0 (path+file:///w)"),
            "nanovllm-core"
        );
    }

    #[test]
    fn the_run_script_lists_the_tests_and_fills_every_placeholder() {
        let s = run_script(&["a-lib".into(), "b-cuda_engine".into()], 64).unwrap();
        assert!(s.contains("tests=(\n    a-lib\n    b-cuda_engine\n)"));
        assert!(s.contains("bench_num_seqs=64\n"));
        assert!(s.contains(&format!("NANOVLLM_TEST_TIMEOUT_S:-{TEST_TIMEOUT_S}}}")));
        assert!(s.contains(&format!("NANOVLLM_CHECK_BUDGET_S:-{BUDGET_S}}}")));
        assert_eq!(
            placeholders(&s),
            Vec::<&str>::new(),
            "unfilled placeholders"
        );
        let mut names = placeholders(RUN_SH_TEMPLATE);
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names,
            [
                "BENCH_NUM_SEQS",
                "BENCH_TIMEOUT_S",
                "BUDGET_S",
                "TESTS",
                "TEST_TIMEOUT_S"
            ]
        );
        assert!(s.contains("NANOVLLM_REQUIRE_GPU=1"));
    }

    /// The `@NAME@` placeholders in `s` (bash's own `[@]` has no capital after the `@`).
    fn placeholders(s: &str) -> Vec<&str> {
        let mut found = Vec::new();
        for (i, _) in s.match_indices('@') {
            let rest = &s[i + 1..];
            let len = rest
                .bytes()
                .take_while(|b| b.is_ascii_uppercase() || *b == b'_')
                .count();
            if len > 0 && rest[len..].starts_with('@') {
                found.push(&rest[..len]);
            }
        }
        found
    }

    #[test]
    fn the_run_script_refuses_names_it_cannot_paste() {
        for bad in ["a b", "a;rm", "", "x$(y)"] {
            assert!(run_script(&[bad.to_string()], 8).is_err(), "{bad:?}");
        }
        assert!(run_script(&["ok".into()], 0).is_err());
    }

    #[test]
    fn the_transfer_counts_the_tree_and_the_bundle() {
        const MIB: u64 = 1 << 20;
        let limit = 64 * MIB;
        let ok = transfer_size_verdict(10 * MIB, 120, 40 * MIB, limit).unwrap();
        assert!(
            ok.contains(
                "working tree 10.0 MiB (120 files) + bundle 40.0 MiB = 50.0 MiB of the 64.0 MiB"
            ),
            "{ok}"
        );
        // Exactly the limit travels; one byte more does not.
        assert!(transfer_size_verdict(24 * MIB, 1, 40 * MIB, limit).is_ok());
        let over = transfer_size_verdict(24 * MIB + 1, 1, 40 * MIB, limit).unwrap_err();
        assert!(over.contains("over by 0.0 MiB"), "{over}");
        // The bundle alone fits, the sum does not: the old check would have passed this.
        let err = transfer_size_verdict(20 * MIB, 7, 50 * MIB, limit).unwrap_err();
        assert!(
            err.contains("working tree 20.0 MiB (7 files) + bundle 50.0 MiB = 70.0 MiB"),
            "{err}"
        );
        assert!(err.contains("over by 6.0 MiB"), "{err}");
        assert!(
            transfer_size_verdict(u64::MAX, 1, 1, limit).is_err(),
            "no overflow"
        );
    }

    #[test]
    fn the_tree_size_counts_what_git_would_send() {
        let root = repo_root().unwrap();
        let bundle = root.join("target/gpu-check");
        let (bytes, files) = tree_size(&root, &bundle).unwrap();
        let readme = std::fs::metadata(root.join("README.md")).unwrap().len();
        assert!(
            files > 100 && bytes > readme,
            "{files} files, {bytes} bytes"
        );
        // A bundle inside the tree is left out (it is counted as the bundle).
        let (without, _) = tree_size(&root, &root.join("fixtures")).unwrap();
        assert_eq!(
            bytes - without,
            files_under(&root.join("fixtures"))
                .unwrap()
                .iter()
                .map(|f| std::fs::symlink_metadata(f).unwrap().len())
                .sum::<u64>(),
            "a bundle inside the tree is not counted twice"
        );
    }
}
