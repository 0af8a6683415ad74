//! The proxy's HTTP side: authenticate the session, check the request, forward it to the
//! upstream with the upstream's key, check the reply (held while a tool call streams), record
//! the exchange, and count it against the session's budgets.

// A handler's early answer is its `Response`, built once per request: boxing it would only
// move the allocation.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::apis::{self, ApiKind, Call, Flow, StreamState};
use crate::budget::{Spending, Use};
use crate::check::{self, Verdict};
use crate::config::{Action, Api, Config, Upstream};
use crate::sse::{SseEvent, SseParser};

/// Where the proxy writes what it saw and decided. Implementations must not block for long:
/// they run on the request's task.
pub trait Recorder: Send + Sync {
    fn record(&self, kind: &str, body: Value);
}

/// What a `kill` does: stop the guard session the proxy session belongs to.
pub trait Tripper: Send + Sync {
    /// `session`: the proxy session; `guard`: its guard session, if the configuration named one.
    fn trip(&self, session: &str, guard: Option<&str>, why: &str);
}

/// A session the proxy serves: who a token belongs to.
#[derive(Debug, Clone)]
pub struct Session {
    pub name: String,
    pub token: String,
    pub guard: Option<String>,
}

/// An upstream with its key, read when the proxy starts.
#[derive(Clone)]
pub struct Route {
    pub upstream: Upstream,
    pub key: Option<String>,
}

/// Everything a running proxy shares between requests.
pub struct Proxy {
    pub(crate) config: Config,
    pub(crate) routes: Vec<Route>,
    /// sha256 of each token, to its session's index.
    pub(crate) tokens: HashMap<[u8; 32], usize>,
    pub(crate) sessions: Vec<Session>,
    pub(crate) spending: Vec<Mutex<Spending>>,
    pub(crate) recorder: Arc<dyn Recorder>,
    pub(crate) tripper: Arc<dyn Tripper>,
    pub(crate) client: reqwest::Client,
    pub(crate) next_id: AtomicU64,
    pub(crate) started: Instant,
    /// Exchanges in flight, at most `limits.max_concurrent`.
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    pub(crate) telemetry: Option<crate::telemetry::Telemetry>,
    /// The MCP sessions the servers opened (`Mcp-Session-Id`), each the proxy session's whose
    /// request opened it: no agent can use another's.
    pub(crate) mcp_sessions: Mutex<HashMap<String, usize>>,
}

impl Proxy {
    pub fn new(
        config: Config,
        routes: Vec<Route>,
        sessions: Vec<Session>,
        recorder: Arc<dyn Recorder>,
        tripper: Arc<dyn Tripper>,
    ) -> Result<Arc<Proxy>, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.limits.connect_timeout)
            // A redirect would carry the upstream's key (reqwest keeps `x-api-key`) elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("the HTTP client: {e}"))?;
        let tokens = sessions
            .iter()
            .enumerate()
            .map(|(index, session)| (digest(&session.token), index))
            .collect();
        let spending = sessions
            .iter()
            .map(|_| Mutex::new(Spending::new(&config.budgets)))
            .collect();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(config.limits.max_concurrent));
        let telemetry = match &config.telemetry {
            Some(telemetry) => Some(crate::telemetry::Telemetry::start(telemetry)?),
            None => None,
        };
        Ok(Arc::new(Proxy {
            config,
            routes,
            tokens,
            sessions,
            spending,
            recorder,
            tripper,
            client,
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            in_flight,
            telemetry,
            mcp_sessions: Mutex::new(HashMap::new()),
        }))
    }

    /// Export the spans still batched and stop exporting (at the proxy's end).
    pub fn shutdown_telemetry(&self) -> Result<(), String> {
        match &self.telemetry {
            Some(telemetry) => telemetry.shutdown(),
            None => Ok(()),
        }
    }

    /// The sessions' spending, for status reports: (session, budget, used, max).
    pub fn spending(&self) -> Vec<(String, String, u64, u64)> {
        let now = Instant::now();
        self.sessions
            .iter()
            .zip(&self.spending)
            .flat_map(|(session, spending)| {
                lock(spending)
                    .report(now)
                    .into_iter()
                    .map(|(budget, used, max)| (session.name.clone(), budget, used, max))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The routes.
pub fn router(proxy: Arc<Proxy>) -> Router {
    let limit = usize::try_from(proxy.config.limits.max_request_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/responses", post(responses))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        .route(
            "/mcp/{name}",
            post(crate::mcp::post)
                .get(crate::mcp::get)
                .delete(crate::mcp::delete),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(proxy)
}

async fn chat(State(proxy): State<Arc<Proxy>>, headers: HeaderMap, body: Bytes) -> Response {
    exchange(proxy, ApiKind::Chat, headers, body).await
}

async fn responses(State(proxy): State<Arc<Proxy>>, headers: HeaderMap, body: Bytes) -> Response {
    exchange(proxy, ApiKind::Responses, headers, body).await
}

async fn messages(State(proxy): State<Arc<Proxy>>, headers: HeaderMap, body: Bytes) -> Response {
    exchange(proxy, ApiKind::Messages, headers, body).await
}

/// `GET /v1/models`: the first upstream's list, for clients that ask before they chat.
async fn models(State(proxy): State<Arc<Proxy>>, headers: HeaderMap) -> Response {
    let kind = if headers.contains_key("anthropic-version") {
        ApiKind::Messages
    } else {
        ApiKind::Chat
    };
    if let Err(response) = authenticate(&proxy, kind, &headers) {
        return response;
    }
    let Some(route) = proxy.routes.first() else {
        return error(
            kind,
            StatusCode::NOT_FOUND,
            "not_found_error",
            "no upstream",
        );
    };
    let request = authorize(
        proxy.client.get(format!("{}/models", route.upstream.url)),
        route,
        &headers,
    );
    match request
        .timeout(proxy.config.limits.idle_timeout)
        .send()
        .await
    {
        Ok(reply) => {
            let status = reply.status();
            let headers = reply.headers().clone();
            match read_bounded(
                reply,
                proxy.config.limits.max_response_bytes,
                proxy.config.limits.idle_timeout,
            )
            .await
            {
                Ok(bytes) => respond(status, &headers, bytes),
                Err(why) => error(kind, StatusCode::BAD_GATEWAY, "upstream_error", &why),
            }
        }
        Err(e) => error(
            kind,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            &format!("the upstream: {e}"),
        ),
    }
}

/// One request from a client, through to its reply.
async fn exchange(proxy: Arc<Proxy>, kind: ApiKind, headers: HeaderMap, body: Bytes) -> Response {
    let session = match authenticate(&proxy, kind, &headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let id = proxy.next_id.fetch_add(1, Ordering::Relaxed);
    let received = Instant::now();
    let session_name = proxy.sessions[session].name.clone();
    let request: Value = match serde_json::from_slice::<Value>(&body) {
        Ok(value) if value.is_object() => value,
        Ok(_) => {
            return error(
                kind,
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the request body is not a JSON object",
            );
        }
        Err(e) => {
            return error(
                kind,
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("the request body is not valid JSON: {e}"),
            );
        }
    };
    let model = apis::request_model(&request).unwrap_or_default().to_owned();
    let stream = apis::request_streams(&request);
    let mut exchange = Exchange {
        proxy: Arc::clone(&proxy),
        id,
        session,
        kind,
        model: model.clone(),
        stream,
        received,
        upstream: None,
        upstream_url: None,
        attempts: 0,
        verdicts: Vec::new(),
        blocked: Vec::new(),
        started: SystemTime::now(),
        request: proxy
            .telemetry
            .as_ref()
            .filter(|_| {
                proxy
                    .config
                    .telemetry
                    .as_ref()
                    .is_some_and(|t| t.capture_content)
            })
            .map(|_| request.clone()),
        translated: None,
    };
    // The request is recorded before anything is forwarded; one a prompt rule refuses is
    // recorded without its body (it holds what must not leave, and the log is read by people).
    let verdicts = check::check_prompt(&proxy.config.rules, &request);
    let refused_prompt = matches!(
        check::strongest(&verdicts),
        Some(Action::Block | Action::Kill)
    );
    proxy.recorder.record(
        "model_request",
        json!({
            "id": id,
            "session": session_name,
            "api": kind.name(),
            "model": model,
            "stream": stream,
            "bytes": body.len(),
            "request": if refused_prompt { json!("(withheld: it matched a prompt rule)") } else { request.clone() },
        }),
    );
    let _permit = match proxy.in_flight.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            return exchange.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded_error",
                &format!(
                    "the proxy is at its limit of {} exchanges at once",
                    proxy.config.limits.max_concurrent
                ),
                Value::Null,
            );
        }
    };
    // Budgets first: a spent session is refused before anything leaves.
    let spent = lock(&proxy.spending[session]).exhausted(Instant::now());
    if let Some(first) = spent.first() {
        let why = format!("the budget `{}` is spent: {}", first.budget, first.detail);
        if spent.iter().any(|s| s.action == Action::Kill) {
            exchange.trip(&format!("budget {}", first.budget), &why);
        }
        return exchange.refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "budget_exhausted",
            &why,
            json!(spent.iter().map(|s| &s.budget).collect::<Vec<_>>()),
        );
    }
    if !verdicts.is_empty() {
        exchange.verdicts.extend(verdicts.iter().cloned());
        if let Some(action @ (Action::Block | Action::Kill)) = check::strongest(&verdicts) {
            let verdict = verdicts
                .iter()
                .find(|v| v.action == action)
                .expect("the strongest");
            let why = format!(
                "the request was refused by the policy rule `{}`: {}",
                verdict.rule, verdict.detail
            );
            if action == Action::Kill {
                exchange.trip(&verdict.rule, &why);
            }
            return exchange.refuse(
                StatusCode::FORBIDDEN,
                "blocked_by_policy",
                &why,
                json!(verdict.rule),
            );
        }
    }
    // A cost budget cannot be kept for a model without a price: refused, not let through free.
    if proxy
        .config
        .budgets
        .iter()
        .any(|b| b.metric == crate::config::Metric::CostMicroUsd)
        && !proxy.config.prices.iter().any(|p| p.model.is_match(&model))
    {
        return exchange.refuse(
            StatusCode::FORBIDDEN,
            "blocked_by_policy",
            &format!("the model {model:?} has no `[[price]]`, so the session's cost budget cannot be kept"),
            Value::Null,
        );
    }
    if !proxy.config.allow_server_tools
        && let Some(tools) = apis::server_side_tools(kind, &request)
    {
        return exchange.refuse(
            StatusCode::FORBIDDEN,
            "blocked_by_policy",
            &format!(
                "the request declares tools the upstream runs itself ({tools}); no rule could stop \
                 their calls, so this proxy refuses them (`allow_server_tools = true` allows them)"
            ),
            Value::Null,
        );
    }
    let mut forwarded_request = request.clone();
    let route = match route_for(&proxy.routes, kind, &model) {
        Some(route) => Some(route),
        // A Responses client in front of a chat-only upstream: translated, and said.
        None if kind == ApiKind::Responses => match route_for(&proxy.routes, ApiKind::Chat, &model)
        {
            Some(route) => match crate::translate::chat_request(&request) {
                // The prompt rules read what is sent too (translation joins text parts).
                Ok(chat)
                    if matches!(
                        check::strongest(&check::check_prompt(&proxy.config.rules, &chat)),
                        Some(Action::Block | Action::Kill)
                    ) =>
                {
                    return exchange.refuse(
                        StatusCode::FORBIDDEN,
                        "blocked_by_policy",
                        "the request, as translated for the upstream, was refused by a prompt rule",
                        Value::Null,
                    );
                }
                Ok(chat) => {
                    forwarded_request = chat;
                    exchange.translated = Some(request.clone());
                    exchange.kind = ApiKind::Chat;
                    proxy.recorder.record(
                        "model_translation",
                        json!({"id": id, "from": "responses", "to": "chat_completions", "upstream": route.upstream.name, "request": forwarded_request}),
                    );
                    Some(route)
                }
                Err(why) => {
                    return exchange.refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        &format!(
                            "the upstream for model {model:?} speaks chat completions only, and this request cannot be translated: {why}"
                        ),
                        Value::Null,
                    );
                }
            },
            None => None,
        },
        None => None,
    };
    let Some(route) = route else {
        let why = match kind {
            ApiKind::Responses if proxy.routes.iter().any(|r| r.upstream.api == Api::OpenAi) => {
                format!(
                    "no upstream serves the Responses API or chat completions for model {model:?}"
                )
            }
            _ => format!(
                "no upstream serves the {} API for model {model:?}",
                kind.name()
            ),
        };
        return exchange.refuse(StatusCode::NOT_FOUND, "not_found_error", &why, Value::Null);
    };
    exchange.upstream = Some(route.upstream.name.clone());
    exchange.upstream_url = Some(route.upstream.url.clone());
    exchange.charge(Use {
        requests: 1,
        ..Use::default()
    });
    // What was checked is what goes: the parsed request, written again (a body with a key
    // twice would otherwise be read one way here and another way upstream).
    let forwarded = Bytes::from(forwarded_request.to_string());
    let deadline = proxy.config.limits.max_exchange;
    let work = async {
        let reply = match exchange.send(route, &headers, forwarded, body.len()).await {
            Ok(reply) => reply,
            Err(response) => return response,
        };
        let content_type = reply
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let encoded = reply
            .headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
        if encoded {
            // Compressed bytes cannot be checked (and this client never asked for them).
            return exchange.refuse(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "the upstream's reply is compressed, so it could not be checked",
                Value::Null,
            );
        }
        if reply.status().is_success() && content_type.starts_with("text/event-stream") {
            exchange.stream(reply, body.len()).await
        } else {
            exchange.whole(reply, body.len()).await
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(response) => response,
        Err(_) => error(
            kind,
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            &format!("the exchange passed its limit of {}s", deadline.as_secs()),
        ),
    }
}

/// The state of one exchange, for its records.
struct Exchange {
    proxy: Arc<Proxy>,
    id: u64,
    session: usize,
    kind: ApiKind,
    model: String,
    stream: bool,
    received: Instant,
    upstream: Option<String>,
    upstream_url: Option<String>,
    attempts: u32,
    verdicts: Vec<Verdict>,
    blocked: Vec<(Call, String)>,
    /// When the request came, for its span.
    started: SystemTime,
    /// The request, kept only when spans carry content.
    request: Option<Value>,
    /// The client's Responses API request, when it goes to a chat-completions upstream: the
    /// exchange is checked as chat, and what is released is translated back.
    translated: Option<Value>,
}

impl Exchange {
    fn session_name(&self) -> &str {
        &self.proxy.sessions[self.session].name
    }

    fn trip(&self, rule: &str, why: &str) {
        let session = &self.proxy.sessions[self.session];
        self.proxy.recorder.record(
            "proxy_trip",
            json!({"id": self.id, "session": session.name, "guard": session.guard, "rule": rule, "why": why}),
        );
        self.proxy
            .tripper
            .trip(&session.name, session.guard.as_deref(), why);
    }

    /// A request the proxy answers itself, with an error in the API's format.
    fn refuse(&self, status: StatusCode, code: &str, why: &str, detail: Value) -> Response {
        self.record_response(json!({
            "outcome": "refused",
            "status": status.as_u16(),
            "code": code,
            "why": why,
            "detail": detail,
        }));
        error(self.kind, status, code, why)
    }

    fn record_response(&self, mut body: Value) {
        if let Some(object) = body.as_object_mut() {
            object.insert("id".into(), json!(self.id));
            object.insert("session".into(), json!(self.session_name()));
            object.insert("api".into(), json!(self.kind.name()));
            object.insert("model".into(), json!(self.model));
            object.insert("stream".into(), json!(self.stream));
            if self.translated.is_some() {
                object.insert("translated_from".into(), json!("responses"));
            }
            object.insert("upstream".into(), json!(self.upstream));
            object.insert("attempts".into(), json!(self.attempts));
            object.insert(
                "total_ms".into(),
                json!(self.received.elapsed().as_millis() as u64),
            );
            object.insert(
                "rules".into(),
                Value::Array(
                    self.verdicts
                        .iter()
                        .map(|v| json!({"rule": v.rule, "action": v.action.name(), "detail": v.detail}))
                        .collect(),
                ),
            );
            object.insert(
                "blocked".into(),
                Value::Array(
                    self.blocked
                        .iter()
                        .map(|(call, _)| json!({"tool": call.name, "arguments": call.arguments}))
                        .collect(),
                ),
            );
        }
        if let Some(telemetry) = &self.proxy.telemetry {
            let provider = self
                .proxy
                .routes
                .iter()
                .find(|r| Some(&r.upstream.name) == self.upstream.as_ref())
                .map_or(
                    match self.kind {
                        ApiKind::Messages => "anthropic",
                        _ => "openai",
                    },
                    |r| r.upstream.api.name(),
                );
            telemetry.exchange(&crate::telemetry::ExchangeSpan {
                id: self.id,
                session: self.session_name(),
                kind: self.kind,
                provider,
                request_model: &self.model,
                upstream_url: self.upstream_url.as_deref(),
                started: self.started,
                elapsed: self.received.elapsed(),
                record: &body,
                request: self.request.as_ref(),
            });
        }
        self.proxy.recorder.record("model_response", body);
    }

    /// Send the request, retrying (with bounds) an upstream that failed before answering.
    async fn send(
        &mut self,
        route: &Route,
        headers: &HeaderMap,
        body: Bytes,
        request_bytes: usize,
    ) -> Result<reqwest::Response, Response> {
        let limits = &self.proxy.config.limits;
        let policy = offswitch_model::RetryPolicy {
            max_attempts: limits.max_attempts,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_total_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(30),
        };
        let url = format!("{}{}", route.upstream.url, self.kind.upstream_path());
        let mut waited = Duration::ZERO;
        loop {
            self.attempts += 1;
            let request = authorize(self.proxy.client.post(&url), route, headers)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            // This bounds the wait for the headers only: the body is read with its own idle
            // timeout, and the whole exchange with `max_exchange`.
            let sent = tokio::time::timeout(limits.idle_timeout, request.send()).await;
            let (retryable, retry_after, failure) = match sent {
                Ok(Ok(reply)) => {
                    let status = reply.status().as_u16();
                    if !(status == 429 || status == 529 || (500..600).contains(&status)) {
                        return Ok(reply);
                    }
                    let retry_after = reply
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| offswitch_model::parse_retry_after(v, SystemTime::now()));
                    (true, retry_after, Ok(reply))
                }
                // Only a request that never reached the upstream is sent again: one that timed
                // out may have been run (and billed) already.
                Ok(Err(e)) => (
                    e.is_connect(),
                    None,
                    Err(format!("the upstream {} failed: {e}", route.upstream.name)),
                ),
                Err(_) => (
                    false,
                    None,
                    Err(format!(
                        "the upstream {} sent no response within {}s",
                        route.upstream.name,
                        limits.idle_timeout.as_secs()
                    )),
                ),
            };
            let delay = policy.delay(self.attempts, retry_after);
            if !retryable
                || self.attempts >= policy.max_attempts
                || waited + delay > policy.max_total_delay
            {
                return match failure {
                    // The upstream's own error goes to the client as it sent it.
                    Ok(reply) => Ok(reply),
                    Err(why) => Err({
                        // What it may have cost upstream is counted: the request's size.
                        let _ = self.spend(None, request_bytes, 0);
                        self.refuse(StatusCode::BAD_GATEWAY, "upstream_error", &why, Value::Null)
                    }),
                };
            }
            self.proxy.recorder.record(
                "upstream_retry",
                json!({"id": self.id, "upstream": route.upstream.name, "attempt": self.attempts, "error": match &failure { Ok(reply) => reply.status().as_u16().to_string(), Err(why) => why.clone() }, "wait_ms": delay.as_millis() as u64}),
            );
            waited += delay;
            tokio::time::sleep(delay).await;
        }
    }

    /// A whole reply: read (bounded), checked, rewritten if a call was blocked, recorded.
    async fn whole(mut self, reply: reqwest::Response, request_bytes: usize) -> Response {
        let limits = self.proxy.config.limits.clone();
        let status = reply.status();
        let headers = reply.headers().clone();
        let first_byte = self.received.elapsed();
        let bytes = match read_bounded(reply, limits.max_response_bytes, limits.idle_timeout).await
        {
            Ok(bytes) => bytes,
            Err(why) => {
                return self.refuse(StatusCode::BAD_GATEWAY, "upstream_error", &why, Value::Null);
            }
        };
        if !status.is_success() {
            self.record_response(json!({
                "outcome": "upstream_error",
                "status": status.as_u16(),
                "response": body_for_log(&bytes),
            }));
            return respond(status, &headers, bytes);
        }
        let Ok(mut body) = serde_json::from_slice::<Value>(&bytes) else {
            // Nothing unchecked passes: a reply that cannot be read cannot be checked.
            return self.refuse(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "the upstream's reply is not JSON, so it could not be checked",
                body_for_log(&bytes),
            );
        };
        let calls = match apis::calls(self.kind, &body) {
            Ok(calls) => calls,
            Err(why) => {
                return self.refuse(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    &format!("the upstream's reply could not be checked: {why}"),
                    body,
                );
            }
        };
        let blocked = self.check_calls(&calls);
        let usage = apis::usage(self.kind, &body);
        let spent = self.spend(usage, request_bytes, bytes.len());
        let outcome = if blocked.is_empty() {
            "passed"
        } else {
            apis::block(self.kind, &mut body, &blocked);
            self.blocked = blocked;
            "blocked"
        };
        let translated = self
            .translated
            .as_ref()
            .map(|request| crate::translate::response_from_chat(&body, request));
        self.record_response(json!({
            "outcome": outcome,
            "status": status.as_u16(),
            "first_byte_ms": first_byte.as_millis() as u64,
            "usage": spent,
            "response": body,
            "translated_response": translated,
        }));
        match translated {
            Some(response) => respond(status, &headers, Bytes::from(response.to_string())),
            None if self.blocked.is_empty() => respond(status, &headers, bytes),
            None => respond(status, &headers, Bytes::from(body.to_string())),
        }
    }

    /// The calls to block (and what replaces each), recording every verdict; a `kill` trips.
    fn check_calls(&mut self, calls: &[Call]) -> Vec<(Call, String)> {
        let mut blocked = Vec::new();
        for call in calls {
            let verdicts = check::check_call(&self.proxy.config.rules, call);
            if let Some(action @ (Action::Block | Action::Kill)) = check::strongest(&verdicts) {
                let verdict = verdicts
                    .iter()
                    .find(|v| v.action == action)
                    .expect("the strongest");
                blocked.push((
                    call.clone(),
                    apis::refusal(&call.name, &verdict.rule, &verdict.detail),
                ));
                if action == Action::Kill {
                    self.trip(
                        &verdict.rule,
                        &format!("the policy rule `{}`: {}", verdict.rule, verdict.detail),
                    );
                }
            }
            self.verdicts.extend(verdicts);
        }
        blocked
    }

    /// Count an exchange's tokens against the session's budgets (estimated from its bytes
    /// when the upstream did not say), and act on budgets it spent.
    fn spend(&self, usage: Option<(u64, u64)>, request_bytes: usize, reply_bytes: usize) -> Value {
        let (estimated, (input, output)) = match usage {
            Some(usage) => (false, usage),
            None => (true, (request_bytes as u64 / 4, reply_bytes as u64 / 4)),
        };
        let price = self
            .proxy
            .config
            .prices
            .iter()
            .find(|price| price.model.is_match(&self.model));
        let micro_usd = price.map(|price| price.micro_usd(input, output));
        self.charge(Use {
            requests: 0,
            input_tokens: input,
            output_tokens: output,
            micro_usd: micro_usd.unwrap_or(0),
        });
        json!({"input_tokens": input, "output_tokens": output, "estimated": estimated, "cost_usd": micro_usd.map(|m| m as f64 / 1e6)})
    }

    /// Add to the session's spending, and act on the budgets that spent.
    fn charge(&self, used: Use) {
        let spent = lock(&self.proxy.spending[self.session]).add(used, Instant::now());
        for exhausted in &spent {
            let why = format!(
                "the budget `{}` is spent: {}",
                exhausted.budget, exhausted.detail
            );
            self.proxy.recorder.record(
                "budget_exhausted",
                json!({"id": self.id, "session": self.session_name(), "budget": exhausted.budget, "action": exhausted.action.name(), "detail": exhausted.detail}),
            );
            if exhausted.action == Action::Kill {
                self.trip(&format!("budget {}", exhausted.budget), &why);
            }
        }
    }

    /// A streamed reply: events released as they come until a tool call begins, then held
    /// until the reply is complete and its calls checked.
    /// A streamed reply. Its events are read, checked and released as the client's body asks
    /// for them, inside the client connection's task: no task or channel between the upstream
    /// and the client, which cost every event a second wake-up. The events of one upstream read
    /// go out together, byte for byte as they came.
    async fn stream(self, reply: reqwest::Response, request_bytes: usize) -> Response {
        let status = reply.status();
        let headers = reply.headers().clone();
        let pump = Pump::new(self, reply, request_bytes);
        let body = Body::from_stream(futures::stream::unfold(pump, |mut pump| async move {
            pump.next().await.map(|item| (item, pump))
        }));
        let mut response = Response::new(body);
        *response.status_mut() = status;
        copy_headers(&headers, response.headers_mut());
        response
    }
}

/// One streamed reply on its way from the upstream to the client. It is recorded once: when
/// the client's body ends, or, if the client goes first (the body is dropped), as
/// `client_disconnected`.
struct Pump {
    exchange: Exchange,
    reply: reqwest::Response,
    request_bytes: usize,
    limits: crate::config::Limits,
    parser: SseParser,
    state: StreamState,
    /// A Responses API client's stream is translated from chat-completions events.
    translator: Option<crate::translate::StreamTranslator>,
    /// Events held until the reply's tool calls are complete and checked.
    held: Vec<SseEvent>,
    /// The held events were checked and released (or replaced).
    decided: bool,
    /// Bytes read from the upstream.
    total: u64,
    first_byte: Option<Duration>,
    /// Why the stream ended before its end, if it did.
    ending: Option<String>,
    deadline: Instant,
    /// What the client gets next: released bytes, then, for a stream that failed, an error
    /// (so that the client sees the stream fail, not end).
    out: std::collections::VecDeque<Result<Bytes, std::io::Error>>,
    /// The upstream's stream is over and its end was handled.
    over: bool,
    recorded: bool,
}

impl Pump {
    fn new(exchange: Exchange, reply: reqwest::Response, request_bytes: usize) -> Pump {
        let limits = exchange.proxy.config.limits.clone();
        Pump {
            translator: exchange
                .translated
                .as_ref()
                .map(crate::translate::StreamTranslator::new),
            parser: SseParser::new(
                usize::try_from(limits.max_response_bytes.min(16 << 20)).unwrap_or(16 << 20),
            ),
            state: StreamState::new(exchange.kind),
            deadline: exchange.received + limits.max_exchange,
            exchange,
            reply,
            request_bytes,
            limits,
            held: Vec::new(),
            decided: false,
            total: 0,
            first_byte: None,
            ending: None,
            out: std::collections::VecDeque::new(),
            over: false,
            recorded: false,
        }
    }

    /// The next bytes for the client; `None` once the stream is over (and recorded).
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(item) = self.out.pop_front() {
                if item.is_err() {
                    // The body ends with this error and is dropped at once: record it first.
                    self.record(false);
                }
                return Some(item);
            }
            if self.over {
                self.record(false);
                return None;
            }
            self.step().await;
        }
    }

    /// Read once from the upstream; check the events that completed and queue what may go.
    async fn step(&mut self) {
        // The idle timeout between reads, and the whole exchange's limit.
        let wait = self
            .limits
            .idle_timeout
            .min(self.deadline.saturating_duration_since(Instant::now()));
        let mut upstream_ended = false;
        let events = match tokio::time::timeout(wait, self.reply.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                self.first_byte
                    .get_or_insert_with(|| self.exchange.received.elapsed());
                self.total += chunk.len() as u64;
                if self.total > self.limits.max_response_bytes {
                    return self.end(format!(
                        "the reply passed {} bytes",
                        self.limits.max_response_bytes
                    ));
                }
                match self.parser.push(&chunk) {
                    Ok(events) => events,
                    Err(too_large) => {
                        return self.end(format!("an event passed {} bytes", too_large.0));
                    }
                }
            }
            // The end: an event left without its blank line is still read (and checked) as
            // one; nothing goes out that was not.
            Ok(Ok(None)) => {
                upstream_ended = true;
                self.parser.finish().into_iter().collect()
            }
            Ok(Err(e)) => return self.end(format!("the upstream's stream failed: {e}")),
            Err(_) if Instant::now() >= self.deadline => {
                return self.end(format!(
                    "the exchange passed its limit of {}s",
                    self.limits.max_exchange.as_secs()
                ));
            }
            Err(_) => {
                return self.end(format!(
                    "the upstream sent nothing for {}s",
                    self.limits.idle_timeout.as_secs()
                ));
            }
        };
        let mut released = Vec::new();
        for event in events {
            match self.state.on_event(&event) {
                Flow::Drop => continue,
                Flow::Release if !self.decided => self.release(event, &mut released),
                _ if self.decided => {}
                _ => self.held.push(event),
            }
            if self.state.done() && !self.decided && self.state.holding() {
                self.decided = true;
                self.release_checked(&mut released);
            }
        }
        if upstream_ended {
            if !self.decided && self.state.holding() && self.state.complete_at_end() {
                self.release_checked(&mut released);
            }
            self.finish(&mut released);
        }
        self.queue(released);
        if upstream_ended {
            self.close();
        }
    }

    /// The stream ended early (`why`): nothing held goes out, and the client sees it fail.
    fn end(&mut self, why: String) {
        self.ending = Some(why);
        self.close();
    }

    /// The reply is complete: its end was seen, or its API needs none.
    fn complete(&self) -> bool {
        self.state.done() || self.state.complete_at_end()
    }

    /// The upstream's stream is over. A reply that ended before it was complete, or that
    /// could not be checked, never releases what it held: the client's stream fails.
    fn close(&mut self) {
        self.over = true;
        let complete = self.complete();
        let unchecked = self.state.uncheckable();
        if self.ending.is_some() || !complete || unchecked.is_some() {
            let why = unchecked
                .map(|why| format!("the reply could not be checked: {why}"))
                .or_else(|| self.ending.clone())
                .unwrap_or_else(|| "the upstream's stream ended early".into());
            self.out.push_back(Err(std::io::Error::other(why)));
        }
    }

    /// A complete, checked reply whose held events are all out: a translated stream ends with
    /// the Responses API's own closing events.
    fn finish(&mut self, released: &mut Vec<SseEvent>) {
        let complete = self.complete();
        if complete
            && self.ending.is_none()
            && self.state.uncheckable().is_none()
            && self.held.is_empty()
            && let Some(translator) = &mut self.translator
        {
            released.extend(translator.finish());
        }
    }

    /// An event that may go, translated first if the client speaks another API.
    fn release(&mut self, event: SseEvent, released: &mut Vec<SseEvent>) {
        match &mut self.translator {
            Some(translator) => released.extend(translator.translate(&event)),
            None => released.push(event),
        }
    }

    /// The reply is complete: check its calls and release what was held, as it came or with
    /// the blocked calls replaced. Nothing is released from a reply that could not be checked.
    fn release_checked(&mut self, released: &mut Vec<SseEvent>) {
        if self.state.uncheckable().is_some() {
            return;
        }
        let blocked = self.exchange.check_calls(&self.state.calls());
        let out = self.state.rewrite(std::mem::take(&mut self.held), &blocked);
        self.exchange.blocked = blocked;
        for event in out {
            self.release(event, released);
        }
    }

    /// Released events as one piece of the client's body, byte for byte.
    fn queue(&mut self, released: Vec<SseEvent>) {
        match released.len() {
            0 => {}
            1 => {
                let event = released.into_iter().next().expect("one event");
                self.out.push_back(Ok(event.raw));
            }
            _ => {
                let mut bytes = Vec::with_capacity(released.iter().map(|e| e.raw.len()).sum());
                for event in &released {
                    bytes.extend_from_slice(&event.raw);
                }
                self.out.push_back(Ok(Bytes::from(bytes)));
            }
        }
    }

    fn record(&mut self, client_gone: bool) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let complete = self.complete();
        let unchecked = self.state.uncheckable().map(str::to_owned);
        let spent =
            self.exchange
                .spend(self.state.usage(), self.request_bytes, self.total as usize);
        let outcome = if client_gone {
            "client_disconnected"
        } else if unchecked.is_some() {
            "unchecked"
        } else if !complete {
            "truncated"
        } else if self.exchange.blocked.is_empty() {
            "passed"
        } else {
            "blocked"
        };
        self.exchange.record_response(json!({
            "outcome": outcome,
            "status": 200,
            "first_byte_ms": self.first_byte.map(|d| d.as_millis() as u64),
            "usage": spent,
            "withheld_events": self.held.len(),
            "dropped_after_end": self.state.dropped_after_end,
            "uncheckable": unchecked,
            "ending": self.ending,
            "response": self.state.reassembled(),
        }));
    }
}

/// A client that went away before its stream's end drops the body: the exchange is recorded
/// as it stood.
impl Drop for Pump {
    fn drop(&mut self) {
        self.record(true);
    }
}

/// Which session a request's token belongs to.
/// The session whose token a request carries (`Authorization: Bearer` or `x-api-key`), and
/// whether it carried one at all.
pub(crate) fn session_of(proxy: &Proxy, headers: &HeaderMap) -> (Option<usize>, bool) {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    (
        token.and_then(|token| proxy.tokens.get(&digest(token.trim())).copied()),
        token.is_some(),
    )
}

fn authenticate(proxy: &Proxy, kind: ApiKind, headers: &HeaderMap) -> Result<usize, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match token.and_then(|token| proxy.tokens.get(&digest(token.trim()))) {
        Some(&session) => Ok(session),
        None => {
            proxy.recorder.record(
                "auth_refused",
                json!({"api": kind.name(), "token_given": token.is_some(), "at_ms": proxy.started.elapsed().as_millis() as u64}),
            );
            Err(error(
                kind,
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "unknown session token: use the token this proxy gave your session",
            ))
        }
    }
}

/// The upstream for an API and a model: the first whose API serves it and whose model globs
/// (if any) match.
fn route_for<'a>(routes: &'a [Route], kind: ApiKind, model: &str) -> Option<&'a Route> {
    routes.iter().find(|route| {
        let speaks = match kind {
            ApiKind::Chat => route.upstream.api == Api::OpenAi,
            ApiKind::Responses => route.upstream.api == Api::OpenAi && route.upstream.responses,
            ApiKind::Messages => route.upstream.api == Api::Anthropic,
        };
        speaks
            && (route.upstream.models.is_empty()
                || route
                    .upstream
                    .models
                    .iter()
                    .any(|glob| glob.is_match(model)))
    })
}

/// The upstream's key on a request, and the client's API-version headers (never its key).
fn authorize(
    request: reqwest::RequestBuilder,
    route: &Route,
    headers: &HeaderMap,
) -> reqwest::RequestBuilder {
    let mut request = request;
    for name in ["anthropic-version", "anthropic-beta", "openai-beta"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.as_bytes());
        }
    }
    match (&route.key, route.upstream.api) {
        (Some(key), Api::OpenAi) => request.bearer_auth(key),
        (Some(key), Api::Anthropic) => request.header("x-api-key", key),
        (None, _) => request,
    }
}

/// A body read to its end, at most `max` bytes, with an idle timeout between reads.
pub(crate) async fn read_bounded(
    mut reply: reqwest::Response,
    max: u64,
    idle: Duration,
) -> Result<Bytes, String> {
    let mut bytes = Vec::new();
    loop {
        match tokio::time::timeout(idle, reply.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                if bytes.len() as u64 + chunk.len() as u64 > max {
                    return Err(format!("the upstream's reply passed {max} bytes"));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(Ok(None)) => return Ok(Bytes::from(bytes)),
            Ok(Err(e)) => return Err(format!("reading the upstream's reply: {e}")),
            Err(_) => return Err(format!("the upstream sent nothing for {}s", idle.as_secs())),
        }
    }
}

fn respond(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: Bytes,
) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    copy_headers(headers, response.headers_mut());
    response
}

/// The upstream's headers, but those of the connection (hop by hop) and the body's length
/// (the body may have been rewritten).
pub(crate) fn copy_headers(from: &reqwest::header::HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let skip = matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "content-length"
                | "te"
                | "trailer"
                | "upgrade"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "set-cookie"
        );
        if !skip && let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            to.append(name.clone(), value);
        }
    }
}

/// An error in the API's own format.
fn error(kind: ApiKind, status: StatusCode, code: &str, message: &str) -> Response {
    let mut response = (status, axum::Json(kind.error_body(code, message))).into_response();
    response
        .headers_mut()
        .insert("x-offswitch-proxy", HeaderValue::from_static("refused"));
    response
}

/// A reply body for the log: JSON when it is, else its text (bounded).
pub(crate) fn body_for_log(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]);
        Value::String(text.into_owned())
    })
}

pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
