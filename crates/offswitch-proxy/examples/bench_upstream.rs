//! A fast OpenAI-compatible upstream for the proxy benchmark (`bench/proxy/run.sh`): every
//! `POST /v1/chat/completions` gets the same small completion at once, or with `"stream": true`
//! the same 20 chunks and `[DONE]`. For the model `m-paced` the chunks come one every
//! [`PACE`], like a hosted model generating 50 tokens a second. Prints
//! `listening on http://ADDR/v1` and serves until killed.
//!
//! Usage: `cargo run --release -p offswitch-proxy --example bench_upstream [ADDR]`

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use serde_json::{Value, json};

/// The time between two chunks of a paced stream.
const PACE: std::time::Duration = std::time::Duration::from_millis(20);

fn completion() -> String {
    json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
            "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog.", "refusal": null}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22},
    })
    .to_string()
}

/// The events of a streamed reply, each a whole `data:` event.
fn events() -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..20 {
        let chunk = json!({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "m",
            "choices": [{"index": 0, "delta": if i == 0 { json!({"role": "assistant", "content": ""}) } else { json!({"content": format!("word{i} ")}) }, "finish_reason": null}],
        });
        out.push(format!("data: {chunk}\n\n"));
    }
    let last = json!({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32},
    });
    out.push(format!("data: {last}\n\ndata: [DONE]\n\n"));
    out
}

/// The events one [`PACE`] apart, the first at once. Each carries the wall-clock time it is
/// handed to the server, in microseconds, as a top-level `"sent_us"` (a key no client reads):
/// `bench_load` subtracts it from when the event arrives, so the transit of each event is
/// measured apart from the pacing's timer jitter.
fn paced() -> Body {
    let stream = futures::stream::unfold(
        (events().into_iter(), true),
        |(mut rest, first)| async move {
            let event = rest.next()?;
            if !first {
                tokio::time::sleep(PACE).await;
            }
            let sent_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            let event = event.replacen("{\"id\"", &format!("{{\"sent_us\":{sent_us},\"id\""), 1);
            Some((Ok::<_, std::io::Error>(Bytes::from(event)), (rest, false)))
        },
    );
    Body::from_stream(stream)
}

async fn chat(body: Bytes) -> Response {
    let request = serde_json::from_slice::<Value>(&body).unwrap_or_default();
    let streamed = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let model = request.get("model").and_then(Value::as_str).unwrap_or("m");
    let (content_type, body) = if !streamed {
        ("application/json", Body::from(completion()))
    } else if model == "m-paced" {
        ("text/event-stream", paced())
    } else {
        ("text/event-stream", Body::from(events().concat()))
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .expect("a response")
}

async fn models() -> axum::Json<Value> {
    axum::Json(json!({"object": "list", "data": [
        {"id": "m", "object": "model", "created": 0, "owned_by": "bench"},
        {"id": "m-paced", "object": "model", "created": 0, "owned_by": "bench"},
    ]}))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("listening on http://{}/v1", listener.local_addr()?);
    let router = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .route("/v1/models", axum::routing::get(models));
    // As model servers do (uvicorn, vLLM): a paced event goes out when written, not held back
    // by Nagle's algorithm until the previous one is acknowledged.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router).await
}
