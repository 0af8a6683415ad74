//! A Responses API client in front of an upstream with chat completions only: the request is
//! translated (and the log says so), the reply is checked as chat and translated back, whole
//! and streamed.

use serde_json::{Value, json};

use crate::support::{Reply, Upstream, chat_stream, proxy_with};

const RULES: &str = "[[rule]]\nname = \"no-force-delete\"\non = \"tool_call\"\ntool = \"shell\"\npattern = 'rm\\s+-rf'\naction = \"block\"\n";

fn request() -> Value {
    json!({
        "model": "m",
        "instructions": "Be careful.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "list the files"}]},
            {"type": "function_call", "call_id": "call_a", "name": "shell", "arguments": "{\"command\": \"ls\"}"},
            {"type": "function_call_output", "call_id": "call_a", "output": "a.txt"},
        ],
        "tools": [{"type": "function", "name": "shell", "description": "Run a command",
                   "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}],
        "max_output_tokens": 50,
    })
}

#[tokio::test]
async fn responses_requests_become_chat_completions_and_back() {
    let upstream = Upstream::start().await;
    let proxy = proxy_with(&upstream.url, "openai", "responses = false", RULES).await;
    upstream.push(Reply::json(&json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Next:",
            "tool_calls": [{"id": "call_b", "type": "function", "function": {"name": "shell", "arguments": "{\"command\": \"cat a.txt\"}"}}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39},
    })));
    let response: Value = proxy
        .post("/responses", &request())
        .await
        .json()
        .await
        .unwrap();
    // What the upstream was asked, in its own API.
    let sent = &upstream.received()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    let chat: Value = serde_json::from_slice(&sent.body).unwrap();
    expect_test::expect![[r#"{"model":"m","messages":[{"role":"system","content":"Be careful."},{"role":"user","content":"list the files"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_a","type":"function","function":{"name":"shell","arguments":"{\"command\": \"ls\"}"}}]},{"role":"tool","tool_call_id":"call_a","content":"a.txt"}],"tools":[{"type":"function","function":{"name":"shell","description":"Run a command","parameters":{"type":"object","properties":{"command":{"type":"string"}}}}}],"max_tokens":50}"#]]
    .assert_eq(&chat.to_string());
    // What the client got, in its.
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    assert_eq!(response["output"][0]["type"], "message");
    assert_eq!(response["output"][0]["content"][0]["text"], "Next:");
    assert_eq!(response["output"][1]["type"], "function_call");
    assert_eq!(response["output"][1]["call_id"], "call_b");
    assert_eq!(
        response["output"][1]["arguments"],
        "{\"command\": \"cat a.txt\"}"
    );
    assert_eq!(response["usage"]["input_tokens"], 30);
    assert_eq!(proxy.records("model_translation").len(), 1);
    assert_eq!(proxy.response(0).await["translated_from"], "responses");

    // Streamed, with a call the policy blocks: the client gets Responses events, no call.
    upstream.push(Reply::sse(&chat_stream(r#"{"command": "rm -rf /"}"#)));
    let mut streamed = request();
    streamed["stream"] = json!(true);
    let text = proxy
        .post("/responses", &streamed)
        .await
        .text()
        .await
        .unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    assert!(
        !kinds.iter().any(|k| k.contains("function_call")),
        "{kinds:?}"
    );
    let completed = events.last().unwrap();
    let said = completed["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(
        said.contains("Cleaning up.") && said.contains("no-force-delete"),
        "{said}"
    );
    let sequence: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
    let chat: Value = serde_json::from_slice(&upstream.received()[1].body).unwrap();
    assert_eq!(chat["stream_options"]["include_usage"], true);

    // What cannot be said in chat completions is refused, named.
    let mut hosted = request();
    hosted["tools"] = json!([{"type": "local_shell"}]);
    let refused = proxy.post("/responses", &hosted).await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("local_shell"),
        "{body}"
    );
}
