//! Retries with exponential backoff and full jitter, a per-backend concurrency limit and an
//! optional requests-per-minute limit, around any `ChatBackend`. Every failed attempt is
//! reported so the harness can store it in the transcript.

use std::sync::Arc;
use std::time::Duration;

use offswitch_core::{BackendError, ChatBackend, ChatRequest, ChatResponse};
use rand::Rng;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included. At least 1.
    pub max_attempts: u32,
    /// The backoff ceiling before the first retry; it doubles with every further retry.
    pub base_delay: Duration,
    /// The largest backoff ceiling, whatever the attempt number.
    pub max_delay: Duration,
    /// Give up once the waits so far plus the next one would exceed this.
    pub max_total_delay: Duration,
    /// A server's `Retry-After` is honoured up to this long; a longer one is cut to it. Up to
    /// `base_delay` of jitter is added on top.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1 for the first retry). Full jitter: a uniform
    /// wait between zero and the exponential ceiling. When the server said when to come back
    /// (`retry_after`), its (capped) wait plus up to `base_delay` of jitter, so that calls
    /// refused together do not all return in the same instant.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(retry_after) = retry_after {
            return retry_after.min(self.max_retry_after) + jitter(self.base_delay);
        }
        let doublings = attempt.saturating_sub(1).min(20);
        let ceiling = self
            .base_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay);
        jitter(ceiling)
    }
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_total_delay: Duration::from_secs(180),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Calls in flight at once through this wrapper. At least 1.
    pub max_concurrency: usize,
    /// Call starts per minute, spread evenly (one every `60s / n`); `None` for no limit.
    pub requests_per_minute: Option<u32>,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            max_concurrency: 8,
            requests_per_minute: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResilienceConfig {
    pub retry: RetryPolicy,
    pub limits: RateLimits,
}

/// One failed attempt of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    /// 1 for the first attempt.
    pub attempt: u32,
    pub error: BackendError,
    /// Whether another attempt followed.
    pub retried: bool,
    /// The wait before the next attempt; zero when not retried.
    pub delay: Duration,
}

/// A `ChatBackend` that retries another one within the limits of its config.
pub struct ResilientBackend {
    inner: Arc<dyn ChatBackend>,
    config: ResilienceConfig,
    in_flight: Semaphore,
    /// The earliest instant the next call may start, when a requests-per-minute limit is set.
    next_start: Mutex<Instant>,
}

impl ResilientBackend {
    pub fn new(inner: Arc<dyn ChatBackend>, config: ResilienceConfig) -> ResilientBackend {
        let permits = config.limits.max_concurrency.max(1);
        ResilientBackend {
            inner,
            config,
            in_flight: Semaphore::new(permits),
            next_start: Mutex::new(Instant::now()),
        }
    }

    pub fn inner(&self) -> &Arc<dyn ChatBackend> {
        &self.inner
    }

    /// The call with retries, and every failed attempt in order. The result is the successful
    /// response, or the last attempt's error.
    pub async fn chat_logged(
        &self,
        request: &ChatRequest,
    ) -> (Result<ChatResponse, BackendError>, Vec<AttemptFailure>) {
        let policy = &self.config.retry;
        let max_attempts = policy.max_attempts.max(1);
        let mut failures = Vec::new();
        let mut waited = Duration::ZERO;
        let mut attempt = 1;
        loop {
            let error = match self.attempt(request).await {
                Ok(response) => return (Ok(response), failures),
                Err(error) => error,
            };
            let delay = self.delay_before_retry(attempt, &error);
            let retry = error.is_retryable()
                && attempt < max_attempts
                && waited + delay <= policy.max_total_delay;
            tracing::debug!(
                backend = %error.backend,
                attempt,
                retry,
                delay_ms = delay.as_millis() as u64,
                "model call failed: {}",
                error.message
            );
            if !retry {
                failures.push(AttemptFailure {
                    attempt,
                    error: error.clone(),
                    retried: false,
                    delay: Duration::ZERO,
                });
                return (Err(error), failures);
            }
            failures.push(AttemptFailure {
                attempt,
                error,
                retried: true,
                delay,
            });
            tokio::time::sleep(delay).await;
            waited += delay;
            attempt += 1;
        }
    }

    async fn attempt(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        // The permit covers the request only, not the backoff, so a waiting retry does not
        // hold a slot that another call could use.
        let _permit = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        self.wait_for_rate_slot().await;
        self.inner.chat(request).await
    }

    async fn wait_for_rate_slot(&self) {
        let Some(per_minute) = self.config.limits.requests_per_minute else {
            return;
        };
        let interval = Duration::from_secs(60) / per_minute.max(1);
        let start = {
            let mut next_start = self.next_start.lock().await;
            let start = (*next_start).max(Instant::now());
            *next_start = start + interval;
            start
        };
        tokio::time::sleep_until(start).await;
    }

    fn delay_before_retry(&self, attempt: u32, error: &BackendError) -> Duration {
        self.config.retry.delay(attempt, error.retry_after())
    }
}

#[async_trait::async_trait]
impl ChatBackend for ResilientBackend {
    fn id(&self) -> String {
        self.inner.id()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        self.chat_logged(request).await.0
    }
}

/// A uniformly random duration in `0..=ceiling`.
fn jitter(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}
