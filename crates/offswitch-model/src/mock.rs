//! Mock OpenAI-compatible and Anthropic servers on loopback, for tests of this crate and of the
//! harness: real HTTP, a queue of scripted replies (text, tool calls, error statuses with
//! headers, delays, truncated, oversized and endless bodies, replaced usage), every request
//! recorded, in-flight requests counted.
//!
//! Enabled by the `mock` feature. The server runs on a task owned by [`MockServer`] and stops
//! when it is dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Response, StatusCode};
use offswitch_core::{ChatResponse, FinishReason, Message, ToolCall, Usage};
use serde_json::{Value, json};

/// Which wire protocol the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `POST /v1/chat/completions`; the base URL handed out ends in `/v1`.
    OpenAi,
    /// `POST /v1/messages`; the base URL handed out has no path.
    Anthropic,
}

/// A tool call the mock model makes.
#[derive(Debug, Clone, PartialEq)]
pub struct MockToolCall {
    pub name: String,
    /// A JSON object of arguments.
    pub arguments: Value,
}

/// One scripted reply, consumed by one request.
#[derive(Debug, Clone, PartialEq)]
pub enum MockReply {
    /// A plain assistant message.
    Text(String),
    /// An assistant message with native tool calls (ids are generated: `call_<request>_<i>`
    /// for OpenAI, `toolu_<request>_<i>` for Anthropic).
    ToolCalls {
        text: String,
        calls: Vec<MockToolCall>,
    },
    /// An error status with the provider's error body and extra headers (e.g. `retry-after`).
    Error {
        status: u16,
        message: String,
        headers: Vec<(String, String)>,
    },
    /// The reply after a wait; a wait past the client's timeout makes the client give up.
    Delayed {
        delay: Duration,
        reply: Box<MockReply>,
    },
    /// The reply once the server has had `count` requests in flight at the same moment (since
    /// it started), or after `max_wait` if that never happens: lets a test prove that calls
    /// overlap without guessing how long to sleep.
    WhenInFlight {
        count: usize,
        max_wait: Duration,
        reply: Box<MockReply>,
    },
    /// Status 200 with the first half of a valid text reply's JSON.
    Truncated,
    /// A text reply of `bytes` bytes of `a`, one word, so its stand-in token count is 1 (as a
    /// server under-reporting its usage would say). Sent with a `Content-Length`, or without
    /// one as a stream of 64 KiB chunks (`chunked`).
    Long { bytes: usize, chunked: bool },
    /// Status 200 and a chunked body that never ends: a client that does not cap what it reads
    /// would read until it runs out of memory or time.
    Endless,
    /// The reply with its reported usage replaced by these counts.
    WithUsage { usage: Usage, reply: Box<MockReply> },
}

impl MockReply {
    pub fn text(text: impl Into<String>) -> MockReply {
        MockReply::Text(text.into())
    }

    /// One tool call with `arguments`, which must be a JSON object.
    pub fn tool_call(name: impl Into<String>, arguments: Value) -> MockReply {
        MockReply::ToolCalls {
            text: String::new(),
            calls: vec![MockToolCall {
                name: name.into(),
                arguments,
            }],
        }
    }

    pub fn error(status: u16, message: impl Into<String>) -> MockReply {
        MockReply::Error {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// A 429 with `Retry-After: <value>` (seconds or an HTTP-date).
    pub fn rate_limited(retry_after: impl Into<String>) -> MockReply {
        MockReply::Error {
            status: 429,
            message: "rate limit reached".into(),
            headers: vec![("retry-after".into(), retry_after.into())],
        }
    }

    pub fn when_in_flight(self, count: usize, max_wait: Duration) -> MockReply {
        MockReply::WhenInFlight {
            count,
            max_wait,
            reply: Box::new(self),
        }
    }

    /// The reply, reporting `usage` instead of the stand-in counts.
    pub fn with_usage(self, usage: Usage) -> MockReply {
        MockReply::WithUsage {
            usage,
            reply: Box::new(self),
        }
    }

    pub fn delayed(self, delay: Duration) -> MockReply {
        MockReply::Delayed {
            delay,
            reply: Box::new(self),
        }
    }
}

/// A request as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, `Value::Null` if it was not JSON.
    pub body: Value,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct MockServer {
    flavor: Flavor,
    address: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Start a server on `127.0.0.1:0`. Must be called inside a tokio runtime.
    pub async fn start(flavor: Flavor) -> std::io::Result<MockServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            flavor,
            state: Mutex::new(ScriptState {
                queue: VecDeque::new(),
                fallback: MockReply::error(400, "mock server has no scripted reply left"),
                requests: Vec::new(),
            }),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            arrivals: tokio::sync::Notify::new(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("mock server stopped: {e}");
            }
        });
        Ok(MockServer {
            flavor,
            address,
            shared,
            task,
        })
    }

    /// The base URL to configure a backend with.
    pub fn base_url(&self) -> String {
        match self.flavor {
            Flavor::OpenAi => format!("http://{}/v1", self.address),
            Flavor::Anthropic => format!("http://{}", self.address),
        }
    }

    /// Queue a reply for the next request that finds the queue's front.
    pub fn push(&self, reply: MockReply) {
        self.lock().queue.push_back(reply);
    }

    pub fn push_all(&self, replies: impl IntoIterator<Item = MockReply>) {
        self.lock().queue.extend(replies);
    }

    /// The reply once the queue is empty; by default a 400 saying the script ran out, which a
    /// backend reports as a fatal error rather than retrying.
    pub fn set_fallback(&self, reply: MockReply) {
        self.lock().fallback = reply;
    }

    /// Replies still queued.
    pub fn pending(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The most requests that were being handled at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ScriptState> {
        self.shared.lock()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    flavor: Flavor,
    state: Mutex<ScriptState>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Woken whenever a request arrives.
    arrivals: tokio::sync::Notify,
}

impl Shared {
    async fn in_flight_reaches(&self, count: usize) {
        loop {
            // Register for the next arrival before checking, so one in between is not missed.
            let arrival = self.arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            // The peak, not the current count: the first request released may answer and
            // leave before the others have looked.
            if self.max_in_flight.load(Ordering::SeqCst) >= count {
                return;
            }
            arrival.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ScriptState> {
        // A panicking test thread must not hide the recorded requests from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct ScriptState {
    queue: VecDeque<MockReply>,
    fallback: MockReply,
    requests: Vec<RecordedRequest>,
}

/// Decrements the in-flight count however the handler ends, including when the client hangs
/// up and the handler's future is dropped mid-delay.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
) -> Response<Body> {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    shared.arrivals.notify_waiters();
    let _in_flight = InFlight(shared.clone());

    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    };
    let (reply, number) = {
        let mut state = shared.lock();
        state.requests.push(recorded.clone());
        let reply = state
            .queue
            .pop_front()
            .unwrap_or_else(|| state.fallback.clone());
        (reply, state.requests.len())
    };
    let mut reply = reply;
    loop {
        match reply {
            MockReply::Delayed {
                delay,
                reply: inner,
            } => {
                tokio::time::sleep(delay).await;
                reply = *inner;
            }
            MockReply::WhenInFlight {
                count,
                max_wait,
                reply: inner,
            } => {
                let _ = tokio::time::timeout(max_wait, shared.in_flight_reaches(count)).await;
                reply = *inner;
            }
            other => break render(shared.flavor, &other, &recorded, number, None),
        }
    }
}

/// `usage`: reported instead of the stand-in counts, when given.
fn render(
    flavor: Flavor,
    reply: &MockReply,
    request: &RecordedRequest,
    number: usize,
    usage: Option<Usage>,
) -> Response<Body> {
    match reply {
        MockReply::Text(text) => json_response(
            200,
            &success_body(flavor, text, &[], request, number, usage),
            &[],
        ),
        MockReply::ToolCalls { text, calls } => json_response(
            200,
            &success_body(flavor, text, calls, request, number, usage),
            &[],
        ),
        MockReply::Long { bytes, chunked } => {
            let body =
                success_body(flavor, &"a".repeat(*bytes), &[], request, number, usage).to_string();
            if *chunked {
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
                    .into_bytes()
                    .chunks(64 << 10)
                    .map(|chunk| Ok(chunk.to_vec()))
                    .collect();
                stream_response(futures::stream::iter(chunks))
            } else {
                raw_response(200, body, &[])
            }
        }
        MockReply::Endless => {
            let chunk = vec![b' '; 64 << 10];
            stream_response(futures::stream::repeat_with(move || {
                Ok::<_, std::io::Error>(chunk.clone())
            }))
        }
        MockReply::WithUsage {
            usage: replaced,
            reply,
        } => render(flavor, reply, request, number, Some(*replaced)),
        MockReply::Error {
            status,
            message,
            headers,
        } => {
            let body = match flavor {
                Flavor::OpenAi => json!({
                    "error": { "message": message, "type": error_type(*status), "code": Value::Null }
                }),
                Flavor::Anthropic => json!({
                    "type": "error",
                    "error": { "type": error_type(*status), "message": message }
                }),
            };
            json_response(*status, &body, headers)
        }
        MockReply::Truncated => {
            let full = success_body(
                flavor,
                "this reply is cut short",
                &[],
                request,
                number,
                usage,
            )
            .to_string();
            let half = &full[..full.len() / 2];
            raw_response(200, half.to_owned(), &[])
        }
        // `handle` unwraps waits before rendering.
        MockReply::Delayed { reply, .. } | MockReply::WhenInFlight { reply, .. } => {
            render(flavor, reply, request, number, usage)
        }
    }
}

fn success_body(
    flavor: Flavor,
    text: &str,
    calls: &[MockToolCall],
    request: &RecordedRequest,
    number: usize,
    usage: Option<Usage>,
) -> Value {
    let model = request.body.get("model").cloned().unwrap_or(Value::Null);
    // Deterministic stand-ins for token counts, so tests can check that usage is mapped.
    let (prompt_tokens, completion_tokens) = match usage {
        Some(usage) => (
            usage.prompt_tokens as usize,
            usage.completion_tokens as usize,
        ),
        None => (
            request.body.to_string().len() / 4,
            text.split_whitespace().count() + 10 * calls.len(),
        ),
    };
    match flavor {
        Flavor::OpenAi => {
            let calls: Vec<ToolCall> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| ToolCall {
                    id: format!("call_{number}_{i}"),
                    name: call.name.clone(),
                    arguments: call.arguments.to_string(),
                })
                .collect();
            let response = ChatResponse {
                finish_reason: if calls.is_empty() {
                    FinishReason::Stop
                } else {
                    FinishReason::ToolCalls
                },
                message: Message {
                    tool_calls: calls,
                    ..Message::assistant(text)
                },
                usage: Usage {
                    prompt_tokens: prompt_tokens as u64,
                    completion_tokens: completion_tokens as u64,
                },
            };
            let model = model.as_str().unwrap_or_default();
            crate::openai::completion_json(&format!("chatcmpl-mock-{number}"), 0, model, &response)
        }
        Flavor::Anthropic => {
            let mut content = Vec::new();
            if !text.is_empty() {
                content.push(json!({ "type": "text", "text": text }));
            }
            for (i, call) in calls.iter().enumerate() {
                content.push(json!({
                    "type": "tool_use",
                    "id": format!("toolu_{number}_{i}"),
                    "name": call.name,
                    "input": call.arguments,
                }));
            }
            json!({
                "id": format!("msg_mock_{number}"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": if calls.is_empty() { "end_turn" } else { "tool_use" },
                "stop_sequence": Value::Null,
                "usage": { "input_tokens": prompt_tokens, "output_tokens": completion_tokens },
            })
        }
    }
}

fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn json_response(status: u16, body: &Value, headers: &[(String, String)]) -> Response<Body> {
    raw_response(status, body.to_string(), headers)
}

/// Status 200 with a JSON content type and `chunks` as the body, without a `Content-Length`.
fn stream_response(
    chunks: impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static,
) -> Response<Body> {
    let mut response = Response::new(Body::from_stream(chunks));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn raw_response(status: u16, body: String, headers: &[(String, String)]) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        // Scripts are written by tests; an invalid header there is a bug worth a loud failure.
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid scripted header name");
        let value = HeaderValue::from_str(value).expect("valid scripted header value");
        response.headers_mut().append(name, value);
    }
    response
}
