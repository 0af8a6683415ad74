//! A scripted loopback upstream (it answers each request with the next scripted reply, byte
//! for byte, chunk by chunk, and remembers what it was sent), and a proxy in front of it.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use offswitch_proxy::{MemoryRecorder, NoGuard};
use serde_json::json;

/// One scripted reply.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// Sent one after another, each after its delay.
    pub chunks: Vec<(Duration, Vec<u8>)>,
    pub headers: Vec<(&'static str, String)>,
    /// Never finish after the chunks (a hang).
    pub hang: bool,
}

impl Reply {
    pub fn json(body: &serde_json::Value) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            chunks: vec![(Duration::ZERO, body.to_string().into_bytes())],
            headers: vec![("x-request-id", "req-upstream-1".into())],
            hang: false,
        }
    }

    pub fn status(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            chunks: vec![(Duration::ZERO, body.as_bytes().to_vec())],
            headers: Vec::new(),
            hang: false,
        }
    }

    /// A stream of SSE events, each its own chunk.
    pub fn sse(events: &[String]) -> Reply {
        Reply {
            status: 200,
            content_type: "text/event-stream",
            chunks: events
                .iter()
                .map(|event| (Duration::from_millis(2), event.clone().into_bytes()))
                .collect(),
            headers: vec![("x-request-id", "req-upstream-2".into())],
            hang: false,
        }
    }
}

/// What the upstream was sent.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

#[derive(Default)]
pub struct UpstreamState {
    pub replies: Mutex<VecDeque<Reply>>,
    pub received: Mutex<Vec<Received>>,
}

pub struct Upstream {
    pub url: String,
    pub state: Arc<UpstreamState>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let state = Arc::new(UpstreamState::default());
        let router = axum::Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Upstream { url, state }
    }

    pub fn push(&self, reply: Reply) {
        self.state.replies.lock().unwrap().push_back(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

async fn answer(
    State(state): State<Arc<UpstreamState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        headers,
        body: body.to_vec(),
    });
    let Some(reply) = state.replies.lock().unwrap().pop_front() else {
        return Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from("no scripted reply"))
            .unwrap();
    };
    let chunks = reply.chunks.clone();
    let hang = reply.hang;
    let stream = futures::stream::unfold(
        (chunks.into_iter(), hang),
        |(mut chunks, hang)| async move {
            match chunks.next() {
                Some((delay, bytes)) => {
                    tokio::time::sleep(delay).await;
                    Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), (chunks, hang)))
                }
                None if hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    None
                }
                None => None,
            }
        },
    );
    let mut builder = Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type);
    for (name, value) in &reply.headers {
        builder = builder.header(*name, value);
    }
    builder.body(Body::from_stream(stream)).unwrap()
}

/// A proxy in front of `upstream` with `config` (a configuration's rules, budgets and limits;
/// its upstream table is written here), one session `agent` with token `TOKEN`.
pub struct TestProxy {
    pub url: String,
    pub records: Arc<MemoryRecorder>,
    pub trips: Arc<NoGuard>,
    pub proxy: Arc<offswitch_proxy::Proxy>,
    _dir: tempfile::TempDir,
}

pub const TOKEN: &str = "osw-test-token";

pub async fn proxy(upstream_url: &str, api: &str, rules: &str) -> TestProxy {
    proxy_with(upstream_url, api, "", rules).await
}

/// `proxy`, with more keys for the upstream (`responses = false`).
pub async fn proxy_with(
    upstream_url: &str,
    api: &str,
    upstream_keys: &str,
    rules: &str,
) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "sk-upstream-secret\n").unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let text = format!(
        "version = 1\n[[upstream]]\nname = \"up\"\nurl = \"{upstream_url}\"\napi = \"{api}\"\n\
         key_file = \"{key}\"\n{upstream_keys}\n[[session]]\nname = \"agent\"\n\
         token_file = \"{token}\"\nguard = \"agent-guard\"\n{rules}",
        key = dir.path().join("key").display(),
        token = dir.path().join("token").display(),
    );
    let config =
        offswitch_proxy::parse(&text, Path::new("proxy.toml")).unwrap_or_else(|e| panic!("{e}"));
    let (routes, sessions) = offswitch_proxy::prepare(&config).unwrap();
    let records = Arc::new(MemoryRecorder::default());
    let trips = Arc::new(NoGuard::default());
    let proxy = offswitch_proxy::Proxy::new(
        config,
        routes,
        sessions,
        Arc::clone(&records) as _,
        Arc::clone(&trips) as _,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(offswitch_proxy::serve(listener, Arc::clone(&proxy)));
    TestProxy {
        url,
        records,
        trips,
        proxy,
        _dir: dir,
    }
}

impl TestProxy {
    pub fn records(&self, kind: &str) -> Vec<serde_json::Value> {
        self.records
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// The `model_response` record of the `n`th exchange (from 0), waiting briefly for a
    /// stream's to land (it is written after the client has the last byte).
    pub async fn response(&self, n: usize) -> serde_json::Value {
        for _ in 0..500 {
            if let Some(record) = self.records("model_response").get(n) {
                return record.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no model_response record {n}");
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

/// An OpenAI chat chunk event.
pub fn chat_chunk(delta: serde_json::Value, finish: Option<&str>) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {chunk}\n\n")
}

/// An Anthropic event.
pub fn anthropic_event(data: serde_json::Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap()
    )
}

/// A chat stream: a line of text, then a `shell` call whose arguments come two characters a chunk.
pub fn chat_stream(arguments: &str) -> Vec<String> {
    let mut events = vec![
        chat_chunk(
            json!({"role": "assistant", "content": "Cleaning up."}),
            None,
        ),
        chat_chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "shell", "arguments": ""}}]}),
            None,
        ),
    ];
    let chars: Vec<char> = arguments.chars().collect();
    for piece in chars.chunks(2) {
        let piece: String = piece.iter().collect();
        events.push(chat_chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            None,
        ));
    }
    events.push(chat_chunk(json!({}), Some("tool_calls")));
    events.push("data: [DONE]\n\n".into());
    events
}

/// An Anthropic stream: a text block, then a `shell` tool_use whose input comes three characters a delta.
pub fn anthropic_stream(command: &str) -> Vec<String> {
    let input = json!({"command": command}).to_string();
    let mut events = vec![
        anthropic_event(
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [], "stop_reason": null, "usage": {"input_tokens": 20, "output_tokens": 1}}}),
        ),
        anthropic_event(
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        anthropic_event(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "On it."}}),
        ),
        anthropic_event(json!({"type": "content_block_stop", "index": 0})),
        anthropic_event(
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {}}}),
        ),
    ];
    let chars: Vec<char> = input.chars().collect();
    for piece in chars.chunks(3) {
        let piece: String = piece.iter().collect();
        events.push(anthropic_event(json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": piece}})));
    }
    events.push(anthropic_event(
        json!({"type": "content_block_stop", "index": 1}),
    ));
    events.push(anthropic_event(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 30}})));
    events.push(anthropic_event(json!({"type": "message_stop"})));
    events
}

/// The system's PATH: the Python packages the tests use are installed for the python3 there.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The system python3, isolated (`-I`), from `/`, with nothing of this environment.
pub fn python(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new("python3");
    command
        .arg("-I")
        .args(args)
        .current_dir("/")
        .env_clear()
        .env("PATH", SYSTEM_PATH);
    command
}

/// Whether `import` works in the system python; under CI (`OFFSWITCH_CI`, set by `.ci/run`,
/// which installs what it imports) a failure fails the test instead of skipping it.
pub fn importable_or_skip(import: &str, what: &str) -> bool {
    match python(&["-c", import]).output() {
        Ok(output) if output.status.success() => true,
        other => {
            let why = match other {
                Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("OFFSWITCH_CI").is_none(),
                "{what} is not importable under CI: {why}"
            );
            eprintln!(
                "skipping: {what} is not importable by the system python3 (.ci/run installs it): {why}"
            );
            false
        }
    }
}
