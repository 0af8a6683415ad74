//! An OpenAI-compatible HTTP server in front of the embedded model: `POST /v1/chat/completions`
//! (plain and `stream: true` server-sent events, with tools) and `GET /v1/models`.
//!
//! With `tools` in a request the reply is generated under the tool-call grammar and returned as
//! OpenAI `tool_calls`. Every tool parameter is treated as a string, as everywhere in offswitch.

mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use offswitch_core::{BackendErrorKind, ChatBackend};
use offswitch_embedded::EmbeddedBackend;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use wire::WireError;

/// Serve `backend` on `listener` until the future is dropped or the listener fails.
pub fn serve(
    listener: TcpListener,
    backend: Arc<EmbeddedBackend>,
) -> impl Future<Output = std::io::Result<()>> {
    axum::serve(listener, router(backend)).into_future()
}

/// The routes, for callers that bring their own server.
pub fn router(backend: Arc<EmbeddedBackend>) -> Router {
    let state = Arc::new(AppState {
        backend,
        next_id: AtomicU64::new(1),
    });
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(state)
}

struct AppState {
    backend: Arc<EmbeddedBackend>,
    next_id: AtomicU64,
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
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = parsed.request.model.clone();
    if !parsed.stream {
        return match state.backend.chat(&parsed.request).await {
            Ok(response) => {
                axum::Json(wire::completion(&id, created, &model, &response)).into_response()
            }
            Err(e) => backend_error_response(&e),
        };
    }
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |delta: Value, finish: Option<&str>| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        }
    };
    let (events, receiver) = mpsc::unbounded_channel::<Value>();
    let _ = events.send(chunk(json!({"role": "assistant", "content": ""}), None));
    let backend = Arc::clone(&state.backend);
    tokio::spawn(async move {
        let request = parsed.request;
        if request.tools.is_empty() {
            // Plain text streams token by token as the engine produces it.
            let (deltas, mut delta_receiver) = mpsc::unbounded_channel::<String>();
            let forward = {
                let events = events.clone();
                let chunk = chunk.clone();
                async move {
                    while let Some(text) = delta_receiver.recv().await {
                        let _ = events.send(chunk(json!({"content": text}), None));
                    }
                }
            };
            let (result, ()) = tokio::join!(backend.generate(&request, Some(deltas)), forward);
            match result {
                Ok(reply) => {
                    let finish = wire::finish_reason(&reply.finish_reason);
                    let _ = events.send(chunk(json!({}), Some(finish)));
                }
                Err(e) => {
                    let _ = events.send(json!({"error": {"message": e.to_string()}}));
                }
            }
        } else {
            // A tool call is only known once it is complete, so it is sent as one delta.
            match backend.chat(&request).await {
                Ok(response) => {
                    if !response.message.content.is_empty() {
                        let _ =
                            events.send(chunk(json!({"content": response.message.content}), None));
                    }
                    if !response.message.tool_calls.is_empty() {
                        let calls = wire::tool_calls(&response.message.tool_calls, true);
                        let _ = events.send(chunk(json!({"tool_calls": calls}), None));
                    }
                    let finish = wire::finish_reason(&response.finish_reason);
                    let _ = events.send(chunk(json!({}), Some(finish)));
                }
                Err(e) => {
                    let _ = events.send(json!({"error": {"message": e.to_string()}}));
                }
            }
        }
    });
    let stream = tokio_stream_from(receiver)
        .map(|value| Ok::<Event, Infallible>(Event::default().data(value.to_string())))
        .chain(futures::stream::once(async {
            Ok::<Event, Infallible>(Event::default().data("[DONE]"))
        }));
    Sse::new(stream).into_response()
}

fn tokio_stream_from(
    mut receiver: mpsc::UnboundedReceiver<Value>,
) -> impl futures::Stream<Item = Value> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

fn backend_error_response(error: &offswitch_core::BackendError) -> Response {
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
