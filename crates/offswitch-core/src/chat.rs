//! Chat messages and tool descriptions, independent of any provider's wire format.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, answering the assistant message that made it.
    Tool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Tool calls made by an assistant message (native tool calling, or parsed from tags).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: the id of the call this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Message {
        Message::plain(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Message {
        Message::plain(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::plain(Role::Assistant, content)
    }
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(tool_call_id.into()),
        }
    }
    fn plain(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// One call of a tool. `arguments` is always a JSON object of string values (see [`ToolSpec`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON object, serialised compactly so that the type stays `Eq + Hash`.
    pub arguments: String,
}

impl ToolCall {
    /// The argument `name` as a string, if present and a string.
    pub fn argument(&self, name: &str) -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(&self.arguments).ok()?;
        value.get(name)?.as_str().map(str::to_owned)
    }
}

/// A tool offered to the agent. Every parameter is a string: that keeps the text protocol,
/// the grammar of constrained decoding and the native JSON schemas in step with each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub params: Vec<ToolParam>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ToolParam {
    pub name: String,
    pub description: String,
    #[serde(default = "default_true")]
    pub required: bool,
}

fn default_true() -> bool {
    true
}

impl ToolSpec {
    /// JSON schema of the parameters, as OpenAI and Anthropic tool definitions expect it.
    pub fn json_schema(&self) -> serde_json::Value {
        let mut properties = serde_json::Map::new();
        for param in &self.params {
            properties.insert(
                param.name.clone(),
                serde_json::json!({ "type": "string", "description": param.description }),
            );
        }
        let required: Vec<&str> = self
            .params
            .iter()
            .filter(|p| p.required)
            .map(|p| p.name.as_str())
            .collect();
        serde_json::json!({ "type": "object", "properties": properties, "required": required })
    }
}
