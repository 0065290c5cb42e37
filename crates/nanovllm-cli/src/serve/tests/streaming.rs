//! The SSE format, streamed == non-streamed text under greedy, usage in
//! streams, and stop strings split across tokens.

use axum::http::StatusCode;
use serde_json::{json, Value as Json};

use super::*;

/// The JSON chunks of an SSE body, checking that it ends with exactly one `[DONE]`.
async fn chunks(response: Response) -> Vec<Json> {
    let data = sse_data(response).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

/// Concatenated text per choice index, and finish reasons per choice.
fn assemble(chunks: &[Json], field: &dyn Fn(&Json) -> Option<String>) -> (Vec<String>, Vec<Json>) {
    let mut texts = Vec::new();
    let mut finishes = Vec::new();
    for chunk in chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            if texts.len() <= i {
                texts.resize(i + 1, String::new());
                finishes.resize(i + 1, Json::Null);
            }
            if let Some(t) = field(choice) {
                texts[i].push_str(&t);
            }
            if !choice["finish_reason"].is_null() {
                assert!(finishes[i].is_null(), "choice {i} finished twice");
                finishes[i] = choice["finish_reason"].clone();
            }
        }
    }
    (texts, finishes)
}

fn completion_text(choice: &Json) -> Option<String> {
    choice["text"].as_str().map(str::to_string)
}

fn chat_text(choice: &Json) -> Option<String> {
    choice["delta"]["content"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_completions_equal_the_full_answer() {
    let s = server(Setup::default());
    let body = json!({"prompt": ["Hello there", "A B C"], "max_tokens": 16, "temperature": 0,
                      "ignore_eos": true, "n": 2});
    let (status, full) = s.post_json("/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let response = s.post("/v1/completions", &streamed).await;
    let chunks = chunks(response).await;
    for chunk in &chunks {
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["model"], "qwen3-tiny");
        assert!(
            chunk.get("usage").is_none(),
            "no usage without include_usage"
        );
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    let (texts, finishes) = assemble(&chunks, &completion_text);
    assert_eq!(texts.len(), 4);
    for i in 0..4 {
        assert_eq!(
            texts[i],
            full["choices"][i]["text"].as_str().unwrap(),
            "choice {i}"
        );
        assert_eq!(finishes[i], "length");
    }
    // All chunks of one response share its id.
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id));
    s.wait_until_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chat_starts_with_the_role_and_ends_with_usage() {
    let s = server(Setup::default());
    let body = json!({"messages": [{"role": "user", "content": "Tell me a story"}],
                      "max_tokens": 12, "temperature": 0, "ignore_eos": true});
    let (status, full) = s.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = chunks(s.post("/v1/chat/completions", &streamed).await).await;
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(
            chunk["usage"],
            Json::Null,
            "usage is null before the last chunk"
        );
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], full["usage"]);
    let (texts, finishes) = assemble(&chunks, &chat_text);
    assert_eq!(
        texts[0],
        full["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(finishes[0], "length");
}

/// A stop string made of the end of one generated token's text and the start
/// of the next one's, found in streamed and full answers alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_are_found_across_token_boundaries() {
    let s = server(Setup::default());
    let tok = tokenizer();
    let reference = reference();
    let mut checked = 0;
    for case in reference["cases"].as_array().unwrap() {
        let greedy = ids(&case["greedy_token_ids"]);
        let full_text = tok.decode(&greedy).unwrap();
        // Token k's text ends at byte `end`; take 2 characters on each side.
        let Some((stop, cut)) = (4..greedy.len() - 1).find_map(|k| {
            let end = tok.decode(&greedy[..=k]).unwrap().len();
            let before: String = full_text[..end].chars().rev().take(2).collect();
            let after: String = full_text[end..].chars().take(2).collect();
            let before: String = before.chars().rev().collect();
            let stop = format!("{before}{after}");
            let ascii = stop.chars().all(|c| c.is_ascii_graphic() || c == ' ');
            let first = full_text.find(&stop)?;
            (ascii && before.len() == 2 && after.len() == 2 && first == end - 2)
                .then_some((stop, first))
        }) else {
            continue;
        };
        let body = json!({"prompt": ids(&case["prompt_token_ids"]), "max_tokens": 24,
                          "temperature": 0, "ignore_eos": true, "stop": ["NEVER-SEEN", stop]});
        let (status, out) = s.post_json("/v1/completions", &body).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(
            out["choices"][0]["text"],
            &full_text[..cut],
            "stop {stop:?}"
        );
        assert_eq!(out["choices"][0]["finish_reason"], "stop");

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let chunks = chunks(s.post("/v1/completions", &streamed).await).await;
        let (texts, finishes) = assemble(&chunks, &completion_text);
        assert_eq!(texts[0], &full_text[..cut], "streamed, stop {stop:?}");
        assert_eq!(finishes[0], "stop");
        checked += 1;
    }
    assert!(
        checked >= 3,
        "too few cases with an ASCII token boundary: {checked}"
    );
    // The sequences ended by stop strings were aborted in the engine: nothing is left.
    s.wait_until_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_logprobs_come_with_their_tokens() {
    let s = server(Setup::default());
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                      "temperature": 0, "ignore_eos": true, "logprobs": true,
                      "top_logprobs": 1, "stream": true});
    let chunks = chunks(s.post("/v1/chat/completions", &body).await).await;
    let entries: Vec<&Json> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .collect();
    assert_eq!(entries.len(), 5, "one logprob entry per generated token");
    for e in entries {
        assert_eq!(e["top_logprobs"][0]["logprob"], e["logprob"]);
    }
}
