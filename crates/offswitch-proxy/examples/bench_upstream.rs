//! A fast OpenAI-compatible upstream for the proxy benchmark (`bench/proxy/run.sh`): every
//! `POST /v1/chat/completions` gets the same small completion at once, or with `"stream": true`
//! the same 20 chunks and `[DONE]`. Prints `listening on http://ADDR/v1` and serves until killed.
//!
//! Usage: `cargo run --release -p offswitch-proxy --example bench_upstream [ADDR]`

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use serde_json::{Value, json};

fn completion() -> String {
    json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
            "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog.", "refusal": null}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22},
    })
    .to_string()
}

fn stream() -> String {
    let mut out = String::new();
    for i in 0..20 {
        let chunk = json!({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "m",
            "choices": [{"index": 0, "delta": if i == 0 { json!({"role": "assistant", "content": ""}) } else { json!({"content": format!("word{i} ")}) }, "finish_reason": null}],
        });
        out.push_str(&format!("data: {chunk}\n\n"));
    }
    let last = json!({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32},
    });
    out.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    out
}

async fn chat(body: Bytes) -> Response {
    let streamed = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("stream").and_then(Value::as_bool))
        .unwrap_or(false);
    let (content_type, text) = if streamed {
        ("text/event-stream", stream())
    } else {
        ("application/json", completion())
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(text))
        .expect("a response")
}

async fn models() -> axum::Json<Value> {
    axum::Json(
        json!({"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "bench"}]}),
    )
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
    axum::serve(listener, router).await
}
