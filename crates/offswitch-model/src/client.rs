//! The one call the agent loop makes: cache first, then the backend with retries and limits,
//! reporting the cache status and every failed attempt.

use std::sync::Arc;

use offswitch_core::{BackendError, ChatBackend, ChatRequest, ChatResponse};

use crate::cache::{CacheStatus, ResponseCache, cached_call};
use crate::resilient::{AttemptFailure, ResilienceConfig, ResilientBackend};

/// What one model call did, for the transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCall {
    pub result: Result<ChatResponse, BackendError>,
    /// Failed attempts in order, including the final one when the call failed.
    pub failures: Vec<AttemptFailure>,
    /// `Hit` means no backend was asked; `Miss` also when no cache is configured.
    pub cache: CacheStatus,
}

/// A backend with retries, rate limits and (optionally) a response cache in front. The cache
/// sits outside the limits, so a hit neither waits for a slot nor counts against the rate.
pub struct ModelClient {
    resilient: ResilientBackend,
    cache: Option<ResponseCache>,
}

impl ModelClient {
    pub fn new(
        backend: Arc<dyn ChatBackend>,
        config: ResilienceConfig,
        cache: Option<ResponseCache>,
    ) -> ModelClient {
        ModelClient {
            resilient: ResilientBackend::new(backend, config),
            cache,
        }
    }

    /// The wrapped backend's id.
    pub fn id(&self) -> String {
        self.resilient.id()
    }

    pub async fn call(&self, request: &ChatRequest) -> ModelCall {
        let call = self.resilient.chat_logged(request);
        let (result, failures, cache) =
            cached_call(self.cache.as_ref(), &self.resilient.id(), request, call).await;
        ModelCall {
            result,
            failures,
            cache,
        }
    }
}

#[async_trait::async_trait]
impl ChatBackend for ModelClient {
    fn id(&self) -> String {
        self.resilient.id()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        self.call(request).await.result
    }
}
