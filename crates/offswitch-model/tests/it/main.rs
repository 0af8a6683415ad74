//! Integration tests of offswitch-model: real HTTP on loopback against the mock servers.

mod anthropic;
mod cache;
mod limits;
mod openai;
mod resilient;
mod spec;

use std::sync::Arc;
use std::time::Duration;

use offswitch_core::{
    BackendError, ChatBackend, ChatRequest, ChatResponse, Message, Sampling, ToolCall, ToolMode,
    ToolParam, ToolSpec,
};
use offswitch_model::http::HttpConfig;
use offswitch_model::mock::{Flavor, MockServer};
use offswitch_model::{AnthropicBackend, AnthropicConfig, OpenAiBackend, OpenAiConfig};

fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "bash".into(),
            description: "Run a shell command.".into(),
            params: vec![ToolParam {
                name: "command".into(),
                description: "the command line".into(),
                required: true,
            }],
        },
        ToolSpec {
            name: "submit".into(),
            description: "Submit the final answer.".into(),
            params: vec![ToolParam {
                name: "answer".into(),
                description: "the answer".into(),
                required: true,
            }],
        },
    ]
}

/// A short conversation: system, user.
fn first_request(tool_mode: ToolMode) -> ChatRequest {
    ChatRequest {
        model: "test-model".into(),
        messages: vec![
            Message::system("You are a careful agent."),
            Message::user("Call ./next_question to get a task."),
        ],
        tools: tools(),
        tool_mode,
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: Some(7),
            max_tokens: 256,
        },
    }
}

/// `first_request` continued with the assistant's tool call, its result and a user nudge.
fn follow_up_request(tool_mode: ToolMode, call: ToolCall) -> ChatRequest {
    let mut request = first_request(tool_mode);
    let id = call.id.clone();
    request.messages.push(Message {
        tool_calls: vec![call],
        ..Message::assistant("Let me look.")
    });
    request
        .messages
        .push(Message::tool_result(id, "What is 1 + 1?"));
    request
}

fn http(timeout: Duration) -> HttpConfig {
    HttpConfig {
        timeout,
        extra_headers: vec![("x-run".into(), "test".into())],
        ..HttpConfig::default()
    }
}

async fn openai_pair(timeout: Duration) -> (MockServer, Arc<dyn ChatBackend>) {
    let server = MockServer::start(Flavor::OpenAi).await.unwrap();
    let backend = OpenAiBackend::new(OpenAiConfig {
        base_url: server.base_url(),
        api_key: Some("sk-test".into()),
        model: "test-model".into(),
        http: http(timeout),
        dialect: Default::default(),
    })
    .unwrap();
    (server, Arc::new(backend))
}

async fn anthropic_pair(timeout: Duration) -> (MockServer, Arc<dyn ChatBackend>) {
    let server = MockServer::start(Flavor::Anthropic).await.unwrap();
    let backend = AnthropicBackend::new(AnthropicConfig {
        base_url: server.base_url(),
        api_key: Some("ak-test".into()),
        model: "test-model".into(),
        http: http(timeout),
    })
    .unwrap();
    (server, Arc::new(backend))
}

/// A response or an error in a stable text form for snapshots. The loopback port varies, so
/// URLs are redacted.
fn describe(result: &Result<ChatResponse, BackendError>) -> String {
    let text = match result {
        Ok(response) => {
            let mut out = format!(
                "ok finish={:?} usage={}+{}\ncontent: {:?}\n",
                response.finish_reason,
                response.usage.prompt_tokens,
                response.usage.completion_tokens,
                response.message.content
            );
            for call in &response.message.tool_calls {
                out.push_str(&format!(
                    "call {} {} {}\n",
                    call.id, call.name, call.arguments
                ));
            }
            out
        }
        Err(error) => format!("error {:?}: {}\n", error.kind, error),
    };
    redact_addresses(&text)
}

fn redact_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("127.0.0.1:") {
        out.push_str(&rest[..start]);
        out.push_str("127.0.0.1:PORT");
        rest = &rest[start + "127.0.0.1:".len()..];
        rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
}
