//! Exchanges through a real proxy in front of a scripted loopback upstream: what passes is
//! byte for byte what the upstream sent, what a rule blocks never reaches the client (streamed
//! or not), and every exchange is recorded with its outcome.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::chat_chunk;
use crate::support::{Reply, TOKEN, Upstream, anthropic_stream, chat_stream, proxy};

const NO_FORCE_DELETE: &str = r#"
[[rule]]
name = "no-force-delete"
on = "tool_call"
tool = "shell"
argument = "command"
pattern = 'rm\s+-[a-z]*r'
action = "block"
"#;

fn chat_reply(tool_call: Option<(&str, &str)>) -> Value {
    let mut message = json!({"role": "assistant", "content": null});
    if let Some((name, arguments)) = tool_call {
        message["tool_calls"] = json!([{"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}]);
    } else {
        message["content"] = json!("hello");
    }
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": if tool_call.is_some() { "tool_calls" } else { "stop" }}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    })
}

fn request() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "clean up"}]})
}

#[tokio::test]
async fn a_reply_no_rule_touches_passes_byte_for_byte_and_keys_stay_in_the_proxy() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", NO_FORCE_DELETE).await;
    let reply = chat_reply(Some(("shell", r#"{"command": "ls -la"}"#)));
    upstream.push(Reply::json(&reply));
    let body = serde_json::to_vec(&request()).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", proxy.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-upstream-1");
    let got = response.bytes().await.unwrap();
    assert_eq!(got, reply.to_string().as_bytes());
    let received = upstream.received();
    assert_eq!(received[0].path, "/v1/chat/completions");
    // The request goes as the client wrote it, parsed and written again (what was checked is
    // what is sent).
    assert_eq!(
        serde_json::from_slice::<Value>(&received[0].body).unwrap(),
        serde_json::from_slice::<Value>(&body).unwrap()
    );
    assert_eq!(
        received[0].headers["authorization"],
        "Bearer sk-upstream-secret"
    );
    let record = proxy.response(0).await;
    assert_eq!(record["outcome"], "passed");
    assert_eq!(record["usage"]["input_tokens"], 10);
    let log = serde_json::to_string(&*proxy.records.0.lock().unwrap()).unwrap();
    assert!(
        !log.contains("sk-upstream-secret"),
        "the upstream key is never logged"
    );
    assert!(!log.contains(TOKEN), "the session token is never logged");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_in_the_api_s_format() {
    let upstream = Upstream::start().await;
    let proxy = proxy(
        &upstream.url,
        "openai",
        "[limits]\nmax_request_bytes = \"64K\"\n",
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", proxy.url);
    let wrong = client
        .post(&url)
        .bearer_auth("osw-wrong")
        .json(&request())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    let none = client.post(&url).json(&request()).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let malformed = client
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"model\": \"m\", \"messages\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let body: Value = malformed.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{body}"
    );
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let oversized = client
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert!(
        upstream.received().is_empty(),
        "nothing reached the upstream"
    );
    assert_eq!(proxy.records("auth_refused").len(), 2);
}

#[tokio::test]
async fn a_blocked_call_in_a_whole_reply_is_replaced_by_a_refusal_the_agent_can_read() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", NO_FORCE_DELETE).await;
    upstream.push(Reply::json(&chat_reply(Some((
        "shell",
        r#"{"command": "rm  -fr /home/agent"}"#,
    )))));
    let response = proxy.post("/chat/completions", &request()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let message = &body["choices"][0]["message"];
    assert!(message.get("tool_calls").is_none(), "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(
        message["content"]
            .as_str()
            .unwrap()
            .contains("no-force-delete"),
        "{body}"
    );
    let record = proxy.response(0).await;
    assert_eq!(record["outcome"], "blocked");
    assert_eq!(record["blocked"][0]["tool"], "shell");
    assert_eq!(record["rules"][0]["rule"], "no-force-delete");
}

/// The tool call arrives in thirty pieces, the dangerous part split across them: nothing of it
/// reaches the client, the text before it does, and the stream ends well-formed.
#[tokio::test]
async fn a_streamed_call_split_across_many_deltas_is_blocked_before_any_of_it_is_released() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", NO_FORCE_DELETE).await;
    let arguments = r#"{"command": "rm -rf /home/agent && echo done"}"#;
    upstream.push(Reply::sse(&chat_stream(arguments)));
    let mut streamed = request();
    streamed["stream"] = json!(true);
    let response = proxy.post("/chat/completions", &streamed).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains("tool_calls"), "{text}");
    assert!(!text.contains("/home/agent"), "{text}");
    assert!(!text.contains("call_9"), "{text}");
    assert!(text.contains("Cleaning up."));
    assert!(text.contains("no-force-delete"));
    assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let record = proxy.response(0).await;
    assert_eq!(record["outcome"], "blocked");
    assert_eq!(
        record["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        arguments
    );

    // The same stream with a harmless command goes through byte for byte.
    let harmless = chat_stream(r#"{"command": "ls -la /home/agent && echo done"}"#);
    upstream.push(Reply::sse(&harmless));
    let text = proxy
        .post("/chat/completions", &streamed)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text, harmless.concat());
    assert_eq!(proxy.response(1).await["outcome"], "passed");
}

#[tokio::test]
async fn anthropic_messages_streamed_and_whole() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "anthropic", NO_FORCE_DELETE).await;
    let request = json!({"model": "claude", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "clean"}]});
    let client = reqwest::Client::new();
    let send = |body: Value| {
        client
            .post(format!("{}/messages", proxy.url))
            .header("x-api-key", TOKEN)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
    };
    // Passes byte for byte, with the upstream's key in x-api-key.
    let harmless = anthropic_stream("ls -la");
    upstream.push(Reply::sse(&harmless));
    let text = send(request.clone()).await.unwrap().text().await.unwrap();
    assert_eq!(text, harmless.concat());
    let received = upstream.received();
    assert_eq!(received[0].path, "/v1/messages");
    assert_eq!(received[0].headers["x-api-key"], "sk-upstream-secret");
    assert_eq!(received[0].headers["anthropic-version"], "2023-06-01");
    let record = proxy.response(0).await;
    assert_eq!(record["usage"]["input_tokens"], 20);
    assert_eq!(record["usage"]["output_tokens"], 30);
    assert_eq!(
        record["response"]["content"][1]["input"]["command"],
        "ls -la"
    );
    // Blocked: the tool_use block becomes a text block, the stop reason end_turn.
    upstream.push(Reply::sse(&anthropic_stream("rm -r /")));
    let text = send(request.clone()).await.unwrap().text().await.unwrap();
    assert!(!text.contains("tool_use\",\"id"), "{text}");
    assert!(!text.contains("input_json_delta"), "{text}");
    assert!(text.contains("no-force-delete"));
    assert!(text.contains("\"stop_reason\":\"end_turn\""));
    assert!(text.contains("On it."));
    // Whole.
    let whole = json!({
        "id": "msg_2", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "text", "text": "Sure."}, {"type": "tool_use", "id": "toolu_2", "name": "shell", "input": {"command": "rm -rf /"}}],
        "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 5, "output_tokens": 7},
    });
    upstream.push(Reply::json(&whole));
    let mut plain = request.clone();
    plain["stream"] = json!(false);
    let body: Value = send(plain).await.unwrap().json().await.unwrap();
    assert_eq!(body["content"][1]["type"], "text");
    assert!(
        body["content"][1]["text"]
            .as_str()
            .unwrap()
            .contains("no-force-delete")
    );
    assert_eq!(body["stop_reason"], "end_turn");
}

#[tokio::test]
async fn the_responses_api_streamed_and_whole() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", NO_FORCE_DELETE).await;
    let call = |arguments: &str| json!({"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell", "arguments": arguments, "status": "completed"});
    let arguments = json!({"command": "rm -rf /"}).to_string();
    let response = json!({"id": "resp_1", "object": "response", "status": "completed", "model": "m", "output": [call(&arguments)], "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}});
    upstream.push(Reply::json(&response));
    let request = json!({"model": "m", "input": "clean up"});
    let body: Value = proxy
        .post("/responses", &request)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["output"][0]["type"], "message");
    assert!(
        body["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("no-force-delete")
    );
    // Streamed.
    let event = |data: Value| {
        format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap()
        )
    };
    let mut events = vec![
        event(
            json!({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_2", "status": "in_progress", "output": []}}),
        ),
        event(
            json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": call("")}),
        ),
    ];
    for (i, piece) in arguments.as_bytes().chunks(4).enumerate() {
        events.push(event(json!({"type": "response.function_call_arguments.delta", "sequence_number": 2 + i, "item_id": "fc_1", "output_index": 0, "delta": String::from_utf8_lossy(piece)})));
    }
    let n = events.len();
    events.push(event(json!({"type": "response.function_call_arguments.done", "sequence_number": n, "item_id": "fc_1", "output_index": 0, "arguments": arguments})));
    events.push(event(json!({"type": "response.output_item.done", "sequence_number": n + 1, "output_index": 0, "item": call(&arguments)})));
    let mut completed = response.clone();
    completed["id"] = json!("resp_2");
    events.push(event(
        json!({"type": "response.completed", "sequence_number": n + 2, "response": completed}),
    ));
    upstream.push(Reply::sse(&events));
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let text = proxy
        .post("/responses", &streamed)
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("function_call"), "{text}");
    assert!(text.contains("response.output_text.delta"));
    let sequence: Vec<u64> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| {
            serde_json::from_str::<Value>(data).unwrap()["sequence_number"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        sequence,
        (0..sequence.len() as u64).collect::<Vec<_>>(),
        "sequence numbers run on"
    );
}

/// A secret leaving in a request is refused before anything is sent, however the client
/// escaped it in its JSON.
#[tokio::test]
async fn a_secret_leaving_in_a_request_is_refused_however_it_is_escaped() {
    let upstream = Upstream::start().await;
    let rules = "[[rule]]\nname = \"secret-leaving\"\non = \"prompt\"\npattern = 'sk-live-[A-Za-z0-9]{10,}'\naction = \"block\"\n";
    let proxy = proxy(&upstream.url, "openai", rules).await;
    let body = r#"{"model": "m", "messages": [{"role": "tool", "tool_call_id": "c", "content": "\u0073k-live-ABCDEFGHIJKLMNOP"}]}"#;
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", proxy.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret-leaving")
    );
    assert!(upstream.received().is_empty());
    let log = serde_json::to_string(&proxy.records("model_response")).unwrap();
    assert!(
        !log.contains("ABCDEFGHIJ"),
        "the refusal does not repeat the secret"
    );
}

#[tokio::test]
async fn budgets_refuse_and_a_kill_budget_trips_the_guard() {
    let upstream = Upstream::start().await;
    let rules = "[[budget]]\nname = \"calls\"\nmetric = \"requests\"\nmax = 2\n\
                 [[budget]]\nname = \"tokens\"\nmetric = \"tokens\"\nmax = 25\nper = \"1h\"\naction = \"kill\"\n";
    let proxy = proxy(&upstream.url, "openai", rules).await;
    upstream.push(Reply::json(&chat_reply(None)));
    upstream.push(Reply::json(&chat_reply(None)));
    assert_eq!(
        proxy.post("/chat/completions", &request()).await.status(),
        200
    );
    assert!(proxy.trips.0.lock().unwrap().is_empty());
    // 30 tokens now: past the kill budget.
    assert_eq!(
        proxy.post("/chat/completions", &request()).await.status(),
        200
    );
    let trips = proxy.trips.0.lock().unwrap().clone();
    assert_eq!(trips.len(), 1, "{trips:?}");
    assert_eq!(trips[0].1.as_deref(), Some("agent-guard"));
    let refused = proxy.post("/chat/completions", &request()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(upstream.received().len(), 2);
    assert_eq!(
        proxy.records("budget_exhausted").len(),
        2,
        "both spent, each said once"
    );
}

#[tokio::test]
async fn upstream_faults_are_retried_with_bounds_and_said() {
    let upstream = Upstream::start().await;
    let proxy = proxy(
        &upstream.url,
        "openai",
        "[limits]\nidle_timeout = \"1s\"\nmax_attempts = 3\n",
    )
    .await;
    // A 429 with Retry-After, then success.
    let mut limited = Reply::status(429, r#"{"error": {"message": "slow down"}}"#);
    limited.headers.push(("retry-after", "0".into()));
    upstream.push(limited);
    upstream.push(Reply::json(&chat_reply(None)));
    let response = proxy.post("/chat/completions", &request()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(proxy.response(0).await["attempts"], 2);
    // Three 500s: the last goes to the client as the upstream sent it.
    for _ in 0..3 {
        upstream.push(Reply::status(500, r#"{"error": {"message": "boom"}}"#));
    }
    let response = proxy.post("/chat/completions", &request()).await;
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"error": {"message": "boom"}}"#
    );
    assert_eq!(proxy.records("upstream_retry").len(), 3);
    // A hang: a clear 502 after the idle timeout, and not sent again (the upstream may have
    // run it, and billed it).
    let mut hang = Reply::json(&chat_reply(None));
    hang.chunks.clear();
    hang.hang = true;
    upstream.push(hang);
    let response = proxy.post("/chat/completions", &request()).await;
    assert_eq!(response.status(), 502);
    assert_eq!(upstream.received().len(), 6);
}

/// A stream cut in the middle of a tool call: the call was never checked, so none of it is
/// released, and the client sees the stream fail rather than end.
#[tokio::test]
async fn a_stream_cut_mid_call_never_releases_the_call() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", NO_FORCE_DELETE).await;
    upstream.push(Reply::sse(&[
        chat_chunk(json!({"role": "assistant", "content": "Hi."}), None),
        chat_chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "shell", "arguments": "{\"command\": \"ls"}}]}), None),
    ]));
    let mut streamed = request();
    streamed["stream"] = json!(true);
    let response = proxy.post("/chat/completions", &streamed).await;
    let mut received = Vec::new();
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => received.extend_from_slice(&chunk),
            Err(_) => failed = true,
        }
    }
    let text = String::from_utf8(received).unwrap();
    assert!(text.contains("Hi."));
    assert!(!text.contains("tool_calls"), "{text}");
    assert!(failed, "the client sees the cut");
    let record = proxy.response(0).await;
    assert_eq!(record["outcome"], "truncated");
    assert_eq!(record["withheld_events"], 1);
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_recorded() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url, "openai", "").await;
    let mut events: Vec<String> = (0..200)
        .map(|i| chat_chunk(json!({"content": format!("word{i} ")}), None))
        .collect();
    events.push("data: [DONE]\n\n".into());
    let mut reply = Reply::sse(&events);
    for chunk in &mut reply.chunks {
        chunk.0 = Duration::from_millis(20);
    }
    upstream.push(reply);
    let mut streamed = request();
    streamed["stream"] = json!(true);
    let response = proxy.post("/chat/completions", &streamed).await;
    let mut body = response.bytes_stream();
    use futures::StreamExt;
    let _ = body.next().await;
    drop(body);
    let record = proxy.response(0).await;
    assert_eq!(record["outcome"], "client_disconnected");
}

/// A cost budget: tokens priced by model, the session refused once it has spent its dollars,
/// and a model without a price refused rather than let through free.
#[tokio::test]
async fn a_cost_budget_in_dollars() {
    let upstream = Upstream::start().await;
    let rules = "[[price]]\nmodel = \"m\"\ninput_usd_per_mtok = 1000.0\noutput_usd_per_mtok = 2000.0\n\
                 [[budget]]\nname = \"dollars\"\nmetric = \"cost\"\nmax_usd = 0.03\n";
    let proxy = proxy(&upstream.url, "openai", rules).await;
    let unpriced = proxy
        .post(
            "/chat/completions",
            &json!({"model": "other", "messages": []}),
        )
        .await;
    assert_eq!(unpriced.status(), 403);
    upstream.push(Reply::json(&chat_reply(None)));
    upstream.push(Reply::json(&chat_reply(None)));
    // 10 input and 5 output tokens a reply: $0.02 each.
    assert_eq!(
        proxy.post("/chat/completions", &request()).await.status(),
        200
    );
    assert_eq!(proxy.response(1).await["usage"]["cost_usd"], 0.02);
    assert_eq!(
        proxy.post("/chat/completions", &request()).await.status(),
        200
    );
    let refused = proxy.post("/chat/completions", &request()).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$0.0400 of $0.0300"),
        "{body}"
    );
    assert_eq!(upstream.received().len(), 2);
}
