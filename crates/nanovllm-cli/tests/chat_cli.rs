//! `nanovllm chat` driven through a pipe: stdout holds exactly the replies,
//! each equal to a greedy run of the engine on the chat template's rendering
//! of the conversation so far (history, `/system`, `/reset` and `/exit`).

mod common;

use std::process::{Command, Stdio};

use common::*;

use nanovllm_core::{ChatMessage, ChatTemplate, DeviceKind, EngineConfig, LLM};

const MAX_TOKENS: usize = 6;

#[test]
fn piped_chat_keeps_history_and_understands_commands() {
    let script = "hello\n/system Be brief.\nhow are you?\n\n/reset\nhello\n/exit\nnever read\n";
    let model = fixture("qwen3-tiny");
    let max_tokens = MAX_TOKENS.to_string();
    let args = [
        &["chat", "--model", model.to_str().unwrap()][..],
        &TINY_ENGINE,
        &["--temperature", "0", "--max-tokens", &max_tokens],
    ]
    .concat();
    let out = nanovllm_with_stdin(&args, script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let template = ChatTemplate::from_tokenizer_dir(&fixture("qwen3-tiny"))
        .unwrap()
        .unwrap();
    let config = EngineConfig {
        device: DeviceKind::Cpu,
        kvcache_block_size: 16,
        num_kvcache_blocks: Some(64),
        ..EngineConfig::new(fixture("qwen3-tiny"))
    };
    let mut llm = LLM::new(config).unwrap();
    let mut history = vec![ChatMessage::user("hello")];
    let r1 = expected_reply(&mut llm, &template, &history, MAX_TOKENS);
    history.push(ChatMessage::assistant(r1.clone()));
    history.insert(0, ChatMessage::system("Be brief."));
    history.push(ChatMessage::user("how are you?"));
    let r2 = expected_reply(&mut llm, &template, &history, MAX_TOKENS);
    // /reset keeps the system message only.
    let r3 = expected_reply(
        &mut llm,
        &template,
        &[ChatMessage::system("Be brief."), ChatMessage::user("hello")],
        MAX_TOKENS,
    );
    assert_ne!(r2, r3, "the history must change the second prompt");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{r1}\n{r2}\n{r3}\n"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_missing_chat_template_is_a_one_line_error() {
    let dir =
        std::env::temp_dir().join(format!("nanovllm-chat-no-template-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("qwen3-tiny")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "tokenizer_config.json" {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_nanovllm"))
        .args(["chat", "--model"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--chat-template"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
