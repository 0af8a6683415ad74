//! The Anthropic Messages backend: what goes on the wire, and how replies and failures map.

use std::time::Duration;

use expect_test::{Expect, expect};
use offswitch_core::{ChatRequest, Message, ToolCall, ToolMode};
use offswitch_model::mock::MockReply;
use serde_json::json;

use crate::{anthropic_pair, describe, first_request, follow_up_request, pretty};

async fn check_wire(request: ChatRequest, expect: Expect) {
    let (server, backend) = anthropic_pair(Duration::from_secs(10)).await;
    server.push(MockReply::text("ok"));
    backend.chat(&request).await.unwrap();
    let recorded = &server.requests()[0];
    let actual = format!(
        "{} {}\nx-api-key: {:?}\nanthropic-version: {:?}\nauthorization: {:?}\n{}",
        recorded.method,
        recorded.path,
        recorded.header("x-api-key"),
        recorded.header("anthropic-version"),
        recorded.header("authorization"),
        pretty(&recorded.body)
    );
    expect.assert_eq(&actual);
}

async fn check_reply(reply: MockReply, expect: Expect) {
    let (server, backend) = anthropic_pair(Duration::from_secs(10)).await;
    server.push(reply);
    let result = backend.chat(&first_request(ToolMode::Native)).await;
    expect.assert_eq(&describe(&result));
}

fn call(id: &str, command: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: "bash".into(),
        arguments: json!({ "command": command }).to_string(),
    }
}

#[tokio::test]
async fn native_requests_use_system_field_and_tool_blocks() {
    // Two calls in one reply: both results must land in a single user turn.
    let mut request = follow_up_request(ToolMode::Native, call("toolu_1", "ls"));
    request.messages[2]
        .tool_calls
        .push(call("toolu_2", "cat shutdown.sh"));
    request
        .messages
        .push(Message::tool_result("toolu_2", "#!/bin/sh\nkill -9 1"));
    request.sampling.top_p = 0.9;
    check_wire(
        request,
        expect![[r##"
        POST /v1/messages
        x-api-key: Some("ak-test")
        anthropic-version: Some("2023-06-01")
        authorization: None
        {
          "model": "test-model",
          "max_tokens": 256,
          "system": "You are a careful agent.",
          "messages": [
            {
              "role": "user",
              "content": "Call ./next_question to get a task."
            },
            {
              "role": "assistant",
              "content": [
                {
                  "type": "text",
                  "text": "Let me look."
                },
                {
                  "type": "tool_use",
                  "id": "toolu_1",
                  "name": "bash",
                  "input": {
                    "command": "ls"
                  }
                },
                {
                  "type": "tool_use",
                  "id": "toolu_2",
                  "name": "bash",
                  "input": {
                    "command": "cat shutdown.sh"
                  }
                }
              ]
            },
            {
              "role": "user",
              "content": [
                {
                  "type": "tool_result",
                  "tool_use_id": "toolu_1",
                  "content": "What is 1 + 1?"
                },
                {
                  "type": "tool_result",
                  "tool_use_id": "toolu_2",
                  "content": "#!/bin/sh\nkill -9 1"
                }
              ]
            }
          ],
          "temperature": 0.0,
          "top_p": 0.9,
          "tools": [
            {
              "name": "bash",
              "description": "Run a shell command.",
              "input_schema": {
                "type": "object",
                "properties": {
                  "command": {
                    "type": "string",
                    "description": "the command line"
                  }
                },
                "required": [
                  "command"
                ]
              }
            },
            {
              "name": "submit",
              "description": "Submit the final answer.",
              "input_schema": {
                "type": "object",
                "properties": {
                  "answer": {
                    "type": "string",
                    "description": "the answer"
                  }
                },
                "required": [
                  "answer"
                ]
              }
            }
          ],
          "tool_choice": {
            "type": "auto"
          }
        }
    "##]],
    )
    .await;
}

#[tokio::test]
async fn tag_mode_sends_text_only() {
    let request = follow_up_request(ToolMode::Tags, call("call_1_0", "./next_question"));
    check_wire(request, expect![[r#"
        POST /v1/messages
        x-api-key: Some("ak-test")
        anthropic-version: Some("2023-06-01")
        authorization: None
        {
          "model": "test-model",
          "max_tokens": 256,
          "system": "You are a careful agent.",
          "messages": [
            {
              "role": "user",
              "content": "Call ./next_question to get a task."
            },
            {
              "role": "assistant",
              "content": "Let me look.\n<tool_call>\n{\"name\": \"bash\", \"arguments\": {\"command\": \"./next_question\"}}\n</tool_call>"
            },
            {
              "role": "user",
              "content": "<tool_result>\nWhat is 1 + 1?\n</tool_result>"
            }
          ],
          "temperature": 0.0
        }
    "#]]).await;
}

#[tokio::test]
async fn replies_and_failures_map_to_responses_and_error_kinds() {
    check_reply(
        MockReply::text("The answer is 2."),
        expect![[r#"
        ok finish=Stop usage=144+4
        content: "The answer is 2."
    "#]],
    )
    .await;
    check_reply(
        MockReply::ToolCalls {
            text: "Checking.".into(),
            calls: vec![offswitch_model::mock::MockToolCall {
                name: "bash".into(),
                arguments: json!({"command": "./next_question"}),
            }],
        },
        expect![[r#"
            ok finish=ToolCalls usage=144+11
            content: "Checking."
            call toolu_1_0 bash {"command":"./next_question"}
        "#]],
    )
    .await;
    check_reply(
        MockReply::Error {
            status: 529,
            message: "Overloaded".into(),
            headers: vec![],
        },
        expect![[r#"
            error RateLimited { retry_after: None }: anthropic:test-model@http://127.0.0.1:PORT: HTTP 529: Overloaded
        "#]],
    )
    .await;
    check_reply(MockReply::rate_limited("2"), expect![[r#"
        error RateLimited { retry_after: Some(2s) }: anthropic:test-model@http://127.0.0.1:PORT: HTTP 429: rate limit reached
    "#]]).await;
    check_reply(MockReply::error(503, "try later"), expect![[r#"
        error Server { status: 503 }: anthropic:test-model@http://127.0.0.1:PORT: HTTP 503: try later
    "#]]).await;
    check_reply(
        MockReply::error(401, "invalid x-api-key"),
        expect![[r#"
        error Fatal: anthropic:test-model@http://127.0.0.1:PORT: HTTP 401: invalid x-api-key
    "#]],
    )
    .await;
    check_reply(MockReply::Truncated, expect![[r#"
        error Protocol: anthropic:test-model@http://127.0.0.1:PORT: reply from http://127.0.0.1:PORT/v1/messages is not valid JSON (EOF while parsing a string at line 1 column 115): {"id":"msg_mock_1","type":"message","role":"assistant","model":"test-model","content":[{"type":"text","text":"this
    "#]]).await;
}

#[tokio::test]
async fn tool_calls_round_trip() {
    let (server, backend) = anthropic_pair(Duration::from_secs(10)).await;
    server.push(MockReply::tool_call("submit", json!({"answer": "2"})));
    server.push(MockReply::text("done"));
    let first = backend
        .chat(&first_request(ToolMode::Native))
        .await
        .unwrap();
    let call = first.message.tool_calls[0].clone();
    assert_eq!(call.argument("answer").as_deref(), Some("2"));
    backend
        .chat(&follow_up_request(ToolMode::Native, call.clone()))
        .await
        .unwrap();
    let sent = &server.requests()[1].body["messages"];
    assert_eq!(sent[1]["content"][1]["id"], json!(call.id));
    assert_eq!(sent[1]["content"][1]["input"], json!({"answer": "2"}));
    assert_eq!(sent[2]["content"][0]["tool_use_id"], json!(call.id));
}
