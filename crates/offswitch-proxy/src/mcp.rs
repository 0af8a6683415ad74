//! The agent-to-agent checkpoint: MCP servers (the Streamable HTTP transport) behind the proxy
//! at `/mcp/<name>`. Agents reach tools and other agents through it with their session token;
//! the server's own key stays here. Every JSON-RPC message is recorded; a `tools/call` request
//! is checked against the `mcp_call` rules before it is sent (a blocked one gets a tool result
//! marked as an error that says why, from the proxy), and every tool result coming back is
//! checked against the `mcp_result` rules before the agent gets it (replaced the same way).
//! Results come as a JSON body or as server-sent events; each event is one message, checked on
//! its own. A message that cannot be read is not released.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::apis::{Call, refusal};
use crate::check::{self, Verdict};
use crate::config::{Action, McpServer};
use crate::server::{Proxy, copy_headers, read_bounded, session_of};
use crate::sse::SseParser;

/// Messages in one JSON-RPC batch, at most.
const MAX_BATCH: usize = 100;

/// The client's headers the server needs (never its credentials).
const PASSED_HEADERS: &[&str] = &[
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// `POST /mcp/<name>`: one JSON-RPC message or a batch.
pub(crate) async fn post(
    State(proxy): State<Arc<Proxy>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, server) = match admit(&proxy, &name, &headers) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32700,
                &format!("the body is not valid JSON: {e}"),
            );
        }
    };
    let (messages, batch) = match parsed {
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_BATCH => (items, true),
        Value::Object(_) => (vec![parsed], false),
        _ => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32600,
                &format!("a JSON-RPC message is an object, or a batch of 1 to {MAX_BATCH}"),
            );
        }
    };
    let mut exchange = match McpExchange::new(&proxy, session, &server) {
        Ok(exchange) => exchange,
        Err(response) => return response,
    };
    // Every call checked before anything is sent.
    let mut refusals = Vec::new();
    for message in &messages {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut record = json!({
            "session": exchange.session_name(),
            "server": server.name,
            "id": id,
            "method": method,
        });
        if method == "tools/call" {
            let params = message.get("params").unwrap_or(&Value::Null);
            let (call, malformed) = match params.get("name") {
                Some(Value::String(tool)) => (
                    Call {
                        slot: (0, 0),
                        name: tool.clone(),
                        arguments: params
                            .get("arguments")
                            .map_or_else(|| "{}".to_owned(), Value::to_string),
                    },
                    false,
                ),
                _ => (
                    Call {
                        slot: (0, 0),
                        name: String::new(),
                        arguments: params.to_string(),
                    },
                    true,
                ),
            };
            let mut verdicts = check::check_mcp_call(&proxy.config.rules, &call);
            if malformed {
                verdicts.push(Verdict {
                    rule: "malformed".into(),
                    action: Action::Block,
                    detail: "a tools/call without a tool name could not be checked".into(),
                });
            }
            record["tool"] = json!(call.name);
            exchange.calls.insert(
                id.to_string(),
                (call.name.clone(), Instant::now(), SystemTime::now()),
            );
            record["arguments"] = params.get("arguments").cloned().unwrap_or(Value::Null);
            record["rules"] = verdicts_json(&verdicts);
            if let Some(action @ (Action::Block | Action::Kill)) = check::strongest(&verdicts) {
                let verdict = verdicts
                    .iter()
                    .find(|v| v.action == action)
                    .expect("the strongest");
                let text = refusal(&call.name, &verdict.rule, &verdict.detail);
                if action == Action::Kill {
                    exchange.trip(&verdict.rule, &text);
                }
                record["outcome"] = json!("blocked");
                refusals.push((id.clone(), text));
            }
        }
        proxy.recorder.record("mcp_request", record);
    }
    if !refusals.is_empty() {
        // Nothing of a batch holding a blocked call is sent: the rest are answered as not sent.
        let replies: Vec<Value> = messages
            .iter()
            .filter_map(|message| {
                let id = message.get("id").cloned()?;
                Some(match refusals.iter().find(|(r, _)| *r == id) {
                    Some((_, text)) => tool_error(id, text),
                    None => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": "not sent: a call in the same batch was blocked by the proxy's policy"}}),
                })
            })
            .collect();
        for (id, _) in &refusals {
            exchange.record_result(id, "blocked", None, &[]);
        }
        let body = if batch {
            Value::Array(replies)
        } else {
            replies.into_iter().next().unwrap_or(Value::Null)
        };
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    let forwarded = if batch {
        Value::Array(messages)
    } else {
        messages.into_iter().next().unwrap_or(Value::Null)
    };
    let request = proxy
        .client
        .post(&server.url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(forwarded.to_string());
    exchange.forward_within(request, &server, &headers).await
}

/// `GET /mcp/<name>`: the server's stream of messages to the client.
pub(crate) async fn get(
    State(proxy): State<Arc<Proxy>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (session, server) = match admit(&proxy, &name, &headers) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let exchange = match McpExchange::new(&proxy, session, &server) {
        Ok(exchange) => exchange,
        Err(response) => return response,
    };
    let request = proxy.client.get(&server.url);
    exchange.forward_within(request, &server, &headers).await
}

/// `DELETE /mcp/<name>`: the client ends its MCP session.
pub(crate) async fn delete(
    State(proxy): State<Arc<Proxy>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (session, server) = match admit(&proxy, &name, &headers) {
        Ok(found) => found,
        Err(response) => return response,
    };
    if someone_elses(&proxy, &server, &headers, session) {
        return rpc_error(
            StatusCode::FORBIDDEN,
            Value::Null,
            -32000,
            "this MCP session belongs to another session of the proxy",
        );
    }
    proxy.recorder.record(
        "mcp_request",
        json!({"session": proxy.sessions[session].name, "server": server.name, "method": "(end of session)"}),
    );
    let request = proxy.client.delete(&server.url);
    let request = pass_headers(request, &server, &headers);
    match tokio::time::timeout(proxy.config.limits.idle_timeout, request.send()).await {
        Ok(Ok(reply)) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() =
                StatusCode::from_u16(reply.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            copy_headers(reply.headers(), response.headers_mut());
            response
        }
        _ => rpc_error(
            StatusCode::BAD_GATEWAY,
            Value::Null,
            -32000,
            "the MCP server did not answer",
        ),
    }
}

/// The session and the MCP server of a request, or the error to answer with.
#[allow(clippy::result_large_err)]
fn admit(proxy: &Proxy, name: &str, headers: &HeaderMap) -> Result<(usize, McpServer), Response> {
    let (session, token_given) = session_of(proxy, headers);
    let Some(session) = session else {
        proxy.recorder.record(
            "auth_refused",
            json!({"api": "mcp", "token_given": token_given, "at_ms": proxy.started.elapsed().as_millis() as u64}),
        );
        return Err(rpc_error(
            StatusCode::UNAUTHORIZED,
            Value::Null,
            -32001,
            "unknown session token: use the token this proxy gave your session",
        ));
    };
    let Some(server) = proxy.config.mcp.iter().find(|s| s.name == name) else {
        return Err(rpc_error(
            StatusCode::NOT_FOUND,
            Value::Null,
            -32601,
            &format!("no MCP server named {name:?} behind this proxy"),
        ));
    };
    Ok((session, server.clone()))
}

fn pass_headers(
    mut request: reqwest::RequestBuilder,
    server: &McpServer,
    headers: &HeaderMap,
) -> reqwest::RequestBuilder {
    for name in PASSED_HEADERS {
        if let Some(value) = headers.get(*name) {
            request = request.header(*name, value.as_bytes());
        }
    }
    if let Ok(Some(key)) = crate::config::read_secret(&server.key) {
        request = request.bearer_auth(key);
    }
    request
}

/// One request of an agent to an MCP server, and the calls it made.
struct McpExchange {
    proxy: Arc<Proxy>,
    session: usize,
    server: String,
    /// The calls sent, by JSON-RPC id (as JSON text): the tool, and when.
    calls: HashMap<String, (String, Instant, SystemTime)>,
    /// Its share of the proxy's exchanges at once, held until its reply is done.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl McpExchange {
    #[allow(clippy::result_large_err)]
    fn new(
        proxy: &Arc<Proxy>,
        session: usize,
        server: &McpServer,
    ) -> Result<McpExchange, Response> {
        let Ok(permit) = proxy.in_flight.clone().try_acquire_owned() else {
            return Err(rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Value::Null,
                -32000,
                &format!(
                    "the proxy is at its limit of {} exchanges at once",
                    proxy.config.limits.max_concurrent
                ),
            ));
        };
        Ok(McpExchange {
            proxy: Arc::clone(proxy),
            session,
            server: server.name.clone(),
            calls: HashMap::new(),
            _permit: permit,
        })
    }

    /// `forward`, within the exchange's time limit, and only in an MCP session this agent's.
    async fn forward_within(
        self,
        request: reqwest::RequestBuilder,
        server: &McpServer,
        headers: &HeaderMap,
    ) -> Response {
        if someone_elses(&self.proxy, server, headers, self.session) {
            self.proxy.recorder.record(
                "mcp_request",
                json!({"session": self.session_name(), "server": server.name, "method": "(refused: another session's MCP session)"}),
            );
            return rpc_error(
                StatusCode::FORBIDDEN,
                Value::Null,
                -32000,
                "this MCP session belongs to another session of the proxy",
            );
        }
        let limit = self.proxy.config.limits.max_exchange;
        match tokio::time::timeout(limit, self.forward(request, server, headers)).await {
            Ok(response) => response,
            Err(_) => rpc_error(
                StatusCode::GATEWAY_TIMEOUT,
                Value::Null,
                -32000,
                &format!("the exchange passed its limit of {}s", limit.as_secs()),
            ),
        }
    }
    fn session_name(&self) -> &str {
        &self.proxy.sessions[self.session].name
    }

    fn trip(&self, rule: &str, why: &str) {
        let session = &self.proxy.sessions[self.session];
        self.proxy.recorder.record(
            "proxy_trip",
            json!({"session": session.name, "guard": session.guard, "rule": rule, "why": why, "server": self.server}),
        );
        self.proxy
            .tripper
            .trip(&session.name, session.guard.as_deref(), why);
    }

    /// Send the request on, and check what comes back.
    async fn forward(
        self,
        request: reqwest::RequestBuilder,
        server: &McpServer,
        headers: &HeaderMap,
    ) -> Response {
        let limits = self.proxy.config.limits.clone();
        let request = pass_headers(request, server, headers);
        let reply = match tokio::time::timeout(limits.idle_timeout, request.send()).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                return rpc_error(
                    StatusCode::BAD_GATEWAY,
                    Value::Null,
                    -32000,
                    &format!("the MCP server {} failed: {e}", server.name),
                );
            }
            Err(_) => {
                return rpc_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    Value::Null,
                    -32000,
                    &format!("the MCP server {} did not answer", server.name),
                );
            }
        };
        let status = reply.status();
        let reply_headers = reply.headers().clone();
        if let Some(id) = reply_headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            let mut sessions = crate::server::lock(&self.proxy.mcp_sessions);
            if sessions.len() < 100_000 {
                sessions
                    .entry(format!("{}\n{id}", server.name))
                    .or_insert(self.session);
            }
        }
        let content_type = reply_headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let encoded = reply_headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
        if encoded {
            return rpc_error(
                StatusCode::BAD_GATEWAY,
                Value::Null,
                -32000,
                "the MCP server's reply is compressed, so it could not be checked",
            );
        }
        if content_type.starts_with("text/event-stream") {
            let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
            tokio::spawn(self.pump(reply, sender));
            let body = Body::from_stream(futures::stream::unfold(
                receiver,
                |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
            ));
            let mut response = Response::new(body);
            *response.status_mut() =
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            copy_headers(&reply_headers, response.headers_mut());
            return response;
        }
        let bytes = match read_bounded(reply, limits.max_response_bytes, limits.idle_timeout).await
        {
            Ok(bytes) => bytes,
            Err(why) => return rpc_error(StatusCode::BAD_GATEWAY, Value::Null, -32000, &why),
        };
        let body = if bytes.is_empty() {
            bytes
        } else {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(mut value) => match self.check_body(&mut value) {
                    Checked::Same => bytes,
                    Checked::Changed => Bytes::from(value.to_string()),
                    Checked::Drop => {
                        return rpc_error(
                            StatusCode::BAD_GATEWAY,
                            Value::Null,
                            -32000,
                            "the MCP server's reply held what this proxy does not release",
                        );
                    }
                },
                // An error body that is not JSON is not passed on either: its text would reach
                // the agent unchecked.
                Err(_) if !status.is_success() => {
                    return rpc_error(
                        StatusCode::BAD_GATEWAY,
                        Value::Null,
                        -32000,
                        &format!("the MCP server answered {status} with a body that is not JSON"),
                    );
                }
                Err(_) => {
                    // Nothing unchecked passes: a reply that cannot be read is not released.
                    for id in self.calls.keys() {
                        self.record_result_key(id, "unchecked", None, &[]);
                    }
                    return rpc_error(
                        StatusCode::BAD_GATEWAY,
                        Value::Null,
                        -32000,
                        "the MCP server's reply is not JSON, so it could not be checked",
                    );
                }
            }
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() =
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        copy_headers(&reply_headers, response.headers_mut());
        response
    }

    /// Each event is one message, checked and released on its own; one that cannot be read is
    /// dropped (and recorded).
    async fn pump(
        self,
        mut reply: reqwest::Response,
        sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) {
        let limits = self.proxy.config.limits.clone();
        let mut parser = SseParser::new(
            usize::try_from(limits.max_response_bytes.min(16 << 20)).unwrap_or(16 << 20),
        );
        let mut total = 0u64;
        let deadline = Instant::now() + limits.max_exchange;
        loop {
            let wait = limits
                .idle_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let (events, end) = match tokio::time::timeout(wait, reply.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    total += chunk.len() as u64;
                    if total > limits.max_response_bytes {
                        break;
                    }
                    match parser.push(&chunk) {
                        Ok(events) => (events, false),
                        Err(_) => break,
                    }
                }
                Ok(Ok(None)) => (parser.finish().into_iter().collect(), true),
                _ => break,
            };
            for event in events {
                let data = event.data.trim();
                let raw = if event.odd {
                    self.dropped("an event with a field the standard does not name, or not UTF-8");
                    continue;
                } else if data.is_empty() {
                    event.raw
                } else {
                    match serde_json::from_str::<Value>(data) {
                        Ok(mut message) => match self.check_body(&mut message) {
                            Checked::Same => event.raw,
                            Checked::Changed => {
                                crate::sse::SseEvent::new(
                                    event.event.as_deref(),
                                    &message.to_string(),
                                )
                                .raw
                            }
                            Checked::Drop => continue,
                        },
                        Err(_) => {
                            self.dropped("an event whose data is not JSON");
                            continue;
                        }
                    }
                };
                // A client that stops reading does not hold the exchange forever.
                match tokio::time::timeout(limits.idle_timeout, sender.send(Ok(raw))).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
            if end {
                return;
            }
        }
        let _ = sender
            .send(Err(std::io::Error::other(
                "the MCP server's stream failed or passed its bounds",
            )))
            .await;
    }

    fn dropped(&self, why: &str) {
        self.proxy.recorder.record(
            "mcp_event_dropped",
            json!({"session": self.session_name(), "server": self.server, "why": why}),
        );
    }

    /// A body or event from the server: one message, or a batch of them. Anything but
    /// JSON-RPC objects is not released.
    fn check_body(&self, value: &mut Value) -> Checked {
        match value {
            Value::Array(messages) if messages.iter().all(Value::is_object) => {
                let mut changed = false;
                let mut kept = Vec::new();
                for mut message in std::mem::take(messages) {
                    match self.check_message(&mut message) {
                        Checked::Same => kept.push(message),
                        Checked::Changed => {
                            changed = true;
                            kept.push(message);
                        }
                        Checked::Drop => changed = true,
                    }
                }
                *messages = kept;
                if messages.is_empty() {
                    Checked::Drop
                } else if changed {
                    Checked::Changed
                } else {
                    Checked::Same
                }
            }
            Value::Object(_) => self.check_message(value),
            _ => {
                self.dropped("a message that is not a JSON-RPC object");
                Checked::Drop
            }
        }
    }

    /// Check one message from the server against the `mcp_result` rules, whatever it is: a
    /// tool result, any other result, an error (its message included), a request of the
    /// server's (sampling, elicitation) or a notification. A blocked response becomes an error
    /// result saying why; a blocked request or notification is not passed on.
    fn check_message(&self, message: &mut Value) -> Checked {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let is_response = message.get("result").is_some() || message.get("error").is_some();
        let verdicts = check::check_mcp_result(&self.proxy.config.rules, message);
        let blocked = match check::strongest(&verdicts) {
            Some(action @ (Action::Block | Action::Kill)) => {
                let verdict = verdicts
                    .iter()
                    .find(|v| v.action == action)
                    .expect("the strongest");
                Some((action, verdict.clone()))
            }
            _ => None,
        };
        if !is_response {
            // A request or notification of the server's (progress, sampling, elicitation).
            self.proxy.recorder.record(
                "mcp_message",
                json!({"session": self.session_name(), "server": self.server, "message": if blocked.is_some() { json!("(withheld)") } else { message.clone() }, "rules": verdicts_json(&verdicts), "outcome": if blocked.is_some() { "blocked" } else { "passed" }}),
            );
            if let Some((action, verdict)) = blocked {
                if action == Action::Kill {
                    self.trip(&verdict.rule, &verdict.detail);
                }
                return Checked::Drop;
            }
            return Checked::Same;
        }
        let known = self.calls.contains_key(&id.to_string());
        let tool_result = known
            || message
                .get("result")
                .and_then(|r| r.get("content"))
                .is_some_and(Value::is_array);
        let result = message.get("result").or(message.get("error")).cloned();
        match blocked {
            Some((action, verdict)) => {
                let tool = self
                    .calls
                    .get(&id.to_string())
                    .map_or_else(|| "(unknown)".to_owned(), |c| c.0.clone());
                let text = format!(
                    "[offswitch] The reply of the MCP server ({tool}) was withheld by the policy rule `{}`: {}",
                    verdict.rule, verdict.detail
                );
                if action == Action::Kill {
                    self.trip(&verdict.rule, &text);
                }
                self.record_result(&id, "blocked", None, &verdicts);
                *message = if tool_result {
                    tool_error(id, &text)
                } else {
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": text}})
                };
                Checked::Changed
            }
            None => {
                let outcome = if message.get("error").is_some() {
                    "error"
                } else {
                    "passed"
                };
                self.record_result(&id, outcome, result, &verdicts);
                Checked::Same
            }
        }
    }

    fn record_result(
        &self,
        id: &Value,
        outcome: &str,
        result: Option<Value>,
        verdicts: &[Verdict],
    ) {
        self.record_result_key(&id.to_string(), outcome, result, verdicts);
    }

    fn record_result_key(
        &self,
        key: &str,
        outcome: &str,
        result: Option<Value>,
        verdicts: &[Verdict],
    ) {
        let (tool, elapsed, started) = match self.calls.get(key) {
            Some((tool, at, started)) => (tool.clone(), at.elapsed(), *started),
            None => (String::new(), Duration::ZERO, SystemTime::now()),
        };
        let id: Value = serde_json::from_str(key).unwrap_or(Value::Null);
        self.proxy.recorder.record(
            "mcp_response",
            json!({
                "session": self.session_name(),
                "server": self.server,
                "id": id,
                "tool": tool,
                "outcome": outcome,
                "rules": verdicts_json(verdicts),
                "result": result,
                "total_ms": elapsed.as_millis() as u64,
            }),
        );
        if let Some(telemetry) = &self.proxy.telemetry {
            telemetry.tool_call(&crate::telemetry::ToolSpan {
                tool: &tool,
                call_id: &id.to_string(),
                server: &self.server,
                session: self.session_name(),
                outcome,
                started,
                elapsed,
            });
        }
    }
}

/// Whether the request names an MCP session that another proxy session's request opened.
fn someone_elses(proxy: &Proxy, server: &McpServer, headers: &HeaderMap, session: usize) -> bool {
    let Some(id) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    crate::server::lock(&proxy.mcp_sessions)
        .get(&format!("{}\n{id}", server.name))
        .is_some_and(|owner| *owner != session)
}

/// What checking a message from the server decided.
enum Checked {
    Same,
    Changed,
    Drop,
}

/// A tool result that says the call failed, with why: what an MCP client shows its model.
fn tool_error(id: Value, text: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {"content": [{"type": "text", "text": text}], "isError": true},
    })
}

fn verdicts_json(verdicts: &[Verdict]) -> Value {
    Value::Array(
        verdicts
            .iter()
            .map(|v| json!({"rule": v.rule, "action": v.action.name(), "detail": v.detail}))
            .collect(),
    )
}

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    let mut response = (
        status,
        axum::Json(
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
        ),
    )
        .into_response();
    response
        .headers_mut()
        .insert("x-offswitch-proxy", HeaderValue::from_static("refused"));
    response
}
