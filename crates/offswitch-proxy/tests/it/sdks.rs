//! Real clients: the official `openai` and `anthropic` Python SDKs (installed by `.ci/run`
//! into the system python) talk to the proxy in front of the scripted upstream, streamed and
//! not, with tool calls. With no rule firing they get exactly what the upstream sent; with one,
//! a clean refusal their own parsers accept.

use serde_json::{Value, json};

use crate::support::{
    Reply, TOKEN, Upstream, anthropic_stream, chat_stream, importable_or_skip, proxy, python,
};

const RULES: &str = r#"
[[rule]]
name = "no-force-delete"
on = "tool_call"
tool = "shell"
argument = "command"
pattern = 'rm\s+-[a-z]*r'
action = "block"
[[rule]]
name = "secret-leaving"
on = "prompt"
pattern = 'sk-live-[A-Za-z0-9]{10,}'
action = "block"
"#;
async fn client(url: &str, case: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/clients.py").to_owned();
    let url = url.to_owned();
    let owned = case.to_owned();
    let output =
        tokio::task::spawn_blocking(move || python(&[&script, &url, TOKEN, &owned]).output())
            .await
            .unwrap()
            .unwrap();
    assert!(
        output.status.success(),
        "{case}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_streamed_and_not_with_tool_calls() {
    if !importable_or_skip("import openai, anthropic", "the openai and anthropic SDKs") {
        return;
    }
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", RULES).await;
    // Whole: the SDK reads exactly the upstream's bytes.
    let reply = json!({
        "id": "chatcmpl-7", "object": "chat.completion", "created": 1_700_000_000, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {"role": "assistant", "content": null, "refusal": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": "{\"command\": \"ls build\"}"}}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    });
    upstream.push(Reply::json(&reply));
    let got = client(&proxy.url, "openai_chat_whole").await;
    assert_eq!(got["raw"], reply.to_string());
    assert_eq!(got["arguments"], "{\"command\": \"ls build\"}");
    // Streamed, harmless: the SDK assembles the call the upstream sent.
    let arguments = r#"{"command": "make clean"}"#;
    upstream.push(Reply::sse(&chat_stream(arguments)));
    let got = client(&proxy.url, "openai_chat_stream").await;
    assert_eq!(got["calls"][0]["arguments"], arguments);
    assert_eq!(got["calls"][0]["name"], "shell");
    assert_eq!(got["finish_reason"], "tool_calls");
    // Streamed, blocked: no call, the refusal as text, a normal end.
    upstream.push(Reply::sse(&chat_stream(r#"{"command": "rm -rf build /"}"#)));
    let got = client(&proxy.url, "openai_chat_stream_blocked").await;
    assert_eq!(got["calls"], json!([]));
    assert_eq!(got["finish_reason"], "stop");
    assert!(
        got["content"].as_str().unwrap().contains("no-force-delete"),
        "{got}"
    );
    // The Responses API, streamed and blocked: the SDK's own event parser accepts the rewrite.
    let call = |arguments: &str| json!({"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell", "arguments": arguments, "status": "completed"});
    let arguments = json!({"command": "rm -rf /"}).to_string();
    let response = |status: &str, output: Value| {
        json!({"id": "resp_1", "object": "response", "created_at": 1_700_000_000, "status": status, "model": "m", "output": output,
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13, "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}})
    };
    let event = |data: Value| {
        format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap()
        )
    };
    let mut events = vec![
        event(
            json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress", json!([]))}),
        ),
        event(
            json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": call("")}),
        ),
    ];
    for piece in arguments.as_bytes().chunks(5) {
        let n = events.len();
        events.push(event(json!({"type": "response.function_call_arguments.delta", "sequence_number": n, "item_id": "fc_1", "output_index": 0, "delta": String::from_utf8_lossy(piece)})));
    }
    let n = events.len();
    events.push(event(json!({"type": "response.function_call_arguments.done", "sequence_number": n, "item_id": "fc_1", "output_index": 0, "arguments": arguments})));
    events.push(event(json!({"type": "response.output_item.done", "sequence_number": n + 1, "output_index": 0, "item": call(&arguments)})));
    events.push(event(json!({"type": "response.completed", "sequence_number": n + 2, "response": response("completed", json!([call(&arguments)]))})));
    upstream.push(Reply::sse(&events));
    let got = client(&proxy.url, "openai_responses_stream_blocked").await;
    assert_eq!(got["output_types"], json!(["message"]), "{got}");
    assert!(
        got["text"].as_str().unwrap().contains("no-force-delete"),
        "{got}"
    );
    assert!(
        !got["types"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().contains("function_call")),
        "{got}"
    );
    // A secret leaving: the SDK raises its own PermissionDeniedError with the reason.
    let got = client(&proxy.url, "openai_prompt_refused").await;
    assert_eq!(got["status"], 403);
    assert!(
        got["message"].as_str().unwrap().contains("secret-leaving"),
        "{got}"
    );
    assert_eq!(
        upstream.received().len(),
        4,
        "the refused request never left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_anthropic_sdk_streamed_and_not_with_tool_use() {
    if !importable_or_skip("import openai, anthropic", "the openai and anthropic SDKs") {
        return;
    }
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "anthropic", RULES).await;
    let whole = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "text", "text": "Listing."}, {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {"command": "ls"}}],
        "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 8},
    });
    upstream.push(Reply::json(&whole));
    let got = client(&proxy.url, "anthropic_whole").await;
    assert_eq!(got["raw"], whole.to_string());
    assert_eq!(got["types"], json!(["text", "tool_use"]));
    upstream.push(Reply::sse(&anthropic_stream("make clean")));
    let got = client(&proxy.url, "anthropic_stream").await;
    assert_eq!(got["inputs"], json!([{"command": "make clean"}]));
    assert_eq!(got["stop_reason"], "tool_use");
    upstream.push(Reply::sse(&anthropic_stream("rm -r /")));
    let got = client(&proxy.url, "anthropic_stream_blocked").await;
    assert_eq!(got["types"], json!(["text", "text"]), "{got}");
    assert_eq!(got["stop_reason"], "end_turn");
    assert!(
        got["texts"][1]
            .as_str()
            .unwrap()
            .contains("no-force-delete"),
        "{got}"
    );
}
