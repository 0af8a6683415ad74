//! OpenTelemetry traces of the proxy's exchanges, exported over OTLP/HTTP (protobuf) with the
//! `opentelemetry` crates: one span per exchange, following the GenAI semantic conventions at
//! the version in `SEMCONV_VERSION` (the conventions are still marked in development, so the
//! attribute names are pinned to that version and documented in `docs/proxy.md`).

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span, SpanKind, Status, Tracer, TracerProvider as _};
use opentelemetry::{KeyValue, Value as OtelValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;

use crate::apis::ApiKind;

/// The OpenTelemetry semantic conventions the spans follow.
pub const SEMCONV_VERSION: &str = "1.37.0";

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP endpoint's base URL (`http://127.0.0.1:4318`); spans go to `/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
    /// Put the messages in and out on the spans (`gen_ai.input.messages`,
    /// `gen_ai.output.messages`). Off by default: they may hold what must not leave.
    pub capture_content: bool,
}

/// A running exporter.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    capture_content: bool,
}

/// One exchange, as a span sees it.
pub struct ExchangeSpan<'a> {
    pub id: u64,
    pub session: &'a str,
    pub kind: ApiKind,
    /// `openai` or `anthropic`.
    pub provider: &'a str,
    pub request_model: &'a str,
    /// The upstream's base URL, for `server.address` and `server.port`.
    pub upstream_url: Option<&'a str>,
    pub started: SystemTime,
    pub elapsed: Duration,
    /// The `model_response` record's body: outcome, status, usage, response, blocked calls.
    pub record: &'a Value,
    /// The request, for content capture.
    pub request: Option<&'a Value>,
}

/// One MCP tool call, as its span sees it.
pub struct ToolSpan<'a> {
    pub tool: &'a str,
    /// The JSON-RPC id, as JSON text.
    pub call_id: &'a str,
    pub server: &'a str,
    pub session: &'a str,
    /// `passed`, `blocked`, `error`, `unchecked`.
    pub outcome: &'a str,
    pub started: SystemTime,
    pub elapsed: Duration,
}

impl Telemetry {
    /// Start exporting; spans are batched on a thread of the SDK's and sent as they fill.
    pub fn start(config: &TelemetryConfig) -> Result<Telemetry, String> {
        let endpoint = format!("{}/v1/traces", config.endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(10))
            .with_headers(Default::default())
            .build()
            .map_err(|e| format!("the OTLP exporter: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(
            opentelemetry::InstrumentationScope::builder("offswitch-proxy")
                .with_version(env!("CARGO_PKG_VERSION"))
                .with_schema_url(format!(
                    "https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
                ))
                .build(),
        );
        Ok(Telemetry {
            provider,
            tracer,
            capture_content: config.capture_content,
        })
    }

    /// The span of one finished exchange.
    pub fn exchange(&self, exchange: &ExchangeSpan<'_>) {
        let record = exchange.record;
        let response = &record["response"];
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.provider.name", exchange.provider.to_owned()),
            KeyValue::new("gen_ai.request.model", exchange.request_model.to_owned()),
            KeyValue::new("offswitch.exchange.id", exchange.id as i64),
            KeyValue::new("offswitch.session", exchange.session.to_owned()),
            KeyValue::new("offswitch.api", exchange.kind.name()),
            KeyValue::new(
                "offswitch.outcome",
                record["outcome"].as_str().unwrap_or_default().to_owned(),
            ),
        ];
        if let Some(model) = response.get("model").and_then(Value::as_str) {
            attributes.push(KeyValue::new("gen_ai.response.model", model.to_owned()));
        }
        if let Some(id) = response.get("id").and_then(Value::as_str) {
            attributes.push(KeyValue::new("gen_ai.response.id", id.to_owned()));
        }
        let reasons = finish_reasons(exchange.kind, response);
        if !reasons.is_empty() {
            attributes.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                OtelValue::Array(
                    reasons
                        .into_iter()
                        .map(opentelemetry::StringValue::from)
                        .collect::<Vec<_>>()
                        .into(),
                ),
            ));
        }
        for (key, field) in [
            ("gen_ai.usage.input_tokens", "input_tokens"),
            ("gen_ai.usage.output_tokens", "output_tokens"),
        ] {
            if let Some(tokens) = record["usage"][field].as_u64() {
                attributes.push(KeyValue::new(key, tokens as i64));
            }
        }
        if let Some(url) = exchange
            .upstream_url
            .and_then(|u| reqwest::Url::parse(u).ok())
        {
            if let Some(host) = url.host_str() {
                attributes.push(KeyValue::new("server.address", host.to_owned()));
            }
            if let Some(port) = url.port_or_known_default() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        let blocked: Vec<opentelemetry::StringValue> = record["blocked"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["tool"].as_str())
            .map(|tool| opentelemetry::StringValue::from(tool.to_owned()))
            .collect();
        if !blocked.is_empty() {
            attributes.push(KeyValue::new(
                "offswitch.blocked_tools",
                OtelValue::Array(blocked.into()),
            ));
        }
        let outcome = record["outcome"].as_str().unwrap_or_default();
        let failed = !matches!(outcome, "passed" | "blocked");
        if failed {
            let kind = match record["status"].as_u64() {
                Some(status) if status >= 400 => status.to_string(),
                _ => outcome.to_owned(),
            };
            attributes.push(KeyValue::new("error.type", kind));
        }
        if self.capture_content {
            if let Some(request) = exchange.request {
                let input = request
                    .get("messages")
                    .or_else(|| request.get("input"))
                    .cloned()
                    .unwrap_or(Value::Null);
                attributes.push(KeyValue::new("gen_ai.input.messages", input.to_string()));
            }
            if !response.is_null() {
                attributes.push(KeyValue::new(
                    "gen_ai.output.messages",
                    response.to_string(),
                ));
            }
        }
        let name = format!("chat {}", exchange.request_model);
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(exchange.started)
            .with_attributes(attributes)
            .start(&self.tracer);
        if failed {
            span.set_status(Status::error(outcome.to_owned()));
        }
        span.end_with_timestamp(exchange.started + exchange.elapsed);
    }

    /// The span of one MCP `tools/call` (`execute_tool`).
    pub fn tool_call(&self, call: &ToolSpan<'_>) {
        let attributes = vec![
            KeyValue::new("gen_ai.operation.name", "execute_tool"),
            KeyValue::new("gen_ai.tool.name", call.tool.to_owned()),
            KeyValue::new("gen_ai.tool.call.id", call.call_id.to_owned()),
            KeyValue::new("gen_ai.tool.type", "extension"),
            KeyValue::new("mcp.method.name", "tools/call"),
            KeyValue::new("offswitch.mcp.server", call.server.to_owned()),
            KeyValue::new("offswitch.session", call.session.to_owned()),
            KeyValue::new("offswitch.outcome", call.outcome.to_owned()),
        ];
        let mut span = self
            .tracer
            .span_builder(format!("execute_tool {}", call.tool))
            .with_kind(SpanKind::Internal)
            .with_start_time(call.started)
            .with_attributes(attributes)
            .start(&self.tracer);
        if !matches!(call.outcome, "passed" | "blocked") {
            span.set_status(Status::error(call.outcome.to_owned()));
        }
        span.end_with_timestamp(call.started + call.elapsed);
    }

    /// Send what is batched and stop.
    pub fn shutdown(&self) -> Result<(), String> {
        self.provider
            .shutdown()
            .map_err(|e| format!("exporting the last spans: {e}"))
    }
}

/// Why the model stopped, per choice (chat), or the stop reason or status.
fn finish_reasons(kind: ApiKind, response: &Value) -> Vec<String> {
    match kind {
        ApiKind::Chat => response["choices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["finish_reason"].as_str().map(str::to_owned))
            .collect(),
        ApiKind::Messages => response["stop_reason"]
            .as_str()
            .map(|r| vec![r.to_owned()])
            .unwrap_or_default(),
        ApiKind::Responses => response["status"]
            .as_str()
            .map(|r| vec![r.to_owned()])
            .unwrap_or_default(),
    }
}
