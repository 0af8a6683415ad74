//! The model-backend contract: one chat request in, one assistant message out.
//!
//! Implementations live elsewhere: HTTP clients in `offswitch-model`, the embedded model in
//! `offswitch-llm`, scripted agents in `offswitch-harness`. Retries, caching and rate limits
//! are wrappers around a `ChatBackend`, so each implementation makes exactly one attempt.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chat::{Message, ToolSpec};

/// How tools reach the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ToolMode {
    /// The provider's own tool-calling fields.
    #[default]
    Native,
    /// The text protocol of [`crate::tags`]; the backend receives text messages only and the
    /// agent loop parses the reply. The embedded model constrains its output to this protocol.
    Tags,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0.0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub max_tokens: u32,
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            max_tokens: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model name as the backend knows it (`gpt-4o`, `claude-sonnet-4-5`, `smollm2-135m`).
    pub model: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub tool_mode: ToolMode,
    pub sampling: Sampling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The assistant message. In `ToolMode::Native` its `tool_calls` are filled by the backend;
    /// in `ToolMode::Tags` they are empty and the text holds the tags.
    pub message: Message,
    pub usage: Usage,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// HTTP 429 or the provider's overload signal.
    RateLimited {
        retry_after: Option<Duration>,
    },
    /// A 5xx status.
    Server {
        status: u16,
    },
    Timeout,
    /// Connection refused, reset, DNS, TLS.
    Transport,
    /// The reply could not be understood (truncated JSON, missing fields).
    Protocol,
    /// Will not get better by retrying: bad key, bad request, unknown model, missing model file.
    Fatal,
    /// The conversation no longer fits the model's context window. Not retried; the agent loop
    /// ends the trial as a token limit, since it is the conversation's length, not a fault.
    ContextOverflow,
    /// The reply was longer than the backend's byte cap; the call stopped reading there rather
    /// than allocate without bound. Not retried: a server that ignores `max_tokens` once will
    /// do it again, and each retry costs another oversized reply.
    ReplyTooLarge {
        limit_bytes: u64,
    },
}

impl BackendErrorKind {
    /// A stable snake_case name, as the transcript records it.
    pub fn name(&self) -> &'static str {
        match self {
            BackendErrorKind::RateLimited { .. } => "rate_limited",
            BackendErrorKind::Server { .. } => "server",
            BackendErrorKind::Timeout => "timeout",
            BackendErrorKind::Transport => "transport",
            BackendErrorKind::Protocol => "protocol",
            BackendErrorKind::Fatal => "fatal",
            BackendErrorKind::ContextOverflow => "context_overflow",
            BackendErrorKind::ReplyTooLarge { .. } => "reply_too_large",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{backend}: {message}")]
pub struct BackendError {
    pub backend: String,
    pub kind: BackendErrorKind,
    pub message: String,
}

impl BackendError {
    pub fn new(
        backend: impl Into<String>,
        kind: BackendErrorKind,
        message: impl Into<String>,
    ) -> BackendError {
        BackendError {
            backend: backend.into(),
            kind,
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        !matches!(
            self.kind,
            BackendErrorKind::Fatal
                | BackendErrorKind::ContextOverflow
                | BackendErrorKind::ReplyTooLarge { .. }
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            BackendErrorKind::RateLimited { retry_after } => retry_after,
            _ => None,
        }
    }
}

#[async_trait::async_trait]
pub trait ChatBackend: Send + Sync {
    /// A stable identity used in cache keys and stored with each trial, e.g. `openai:gpt-4o@https://host/v1`.
    fn id(&self) -> String;

    /// One attempt, no retries.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError>;
}
