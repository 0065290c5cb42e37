//! `run.sh` itself, run by bash on this machine against a fake GPU machine: fake test
//! binaries (one passing, one failing, one hanging past a 2 s limit), a fake `xtask bench`,
//! fake `nvidia-smi`, `ldconfig` and `python3` (two pip site directories, one with a space
//! and one with a newline in its name) and dummy libraries. Checks the summary and the log
//! under `OUT`, the libraries printed, the `libnccl.so` link, the bench command lines and
//! the time budget. Takes a few seconds (the hang is cut at 2 s).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::run_script;

/// A scratch folder (with a space in its name, as a user's path may have), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "nanovllm xtask {tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn write_exe(path: &Path, text: &str) {
    write(path, text);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A bundle entry as `cargo xtask gpu-check` writes it: `dst.gz`.
fn write_gz(dst: &Path, script: &str) {
    let plain = dst.with_extension("plain");
    write(&plain, script);
    let gz = Command::new("gzip").arg("-c").arg(&plain).output().unwrap();
    assert!(gz.status.success(), "gzip failed");
    std::fs::write(dst.with_extension("gz"), gz.stdout).unwrap();
    std::fs::remove_file(plain).unwrap();
}

/// Single-quoted for bash (the scratch paths hold no single quote).
fn quoted(path: &Path) -> String {
    let s = path.to_str().unwrap();
    assert!(!s.contains('\''));
    format!("'{s}'")
}

/// Where everything of the fake machine lives.
struct FakeMachine {
    scratch: Scratch,
    bundle: PathBuf,
    fake_bin: PathBuf,
    /// On LD_LIBRARY_PATH: libcuda.so.1.
    driver: PathBuf,
    /// Site directories python3 reports: cuBLAS 13 in the first, NCCL in the second.
    site_space: PathBuf,
    site_newline: PathBuf,
    /// NANOVLLM_SYSTEM_LIB_DIRS: an empty "system" folder.
    system: PathBuf,
    /// What the fake ldconfig prints.
    ld_cache: PathBuf,
    /// The fake xtask appends its arguments here, one run per line.
    bench_args: PathBuf,
}

const PASSING: &str = r#"#!/usr/bin/env bash
echo "test a_passes ... ok"
# What the test binaries see: the NCCL link on the library path, the GPU rule, the bundle.
first="${LD_LIBRARY_PATH%%:*}"
echo "nccl link: $(readlink "$first/libnccl.so")"
echo "require gpu: $NANOVLLM_REQUIRE_GPU, args: $*"
echo "repo root: $NANOVLLM_REPO_ROOT"
echo
echo "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"
"#;

/// Twelve failures: the summary names the first ten.
const FAILING: &str = r#"#!/usr/bin/env bash
echo "test a_works ... ok"
for i in 01 02 03 04 05 06 07 08 09 10 11 12; do
    echo "test f$i ... FAILED"
done
echo
echo "test result: FAILED. 1 passed; 12 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"
exit 101
"#;

const HANGING: &str = r#"#!/usr/bin/env bash
echo "test quick ... ok"
printf 'test slow_one ... '
sleep 60
echo ok
"#;

const BENCH: &str = r#"#!/usr/bin/env bash
echo "$*" >> "$FAKE_BENCH_ARGS"
json=""
eager=0
while [ $# -gt 0 ]; do
    case "$1" in
    --json) json="$2"; shift ;;
    --enforce-eager) eager=1 ;;
    esac
    shift
done
echo "device                cuda:0"
echo "Total: 700tok, Time: 1.00s, Throughput: 700.00tok/s"
if [ "$eager" = 1 ]; then
    echo "CUDA graphs           off (eager)"
else
    echo "CUDA graphs           3 batch sizes, 1..=4"
fi
echo "decode step host      0.050 ms (schedule 0.020, inputs 0.010, postprocess 0.020; mean of 9 steps)"
echo "decode step forward   4.000 ms (forward pass and sampling; on a GPU, waiting on the device)"
echo '{"output_tokens_per_s": 700.0}' > "$json"
"#;

impl FakeMachine {
    fn new(tag: &str) -> Self {
        let scratch = Scratch::new(tag);
        let root = scratch.0.clone();
        let bundle = root.join("bundle dir");
        let tests = ["t-pass", "t-fail", "t-hang"].map(String::from);
        write(
            &bundle.join("run.sh"),
            &run_script(&tests, 7).expect("the script"),
        );
        write_gz(&bundle.join("tests/t-pass"), PASSING);
        write_gz(&bundle.join("tests/t-fail"), FAILING);
        write_gz(&bundle.join("tests/t-hang"), HANGING);
        write_gz(&bundle.join("bin/xtask"), BENCH);
        write_gz(&bundle.join("bin/nanovllm"), "#!/bin/sh\n");
        write(&bundle.join("configs/qwen3-0.6b.json"), "{}\n");

        let driver = root.join("driver libs");
        write(&driver.join("libcuda.so.1"), "not really a library\n");
        let site_space = root.join("site packages one");
        let site_newline = root.join("site\npackages two");
        write(&site_space.join("nvidia/cu13/lib/libcublas.so.13"), "x\n");
        write(&site_space.join("nvidia/cu13/lib/libcublasLt.so.13"), "x\n");
        write(&site_newline.join("nvidia/nccl/lib/libnccl.so.2"), "x\n");
        let system = root.join("system libs");
        std::fs::create_dir_all(&system).unwrap();
        let ld_cache = root.join("ld cache");
        write(&ld_cache, "0 libs found in cache `/etc/ld.so.cache'\n");

        let fake_bin = root.join("fake bin");
        write_exe(
            &fake_bin.join("nvidia-smi"),
            "#!/bin/sh\ncase \"$1\" in\n-L) echo 'GPU 0: Fake H100 (UUID: GPU-0)' ;;\n\
             *) echo 'Fake H100, 580.00, 81559 MiB' ;;\nesac\n",
        );
        write_exe(
            &fake_bin.join("ldconfig"),
            &format!("#!/bin/sh\ncat {}\n", quoted(&ld_cache)),
        );
        // NUL-separated, as run.sh's python snippet writes them.
        write_exe(
            &fake_bin.join("python3"),
            &format!(
                "#!/usr/bin/env bash\nprintf '%s\\0' {} {}\n",
                quoted(&site_space),
                quoted(&site_newline)
            ),
        );
        let bench_args = root.join("bench args");
        Self {
            scratch,
            bundle,
            fake_bin,
            driver,
            site_space,
            site_newline,
            system,
            ld_cache,
            bench_args,
        }
    }

    /// Runs `bash <bundle>/run.sh` with `env` on top of the fake machine's environment.
    fn run(&self, env: &[(&str, &Path)]) -> Output {
        let path = format!(
            "{}:{}",
            self.fake_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("bash");
        cmd.arg(self.bundle.join("run.sh"))
            .env_clear()
            .env("PATH", path)
            .env("HOME", &self.scratch.0)
            .env("TMPDIR", &self.scratch.0)
            .env("NANOVLLM_SYSTEM_LIB_DIRS", &self.system)
            .env("NANOVLLM_TEST_TIMEOUT_S", "2")
            .env("FAKE_BENCH_ARGS", &self.bench_args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running bash")
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn run_sh_writes_the_summary_and_log_under_out_and_survives_a_hang() {
    let m = FakeMachine::new("full");
    let out = m.scratch.0.join("out dir");
    let nccl = m.site_newline.join("nvidia/nccl/lib/libnccl.so.2");
    let cublas_dir = m.site_space.join("nvidia/cu13/lib");
    let started = std::time::Instant::now();
    let run = m.run(&[("OUT", &out), ("LD_LIBRARY_PATH", &m.driver)]);
    let console = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(!run.status.success(), "a failed test fails the check");
    assert!(
        started.elapsed().as_secs() < 30,
        "the hang was not cut short: {console}"
    );

    let summary = read(&out.join("summary.txt"));
    let lines: Vec<&str> = summary.lines().collect();
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{summary}"))
    };
    // The header: the GPU and the libraries cudarc will load.
    assert_eq!(lines[0], "gpu: Fake H100, 580.00, 81559 MiB");
    assert_eq!(
        lines[at("libcuda:")],
        format!("libcuda:     {}", m.driver.join("libcuda.so.1").display())
    );
    assert_eq!(
        lines[at("libcublas:")],
        format!(
            "libcublas:   {}",
            cublas_dir.join("libcublas.so.13").display()
        )
    );
    assert_eq!(
        lines[at("libcublasLt:")],
        format!(
            "libcublasLt: {}",
            cublas_dir.join("libcublasLt.so.13").display()
        )
    );
    // NCCL: found as libnccl.so.2 in the second site directory (newline in its name) and
    // exposed as libnccl.so, which cudarc asks for.
    let nccl_line = summary
        .split("libnccl:")
        .nth(1)
        .and_then(|rest| rest.split("\nPASS").next())
        .unwrap_or_else(|| panic!("no libnccl line in:\n{summary}"));
    assert!(nccl_line.contains("/lib/libnccl.so -> "), "{nccl_line}");
    assert!(
        nccl_line.ends_with(nccl.to_str().unwrap()),
        "{nccl_line:?} should point at {nccl:?}"
    );

    // One line per test binary, in order, then one per bench run, then the verdict.
    let (pass, fail, hang) = (
        at("PASS     t-pass"),
        at("FAIL     t-fail"),
        at("TIMEOUT  t-hang"),
    );
    assert!(pass < fail && fail < hang);
    assert!(
        lines[pass].ends_with("1 passed, 0 failed"),
        "{}",
        lines[pass]
    );
    assert!(
        lines[fail].ends_with(
            "exit 101, 1 passed, 12 failed: f01, f02, f03, f04, f05, f06, f07, f08, f09, f10 and 2 more"
        ),
        "{}",
        lines[fail]
    );
    assert!(
        lines[hang].ends_with("killed after 2s in slow_one"),
        "{}",
        lines[hang]
    );
    let (graphs, eager) = (at("PASS     bench graphs"), at("PASS     bench eager"));
    assert!(hang < graphs && graphs < eager);
    assert!(
        lines[graphs].ends_with(
            "Total: 700tok, Time: 1.00s, Throughput: 700.00tok/s | CUDA graphs           3 batch sizes, 1..=4 \
             | decode step host      0.050 ms (schedule 0.020, inputs 0.010, postprocess 0.020; mean of 9 steps) \
             | decode step forward   4.000 ms (forward pass and sampling; on a GPU, waiting on the device)"
        ),
        "{}",
        lines[graphs]
    );
    assert!(
        lines[eager].contains("| CUDA graphs           off (eager) | decode step host"),
        "{}",
        lines[eager]
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("result: FAIL, 2 step(s) failed"),
        "{summary}"
    );

    // The bench command lines: same workload, graphs then --enforce-eager, JSON into OUT.
    let args = read(&m.bench_args);
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args.len(), 2, "{args:?}");
    let config = m.bundle.join("configs/qwen3-0.6b.json");
    for (line, mode) in args.iter().zip(["graphs", "eager"]) {
        let want = format!(
            "bench --profile seed --num-seqs 7 --model-config {} --device cuda --json {}",
            config.display(),
            out.join(format!("bench-{mode}.json")).display()
        );
        assert!(line.starts_with(&want), "{line}\nwant {want}");
        assert_eq!(line.ends_with("--enforce-eager"), mode == "eager", "{line}");
        assert!(out.join(format!("bench-{mode}.json")).is_file());
    }

    // The full log holds everything the console showed, test output included, and what
    // the test binaries saw.
    let log = read(&out.join("gpu-check.log"));
    for needle in [
        "GPU 0: Fake H100",
        &format!("cuBLAS 13 from {}", cublas_dir.display()),
        &format!("nccl link: {}", nccl.display()),
        "require gpu: 1, args: --test-threads=1",
        &format!("repo root: {}", m.bundle.display()),
        "test f12 ... FAILED",
        "test slow_one ... ",
        "== summary",
    ] {
        assert!(log.contains(needle), "the log lacks {needle:?}:\n{log}");
    }
    assert!(console.contains("result: FAIL"), "{console}");
    // The temporary unpack folder is gone.
    let left: Vec<_> = std::fs::read_dir(&m.scratch.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("nanovllm-gpu-check.")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn run_sh_without_out_or_budget_skips_every_step_and_finds_system_nccl() {
    let m = FakeMachine::new("budget");
    // NCCL from the loader's cache (a system package), in a folder with a space.
    let system_nccl = m.scratch.0.join("system nccl/libnccl.so.2");
    write(&system_nccl, "x\n");
    write(
        &m.ld_cache,
        &format!(
            "1 libs found in cache `/etc/ld.so.cache'\n\tlibnccl.so.2 (libc6,x86-64) => {}\n",
            system_nccl.display()
        ),
    );
    let run = m.run(&[("NANOVLLM_CHECK_BUDGET_S", Path::new("0"))]);
    assert!(!run.status.success());
    // Without OUT, the results go into the bundle.
    let results = m.bundle.join("results");
    let summary = read(&results.join("summary.txt"));
    assert!(results.join("gpu-check.log").is_file());
    assert!(
        summary.contains(&format!("/lib/libnccl.so -> {}", system_nccl.display())),
        "{summary}"
    );
    for step in ["t-pass", "t-fail", "t-hang", "bench graphs", "bench eager"] {
        assert!(
            summary.contains(&format!("SKIP     {step}: no time left in the 0s budget")),
            "{step}: {summary}"
        );
    }
    assert!(
        summary.contains("result: FAIL, 5 step(s) failed"),
        "{summary}"
    );
    assert!(!m.bench_args.exists(), "no bench ran");
}
