//! The request side of the OpenAI chat-completions wire format, read into core types. The
//! reply side is written by `offswitch_model::openai`, the client that reads it.

use offswitch_core::{
    ChatRequest, Message, Role, Sampling, ToolCall, ToolMode, ToolParam, ToolSpec,
};
use offswitch_model::openai::tool_call_json;
use serde_json::{Value, json};

/// A request the server cannot serve, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("missing or invalid field {field}: {message}")]
    Field { field: String, message: String },
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> WireError {
    WireError::Field {
        field: field.into(),
        message: message.into(),
    }
}

pub(crate) struct ParsedRequest {
    pub request: ChatRequest,
    pub stream: bool,
}

/// Read an OpenAI chat-completions body. `default_model` names the model when the body does not.
pub(crate) fn parse_request(body: &Value, default_model: &str) -> Result<ParsedRequest, WireError> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(default_model)
        .to_owned();
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| field_error("messages", "expected an array of messages"))?
        .iter()
        .enumerate()
        .map(|(i, m)| parse_message(m, i))
        .collect::<Result<Vec<_>, _>>()?;
    let tools = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .enumerate()
            .map(|(i, t)| parse_tool(t, i))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(field_error("tools", "expected an array")),
    };
    let tool_choice_none = body.get("tool_choice").and_then(Value::as_str) == Some("none");
    let number = |name: &str| body.get(name).and_then(Value::as_f64);
    let defaults = Sampling::default();
    let max_tokens = number("max_completion_tokens")
        .or_else(|| number("max_tokens"))
        .map_or(defaults.max_tokens, |n| {
            n.clamp(1.0, f64::from(u32::MAX)) as u32
        });
    Ok(ParsedRequest {
        request: ChatRequest {
            model,
            messages,
            tools: if tool_choice_none { Vec::new() } else { tools },
            tool_mode: ToolMode::Native,
            sampling: Sampling {
                temperature: number("temperature").map_or(1.0, |t| t as f32),
                top_p: number("top_p").map_or(1.0, |p| p as f32),
                seed: body.get("seed").and_then(Value::as_u64),
                max_tokens,
            },
        },
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
    })
}

fn parse_message(message: &Value, index: usize) -> Result<Message, WireError> {
    let field = |name: &str| format!("messages[{index}].{name}");
    let role = match message.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool") => Role::Tool,
        other => {
            return Err(field_error(
                field("role"),
                format!("unknown role {other:?}"),
            ));
        }
    };
    let content = match message.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        // Content parts: the text ones are joined; images and audio are not supported.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(_) => return Err(field_error(field("content"), "expected a string or parts")),
    };
    let mut tool_calls = Vec::new();
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for (i, call) in calls.iter().enumerate() {
            let function = call.get("function");
            let name = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    field_error(field(&format!("tool_calls[{i}].function.name")), "missing")
                })?;
            let arguments = function
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .unwrap_or("{}");
            tool_calls.push(ToolCall {
                id: call
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("call_{index}_{i}"), str::to_owned),
                name: name.to_owned(),
                arguments: arguments.to_owned(),
            });
        }
    }
    Ok(Message {
        role,
        content,
        tool_calls,
        tool_call_id: message
            .get("tool_call_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn parse_tool(tool: &Value, index: usize) -> Result<ToolSpec, WireError> {
    let function = tool
        .get("function")
        .ok_or_else(|| field_error(format!("tools[{index}].function"), "missing"))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| field_error(format!("tools[{index}].function.name"), "missing"))?;
    let parameters = function.get("parameters");
    let required: Vec<&str> = parameters
        .and_then(|p| p.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let params = parameters
        .and_then(|p| p.get("properties"))
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .map(|(name, schema)| ToolParam {
                    name: name.clone(),
                    description: schema
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    required: required.contains(&name.as_str()),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ToolSpec {
        name: name.to_owned(),
        description: function
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        params,
    })
}

/// OpenAI `tool_calls` deltas of a stream: the calls of a reply, each with its index.
pub(crate) fn tool_call_deltas(calls: &[ToolCall]) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let mut value = tool_call_json(call);
            value["index"] = json!(i);
            value
        })
        .collect()
}
