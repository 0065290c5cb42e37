//! The expected prompts are what transformers' `apply_chat_template` renders
//! (jinja2's sandbox with trim_blocks / lstrip_blocks, json.dumps `tojson`)
//! for Qwen3's chat template, which the `qwen3-tiny` fixture ships.

use std::path::PathBuf;

use serde_json::{json, Map, Value as Json};

use super::*;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny")
}

fn qwen3() -> ChatTemplate {
    ChatTemplate::from_tokenizer_dir(&fixture_dir())
        .unwrap()
        .expect("qwen3-tiny ships a chat template")
}

fn kwargs(v: Json) -> Map<String, Json> {
    match v {
        Json::Object(m) => m,
        _ => Map::new(),
    }
}

#[test]
fn single_user_turn_with_generation_prompt() {
    let out = qwen3()
        .render(&[ChatMessage::user("Hi")], true, &Map::new())
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn enable_thinking_false_passes_through() {
    let out = qwen3()
        .render(
            &[ChatMessage::system("Be brief."), ChatMessage::user("Hi")],
            true,
            &kwargs(json!({"enable_thinking": false})),
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\n<think>\n\n</think>\n\n"
    );
}

#[test]
fn python_string_methods_strip_reasoning_from_history() {
    // Uses `.split('</think>')[-1].lstrip('\n')`, `.startswith`, `.endswith`, `messages[::-1]`.
    let out = qwen3()
        .render(
            &[
                ChatMessage::user("Hi"),
                ChatMessage::assistant("<think>\nhmm\n</think>\n\nHello!"),
                ChatMessage::user("  And?  "),
            ],
            true,
            &Map::new(),
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n\
         <|im_start|>user\n  And?  <|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn tools_render_through_python_style_tojson() {
    let tools = json!([{"function": {"name": "get_weather", "parameters":
        {"properties": {"city": {"type": "string"}}, "type": "object"}}, "type": "function"}]);
    let messages = [json!({"role": "user", "content": "Weather?"})];
    let out = qwen3()
        .render_json(&messages, Some(&tools), false, &Map::new())
        .unwrap();
    let expected = "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"function\": {\"name\": \"get_weather\", \"parameters\": {\"properties\": {\"city\": {\"type\": \"string\"}}, \"type\": \"object\"}}, \"type\": \"function\"}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n";
    assert_eq!(out, expected);
}

#[test]
fn tool_calls_and_tool_responses() {
    let messages = [
        json!({"role": "user", "content": "Hi"}),
        json!({"role": "assistant", "content": "",
               "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1.0}}}]}),
        json!({"role": "tool", "content": "42"}),
    ];
    let out = qwen3()
        .render_json(&messages, None, true, &Map::new())
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<tool_call>\n\
         {\"name\": \"f\", \"arguments\": {\"x\": 1.0}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn raise_exception_becomes_a_request_error_with_the_templates_message() {
    let t = ChatTemplate::new(
        "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}ok",
        "",
        "",
    )
    .unwrap();
    assert_eq!(
        t.render(&[ChatMessage::user("x")], false, &Map::new())
            .unwrap(),
        "ok"
    );
    let err = t
        .render(&[ChatMessage::assistant("x")], false, &Map::new())
        .unwrap_err();
    assert_eq!(
        err,
        RequestError::ChatTemplate("first message must be from the user".into())
    );
}

#[test]
fn special_tokens_and_extra_variables_reach_the_template() {
    let t = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}|{{ name }}",
        "<s>",
        "</s>",
    )
    .unwrap();
    let out = t
        .render(
            &[ChatMessage::user("a"), ChatMessage::user("b")],
            false,
            &kwargs(json!({"name": "x", "messages": "ignored"})),
        )
        .unwrap();
    // `messages` in the extras never overrides the real messages.
    assert_eq!(out, "<s>ab</s>|x");
}

#[test]
fn a_template_that_does_not_compile_is_reported() {
    let err = ChatTemplate::new("{% if %}", "", "").unwrap_err();
    assert!(err.contains("syntax error"), "{err}");
}

#[test]
fn a_directory_without_a_template_has_none() {
    let dir = std::env::temp_dir().join(format!("nanovllm-no-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "</s>"}"#,
    )
    .unwrap();
    assert!(ChatTemplate::from_tokenizer_dir(&dir).unwrap().is_none());
    // A chat_template.jinja beside it is picked up.
    std::fs::write(dir.join(CHAT_TEMPLATE_FILE), "{{ eos_token }}").unwrap();
    let t = ChatTemplate::from_tokenizer_dir(&dir).unwrap().unwrap();
    assert_eq!(t.render(&[], false, &Map::new()).unwrap(), "</s>");
    std::fs::remove_dir_all(&dir).unwrap();
}
