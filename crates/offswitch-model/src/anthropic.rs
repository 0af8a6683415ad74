//! A backend for Anthropic's Messages API (`/v1/messages`) with `tool_use` / `tool_result` blocks.

use offswitch_core::{
    BackendError, BackendErrorKind, ChatBackend, ChatRequest, ChatResponse, FinishReason, Message,
    Role, ToolCall, ToolMode, Usage,
};
use serde_json::{Value, json};

use crate::http::{
    BuildError, HttpClient, HttpConfig, check_base_url, join_url, json_f32, snippet,
};

/// The provider's own endpoint, used when neither the spec, a flag nor `ANTHROPIC_BASE_URL` names one.
pub const ANTHROPIC_DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// The API version this backend speaks, sent as `anthropic-version`.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug, Clone, PartialEq)]
pub struct AnthropicConfig {
    /// Base URL without the version, e.g. `http://127.0.0.1:9000`; the backend posts to
    /// `<base_url>/v1/messages`.
    pub base_url: String,
    /// Sent as `x-api-key`.
    pub api_key: Option<String>,
    /// The model used when a request leaves `ChatRequest::model` empty.
    pub model: String,
    pub http: HttpConfig,
}

#[derive(Debug, Clone)]
pub struct AnthropicBackend {
    config: AnthropicConfig,
    url: String,
    client: HttpClient,
}

impl AnthropicBackend {
    pub fn new(config: AnthropicConfig) -> Result<AnthropicBackend, BuildError> {
        check_base_url(&config.base_url)?;
        let id = format!("anthropic:{}@{}", config.model, config.base_url);
        let mut headers = vec![("anthropic-version".to_owned(), ANTHROPIC_VERSION.to_owned())];
        if let Some(key) = &config.api_key {
            headers.push(("x-api-key".to_owned(), key.clone()));
        }
        let client = HttpClient::new(id, &config.base_url, &config.http, headers)?;
        let url = join_url(&config.base_url, "v1/messages");
        Ok(AnthropicBackend {
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
        let converted;
        let messages = if native {
            &request.messages
        } else {
            converted = offswitch_core::tags::to_text_messages(&request.messages);
            &converted
        };
        let (system, turns) = wire_messages(messages);
        let mut body = serde_json::Map::new();
        body.insert("model".into(), json!(model));
        body.insert("max_tokens".into(), json!(request.sampling.max_tokens));
        if !system.is_empty() {
            body.insert("system".into(), json!(system));
        }
        body.insert("messages".into(), Value::Array(turns));
        body.insert("temperature".into(), json_f32(request.sampling.temperature));
        // Recent Claude models refuse `temperature` and `top_p` together; send `top_p` only
        // when it actually restricts sampling.
        if request.sampling.top_p < 1.0 {
            body.insert("top_p".into(), json_f32(request.sampling.top_p));
        }
        if native && !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "name": tool.name,
                        "description": tool.description,
                        "input_schema": tool.json_schema(),
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
            body.insert("tool_choice".into(), json!({ "type": "auto" }));
        }
        Value::Object(body)
    }

    fn parse_reply(
        &self,
        reply: &Value,
        tool_mode: ToolMode,
    ) -> Result<ChatResponse, BackendError> {
        let protocol = |what: String| {
            self.client.error(
                BackendErrorKind::Protocol,
                format!("reply from {} has {what}", self.url),
            )
        };
        let blocks = reply
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| protocol("no content array".to_owned()))?;
        let mut content = String::new();
        let mut tool_calls = Vec::new();
        for block in blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let text = block
                        .get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| protocol("a text block without text".to_owned()))?;
                    content.push_str(text);
                }
                Some("tool_use") if tool_mode == ToolMode::Native => {
                    let call = parse_tool_use(block).ok_or_else(|| {
                        protocol(format!(
                            "a malformed tool_use block: {}",
                            snippet(&block.to_string())
                        ))
                    })?;
                    tool_calls.push(call);
                }
                // Thinking blocks and tool use in tag mode carry nothing the agent loop reads.
                _ => {}
            }
        }
        let finish_reason = match reply.get("stop_reason").and_then(Value::as_str) {
            Some("end_turn") | Some("stop_sequence") => FinishReason::Stop,
            Some("max_tokens") => FinishReason::Length,
            Some("tool_use") => FinishReason::ToolCalls,
            Some(other) => FinishReason::Other(other.to_owned()),
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
                prompt_tokens: count("input_tokens"),
                completion_tokens: count("output_tokens"),
            },
            finish_reason,
        })
    }
}

#[async_trait::async_trait]
impl ChatBackend for AnthropicBackend {
    fn id(&self) -> String {
        self.client.backend_id.clone()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        let body = self.request_body(request);
        let reply = self.client.post_json(&self.url, &body).await?;
        self.parse_reply(&reply, request.tool_mode)
    }
}

/// Split the conversation into the top-level system text and the alternating user/assistant
/// turns the Messages API requires: tool results become `tool_result` blocks in a user turn,
/// and consecutive turns of the same role are merged into one.
fn wire_messages(messages: &[Message]) -> (String, Vec<Value>) {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in messages {
        let (role, blocks) = match message.role {
            Role::System => {
                system.push(message.content.as_str());
                continue;
            }
            Role::User => ("user", vec![text_block(&message.content)]),
            Role::Tool => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id.clone().unwrap_or_default(),
                    "content": message.content,
                })],
            ),
            Role::Assistant => {
                let mut blocks = Vec::new();
                if !message.content.is_empty() || message.tool_calls.is_empty() {
                    blocks.push(text_block(&message.content));
                }
                for call in &message.tool_calls {
                    let input: Value = serde_json::from_str(&call.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": input,
                    }));
                }
                ("assistant", blocks)
            }
        };
        match turns.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, blocks)| {
            // A turn of one text block is sent as a plain string, the API's simplest form.
            let content = match blocks.as_slice() {
                [only] if only.get("type") == Some(&json!("text")) => only["text"].clone(),
                _ => Value::Array(blocks),
            };
            json!({ "role": role, "content": content })
        })
        .collect();
    (system.join("\n\n"), turns)
}

fn text_block(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

fn parse_tool_use(block: &Value) -> Option<ToolCall> {
    Some(ToolCall {
        id: block.get("id")?.as_str()?.to_owned(),
        name: block.get("name")?.as_str()?.to_owned(),
        arguments: match block.get("input") {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(input @ Value::Object(_)) => input.to_string(),
            Some(_) => return None,
        },
    })
}
