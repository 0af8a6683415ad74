//! A backend for OpenAI-compatible `/chat/completions` servers: OpenAI itself, vLLM,
//! llama.cpp's server, Ollama and the hosted providers that speak the same protocol.

use offswitch_core::{
    BackendError, BackendErrorKind, ChatBackend, ChatRequest, ChatResponse, FinishReason, Message,
    Role, ToolCall, ToolMode, Usage,
};
use serde_json::{Value, json};

use crate::http::{BuildError, HttpClient, HttpConfig, check_base_url, join_url, json_f32};

/// The provider's own endpoint, used when neither the spec, a flag nor `OPENAI_BASE_URL` names one.
pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Which variant of the request format a server takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenAiDialect {
    /// `max_tokens`, `temperature`, `top_p`: what vLLM, llama.cpp, Ollama and most providers take.
    #[default]
    Standard,
    /// OpenAI's reasoning models (o1, o3, o4-mini, gpt-5): they reject `max_tokens` in favour of
    /// `max_completion_tokens` and refuse any temperature or top_p but the default, so neither
    /// is sent. The study's sampling settings then cannot be applied; the stored request says so.
    Reasoning,
}

impl OpenAiDialect {
    /// A guess from the model name, for when the user does not say: OpenAI's reasoning model
    /// families by their published name prefixes, `Standard` for everything else.
    pub fn for_model(model: &str) -> OpenAiDialect {
        let name = model.rsplit('/').next().unwrap_or(model);
        let reasoning = ["o1", "o3", "o4", "gpt-5"].iter().any(|family| {
            name == *family
                || name
                    .strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with('-'))
        });
        if reasoning {
            OpenAiDialect::Reasoning
        } else {
            OpenAiDialect::Standard
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiConfig {
    /// Base URL including the version prefix, e.g. `http://127.0.0.1:8000/v1`; the backend
    /// posts to `<base_url>/chat/completions`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>`; local servers usually need none.
    pub api_key: Option<String>,
    /// The model used when a request leaves `ChatRequest::model` empty.
    pub model: String,
    pub http: HttpConfig,
    pub dialect: OpenAiDialect,
}

#[derive(Debug, Clone)]
pub struct OpenAiBackend {
    config: OpenAiConfig,
    url: String,
    client: HttpClient,
}

impl OpenAiBackend {
    pub fn new(config: OpenAiConfig) -> Result<OpenAiBackend, BuildError> {
        check_base_url(&config.base_url)?;
        let id = format!("openai:{}@{}", config.model, config.base_url);
        let auth = config
            .api_key
            .iter()
            .map(|key| ("authorization".to_owned(), format!("Bearer {key}")))
            .collect();
        let client = HttpClient::new(id, &config.base_url, &config.http, auth)?;
        let url = join_url(&config.base_url, "chat/completions");
        Ok(OpenAiBackend {
            config,
            url,
            client,
        })
    }

    /// The JSON body sent for `request`: public so that tests and the recording proxy can see
    /// exactly what goes on the wire.
    pub fn request_body(&self, request: &ChatRequest) -> Value {
        let model = if request.model.is_empty() {
            &self.config.model
        } else {
            &request.model
        };
        let native = request.tool_mode == ToolMode::Native;
        let messages: Vec<Value> = if native {
            request.messages.iter().map(wire_message).collect()
        } else {
            offswitch_core::tags::to_text_messages(&request.messages)
                .iter()
                .map(wire_message)
                .collect()
        };
        let mut body = serde_json::Map::new();
        body.insert("model".into(), json!(model));
        body.insert("messages".into(), Value::Array(messages));
        match self.config.dialect {
            OpenAiDialect::Standard => {
                body.insert("temperature".into(), json_f32(request.sampling.temperature));
                body.insert("top_p".into(), json_f32(request.sampling.top_p));
                body.insert("max_tokens".into(), json!(request.sampling.max_tokens));
            }
            OpenAiDialect::Reasoning => {
                body.insert(
                    "max_completion_tokens".into(),
                    json!(request.sampling.max_tokens),
                );
            }
        }
        if let Some(seed) = request.sampling.seed {
            body.insert("seed".into(), json!(seed));
        }
        if native && !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": tool.json_schema(),
                        }
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
            body.insert("tool_choice".into(), json!("auto"));
        }
        Value::Object(body)
    }

    fn parse_reply(
        &self,
        reply: &Value,
        tool_mode: ToolMode,
    ) -> Result<ChatResponse, BackendError> {
        let protocol = |what: &str| {
            self.client.error(
                BackendErrorKind::Protocol,
                format!("reply from {} has {what}", self.url),
            )
        };
        // Some gateways report an upstream failure as status 200 with an error object.
        if let Some(message) = reply
            .get("error")
            .and_then(|e| e.get("message").or(Some(e)))
            .filter(|_| reply.get("choices").is_none())
        {
            let message = message
                .as_str()
                .map_or_else(|| message.to_string(), str::to_owned);
            return Err(self.client.error(
                BackendErrorKind::Protocol,
                format!("reply from {} is an error: {message}", self.url),
            ));
        }
        let choice = reply
            .get("choices")
            .and_then(|c| c.get(0))
            .ok_or_else(|| protocol("no choices[0]"))?;
        let message = choice
            .get("message")
            .ok_or_else(|| protocol("no choices[0].message"))?;
        let content = match message.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            // Some servers return content as a list of parts; keep the text parts.
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            Some(_) => return Err(protocol("a message content that is neither text nor parts")),
        };
        let mut tool_calls = Vec::new();
        if tool_mode == ToolMode::Native
            && let Some(calls) = message.get("tool_calls").and_then(Value::as_array)
        {
            for call in calls {
                tool_calls.push(parse_tool_call(call).ok_or_else(|| {
                    protocol(&format!(
                        "a malformed tool call: {}",
                        crate::http::snippet(&call.to_string())
                    ))
                })?);
            }
        }
        let finish_reason = match choice.get("finish_reason").and_then(Value::as_str) {
            Some("stop") => FinishReason::Stop,
            Some("length") => FinishReason::Length,
            Some("tool_calls") | Some("function_call") => FinishReason::ToolCalls,
            Some(other) => FinishReason::Other(other.to_owned()),
            None if !tool_calls.is_empty() => FinishReason::ToolCalls,
            None => FinishReason::Other("none".to_owned()),
        };
        let usage = reply.get("usage");
        let count = |field: &str| {
            usage
                .and_then(|u| u.get(field))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        Ok(ChatResponse {
            message: Message {
                role: Role::Assistant,
                content,
                tool_calls,
                tool_call_id: None,
            },
            usage: Usage {
                prompt_tokens: count("prompt_tokens"),
                completion_tokens: count("completion_tokens"),
            },
            finish_reason,
        })
    }
}

#[async_trait::async_trait]
impl ChatBackend for OpenAiBackend {
    fn id(&self) -> String {
        self.client.backend_id.clone()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        let body = self.request_body(request);
        let reply = self.client.post_json(&self.url, &body).await?;
        self.parse_reply(&reply, request.tool_mode)
    }
}

/// One OpenAI tool call object, as requests (assistant history) and replies carry it.
pub fn tool_call_json(call: &ToolCall) -> Value {
    json!({
        "id": call.id,
        "type": "function",
        "function": { "name": call.name, "arguments": call.arguments },
    })
}

/// The wire name of a finish reason; the inverse of the mapping in `parse_reply`.
pub fn finish_reason_name(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Other(_) => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

/// A whole `chat.completion` reply to `response`: what offswitch-server answers and the mock
/// server plays back, and what [`OpenAiBackend`] reads.
pub fn completion_json(id: &str, created: u64, model: &str, response: &ChatResponse) -> Value {
    let message = &response.message;
    let mut out_message = json!({
        "role": "assistant",
        // OpenAI sends `null` rather than "" when the assistant only called tools.
        "content": if message.content.is_empty() && !message.tool_calls.is_empty() {
            Value::Null
        } else {
            Value::String(message.content.clone())
        },
    });
    if !message.tool_calls.is_empty() {
        out_message["tool_calls"] = message.tool_calls.iter().map(tool_call_json).collect();
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": out_message,
            "finish_reason": finish_reason_name(&response.finish_reason),
        }],
        "usage": {
            "prompt_tokens": response.usage.prompt_tokens,
            "completion_tokens": response.usage.completion_tokens,
            "total_tokens": response.usage.prompt_tokens + response.usage.completion_tokens,
        },
    })
}

fn wire_message(message: &Message) -> Value {
    match message.role {
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": message.tool_call_id.clone().unwrap_or_default(),
            "content": message.content,
        }),
        Role::Assistant if !message.tool_calls.is_empty() => {
            let calls: Vec<Value> = message.tool_calls.iter().map(tool_call_json).collect();
            // OpenAI wants `null` rather than "" when the assistant only called tools.
            let content = if message.content.is_empty() {
                Value::Null
            } else {
                json!(message.content)
            };
            json!({ "role": "assistant", "content": content, "tool_calls": calls })
        }
        role => json!({ "role": role_name(role), "content": message.content }),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn parse_tool_call(call: &Value) -> Option<ToolCall> {
    let id = call.get("id")?.as_str()?.to_owned();
    let function = call.get("function")?;
    let name = function.get("name")?.as_str()?.to_owned();
    // The protocol sends arguments as a JSON string; a few servers send the object itself.
    let arguments = match function.get("arguments") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::String(text)) => normalise_arguments(text),
        Some(object @ Value::Object(_)) => object.to_string(),
        Some(_) => return None,
    };
    Some(ToolCall {
        id,
        name,
        arguments,
    })
}

/// Re-serialise valid JSON compactly so equal calls compare equal; keep invalid JSON as sent,
/// because the agent loop reports a malformed call back to the model rather than failing here.
fn normalise_arguments(text: &str) -> String {
    if text.trim().is_empty() {
        return "{}".to_owned();
    }
    match serde_json::from_str::<Value>(text) {
        Ok(value) => value.to_string(),
        Err(_) => text.to_owned(),
    }
}
