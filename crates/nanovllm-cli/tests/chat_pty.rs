//! `nanovllm chat` at a terminal, driven through a pseudo-terminal: replies,
//! history (Up resends a message), `/system` alone, Ctrl-C during a reply
//! (the reply stops, the program goes on) and at the prompt (a hint, then exit
//! with code 0).
#![cfg(unix)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{expected_reply, fixture};
use nanovllm_core::{ChatMessage, ChatTemplate, DeviceKind, EngineConfig, Tokenizer, LLM};
use rexpect::process::wait::WaitStatus;
use rexpect::session::{spawn_command, PtySession};
use serde_json::{Map, Value};

const MAX_TOKENS: usize = 6;
/// Every expectation waits at most this long (a reply of the slow model included).
const TIMEOUT_MS: u64 = 120_000;
/// Up arrow, as a VT100 terminal sends it.
const UP: &str = "\x1b[A";

/// `nanovllm chat` in a pseudo-terminal (TERM=xterm, so the line editor is on).
fn spawn_chat(args: &[&str]) -> PtySession {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nanovllm"));
    command
        .arg("chat")
        .args(["--device", "cpu", "--kvcache-block-size", "16"])
        .args(["--num-kvcache-blocks", "64"])
        .args(args)
        .env("TERM", "xterm");
    spawn_command(command, Some(TIMEOUT_MS)).expect("nanovllm chat starts in a pty")
}

/// The terminal's output as text, with its "\r\n" line ends back to "\n". rexpect hands
/// each byte over as one char, so the bytes are put back together before decoding.
fn text(output: String) -> String {
    let bytes: Vec<u8> = output.chars().map(|c| c as u8).collect();
    String::from_utf8_lossy(&bytes).replace("\r\n", "\n")
}

/// Sends two Ctrl-C at the prompt: a hint, then the program exits with code 0.
fn exit_with_two_ctrl_c(p: &mut PtySession) {
    p.send_control('c').unwrap();
    p.exp_string("press Ctrl-C again").unwrap();
    p.exp_string(">>> ").unwrap();
    p.send_control('c').unwrap();
    p.exp_eof().unwrap();
    match p.process.wait().unwrap() {
        WaitStatus::Exited(_, code) => assert_eq!(code, 0),
        other => panic!("chat did not exit normally: {other:?}"),
    }
}

#[test]
fn a_terminal_chat_edits_lines_and_keeps_history() {
    let model = fixture("qwen3-tiny");
    let max_tokens = MAX_TOKENS.to_string();
    let mut p = spawn_chat(&[
        "--model",
        model.to_str().unwrap(),
        "--temperature",
        "0",
        "--max-tokens",
        &max_tokens,
    ]);
    p.exp_string(">>> ").unwrap();
    p.send("hello\r").unwrap();
    p.flush().unwrap();
    let first = text(p.exp_string(">>> ").unwrap());
    // Up brings "hello" back; Enter sends it again, now after the first exchange.
    p.send(UP).unwrap();
    p.flush().unwrap();
    // The line editor redraws the line (its prompt included) with the message.
    p.exp_string("hello").unwrap();
    p.send("\r").unwrap();
    p.flush().unwrap();
    let second = text(p.exp_string(">>> ").unwrap());
    p.send("/system\r").unwrap();
    p.flush().unwrap();
    p.exp_string("(system message cleared)").unwrap();
    p.exp_string(">>> ").unwrap();
    exit_with_two_ctrl_c(&mut p);

    let template = ChatTemplate::from_tokenizer_dir(&model).unwrap().unwrap();
    let config = EngineConfig {
        device: DeviceKind::Cpu,
        kvcache_block_size: 16,
        num_kvcache_blocks: Some(64),
        ..EngineConfig::new(model)
    };
    let mut llm = LLM::new(config).unwrap();
    let mut history = vec![ChatMessage::user("hello")];
    let r1 = expected_reply(&mut llm, &template, &history, MAX_TOKENS);
    history.push(ChatMessage::assistant(r1.clone()));
    history.push(ChatMessage::user("hello"));
    let r2 = expected_reply(&mut llm, &template, &history, MAX_TOKENS);
    assert_ne!(r1, r2, "the history must change the second reply");
    assert!(first.contains(&format!("{r1}\n")), "{first:?} lacks {r1:?}");
    assert!(
        second.contains(&format!("{r2}\n")),
        "{second:?} lacks {r2:?}"
    );
}

/// A model directory of qwen3-tiny's architecture, much wider, run with random weights:
/// slow enough on the CPU that a reply of the whole context takes seconds.
fn slow_model() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nanovllm-chat-pty-slow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read_to_string(fixture("qwen3-tiny").join("config.json")).unwrap();
    let mut config: Value = serde_json::from_str(&config).unwrap();
    for (key, value) in [
        ("hidden_size", 512),
        ("intermediate_size", 2048),
        ("num_hidden_layers", 4),
        ("num_attention_heads", 8),
        ("num_key_value_heads", 4),
        ("head_dim", 64),
    ] {
        config[key] = value.into();
    }
    config["layer_types"] = vec!["full_attention"; 4].into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

/// A system message that, with the user message `user`, leaves at most `room` tokens of
/// the fixture's 512-token context.
fn system_leaving(room: usize, user: &str) -> String {
    let template = ChatTemplate::from_tokenizer_dir(&fixture("qwen3-tiny"))
        .unwrap()
        .unwrap();
    let tokenizer = Tokenizer::from_dir(&fixture("qwen3-tiny")).unwrap();
    let prompt_len = |system: &str| {
        let messages = [ChatMessage::system(system), ChatMessage::user(user)];
        let rendered = template.render(&messages, true, &Map::new()).unwrap();
        tokenizer.encode(&rendered).unwrap().len()
    };
    const WORDS: &str = " the cat sat on the mat";
    let mut system = String::from("Be brief.");
    while prompt_len(&format!("{system}{WORDS}")) <= 512 - 2 {
        system.push_str(WORDS);
    }
    assert!(512 - prompt_len(&system) <= room, "{system}");
    system
}

#[test]
fn ctrl_c_interrupts_the_reply_and_the_chat_goes_on() {
    let model = slow_model();
    let tokenizer = fixture("qwen3-tiny");
    let system = system_leaving(32, "hi");
    let mut p = spawn_chat(&[
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--load-format",
        "dummy",
        "--temperature",
        "0",
        "--ignore-eos",
        "--max-tokens",
        "100000",
    ]);
    p.exp_string(">>> ").unwrap();
    // A reply of ~500 tokens: far longer than the moment before the Ctrl-C.
    p.send("hello\r").unwrap();
    p.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    p.send_control('c').unwrap();
    p.exp_string("(interrupted").unwrap();
    p.exp_string(">>> ").unwrap();
    // The next message is answered in full: the long system message leaves little room.
    p.send(&format!("/system {system}\r")).unwrap();
    p.flush().unwrap();
    p.exp_string("(system message set)").unwrap();
    p.exp_string(">>> ").unwrap();
    p.send("hi\r").unwrap();
    p.flush().unwrap();
    let answered = text(p.exp_string(">>> ").unwrap());
    let reply = answered.split_once("hi").map_or("", |(_, after)| after);
    assert!(reply.contains('\n'), "no reply line: {answered:?}");
    assert!(!answered.contains("(interrupted"), "{answered:?}");
    assert!(!answered.contains("error"), "{answered:?}");
    exit_with_two_ctrl_c(&mut p);
    let _ = std::fs::remove_dir_all(&model);
}
