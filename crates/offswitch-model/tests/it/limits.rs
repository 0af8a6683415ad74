//! The reply byte cap: a reply longer than `HttpConfig::max_reply_bytes` ends the call with
//! `ReplyTooLarge` after reading at most the cap, whether it comes with a `Content-Length` or
//! as chunks, and even when it never ends. It is not retried.

use std::sync::Arc;
use std::time::Duration;

use expect_test::expect;
use offswitch_core::{BackendErrorKind, ChatBackend, ToolMode};
use offswitch_model::http::HttpConfig;
use offswitch_model::mock::{Flavor, MockReply, MockServer};
use offswitch_model::{
    AnthropicBackend, AnthropicConfig, OpenAiBackend, OpenAiConfig, ResilienceConfig,
    ResilientBackend,
};

use crate::{first_request, redact_addresses};

const CAP: u64 = 1 << 20;

async fn capped_pair(flavor: Flavor) -> (MockServer, Arc<dyn ChatBackend>) {
    let server = MockServer::start(flavor).await.unwrap();
    let http = HttpConfig {
        // Long enough that a missing cap shows as a timeout in the snapshot, not a hang.
        timeout: Duration::from_secs(60),
        max_reply_bytes: CAP,
        ..HttpConfig::default()
    };
    let backend: Arc<dyn ChatBackend> = match flavor {
        Flavor::OpenAi => Arc::new(
            OpenAiBackend::new(OpenAiConfig {
                base_url: server.base_url(),
                api_key: Some("sk-test".into()),
                model: "test-model".into(),
                http,
                dialect: Default::default(),
            })
            .unwrap(),
        ),
        Flavor::Anthropic => Arc::new(
            AnthropicBackend::new(AnthropicConfig {
                base_url: server.base_url(),
                api_key: Some("ak-test".into()),
                model: "test-model".into(),
                http,
            })
            .unwrap(),
        ),
    };
    (server, backend)
}

/// Each reply's result in one line: its content length, or the error kind and message.
async fn outcomes(flavor: Flavor, replies: Vec<MockReply>) -> String {
    let (server, backend) = capped_pair(flavor).await;
    let mut out = String::new();
    for reply in replies {
        server.push(reply);
        let line = match backend.chat(&first_request(ToolMode::Native)).await {
            Ok(response) => format!("ok, {} bytes of content", response.message.content.len()),
            Err(error) => format!("{}: {}", error.kind.name(), error.message),
        };
        out.push_str(&redact_addresses(&line));
        out.push('\n');
    }
    out
}

fn replies() -> Vec<MockReply> {
    vec![
        MockReply::Long {
            bytes: 2_000_000,
            chunked: false,
        },
        MockReply::Long {
            bytes: 2_000_000,
            chunked: true,
        },
        MockReply::Endless,
        // Under the cap, in chunks: read whole.
        MockReply::Long {
            bytes: 900_000,
            chunked: true,
        },
        // An error body is read only as far as its message needs.
        MockReply::error(500, "x".repeat(10_000_000)),
    ]
}

#[tokio::test]
async fn replies_past_the_cap_end_the_call_without_reading_them_whole() {
    expect![[r#"
        reply_too_large: reply from http://127.0.0.1:PORT/v1/chat/completions is longer than the cap of 1048576 bytes; stopped reading it
        reply_too_large: reply from http://127.0.0.1:PORT/v1/chat/completions is longer than the cap of 1048576 bytes; stopped reading it
        reply_too_large: reply from http://127.0.0.1:PORT/v1/chat/completions is longer than the cap of 1048576 bytes; stopped reading it
        ok, 900000 bytes of content
        server: HTTP 500: {"error":{"message":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...
    "#]]
    .assert_eq(&outcomes(Flavor::OpenAi, replies()).await);
    expect![[r#"
        reply_too_large: reply from http://127.0.0.1:PORT/v1/messages is longer than the cap of 1048576 bytes; stopped reading it
        reply_too_large: reply from http://127.0.0.1:PORT/v1/messages is longer than the cap of 1048576 bytes; stopped reading it
        reply_too_large: reply from http://127.0.0.1:PORT/v1/messages is longer than the cap of 1048576 bytes; stopped reading it
        ok, 900000 bytes of content
        server: HTTP 500: {"type":"error","error":{"type":"api_error","message":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...
    "#]]
    .assert_eq(&outcomes(Flavor::Anthropic, replies()).await);
}

#[tokio::test]
async fn an_oversized_reply_is_not_retried() {
    let (server, backend) = capped_pair(Flavor::OpenAi).await;
    server.push(MockReply::Endless);
    server.push(MockReply::text("a retry would get this"));
    let resilient = ResilientBackend::new(backend, ResilienceConfig::default());
    let (result, failures) = resilient
        .chat_logged(&first_request(ToolMode::Native))
        .await;
    assert_eq!(
        result.unwrap_err().kind,
        BackendErrorKind::ReplyTooLarge { limit_bytes: CAP }
    );
    assert_eq!((failures.len(), failures[0].retried), (1, false));
    assert_eq!(server.request_count(), 1);
}
