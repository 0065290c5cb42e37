//! Tensor parallelism end to end with the real binary: `nanovllm generate
//! --tensor-parallel-size 2 --device cpu` (threads, and worker processes over TCP) gives the
//! same greedy tokens as TP = 1 and as transformers; and the process path's faults: a
//! killed worker makes the engine fail within a bounded time (and is noticed and reaped
//! between steps by `check_tp_group`), shutdown leaves no worker
//! behind, a bad `--dist-init-addr` fails fast with a message.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nanovllm_core::tp::TpMode;
use nanovllm_core::{DeviceKind, EngineConfig, LLMEngine, SamplingParams};
use serde_json::Value;

/// Every reference case of `name` as greedy JSONL through `generate` with `extra` flags;
/// returns the generated token lists.
fn greedy_tokens(name: &str, extra: &[&str]) -> Vec<Value> {
    let (cases, out) = generate_reference_cases(name, &format!("tp-{name}"), extra);
    assert!(out.status.success(), "{name} {extra:?}: {}", stderr(&out));
    let lines = jsonl_lines(&out.stdout);
    assert_eq!(lines.len(), cases.len());
    for (line, case) in lines.iter().zip(&cases) {
        assert_eq!(
            line["token_ids"], case["greedy_token_ids"],
            "{name} {extra:?}"
        );
    }
    lines.iter().map(|l| l["token_ids"].clone()).collect()
}

#[test]
fn generate_tp2_matches_tp1_with_threads_and_processes() {
    for name in ["qwen3-tiny", "mixtral-tiny"] {
        let single = greedy_tokens(name, &[]);
        let threads = greedy_tokens(name, &["--tensor-parallel-size", "2"]);
        let processes = greedy_tokens(
            name,
            &[
                "--tensor-parallel-size",
                "2",
                "--tp-mode",
                "processes",
                "--dist-init-addr",
                "127.0.0.1:0",
            ],
        );
        assert_eq!(single, threads, "{name}: threads");
        assert_eq!(single, processes, "{name}: processes");
        // World size 1 through the process path (what a single GPU checks with NCCL).
        let alone = greedy_tokens(
            name,
            &["--tp-mode", "processes", "--dist-init-addr", "127.0.0.1:0"],
        );
        assert_eq!(single, alone, "{name}: processes, world size 1");
    }
}

#[test]
fn generate_tp4_with_worker_processes_matches_tp1() {
    let name = "mixtral-tiny-bf16"; // 4 q / 4 kv heads, intermediate 64
    let single = greedy_tokens(name, &[]);
    let four = greedy_tokens(
        name,
        &[
            "--tensor-parallel-size",
            "4",
            "--tp-mode",
            "processes",
            "--dist-init-addr",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(single, four);
}

#[test]
fn a_bad_dist_init_addr_fails_fast_with_one_line() {
    for addr in ["not-an-address", "203.0.113.7:2333"] {
        let start = Instant::now();
        let out = generate(
            &fixture("qwen3-tiny"),
            &[
                "--device",
                "cpu",
                "--tensor-parallel-size",
                "2",
                "--tp-mode",
                "processes",
                "--dist-init-addr",
                addr,
                "--prompt",
                "hi",
            ],
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        assert_one_line_error(&out, "bad --dist-init-addr");
        assert!(stderr(&out).contains(addr), "{}", stderr(&out));
    }
}

fn process_engine(model: &Path) -> LLMEngine {
    let mut c = EngineConfig::new(model);
    c.device = DeviceKind::Cpu;
    c.kvcache_block_size = 16;
    c.num_kvcache_blocks = Some(32);
    c.tensor_parallel_size = 2;
    c.tp.mode = TpMode::Processes;
    c.tp.dist_init_addr = "127.0.0.1:0".into();
    c.tp.worker_exe = Some(env!("CARGO_BIN_EXE_nanovllm").into());
    c.tp.timeout_secs = 120;
    LLMEngine::new(c).unwrap()
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still count as not running.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

#[test]
fn a_killed_worker_fails_the_step_quickly_and_names_its_rank() {
    let mut engine = process_engine(&fixture("qwen3-tiny"));
    let pids = engine.tp_worker_pids();
    assert_eq!(pids.len(), 1, "one local worker for TP 2");
    // Works before the fault.
    engine
        .add_request(vec![1u32, 2, 3], SamplingParams::greedy(2))
        .unwrap();
    while engine.has_unfinished() {
        engine.step().unwrap();
    }
    let status = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    engine
        .add_request(vec![4u32, 5, 6], SamplingParams::greedy(4))
        .unwrap();
    let start = Instant::now();
    let err = loop {
        match engine.step() {
            Err(e) => break e.to_string(),
            Ok(_) if engine.has_unfinished() => continue,
            Ok(_) => panic!("the engine finished a request without its dead worker"),
        }
    };
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    eprintln!("error after the kill: {err}");
    assert!(err.contains("rank 1"), "{err}");
    // The step may have seen the sockets close before the exit status existed; the check
    // reaps the worker and names it.
    let start = Instant::now();
    let why = loop {
        let why = engine.check_tp_group().expect("the group is broken");
        if why.contains("signal: 9") || start.elapsed() > Duration::from_secs(5) {
            break why;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(why.contains("signal: 9"), "{why}");
    assert_eq!(why.matches("signal: 9").count(), 1, "named once: {why}");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", pids[0])).exists(),
        "the dead worker is still a zombie"
    );
    // The group stays broken: the next step fails at once too.
    engine
        .add_request(vec![7u32], SamplingParams::greedy(1))
        .unwrap();
    let again = engine.step().unwrap_err().to_string();
    assert!(again.contains("broke earlier"), "{again}");
    drop(engine);
    assert!(!alive(pids[0]));
}

#[test]
fn a_worker_killed_while_idle_is_reaped_and_noticed_without_a_step() {
    let mut engine = process_engine(&fixture("qwen3-tiny"));
    let pids = engine.tp_worker_pids();
    assert_eq!(engine.check_tp_group(), None, "a whole group is not broken");
    let status = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // No step runs: only the check may notice (and reap) the dead worker.
    let start = Instant::now();
    let why = loop {
        if let Some(why) = engine.check_tp_group() {
            break why;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the dead worker went unnoticed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("noticed: {why}");
    assert!(why.contains("rank 1"), "{why}");
    assert!(why.contains("signal: 9"), "{why}");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", pids[0])).exists(),
        "the dead worker is still a zombie"
    );
    // It stays broken, and the next step fails at once with the reason.
    assert_eq!(engine.check_tp_group().as_deref(), Some(why.as_str()));
    engine
        .add_request(vec![1u32, 2], SamplingParams::greedy(1))
        .unwrap();
    let err = engine.step().unwrap_err().to_string();
    assert!(
        err.contains("broke earlier") && err.contains("signal: 9"),
        "{err}"
    );
}

#[test]
fn shutdown_leaves_no_worker_process_behind() {
    let engine = process_engine(&fixture("mixtral-tiny"));
    let pids = engine.tp_worker_pids();
    assert!(!pids.is_empty());
    assert!(
        pids.iter().all(|&p| alive(p)),
        "workers run while the engine lives"
    );
    let start = Instant::now();
    drop(engine);
    assert!(start.elapsed() < Duration::from_secs(10));
    for p in pids {
        assert!(!alive(p), "worker {p} survived the engine");
    }
}

#[test]
fn a_worker_without_rank_0_gives_up_with_a_message() {
    let start = Instant::now();
    let out = nanovllm(&[
        "worker",
        "--rank",
        "1",
        "--dist-init-addr",
        "127.0.0.1:1",
        "--timeout-secs",
        "1",
    ]);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_one_line_error(&out, "could not reach rank 0 at 127.0.0.1:1");
}
