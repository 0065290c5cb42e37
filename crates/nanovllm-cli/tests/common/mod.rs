//! Helpers for the end-to-end CLI tests: run the real `nanovllm` binary on the committed
//! fixtures (or damaged copies in scratch directories) and read its JSONL output.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// Engine flags for the tiny fixtures: the CPU, 16-token blocks and a small fixed cache.
pub const TINY_ENGINE: [&str; 6] = [
    "--device",
    "cpu",
    "--kvcache-block-size",
    "16",
    "--num-kvcache-blocks",
    "64",
];

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

pub fn nanovllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nanovllm"))
        .args(args)
        .output()
        .expect("the nanovllm binary runs")
}

/// `nanovllm generate --model <model> <args…>`.
pub fn generate(model: &Path, args: &[&str]) -> Output {
    let model = model.to_str().expect("a UTF-8 model path");
    nanovllm(&[&["generate", "--model", model][..], args].concat())
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nanovllm-cli-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies a fixture directory so a test can damage the copy.
pub fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let dst = scratch(tag);
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    dst
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether `line` is a `tracing` record (`<RFC 3339 time>  LEVEL target: message`, as the
/// binary logs without colour when stderr is piped).
pub fn is_log_record(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let (Some(time), Some(level)) = (words.next(), words.next()) else {
        return false;
    };
    time.ends_with('Z')
        && time.contains('T')
        && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}

/// The log records on stderr at `level` (`INFO`, `DEBUG`, ...), their messages only.
pub fn log_messages(out: &Output, level: &str) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| is_log_record(l) && l.split_whitespace().nth(1) == Some(level))
        .filter_map(|l| Some(l.split_once(": ")?.1.to_owned()))
        .collect()
}

/// A fatal error is exactly one line on stderr besides the log records (the engine's
/// start-up block comes before a request can fail), mentions `needle`, and exits non-zero.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !is_log_record(l)).collect();
    assert_eq!(lines.len(), 1, "not one line: {err:?}");
    assert!(lines[0].contains(needle), "{needle:?} not in {err:?}");
}

pub fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn jsonl_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each stdout line is JSON"))
        .collect()
}

/// Runs every reference case of `name` as one greedy JSONL request (`ignore_eos`, the
/// reference's length) through `generate --output -` on the CPU with 16-token blocks and
/// the `extra` flags, in a scratch directory tagged `tag`. Returns the reference cases and
/// the run's output.
pub fn generate_reference_cases(name: &str, tag: &str, extra: &[&str]) -> (Vec<Value>, Output) {
    let reference = reference(name);
    let cases = reference["cases"].as_array().unwrap().clone();
    let dir = scratch(tag);
    let input = dir.join("in.jsonl");
    let requests: String = cases
        .iter()
        .map(|case| {
            format!(
                "{{\"prompt_token_ids\": {}, \"max_tokens\": {}, \"temperature\": 0, \"ignore_eos\": true}}\n",
                case["prompt_token_ids"],
                case["greedy_token_ids"].as_array().unwrap().len()
            )
        })
        .collect();
    std::fs::write(&input, requests).unwrap();
    let base = [
        "--input",
        input.to_str().unwrap(),
        "--output",
        "-",
        "--kvcache-block-size",
        "16",
        "--device",
        "cpu",
        // Pinned: the references are f32 math, and the CPU's default KV cache is bf16.
        "--kv-cache-dtype",
        "f32",
    ];
    let out = generate(&fixture(name), &[&base[..], extra].concat());
    let _ = std::fs::remove_dir_all(&dir);
    (cases, out)
}

/// [`generate_reference_cases`] with no extra flags: the lines come back in input order,
/// each with the reference's tokens and `finish_reason` "length". Returns the output
/// lines for further checks.
pub fn check_greedy_jsonl(name: &str) -> Vec<Value> {
    let (cases, out) = generate_reference_cases(name, &format!("greedy-{name}"), &[]);
    assert!(out.status.success(), "{name}: {}", stderr(&out));
    let lines = jsonl_lines(&out.stdout);
    assert_eq!(lines.len(), cases.len(), "{name}");
    for (i, (line, case)) in lines.iter().zip(&cases).enumerate() {
        assert_eq!(line["index"], i);
        assert_eq!(
            line["token_ids"], case["greedy_token_ids"],
            "{name} case {}",
            case["name"]
        );
        assert_eq!(line["finish_reason"], "length");
    }
    lines
}

/// A `nanovllm serve` process on a free port, its stderr kept in a scratch file; killed on
/// drop.
pub struct Server {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log_dir: PathBuf,
}

impl Server {
    /// Starts `nanovllm serve --port 0 <args…>` (with no `RUST_LOG`) and waits for the
    /// address it prints on stdout once it listens.
    pub fn start(args: &[&str]) -> Server {
        use std::io::BufRead;
        let log_dir = scratch("server-log");
        let log = std::fs::File::create(log_dir.join("stderr")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_nanovllm"))
            .args([&["serve", "--port", "0"][..], args].concat())
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("the nanovllm binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        let base_url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in the server's first line: {line:?}"))
            .to_string();
        let addr = base_url.trim_start_matches("http://").to_string();
        Server {
            child,
            base_url,
            addr,
            log_dir,
        }
    }

    /// Stops the server; what it wrote on stderr.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(self.log_dir.join("stderr")).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}

/// Runs `nanovllm <args…>` with `stdin` piped in.
pub fn nanovllm_with_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_nanovllm"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the nanovllm binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// What `nanovllm chat` should answer to `messages`: a greedy run of `llm` on the
/// template's rendering of them, at most `max_tokens`, the fixture's eos honoured.
pub fn expected_reply(
    llm: &mut nanovllm_core::LLM,
    template: &nanovllm_core::ChatTemplate,
    messages: &[nanovllm_core::ChatMessage],
    max_tokens: usize,
) -> String {
    let prompt = template
        .render(messages, true, &serde_json::Map::new())
        .unwrap();
    llm.generate(
        [prompt.as_str()],
        nanovllm_core::SamplingParams::greedy(max_tokens),
    )
    .unwrap()
    .remove(0)
    .text
}
