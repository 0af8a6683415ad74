//! A hostile agent and a hostile upstream against the proxy's promise that nothing unchecked
//! is released: tool calls in every shape the clients run, replies the checker cannot read,
//! streams that cheat on their framing, indices and endings, secrets hidden in a request's
//! structure, and an upstream that tries to take the key elsewhere.

use serde_json::{Value, json};

use crate::support::{Reply, TOKEN, Upstream, anthropic_event, chat_chunk, proxy};

/// Blocks any call whose arguments mention `rm -rf`, whatever the tool.
const RULES: &str = r#"
[[rule]]
name = "no-force-delete"
on = "tool_call"
pattern = 'rm\s+-rf'
action = "block"
[[rule]]
name = "secret-leaving"
on = "prompt"
pattern = 'AKIA[0-9A-Z]{16}'
action = "block"
"#;

fn streamed(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

fn chat_request() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "go"}]})
}

/// The body a client gets, and whether its stream failed.
async fn read_all(response: reqwest::Response) -> (String, bool) {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let (mut bytes, mut failed) = (Vec::new(), false);
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(_) => failed = true,
        }
    }
    (String::from_utf8_lossy(&bytes).into_owned(), failed)
}

#[tokio::test]
async fn a_legacy_function_call_is_checked_streamed_and_whole() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", RULES).await;
    upstream.push(Reply::sse(&[
        chat_chunk(
            json!({"role": "assistant", "function_call": {"name": "shell", "arguments": ""}}),
            None,
        ),
        chat_chunk(
            json!({"function_call": {"arguments": "{\"command\": \"rm -"}}),
            None,
        ),
        chat_chunk(json!({"function_call": {"arguments": "rf /\"}"}}), None),
        chat_chunk(json!({}), Some("function_call")),
        "data: [DONE]\n\n".into(),
    ]));
    let (text, failed) = read_all(
        proxy
            .post("/chat/completions", &streamed(chat_request()))
            .await,
    )
    .await;
    assert!(!failed, "{text}");
    assert!(!text.contains("function_call\":{"), "{text}");
    assert!(text.contains("no-force-delete"), "{text}");
    let whole = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [{"index": 0, "finish_reason": "function_call",
        "message": {"role": "assistant", "content": null, "function_call": {"name": "shell", "arguments": "{\"command\": \"rm -rf /\"}"}}}]});
    upstream.push(Reply::json(&whole));
    let body: Value = proxy
        .post("/chat/completions", &chat_request())
        .await
        .json()
        .await
        .unwrap();
    assert!(
        body["choices"][0]["message"].get("function_call").is_none(),
        "{body}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn built_in_and_custom_tool_calls_are_checked() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", RULES).await;
    // A chat custom tool with free-form input.
    let custom = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "custom", "custom": {"name": "exec", "input": "rm -rf /"}}]}}]});
    upstream.push(Reply::json(&custom));
    let body: Value = proxy
        .post("/chat/completions", &chat_request())
        .await
        .json()
        .await
        .unwrap();
    assert!(
        body["choices"][0]["message"].get("tool_calls").is_none(),
        "{body}"
    );
    // A Responses local shell call (what Codex CLI runs), whole and streamed.
    let shell = json!({"type": "local_shell_call", "id": "ls_1", "call_id": "call_1", "status": "completed",
        "action": {"type": "exec", "command": ["bash", "-lc", "rm -rf ~"], "env": {}}});
    let response =
        json!({"id": "r", "object": "response", "status": "completed", "output": [shell]});
    upstream.push(Reply::json(&response));
    let body: Value = proxy
        .post("/responses", &json!({"model": "m", "input": "go"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["output"][0]["type"], "message", "{body}");
    let event = |data: Value| {
        format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap()
        )
    };
    upstream.push(Reply::sse(&[
        event(json!({"type": "response.created", "sequence_number": 0, "response": {"id": "r", "output": []}})),
        event(json!({"type": "response.output_item.done", "sequence_number": 1, "output_index": 0, "item": shell})),
        event(json!({"type": "response.completed", "sequence_number": 2, "response": response})),
    ]));
    let (text, _) = read_all(
        proxy
            .post(
                "/responses",
                &streamed(json!({"model": "m", "input": "go"})),
            )
            .await,
    )
    .await;
    assert!(!text.contains("local_shell_call"), "{text}");
    assert!(text.contains("no-force-delete"), "{text}");
}

/// An event the checker cannot parse, or a key it does not know, holds the reply for good:
/// the client's own parser might have read a call in it.
#[tokio::test]
async fn what_cannot_be_checked_is_never_released() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", RULES).await;
    let cases: Vec<Vec<String>> = vec![
        // NaN is JSON to Python's parser, not to the proxy's.
        vec![
            chat_chunk(json!({"content": "hi"}), None),
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"shell\",\"arguments\":\"{}\"}}]}}],\"x\":NaN}\n\n".into(),
            "data: [DONE]\n\n".into(),
        ],
        // A key no version of the API has.
        vec![
            chat_chunk(json!({"content": "hi"}), None),
            chat_chunk(json!({"tool_invocations": [{"name": "shell", "args": "rm -rf /"}]}), Some("stop")),
            "data: [DONE]\n\n".into(),
        ],
        // A choice far out of order.
        vec![
            chat_chunk(json!({"content": "hi"}), None),
            "data: {\"choices\":[{\"index\":128,\"delta\":{\"content\":\"x\"}}]}\n\n".into(),
            "data: [DONE]\n\n".into(),
        ],
        // A call renamed half-way (`read_file` then `shell`).
        vec![
            chat_chunk(json!({"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {"name": "read_file", "arguments": ""}}]}), None),
            chat_chunk(json!({"tool_calls": [{"index": 0, "function": {"name": "shell", "arguments": "{}"}}]}), Some("tool_calls")),
            "data: [DONE]\n\n".into(),
        ],
    ];
    for (n, events) in cases.iter().enumerate() {
        upstream.push(Reply::sse(events));
        let (text, failed) = read_all(
            proxy
                .post("/chat/completions", &streamed(chat_request()))
                .await,
        )
        .await;
        assert!(failed, "case {n}: the client sees the stream fail: {text}");
        assert!(
            !text.contains("shell")
                && !text.contains("tool_invocations")
                && !text.contains("\"x\""),
            "case {n}: {text}"
        );
        let record = proxy.response(n).await;
        assert_eq!(record["outcome"], "unchecked", "case {n}: {record}");
    }
    // Whole replies too.
    let odd = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "ok", "tool_invocations": [{"name": "shell"}]}}]});
    upstream.push(Reply::json(&odd));
    let response = proxy.post("/chat/completions", &chat_request()).await;
    assert_eq!(response.status(), 502);
}

/// The stream's last event without its blank line (`\n\r` at the end: complete to the SDKs'
/// decoders) is read and checked, not forwarded raw.
#[tokio::test]
async fn a_last_event_without_its_blank_line_is_checked() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", RULES).await;
    let call = json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "shell", "arguments": "{\"command\": \"rm -rf /\"}"}}]}, "finish_reason": "tool_calls"}]});
    upstream.push(Reply::sse(&[
        chat_chunk(json!({"content": "ok"}), None),
        format!("data: {call}\n\r"),
    ]));
    let (text, _) = read_all(
        proxy
            .post("/chat/completions", &streamed(chat_request()))
            .await,
    )
    .await;
    assert!(!text.contains("rm -rf /\\\""), "{text}");
    assert!(text.contains("no-force-delete"), "{text}");
}

#[tokio::test]
async fn compressed_or_mislabelled_replies_are_refused() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", RULES).await;
    let mut gzip = Reply::json(&json!({"x": 1}));
    gzip.headers.push(("content-encoding", "gzip".into()));
    upstream.push(gzip);
    assert_eq!(
        proxy
            .post("/chat/completions", &chat_request())
            .await
            .status(),
        502
    );
    // A stream that says it is JSON is read as JSON: not JSON, so refused.
    let mut mislabelled = Reply::sse(&[chat_chunk(
        json!({"tool_calls": [{"index": 0, "function": {"name": "shell", "arguments": "{\"command\": \"rm -rf /\"}"}}]}),
        Some("tool_calls"),
    )]);
    mislabelled.content_type = "application/json";
    upstream.push(mislabelled);
    let response = proxy
        .post("/chat/completions", &streamed(chat_request()))
        .await;
    assert_eq!(response.status(), 502);
    assert!(!response.text().await.unwrap().contains("rm -rf"));
}

/// Anthropic: blocks out of order, a message that starts with content, a tool_use whose whole
/// input comes in its start event, and a tool_use sent after `message_stop`.
#[tokio::test]
async fn anthropic_streams_that_cheat_on_structure() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "anthropic", RULES).await;
    let start = anthropic_event(
        json!({"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}}),
    );
    let tool = |index: usize, input: Value| {
        anthropic_event(
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": "t", "name": "bash", "input": input}}),
        )
    };
    let stop =
        |index: usize| anthropic_event(json!({"type": "content_block_stop", "index": index}));
    let end = [
        anthropic_event(
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}}),
        ),
        anthropic_event(json!({"type": "message_stop"})),
    ];
    let request = json!({"model": "claude", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "go"}]});
    let send = || {
        reqwest::Client::new()
            .post(format!("{}/messages", proxy.url))
            .header("x-api-key", TOKEN)
            .json(&request)
            .send()
    };
    // The whole input in the start event, no deltas: checked as the SDK will read it.
    let mut events = vec![
        start.clone(),
        tool(0, json!({"command": "rm -rf /"})),
        stop(0),
    ];
    events.extend(end.iter().cloned());
    upstream.push(Reply::sse(&events));
    let (text, failed) = read_all(send().await.unwrap()).await;
    assert!(!failed && !text.contains("rm -rf /\""), "{text}");
    assert!(text.contains("no-force-delete"), "{text}");
    // A block out of order.
    let mut events = vec![start.clone(), tool(1, json!({})), stop(1)];
    events.extend(end.iter().cloned());
    upstream.push(Reply::sse(&events));
    let (text, failed) = read_all(send().await.unwrap()).await;
    assert!(failed && !text.contains("tool_use"), "{text}");
    // A message that starts with its content.
    let loaded = anthropic_event(
        json!({"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
        "content": [{"type": "tool_use", "id": "t", "name": "bash", "input": {"command": "rm -rf /"}}]}}),
    );
    let mut events = vec![loaded];
    events.extend(end.iter().cloned());
    upstream.push(Reply::sse(&events));
    let (text, failed) = read_all(send().await.unwrap()).await;
    assert!(failed && !text.contains("rm -rf"), "{text}");
    // A harmless reply, then a call after message_stop: dropped.
    let mut events = vec![
        start.clone(),
        anthropic_event(
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "done"}}),
        ),
        stop(0),
    ];
    events.extend(end.iter().cloned());
    events.push(tool(1, json!({"command": "rm -rf /"})));
    events.push(stop(1));
    upstream.push(Reply::sse(&events));
    let (text, failed) = read_all(send().await.unwrap()).await;
    assert!(!failed, "{text}");
    assert!(
        !text.contains("rm -rf") && !text.contains("\"type\":\"tool_use\""),
        "{text}"
    );
    assert_eq!(proxy.response(3).await["dropped_after_end"], 2);
}

/// A secret hidden in an object key, a key given twice (parsers disagree on which one counts),
/// and tools the upstream would run itself.
#[tokio::test]
async fn requests_that_hide_what_they_carry() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", RULES).await;
    let post = |body: String| {
        reqwest::Client::new()
            .post(format!("{}/chat/completions", proxy.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let in_a_key = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"AKIAABCDEFGHIJKLMNOP": {}}}}}]}"#;
    assert_eq!(post(in_a_key.into()).await.unwrap().status(), 403);
    let logged = serde_json::to_string(&proxy.records("model_request")).unwrap();
    assert!(
        !logged.contains("AKIAABCDEFGHIJKLMNOP"),
        "a refused request's secret is not logged"
    );
    // Twice: the proxy checks the last, and sends only what it checked.
    upstream.push(Reply::json(
        &json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": []}),
    ));
    let twice = r#"{"model": "m", "messages": [{"role": "user", "content": "AKIAABCDEFGHIJKLMNOP"}], "messages": [{"role": "user", "content": "hi"}]}"#;
    assert_eq!(post(twice.into()).await.unwrap().status(), 200);
    let sent = String::from_utf8(upstream.received()[0].body.clone()).unwrap();
    assert!(!sent.contains("AKIA"), "{sent}");
    // Server-side tools.
    let response = proxy
        .post(
            "/responses",
            &json!({"model": "m", "input": "go", "tools": [{"type": "web_search"}]}),
        )
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(upstream.received().len(), 1);
}

/// An upstream (or whoever answers for it) redirecting elsewhere does not get the key there.
#[tokio::test]
async fn a_redirect_does_not_carry_the_key_away() {
    let elsewhere = Upstream::start().await;
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "anthropic", "").await;
    let mut redirect = Reply::status(307, "");
    redirect
        .headers
        .push(("location", format!("{}/messages", elsewhere.url)));
    upstream.push(redirect);
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/messages", proxy.url))
        .header("x-api-key", TOKEN)
        .json(&json!({"model": "claude", "max_tokens": 1, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 307);
    assert!(
        elsewhere.received().is_empty(),
        "the proxy followed the redirect"
    );
}

/// A hostile MCP server: a secret in an error, under an id of another type, in structured
/// content, in a request of its own to the client, in a batch, behind a byte-order mark; an
/// error body that is not JSON.
#[tokio::test]
async fn an_mcp_server_cannot_slip_a_secret_past_the_result_rules() {
    let upstream = Upstream::start().await;
    let config = format!(
        "[[mcp]]\nname = \"srv\"\nurl = \"{}/mcp\"\n\
         [[rule]]\nname = \"key-back\"\non = \"mcp_result\"\npattern = 'AKIA[0-9A-Z]{{16}}'\naction = \"block\"\n",
        upstream.url
    );
    let proxy = proxy(&upstream.url, "openai", &config).await;
    let url = format!("{}/mcp/srv", proxy.url.trim_end_matches("/v1"));
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read", "arguments": {}}});
    let secret = "AKIAABCDEFGHIJKLMNOP";
    let sse = |messages: &[Value]| {
        let mut reply = Reply::sse(
            &messages
                .iter()
                .map(|m| format!("data: {m}\n\n"))
                .collect::<Vec<_>>(),
        );
        reply.chunks[0]
            .1
            .splice(0..0, b"\xEF\xBB\xBF".iter().copied());
        reply
    };
    let cases = vec![
        // An error carrying it.
        Reply::json(&json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": secret}})),
        // An id of another type, the secret in structured content.
        Reply::json(
            &json!({"jsonrpc": "2.0", "id": "1", "result": {"structuredContent": {"k": secret}}}),
        ),
        // Behind a byte-order mark, a request of the server's to the client, then a batch.
        sse(&[
            json!({"jsonrpc": "2.0", "id": 9, "method": "sampling/createMessage", "params": {"messages": [{"role": "user", "content": {"type": "text", "text": secret}}]}}),
            json!([{"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": secret}]}}]),
        ]),
    ];
    for (n, reply) in cases.into_iter().enumerate() {
        upstream.push(reply);
        let response = reqwest::Client::new()
            .post(&url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&call)
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        assert!(!text.contains(secret), "case {n}: {text}");
        assert!(text.contains("key-back"), "case {n}: {text}");
    }
    // An error body that is not JSON.
    upstream.push(Reply::status(500, secret));
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&call)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert!(!response.text().await.unwrap().contains(secret));
    // The agent's token never reaches the server.
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| r.headers.get("authorization").is_none())
    );
}

/// Translation: text joined from parts is checked as sent, and what cannot be translated is
/// refused by name.
#[tokio::test]
async fn translation_cannot_be_used_to_dodge_the_rules() {
    let upstream = Upstream::start().await;
    let proxy =
        crate::support::proxy_with(&upstream.url, "openai", "responses = false", RULES).await;
    let split = json!({"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "AKIAABCDEF"}, {"type": "input_text", "text": "GHIJKLMNOP"}]}]});
    assert_eq!(proxy.post("/responses", &split).await.status(), 403);
    let follow_up = json!({"model": "m", "input": "and then?", "previous_response_id": "resp_1"});
    let refused = proxy.post("/responses", &follow_up).await;
    assert_eq!(refused.status(), 400);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("previous_response_id")
    );
    assert!(upstream.received().is_empty());
}
