//! What the HTTP backends share: the client, sending one JSON request, and mapping HTTP
//! failures onto `BackendErrorKind` so that the retry layer can decide what to do.

use std::time::{Duration, SystemTime};

use offswitch_core::{BackendError, BackendErrorKind};

/// Settings common to every HTTP backend.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Whole-call timeout: connecting, sending, waiting for and reading the reply.
    pub timeout: Duration,
    /// Extra headers sent with every request (provider routing, organisation ids, ...).
    pub extra_headers: Vec<(String, String)>,
    /// The most bytes of a reply body read, whether it comes with a `Content-Length` or as a
    /// stream of chunks; a longer reply ends the call with `BackendErrorKind::ReplyTooLarge`.
    pub max_reply_bytes: u64,
}

/// The default [`HttpConfig::max_reply_bytes`]: 4 MiB. A reply of 32,000 tokens is ~130 KB of
/// text, and JSON escaping at most sextuples it; past this, a server is not honouring
/// `max_tokens`.
pub const DEFAULT_MAX_REPLY_BYTES: u64 = 4 << 20;

/// The most bytes of an error status's body read: enough for any provider's error object.
const MAX_ERROR_BODY_BYTES: u64 = 64 << 10;

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            timeout: Duration::from_secs(120),
            extra_headers: Vec::new(),
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
        }
    }
}

/// Errors building a backend. Failures of a call are `BackendError`s instead.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid header {name:?}: {message}")]
    InvalidHeader { name: String, message: String },
    #[error("failed to build the HTTP client for {base_url}: {message}")]
    Client { base_url: String, message: String },
    #[error(
        "no API key for {backend}: pass one with --api-key or set {env_var} (only servers other than the provider's own may run without a key)"
    )]
    MissingApiKey { backend: String, env_var: String },
    #[error("invalid base URL {base_url:?}: it must start with http:// or https://")]
    InvalidBaseUrl { base_url: String },
    #[error("model spec {spec:?} is not served over HTTP; build it with the crate that owns it")]
    NotHttp { spec: String },
}

/// Parse a `Retry-After` value: delay seconds or an HTTP-date (RFC 9110 section 10.2.3).
/// A date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // Some servers send fractional seconds; accept them rather than dropping the hint.
    if let Some(wait) = value.parse::<f64>().ok().and_then(float_seconds) {
        return Some(wait);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A wait given in (fractional) seconds; `None` when negative or not finite, the longest
/// `Duration` when too long for one (the retry layer caps it anyway) rather than a panic.
fn float_seconds(seconds: f64) -> Option<Duration> {
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

/// A reqwest client plus the identity used in error messages.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    pub(crate) backend_id: String,
    client: reqwest::Client,
    max_reply_bytes: u64,
}

impl HttpClient {
    pub(crate) fn new(
        backend_id: String,
        base_url: &str,
        config: &HttpConfig,
        auth_headers: Vec<(String, String)>,
    ) -> Result<HttpClient, BuildError> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in auth_headers.iter().chain(&config.extra_headers) {
            let header_name =
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                    BuildError::InvalidHeader {
                        name: name.clone(),
                        message: e.to_string(),
                    }
                })?;
            let mut header_value = reqwest::header::HeaderValue::from_str(value).map_err(|e| {
                BuildError::InvalidHeader {
                    name: name.clone(),
                    message: e.to_string(),
                }
            })?;
            header_value.set_sensitive(true);
            headers.insert(header_name, header_value);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .default_headers(headers);
        // A proxy from the environment cannot reach this machine's loopback, where local
        // model servers (and the test mocks) listen.
        if is_loopback(base_url) {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| BuildError::Client {
            base_url: base_url.to_owned(),
            message: e.to_string(),
        })?;
        Ok(HttpClient {
            backend_id,
            client,
            max_reply_bytes: config.max_reply_bytes,
        })
    }

    /// POST `body` to `url` and return the parsed JSON reply of a 2xx status.
    pub(crate) async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, BackendError> {
        let response = self
            .client
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport_error(url, &e))?;
        let status = response.status();
        let retry_after = retry_after_header(response.headers());
        if !status.is_success() {
            // Only the start of an error body matters (its message); the rest is not read.
            let (bytes, _) = self.read_body(url, response, MAX_ERROR_BODY_BYTES).await?;
            return Err(self.status_error(status.as_u16(), retry_after, &bytes));
        }
        // A `Content-Length` over the cap is believed without reading anything.
        let too_long = response
            .content_length()
            .is_some_and(|length| length > self.max_reply_bytes);
        let (bytes, complete) = if too_long {
            (Vec::new(), false)
        } else {
            self.read_body(url, response, self.max_reply_bytes).await?
        };
        if !complete {
            return Err(self.error(
                BackendErrorKind::ReplyTooLarge {
                    limit_bytes: self.max_reply_bytes,
                },
                format!(
                    "reply from {url} is longer than the cap of {} bytes; stopped reading it",
                    self.max_reply_bytes
                ),
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            self.error(
                BackendErrorKind::Protocol,
                format!(
                    "reply from {url} is not valid JSON ({e}): {}",
                    snippet(&String::from_utf8_lossy(&bytes))
                ),
            )
        })
    }

    /// At most `limit` bytes of the body, chunk by chunk, and whether that was all of it. Reading
    /// stops once the body passes the limit, with or without a `Content-Length`, so a reply
    /// that never ends costs `limit` bytes, not all the memory there is.
    async fn read_body(
        &self,
        url: &str,
        mut response: reqwest::Response,
        limit: u64,
    ) -> Result<(Vec<u8>, bool), BackendError> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(url, &e))?
        {
            let room = usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_sub(body.len());
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                return Ok((body, false));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, true))
    }

    pub(crate) fn error(&self, kind: BackendErrorKind, message: String) -> BackendError {
        BackendError::new(self.backend_id.clone(), kind, message)
    }

    fn transport_error(&self, url: &str, error: &reqwest::Error) -> BackendError {
        let kind = if error.is_timeout() {
            BackendErrorKind::Timeout
        } else {
            BackendErrorKind::Transport
        };
        // reqwest's Display hides the cause ("error sending request"); the chain says why.
        let mut message = format!("request to {url} failed: {error}");
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        self.error(kind, message)
    }

    fn status_error(
        &self,
        status: u16,
        retry_after: Option<Duration>,
        body: &[u8],
    ) -> BackendError {
        let detail = error_message(body);
        let kind = match status {
            429 => BackendErrorKind::RateLimited { retry_after },
            // Anthropic's "overloaded" status: a capacity signal like 429, not a server fault.
            529 => BackendErrorKind::RateLimited { retry_after },
            408 => BackendErrorKind::Timeout,
            500..=599 => BackendErrorKind::Server { status },
            400 | 413 if is_context_overflow(body, &detail) => BackendErrorKind::ContextOverflow,
            _ => BackendErrorKind::Fatal,
        };
        self.error(kind, format!("HTTP {status}: {detail}"))
    }
}

/// The server's wait hint: OpenAI's millisecond `retry-after-ms` when present (it is the more
/// precise), else the standard `Retry-After`.
fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(wait) = text("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|millis| float_seconds(millis / 1000.0))
    {
        return Some(wait);
    }
    text("retry-after").and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// Whether a 400/413 says the prompt is longer than the model's context: OpenAI's (and
/// compatible servers') `context_length_exceeded` code, or the providers' usual wordings.
fn is_context_overflow(body: &[u8], message: &str) -> bool {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| e.get("code"))
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        });
    if code.as_deref() == Some("context_length_exceeded") {
        return true;
    }
    let message = message.to_ascii_lowercase();
    [
        "maximum context length",
        "context length",
        "context window",
        "prompt is too long",
        "too many tokens",
    ]
    .iter()
    .any(|phrase| message.contains(phrase))
}

/// The human message inside an error body. OpenAI and Anthropic both use
/// `{"error": {"message": ...}}`; anything else is shown as (a prefix of) the raw body.
fn error_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = value.get("error");
        if let Some(message) = error
            .and_then(|e| e.get("message"))
            .and_then(|m| m.as_str())
        {
            return message.to_owned();
        }
        if let Some(message) = error.and_then(|e| e.as_str()) {
            return message.to_owned();
        }
    }
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        "(empty body)".to_owned()
    } else {
        snippet(&text)
    }
}

/// At most 300 characters of `text`, so that a megabyte of HTML does not land in a transcript.
pub(crate) fn snippet(text: &str) -> String {
    const LIMIT: usize = 300;
    let trimmed = text.trim();
    match trimmed.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

/// An `f32` as the JSON number a person would write: `0.9`, not the `0.8999999761581421`
/// that widening to `f64` gives.
pub(crate) fn json_f32(value: f32) -> serde_json::Value {
    value
        .to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// Join a base URL and an endpoint path with exactly one slash between them.
pub(crate) fn join_url(base_url: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base_url.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

fn is_loopback(base_url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base_url) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn check_base_url(base_url: &str) -> Result<(), BuildError> {
    if base_url.starts_with("http://") || base_url.starts_with("https://") {
        Ok(())
    } else {
        Err(BuildError::InvalidBaseUrl {
            base_url: base_url.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("0.25", now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("1e300", now), Some(Duration::MAX));
        assert_eq!(parse_retry_after("inf", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("http://127.0.0.1:8000/v1"));
        assert!(is_loopback("http://localhost:11434/v1"));
        assert!(is_loopback("http://[::1]:8080"));
        assert!(!is_loopback("https://api.example.org/v1"));
        assert!(!is_loopback("http://10.0.0.1/v1"));
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(
            error_message(br#"{"error": {"message": "Incorrect API key provided", "type": "x"}}"#),
            "Incorrect API key provided"
        );
        assert_eq!(
            error_message(
                br#"{"type":"error","error":{"type":"not_found_error","message":"model: nope"}}"#
            ),
            "model: nope"
        );
        assert_eq!(
            error_message(b"<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
        assert_eq!(error_message(b""), "(empty body)");
    }
}
