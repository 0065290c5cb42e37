//! `cargo xtask gpu-check`: builds here everything a GPU machine needs to check the CUDA
//! build, into one folder (`target/gpu-check/`, < 64 MiB), and prints the one command that
//! runs it there.
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
//! - `run.sh`: prints `nvidia-smi -L`, puts cuBLAS on the library path when the driver's
//!   default path lacks it, runs every test binary with `NANOVLLM_REQUIRE_GPU=1` (so a test
//!   that would skip for want of a GPU fails instead), then the throughput run, then a
//!   summary; it exits non-zero when anything failed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;

/// The folder's size limit (what one device call carries).
const MAX_BUNDLE_BYTES: u64 = 64 << 20;

#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// Where to put the bundle (relative to the repository root).
    #[arg(long, default_value = "target/gpu-check")]
    pub out: PathBuf,
    /// Sequences of the throughput run (bench.py's workload shape, fewer sequences so that
    /// the whole check stays within 10 minutes).
    #[arg(long, default_value_t = 256)]
    pub bench_num_seqs: usize,
}

/// Fixtures the CUDA tests read.
const FIXTURES: [&str; 4] = [
    "qwen3-tiny",
    "qwen3-tiny-bf16",
    "mixtral-tiny",
    "mixtral-tiny-bf16",
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

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
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
    let tests = test_binaries_from_json(&String::from_utf8_lossy(&output.stdout))?;
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
    let script = run_script(&test_names, args.bench_num_seqs);
    std::fs::write(out.join("run.sh"), script)?;

    let size = dir_size(&out)?;
    println!(
        "gpu-check bundle: {} ({:.1} MiB, {} test binaries: {})",
        args.out.display(),
        size as f64 / (1 << 20) as f64,
        test_names.len(),
        test_names.join(", ")
    );
    if size >= MAX_BUNDLE_BYTES {
        bail!(
            "the bundle is {:.1} MiB, over the 64 MiB limit: drop test binaries or strip harder",
            size as f64 / (1 << 20) as f64
        );
    }
    println!(
        "run on the GPU machine, from the repository root, carrying {}:",
        args.out.display()
    );
    println!("    bash {}/run.sh", args.out.display());
    Ok(())
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

/// `run.sh` for the bundle: tests (each must not skip), then the throughput run, then a
/// summary.
pub fn run_script(test_names: &[String], bench_num_seqs: usize) -> String {
    let tests = test_names
        .iter()
        .map(|n| format!("    {n}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        r#"#!/usr/bin/env bash
# nanovllm GPU check (made by `cargo xtask gpu-check`): the CUDA tests, then a short
# throughput run on dummy Qwen3-0.6B weights. Run from anywhere: bash <bundle>/run.sh
set -uo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
export NANOVLLM_REPO_ROOT="$here"   # fixtures/ and configs/ of the bundle
export NANOVLLM_REQUIRE_GPU=1       # a test that would skip for want of a GPU fails
export RUST_BACKTRACE=1

# The binaries are gzipped (the bundle must stay under 64 MiB): unpack them.
work="$(mktemp -d "${{TMPDIR:-/tmp}}/nanovllm-gpu-check.XXXXXX")"
mkdir -p "$work/bin" "$work/tests"
for f in "$here"/bin/*.gz "$here"/tests/*.gz; do
    dst="$work/$(basename "$(dirname "$f")")/$(basename "$f" .gz)"
    gunzip -c "$f" > "$dst" && chmod +x "$dst"
done

echo "== GPUs"
nvidia-smi -L || echo "warning: nvidia-smi failed"

# cuBLAS (and NVRTC) may be outside the default library path: look in the usual places.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublasLt\.so'; then
    for dir in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/local/cuda/targets/*/lib \
               /usr/local/cuda-*/targets/*/lib /usr/lib/x86_64-linux-gnu /usr/lib64 \
               $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null | \
                 xargs -n1 -I{{}} find {{}}/nvidia -maxdepth 3 -type d -name lib 2>/dev/null); do
        if ls "$dir"/libcublasLt.so* >/dev/null 2>&1; then
            export LD_LIBRARY_PATH="$dir${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
            echo "cuBLAS from $dir"
            break
        fi
    done
fi

failed=()
passed=()
tests=(
{tests}
)
for t in "${{tests[@]}}"; do
    echo
    echo "== test $t"
    # One test at a time: the engine tests size their KV cache from free GPU memory.
    if "$work/tests/$t" --test-threads=1; then
        passed+=("$t")
    else
        failed+=("$t")
    fi
done

echo
echo "== throughput: xtask bench --profile seed --num-seqs {bench_num_seqs} (dummy Qwen3-0.6B, cuda)"
bench_line="(not run)"
if "$work/bin/xtask" bench --profile seed --num-seqs {bench_num_seqs} \
        --model-config "$here/configs/qwen3-0.6b.json" --device cuda \
        --json "$work/bench.json" | tee "$work/bench.txt"; then
    bench_line="$(grep '^Total:' "$work/bench.txt" || true)"
    passed+=("bench")
else
    failed+=("bench")
fi

echo
echo "== summary"
echo "passed: ${{passed[*]:-none}}"
echo "failed: ${{failed[*]:-none}}"
echo "throughput: $bench_line (target: >= 20000 tok/s at 256 seqs on one H100)"
[ ${{#failed[@]}} -eq 0 ]
"#
    )
}

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
    fn the_run_script_runs_every_test_then_the_bench() {
        let s = run_script(&["a-lib".into(), "b-cuda_engine".into()], 64);
        assert!(s.contains("    a-lib\n    b-cuda_engine\n"));
        assert!(s.contains("NANOVLLM_REQUIRE_GPU=1"));
        assert!(s.contains("--profile seed --num-seqs 64"));
        assert!(s.contains("nvidia-smi -L"));
        assert!(s.find("== test").unwrap() < s.find("== throughput").unwrap());
    }
}
