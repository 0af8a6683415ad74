//! Model backends over HTTP (OpenAI-compatible chat completions, Anthropic Messages) and the
//! wrappers every backend can wear: retries with backoff, concurrency and rate limits, and a
//! response cache on disk. Also the `--model` spec parser.
//!
//! Layering: `OpenAiBackend` / `AnthropicBackend` make exactly one attempt per call;
//! `ResilientBackend` retries and limits; `CachedBackend` / `ModelClient` answer repeated
//! requests from disk. The harness calls `ModelClient::call`, which reports cache hits and
//! every failed attempt so they can be recorded in the transcript.

pub mod anthropic;
pub mod cache;
pub mod client;
pub mod http;
#[cfg(feature = "mock")]
pub mod mock;
pub mod openai;
pub mod resilient;
pub mod spec;

pub use anthropic::{AnthropicBackend, AnthropicConfig};
pub use cache::{CacheError, CacheStatus, CachedBackend, ResponseCache};
pub use client::{ModelCall, ModelClient};
pub use http::{BuildError, HttpConfig, parse_retry_after};
pub use openai::{OpenAiBackend, OpenAiConfig, OpenAiDialect};
pub use resilient::{AttemptFailure, RateLimits, ResilienceConfig, ResilientBackend, RetryPolicy};
pub use spec::{
    EMBEDDED_MODEL, HttpOptions, ModelSpec, SpecError, build_http_backend,
    build_http_backend_with_env,
};
