//! One benchmark request against an OpenAI-compatible server: a streamed
//! `/v1/completions` or `/v1/chat/completions` over plain HTTP/1.1, timed chunk by chunk.
//!
//! Each request opens its own connection, as a fresh client would; the time to connect
//! on loopback is part of TTFT, as in vLLM's client. Text chunks are timed as they
//! arrive; the token counts come from the final `usage` chunk (`stream_options.
//! include_usage`), falling back to the prompt sent and the number of text chunks for
//! servers that send no usage.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value as Json};
use tokio::net::TcpStream;

use crate::bench_serve::report::RequestOutcome;

/// Where requests go: `http://host:port[/prefix]` plus the API path.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `host:port`, for the connection and the `Host` header.
    authority: String,
    /// The base URL's path, without a trailing slash (usually empty).
    prefix: String,
    api_key: Option<String>,
}

/// Which OpenAI API the requests use (from the endpoint's path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Completions,
    ChatCompletions,
}

impl Api {
    pub fn of_path(path: &str) -> anyhow::Result<Self> {
        if path.ends_with("/chat/completions") {
            Ok(Api::ChatCompletions)
        } else if path.ends_with("/completions") {
            Ok(Api::Completions)
        } else {
            anyhow::bail!(
                "--endpoint {path} is neither a completions nor a chat completions path: \
                 give /v1/completions or /v1/chat/completions"
            )
        }
    }
}

impl Endpoint {
    pub fn parse(base_url: &str, api_key: Option<String>) -> anyhow::Result<Self> {
        let uri: Uri = base_url.parse().with_context(|| {
            format!("--base-url {base_url:?} is not a URL like http://127.0.0.1:8000")
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => anyhow::bail!(
                "--base-url {base_url}: only http:// is supported, not {other}:// \
                 (benchmark the server directly, not through a TLS proxy)"
            ),
            None => anyhow::bail!("--base-url {base_url:?} has no scheme: write http://{base_url}"),
        }
        let host = uri
            .host()
            .with_context(|| format!("--base-url {base_url:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self {
            authority: format!("{host}:{port}"),
            prefix: uri.path().trim_end_matches('/').to_string(),
            api_key,
        })
    }

    /// GET `path` and parse the JSON body (e.g. `/v1/models`).
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Json> {
        let request = self
            .request(path)
            .method("GET")
            .body(Empty::<Bytes>::new())?;
        let mut sender = self.connect().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            anyhow::bail!("GET {path}: HTTP {status}: {}", snippet(&body));
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {path}: the body is not JSON"))
    }

    /// Sends one streamed generation request and times its chunks. Never fails: a
    /// failure is recorded in the outcome.
    pub async fn run(
        &self,
        path: &str,
        api: Api,
        body: Json,
        prompt_tokens: usize,
    ) -> RequestOutcome {
        let start = Instant::now();
        match self.stream(path, api, body, start).await {
            Ok(mut timing) => {
                timing.e2e = start.elapsed();
                if timing.prompt_tokens == 0 {
                    timing.prompt_tokens = prompt_tokens;
                }
                timing
            }
            Err(e) => RequestOutcome {
                error: Some(format!("{e:#}")),
                ..Default::default()
            },
        }
    }

    async fn stream(
        &self,
        path: &str,
        api: Api,
        body: Json,
        start: Instant,
    ) -> anyhow::Result<RequestOutcome> {
        let request = self
            .request(path)
            .method("POST")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let mut sender = self.connect().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await?.to_bytes();
            anyhow::bail!("HTTP {status}: {}", snippet(&bytes));
        }
        let mut events = SseLines::default();
        let mut outcome = RequestOutcome::default();
        let mut last_text: Option<Instant> = None;
        let mut text_chunks = 0;
        let mut usage_tokens = None;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            let now = Instant::now();
            for payload in events.push(&data) {
                let event = parse_event(&payload, api)?;
                if event.has_text {
                    match last_text {
                        None => outcome.ttft = now - start,
                        Some(prev) => outcome.itl.push(now - prev),
                    }
                    last_text = Some(now);
                    text_chunks += 1;
                }
                if let Some(usage) = event.usage {
                    usage_tokens = Some(usage);
                }
            }
        }
        if last_text.is_none() {
            // TTFT and ITL are times between text chunks: without text there are none.
            anyhow::bail!(
                "the response streamed no text ({} tokens decoded to nothing), so its \
                 latencies cannot be measured",
                usage_tokens.map_or(0, |(_, completion)| completion)
            );
        }
        match usage_tokens {
            Some((prompt, completion)) => {
                outcome.prompt_tokens = prompt;
                outcome.output_tokens = completion;
            }
            None => outcome.output_tokens = text_chunks,
        }
        Ok(outcome)
    }

    fn request(&self, path: &str) -> hyper::http::request::Builder {
        let mut builder = Request::builder()
            .uri(format!("{}{path}", self.prefix))
            .header(HOST, &self.authority);
        if let Some(key) = &self.api_key {
            builder = builder.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        builder
    }

    async fn connect<B>(&self) -> anyhow::Result<hyper::client::conn::http1::SendRequest<B>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = TcpStream::connect(&self.authority).await.with_context(|| {
            format!(
                "cannot connect to {}: is the server running?",
                self.authority
            )
        })?;
        // Chunks are small and latency is what is measured.
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// The request body for `api`: the prompt (token ids or text; chat needs text),
/// streamed with usage.
pub fn request_body(
    api: Api,
    model: &str,
    prompt: PromptForm,
    max_tokens: usize,
    temperature: f32,
    ignore_eos: bool,
) -> anyhow::Result<Json> {
    let mut body = match (api, prompt) {
        (Api::Completions, PromptForm::TokenIds(ids)) => json!({ "prompt": ids }),
        (Api::Completions, PromptForm::Text(text)) => json!({ "prompt": text }),
        (Api::ChatCompletions, PromptForm::Text(text)) => {
            json!({ "messages": [{ "role": "user", "content": text }] })
        }
        (Api::ChatCompletions, PromptForm::TokenIds(_)) => anyhow::bail!(
            "chat requests need text prompts: give --tokenizer DIR (the model's tokenizer.json) \
             to turn the random tokens into text"
        ),
    };
    let fields = body.as_object_mut().expect("a JSON object");
    fields.insert("model".into(), json!(model));
    fields.insert("max_tokens".into(), json!(max_tokens));
    fields.insert("temperature".into(), json!(temperature));
    fields.insert("stream".into(), json!(true));
    fields.insert("stream_options".into(), json!({ "include_usage": true }));
    if ignore_eos {
        // vLLM's extension: only sent when asked for, as OpenAI's API refuses it.
        fields.insert("ignore_eos".into(), json!(true));
    }
    Ok(body)
}

/// A prompt as sent: token ids (completions only) or text.
pub enum PromptForm {
    TokenIds(Vec<u32>),
    Text(String),
}

/// What one server-sent event says.
#[derive(Debug, Default, PartialEq)]
struct Event {
    has_text: bool,
    /// `(prompt_tokens, completion_tokens)` from a `usage` object.
    usage: Option<(usize, usize)>,
}

fn parse_event(payload: &str, api: Api) -> anyhow::Result<Event> {
    if payload == "[DONE]" {
        return Ok(Event::default());
    }
    let json: Json = serde_json::from_str(payload).with_context(|| {
        format!(
            "a stream event is not JSON: {}",
            snippet(payload.as_bytes())
        )
    })?;
    if let Some(error) = json.get("error") {
        anyhow::bail!("the stream reported an error: {error}");
    }
    let choice = &json["choices"][0];
    let text = match api {
        Api::Completions => &choice["text"],
        Api::ChatCompletions => &choice["delta"]["content"],
    };
    let usage = json.get("usage").filter(|u| !u.is_null()).map(|u| {
        let n = |k: &str| u[k].as_u64().unwrap_or(0) as usize;
        (n("prompt_tokens"), n("completion_tokens"))
    });
    Ok(Event {
        has_text: text.as_str().is_some_and(|t| !t.is_empty()),
        usage,
    })
}

/// Splits a byte stream into the payloads of its `data:` lines, whatever the chunking.
#[derive(Default)]
struct SseLines {
    pending: Vec<u8>,
}

impl SseLines {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut payloads = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(payload) = line.strip_prefix("data:") {
                payloads.push(payload.trim_start().to_string());
            }
        }
        payloads
    }
}

/// The start of a body, for an error message.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_survive_any_chunking() {
        let stream = b"data: {\"a\":1}\n\ndata: [DONE]\r\n\r\n";
        for split in 0..stream.len() {
            let mut lines = SseLines::default();
            let mut got = lines.push(&stream[..split]);
            got.extend(lines.push(&stream[split..]));
            assert_eq!(got, ["{\"a\":1}", "[DONE]"], "split at {split}");
        }
    }

    #[test]
    fn events_give_text_and_usage_per_api() {
        let completion =
            r#"{"choices":[{"index":0,"text":"hi","finish_reason":null}],"usage":null}"#;
        assert_eq!(
            parse_event(completion, Api::Completions).unwrap(),
            Event {
                has_text: true,
                usage: None
            }
        );
        let empty = r#"{"choices":[{"index":0,"text":"","finish_reason":"length"}]}"#;
        assert!(!parse_event(empty, Api::Completions).unwrap().has_text);
        let chat = r#"{"choices":[{"index":0,"delta":{"content":"yo"}}]}"#;
        assert!(parse_event(chat, Api::ChatCompletions).unwrap().has_text);
        let role_only = r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#;
        assert!(
            !parse_event(role_only, Api::ChatCompletions)
                .unwrap()
                .has_text
        );
        let usage =
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        assert_eq!(
            parse_event(usage, Api::Completions).unwrap().usage,
            Some((7, 3))
        );
        assert_eq!(
            parse_event("[DONE]", Api::Completions).unwrap(),
            Event::default()
        );
        let err = parse_event(r#"{"error":{"message":"bad"}}"#, Api::Completions).unwrap_err();
        assert!(err.to_string().contains("bad"), "{err}");
    }

    #[test]
    fn base_urls_and_endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:8123/", None).unwrap();
        assert_eq!(
            (e.authority.as_str(), e.prefix.as_str()),
            ("127.0.0.1:8123", "")
        );
        let e = Endpoint::parse("http://localhost/proxy", None).unwrap();
        assert_eq!(
            (e.authority.as_str(), e.prefix.as_str()),
            ("localhost:80", "/proxy")
        );
        for (bad, needle) in [
            ("https://x:1", "only http://"),
            ("127.0.0.1:8000", "http://"),
            ("not a url", "not a URL"),
        ] {
            let err = format!("{:#}", Endpoint::parse(bad, None).unwrap_err());
            assert!(err.contains(needle), "{bad}: {err}");
        }
        assert_eq!(Api::of_path("/v1/completions").unwrap(), Api::Completions);
        assert_eq!(
            Api::of_path("/v1/chat/completions").unwrap(),
            Api::ChatCompletions
        );
        assert!(Api::of_path("/v1/models").is_err());
    }

    #[test]
    fn request_bodies_stream_with_usage() {
        let ids = || PromptForm::TokenIds(vec![1, 2]);
        let body = request_body(Api::Completions, "m", ids(), 5, 0.0, true).unwrap();
        assert_eq!(body["prompt"], json!([1, 2]));
        assert_eq!(body["max_tokens"], 5);
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["ignore_eos"], true);
        let text = PromptForm::Text("hi".into());
        let body = request_body(Api::ChatCompletions, "m", text, 5, 0.5, false).unwrap();
        assert_eq!(body["messages"][0]["content"], "hi");
        assert!(body.get("ignore_eos").is_none());
        let err = request_body(Api::ChatCompletions, "m", ids(), 5, 0.5, false).unwrap_err();
        assert!(err.to_string().contains("--tokenizer"), "{err}");
    }
}
