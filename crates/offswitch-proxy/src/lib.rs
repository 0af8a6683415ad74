//! The transparency checkpoint: `offswitch proxy`, a recording and enforcing proxy between an
//! agent and its model API.
//!
//! - `config`: the TOML configuration (upstreams, sessions, rules, budgets, limits), validated
//!   with located errors.
//! - `apis`: the wire formats (OpenAI chat completions, the Responses API, Anthropic
//!   Messages): where tool calls are, whole and streamed, how a blocked one is replaced, the
//!   usage, the reassembled reply.
//! - `sse`: server-sent events, kept byte for byte.
//! - `check`: the rules over tool calls and request text.
//! - `budget`: tokens and requests per session and window.
//! - `mcp`: the agent-to-agent checkpoint: MCP (Streamable HTTP) servers behind the proxy,
//!   `tools/call` requests and results checked and recorded.
//! - `translate`: the Responses API over an upstream with chat completions only.
//! - `telemetry`: a span per exchange over OTLP, after the GenAI semantic conventions.
//! - `server`: the HTTP side: authentication by session token, forwarding with the
//!   upstream's key and bounded retries, holding streamed tool calls until checked,
//!   recording, budgets, and tripping the guard's off-switch.
//!
//! Nothing unchecked is released or logged as passed: a streamed tool call is held from its
//! first event until the reply is complete and checked, a reply that cannot be parsed is
//! refused, and a stream that ends mid-call never releases the call.

pub mod apis;
pub mod budget;
pub mod check;
pub mod config;
pub mod mcp;
pub mod server;
pub mod sse;
pub mod telemetry;
pub mod translate;

use std::sync::{Arc, Mutex};

pub use config::{Config, ConfigError, load, parse};
pub use server::{Proxy, Recorder, Route, Session, Tripper, router};

/// A recorder that appends to an audit log of offswitch's format (`offswitch audit verify`).
pub struct AuditRecorder {
    writer: Mutex<Option<offswitch_audit::AuditWriter>>,
    failed: Mutex<Option<String>>,
}

impl AuditRecorder {
    pub fn new(writer: offswitch_audit::AuditWriter) -> AuditRecorder {
        AuditRecorder {
            writer: Mutex::new(Some(writer)),
            failed: Mutex::new(None),
        }
    }

    /// The first failure to write, if any.
    pub fn failed(&self) -> Option<String> {
        lock(&self.failed).clone()
    }

    /// Record that the proxy stopped.
    pub fn record_stop(&self) {
        self.record("proxy_stop", serde_json::json!({}));
    }

    /// Seal the log with a last checkpoint.
    pub fn finish(&self) -> Result<(), String> {
        match lock(&self.writer).take() {
            Some(writer) => writer.finish().map(|_| ()).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

impl Recorder for AuditRecorder {
    fn record(&self, kind: &str, body: serde_json::Value) {
        let mut writer = lock(&self.writer);
        if let Some(writer) = writer.as_mut()
            && let Err(e) = writer.append(kind, &body)
        {
            lock(&self.failed).get_or_insert(e.to_string());
        }
    }
}

/// A recorder that keeps records in memory (tests, embedding).
#[derive(Default)]
pub struct MemoryRecorder(pub Mutex<Vec<(String, serde_json::Value)>>);

impl Recorder for MemoryRecorder {
    fn record(&self, kind: &str, body: serde_json::Value) {
        lock(&self.0).push((kind.to_owned(), body));
    }
}

/// A tripper that only remembers (a proxy without a guard, and tests).
#[derive(Default)]
pub struct NoGuard(pub Mutex<Vec<(String, Option<String>, String)>>);

impl Tripper for NoGuard {
    fn trip(&self, session: &str, guard: Option<&str>, why: &str) {
        lock(&self.0).push((session.to_owned(), guard.map(str::to_owned), why.to_owned()));
    }
}

/// The upstreams' keys and the sessions' tokens, read now: a missing one is an error naming
/// it. A session without a token source gets a fresh random token; with no session configured,
/// one session named `default` does.
pub fn prepare(config: &Config) -> Result<(Vec<Route>, Vec<Session>), String> {
    let mut routes = Vec::new();
    for upstream in &config.upstreams {
        let key = config::read_secret(&upstream.key)
            .map_err(|e| format!("the key of upstream {}: {e}", upstream.name))?;
        routes.push(Route {
            upstream: upstream.clone(),
            key,
        });
    }
    for server in &config.mcp {
        config::read_secret(&server.key)
            .map_err(|e| format!("the key of MCP server {}: {e}", server.name))?;
    }
    let mut sessions = Vec::new();
    let specs = if config.sessions.is_empty() {
        vec![config::SessionSpec {
            name: "default".into(),
            token: config::KeySource::None,
            guard: None,
        }]
    } else {
        config.sessions.clone()
    };
    for spec in specs {
        let token = match config::read_secret(&spec.token)
            .map_err(|e| format!("the token of session {}: {e}", spec.name))?
        {
            Some(token) => token,
            None => fresh_token(),
        };
        sessions.push(Session {
            name: spec.name,
            token,
            guard: spec.guard,
        });
    }
    Ok((routes, sessions))
}

/// A random session token: `osw-` and 32 hex digits.
pub fn fresh_token() -> String {
    format!("osw-{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// Serve until the listener fails or the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, proxy: Arc<Proxy>) -> std::io::Result<()> {
    serve_until(listener, proxy, std::future::pending()).await
}

/// Serve until `stop` completes; exchanges in flight are finished first.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    proxy: Arc<Proxy>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Each stream event is a small write: without TCP_NODELAY, Nagle's algorithm holds it
    // until the client's delayed ACK (40 ms a stream, measured in bench/proxy).
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router(proxy))
        .with_graceful_shutdown(stop)
        .await
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
