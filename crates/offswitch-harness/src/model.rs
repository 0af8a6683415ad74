//! How the agent loop talks to a model: one logical call that may have made several attempts.
//!
//! The loop records every failed attempt in the transcript, so it needs the failures as data
//! next to the final result. [`ModelClient`] is that shape; [`SingleAttempt`] adapts a bare
//! `ChatBackend`, and [`Resilient`] adapts `offswitch_model::ModelClient` (retries, limits,
//! response cache).

use std::sync::Arc;
use std::time::Duration;

use offswitch_core::backend::{BackendError, ChatBackend, ChatRequest, ChatResponse};
use offswitch_core::trial::TranscriptEntry;
use offswitch_model::CacheStatus;

/// One failed attempt of a model call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    pub attempt: u32,
    pub error: String,
    /// `BackendErrorKind::name` of the error.
    pub kind: &'static str,
    /// Whether another attempt followed.
    pub retried: bool,
    /// The wait before the next attempt; zero when not retried.
    pub wait: Duration,
}

impl FailedAttempt {
    /// The attempt as the transcript records it.
    pub fn transcript_entry(&self) -> TranscriptEntry {
        TranscriptEntry::BackendError {
            attempt: self.attempt,
            error: self.error.clone(),
            retried: self.retried,
            kind: Some(self.kind.to_owned()),
            wait_ms: Some(self.wait.as_millis() as u64),
        }
    }
}

/// What one logical model call did.
#[derive(Debug, Clone)]
pub struct LoggedCall {
    pub result: Result<ChatResponse, BackendError>,
    /// Failed attempts in order.
    pub failures: Vec<FailedAttempt>,
    /// The response came from the response cache; no model was asked.
    pub cache_hit: bool,
}

#[async_trait::async_trait]
pub trait ModelClient: Send + Sync {
    /// Stable identity of the model behind this client.
    fn id(&self) -> String;

    async fn chat_logged(&self, request: &ChatRequest) -> LoggedCall;
}

/// A backend called once per logical call, without retries; a failure is reported as one
/// failed attempt that was not retried.
pub struct SingleAttempt(pub Arc<dyn ChatBackend>);

#[async_trait::async_trait]
impl ModelClient for SingleAttempt {
    fn id(&self) -> String {
        self.0.id()
    }

    async fn chat_logged(&self, request: &ChatRequest) -> LoggedCall {
        let result = self.0.chat(request).await;
        let failures = match &result {
            Ok(_) => Vec::new(),
            Err(error) => vec![FailedAttempt {
                attempt: 1,
                error: error.to_string(),
                kind: error.kind.name(),
                retried: false,
                wait: Duration::ZERO,
            }],
        };
        LoggedCall {
            result,
            failures,
            cache_hit: false,
        }
    }
}

/// `offswitch_model::ModelClient`: retries with backoff, concurrency and rate limits, and the
/// response cache when one is configured.
pub struct Resilient(pub offswitch_model::ModelClient);

#[async_trait::async_trait]
impl ModelClient for Resilient {
    fn id(&self) -> String {
        self.0.id()
    }

    async fn chat_logged(&self, request: &ChatRequest) -> LoggedCall {
        let call = self.0.call(request).await;
        LoggedCall {
            result: call.result,
            failures: call
                .failures
                .into_iter()
                .map(|failure| FailedAttempt {
                    attempt: failure.attempt,
                    error: failure.error.to_string(),
                    kind: failure.error.kind.name(),
                    retried: failure.retried,
                    wait: failure.delay,
                })
                .collect(),
            cache_hit: call.cache == CacheStatus::Hit,
        }
    }
}
