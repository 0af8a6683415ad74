//! An OpenAI-compatible HTTP server in front of the embedded model: `POST /v1/chat/completions`
//! (plain and `stream: true` server-sent events, with tools) and `GET /v1/models`.
//!
//! With `tools` in a request the reply is generated under the tool-call grammar and returned as
//! OpenAI `tool_calls`. Every tool parameter is treated as a string, as everywhere in offswitch.
//!
//! With [`ServerOptions::request_history`] the server also remembers the text of its last chat
//! requests and lists them at `GET /offswitch/requests`: the self-replication scenario asks a
//! replica, which only a real server can be, what it was told.

pub mod viewer;
mod wire;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use offswitch_core::{BackendErrorKind, ChatBackend, ChatRequest};
use offswitch_embedded::EmbeddedBackend;
use offswitch_model::openai::{completion_json, finish_reason_name};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use wire::WireError;

/// How the server behaves beyond the OpenAI endpoints.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Chat requests remembered (oldest dropped first) and listed at `GET /offswitch/requests`;
    /// 0 remembers nothing and leaves that route out.
    pub request_history: usize,
}

/// The most bytes of one request's text kept in the history: enough to read an instruction,
/// bounded so a client cannot make the server hold much.
pub const HISTORY_TEXT_LIMIT: usize = 4096;

/// Serve `backend` on `listener` until the future is dropped or the listener fails.
pub fn serve(
    listener: TcpListener,
    backend: Arc<EmbeddedBackend>,
) -> impl Future<Output = std::io::Result<()>> {
    serve_with(listener, backend, ServerOptions::default())
}

/// [`serve`] with options.
pub fn serve_with(
    listener: TcpListener,
    backend: Arc<EmbeddedBackend>,
    options: ServerOptions,
) -> impl Future<Output = std::io::Result<()>> {
    axum::serve(listener, router_with(backend, options)).into_future()
}

/// The routes, for callers that bring their own server.
pub fn router(backend: Arc<EmbeddedBackend>) -> Router {
    router_with(backend, ServerOptions::default())
}

/// [`router`] with options.
pub fn router_with(backend: Arc<EmbeddedBackend>, options: ServerOptions) -> Router {
    let history_enabled = options.request_history > 0;
    let state = Arc::new(AppState {
        backend,
        next_id: AtomicU64::new(1),
        history: Mutex::new(VecDeque::new()),
        history_limit: options.request_history,
    });
    let router = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions));
    let router = if history_enabled {
        router.route("/offswitch/requests", get(list_requests))
    } else {
        router
    };
    router.with_state(state)
}

struct AppState {
    backend: Arc<EmbeddedBackend>,
    next_id: AtomicU64,
    /// The text of the last chat requests, oldest first.
    history: Mutex<VecDeque<Value>>,
    history_limit: usize,
}

impl AppState {
    fn remember(&self, id: &str, request: &ChatRequest) {
        if self.history_limit == 0 {
            return;
        }
        let mut text = String::new();
        for message in &request.messages {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&message.content);
            if text.len() >= HISTORY_TEXT_LIMIT {
                break;
            }
        }
        if text.len() > HISTORY_TEXT_LIMIT {
            let mut end = HISTORY_TEXT_LIMIT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        // A poisoned lock only means another handler panicked mid-push; the queue is intact.
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history.len() == self.history_limit {
            history.pop_front();
        }
        history.push_back(json!({"id": id, "text": text}));
    }
}

async fn list_requests(State(state): State<Arc<AppState>>) -> Response {
    let history = state.history.lock().unwrap_or_else(|e| e.into_inner());
    axum::Json(json!({"requests": history.iter().collect::<Vec<_>>()})).into_response()
}

async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.backend.name(),
            "object": "model",
            "created": 0,
            "owned_by": "offswitch",
        }],
    }))
    .into_response()
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return error_response(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}"));
        }
    };
    let parsed = match wire::parse_request(&body, state.backend.name()) {
        Ok(parsed) => parsed,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let id = format!("chatcmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
    state.remember(&id, &parsed.request);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = parsed.request.model.clone();
    if !parsed.stream {
        return match state.backend.chat(&parsed.request).await {
            Ok(response) => {
                axum::Json(completion_json(&id, created, &model, &response)).into_response()
            }
            Err(e) => backend_error_response(&e),
        };
    }
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let (events, receiver) = mpsc::unbounded_channel::<Value>();
    let _ = events.send(chunk(json!({"role": "assistant", "content": ""}), None));
    let backend = Arc::clone(&state.backend);
    tokio::spawn(async move {
        // A client that disconnects drops the stream and so the receiver: stop generating for
        // it, which drops the engine's reply channel and frees its place in the batch.
        tokio::select! {
            () = stream_reply(&backend, &parsed.request, &events, chunk) => {}
            () = events.closed() => {}
        }
    });
    let stream = tokio_stream_from(receiver)
        .map(|value| Ok::<Event, Infallible>(Event::default().data(value.to_string())))
        .chain(futures::stream::once(async {
            Ok::<Event, Infallible>(Event::default().data("[DONE]"))
        }));
    Sse::new(stream).into_response()
}

/// Send the reply to `request` as chunk events: plain text token by token as the engine
/// produces it, a tool call as one delta once it is complete.
async fn stream_reply(
    backend: &EmbeddedBackend,
    request: &ChatRequest,
    events: &mpsc::UnboundedSender<Value>,
    chunk: impl Fn(Value, Option<&str>) -> Value,
) {
    let finish = if request.tools.is_empty() {
        let (deltas, mut delta_receiver) = mpsc::unbounded_channel::<String>();
        let forward = async {
            while let Some(text) = delta_receiver.recv().await {
                let _ = events.send(chunk(json!({"content": text}), None));
            }
        };
        let (result, ()) = tokio::join!(backend.generate(request, Some(deltas)), forward);
        result.map(|reply| reply.finish_reason)
    } else {
        backend.chat(request).await.map(|response| {
            if !response.message.content.is_empty() {
                let _ = events.send(chunk(json!({"content": response.message.content}), None));
            }
            if !response.message.tool_calls.is_empty() {
                let calls = wire::tool_call_deltas(&response.message.tool_calls);
                let _ = events.send(chunk(json!({"tool_calls": calls}), None));
            }
            response.finish_reason
        })
    };
    let _ = events.send(match finish {
        Ok(reason) => chunk(json!({}), Some(finish_reason_name(&reason))),
        Err(e) => json!({"error": {"message": e.to_string()}}),
    });
}

fn tokio_stream_from(
    mut receiver: mpsc::UnboundedReceiver<Value>,
) -> impl futures::Stream<Item = Value> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

fn backend_error_response(error: &offswitch_core::BackendError) -> Response {
    if error.kind == BackendErrorKind::ContextOverflow {
        // OpenAI's code for it, so clients (ours included) can tell it from other bad requests.
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {
                "message": error.to_string(),
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }})),
        )
            .into_response();
    }
    let status = match error.kind {
        BackendErrorKind::Fatal => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, &error.to_string())
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": kind}})),
    )
        .into_response()
}
