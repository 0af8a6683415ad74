//! OpenTelemetry: the spans of real exchanges, exported over OTLP/HTTP and received by a
//! receiver that decodes them with the official protobuf definitions (`opentelemetry-proto`
//! from PyPI, installed by `.ci/run`), follow the GenAI semantic conventions.

use std::io::BufRead;
use std::process::Stdio;

use serde_json::{Value, json};

use crate::support::{Reply, Upstream, importable_or_skip, proxy, python};

struct Receiver(std::process::Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The receiver and its port; `None` (said) where the protobuf definitions are not installed.
fn receiver(out: &std::path::Path) -> Option<(Receiver, u16)> {
    if !importable_or_skip(
        "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        "opentelemetry-proto",
    ) {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/otlp_receiver.py");
    let mut child = python(&[script])
        .arg(out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().unwrap();
    Some((Receiver(child), port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_become_genai_spans_at_a_real_otlp_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let spans_file = dir.path().join("spans.jsonl");
    let Some((_receiver, port)) = receiver(&spans_file) else {
        return;
    };
    let upstream = Upstream::start().await;
    let config = format!(
        "[[rule]]\nname = \"no-force-delete\"\non = \"tool_call\"\ntool = \"shell\"\npattern = 'rm\\s+-rf'\naction = \"block\"\n\
         [telemetry]\nendpoint = \"http://127.0.0.1:{port}\"\ncapture_content = true\n"
    );
    let proxy = proxy(&upstream.url, "openai", &config).await;
    upstream.push(Reply::json(&json!({
        "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "m-2025",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "shell", "arguments": "{\"command\": \"rm -rf /\"}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    })));
    upstream.push(Reply::status(400, r#"{"error": {"message": "bad"}}"#));
    let request = json!({"model": "m", "messages": [{"role": "user", "content": "clean up"}]});
    assert_eq!(
        proxy.post("/chat/completions", &request).await.status(),
        200
    );
    assert_eq!(
        proxy.post("/chat/completions", &request).await.status(),
        400
    );
    proxy.response(1).await;
    let exporter = std::sync::Arc::clone(&proxy.proxy);
    tokio::task::spawn_blocking(move || exporter.shutdown_telemetry())
        .await
        .unwrap()
        .unwrap();
    let spans: Vec<Value> = std::fs::read_to_string(&spans_file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let blocked = &spans[0];
    assert_eq!(blocked["path"], "/v1/traces");
    assert_eq!(blocked["content_type"], "application/x-protobuf");
    assert_eq!(blocked["service"], "offswitch-proxy");
    assert_eq!(blocked["scope"], "offswitch-proxy");
    assert_eq!(
        blocked["schema_url"],
        "https://opentelemetry.io/schemas/1.37.0"
    );
    assert_eq!(blocked["name"], "chat m");
    assert_eq!(blocked["kind"], 3, "SPAN_KIND_CLIENT");
    let attributes = &blocked["attributes"];
    for (key, expected) in [
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.provider.name", json!("openai")),
        ("gen_ai.request.model", json!("m")),
        ("gen_ai.response.model", json!("m-2025")),
        ("gen_ai.response.id", json!("chatcmpl-9")),
        ("gen_ai.response.finish_reasons", json!(["stop"])),
        ("gen_ai.usage.input_tokens", json!(10)),
        ("gen_ai.usage.output_tokens", json!(5)),
        ("server.address", json!("127.0.0.1")),
        ("offswitch.session", json!("agent")),
        ("offswitch.outcome", json!("blocked")),
        ("offswitch.blocked_tools", json!(["shell"])),
    ] {
        assert_eq!(attributes[key], expected, "{key}: {attributes:#}");
    }
    assert!(
        attributes["gen_ai.input.messages"]
            .as_str()
            .unwrap()
            .contains("clean up")
    );
    let failed = &spans[1];
    assert_eq!(failed["attributes"]["error.type"], "400");
    assert_eq!(failed["status"], 2, "STATUS_CODE_ERROR");
}
