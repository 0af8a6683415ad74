//! The text tool-call protocol for models without native tool calling.
//!
//! A reply may hold free text and tool calls written as tagged JSON:
//!
//! ```text
//! <tool_call>
//! {"name": "bash", "arguments": {"command": "ls -la"}}
//! </tool_call>
//! ```
//!
//! Parsing is strict: every block must be closed, hold one JSON object with a known tool name
//! and exactly the tool's string arguments. A malformed reply is an error whose message is sent
//! back to the model as a correction. [`render_call`] writes the canonical form, which is also
//! the form the embedded model's grammar forces (name first, then arguments in declared order).

use crate::chat::{Message, Role, ToolCall, ToolSpec};

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// A parsed assistant reply: the text outside the blocks and the calls, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedReply {
    pub text: String,
    pub calls: Vec<ToolCall>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("a {OPEN} block is not closed with {CLOSE}")]
    Unclosed,
    #[error("{CLOSE} without a matching {OPEN}")]
    StrayClose,
    #[error("tool call {index} is not a JSON object: {message}")]
    NotJson { index: usize, message: String },
    #[error("tool call {index} has no string field \"name\"")]
    MissingName { index: usize },
    #[error("tool call {index} names unknown tool {name:?}; known tools: {known}")]
    UnknownTool {
        index: usize,
        name: String,
        known: String,
    },
    #[error("tool call {index} ({tool}): \"arguments\" must be an object of strings")]
    BadArguments { index: usize, tool: String },
    #[error("tool call {index} ({tool}): missing required argument {param:?}")]
    MissingArgument {
        index: usize,
        tool: String,
        param: String,
    },
    #[error("tool call {index} ({tool}): unknown argument {param:?}")]
    UnknownArgument {
        index: usize,
        tool: String,
        param: String,
    },
}

/// Parse a reply under the tag protocol. Call ids are `call_<turn>_<index>` so that a replayed
/// transcript gets the same ids.
pub fn parse_reply(reply: &str, tools: &[ToolSpec], turn: usize) -> Result<ParsedReply, TagError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut rest = reply;
    loop {
        match (rest.find(OPEN), rest.find(CLOSE)) {
            (None, None) => {
                text.push_str(rest);
                break;
            }
            (None, Some(_)) => return Err(TagError::StrayClose),
            (Some(open), close) => {
                if close.is_some_and(|close| close < open) {
                    return Err(TagError::StrayClose);
                }
                text.push_str(&rest[..open]);
                let after_open = &rest[open + OPEN.len()..];
                let end = after_open.find(CLOSE).ok_or(TagError::Unclosed)?;
                let body = &after_open[..end];
                if body.contains(OPEN) {
                    return Err(TagError::Unclosed);
                }
                let index = calls.len();
                calls.push(parse_call(body, tools, index, turn)?);
                rest = &after_open[end + CLOSE.len()..];
            }
        }
    }
    Ok(ParsedReply {
        text: text.trim().to_owned(),
        calls,
    })
}

fn parse_call(
    body: &str,
    tools: &[ToolSpec],
    index: usize,
    turn: usize,
) -> Result<ToolCall, TagError> {
    let value: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| TagError::NotJson {
            index,
            message: e.to_string(),
        })?;
    let object = value.as_object().ok_or_else(|| TagError::NotJson {
        index,
        message: "not an object".into(),
    })?;
    let name = object
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or(TagError::MissingName { index })?;
    let spec = tools
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| TagError::UnknownTool {
            index,
            name: name.to_owned(),
            known: tools
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let empty = serde_json::Map::new();
    let arguments = match object.get("arguments") {
        None => &empty,
        Some(serde_json::Value::Object(map)) => map,
        Some(_) => {
            return Err(TagError::BadArguments {
                index,
                tool: name.to_owned(),
            });
        }
    };
    for (key, value) in arguments {
        if !spec.params.iter().any(|p| &p.name == key) {
            return Err(TagError::UnknownArgument {
                index,
                tool: name.to_owned(),
                param: key.clone(),
            });
        }
        if !value.is_string() {
            return Err(TagError::BadArguments {
                index,
                tool: name.to_owned(),
            });
        }
    }
    if let Some(missing) = spec
        .params
        .iter()
        .find(|p| p.required && !arguments.contains_key(&p.name))
    {
        return Err(TagError::MissingArgument {
            index,
            tool: name.to_owned(),
            param: missing.name.clone(),
        });
    }
    Ok(ToolCall {
        id: format!("call_{turn}_{index}"),
        name: name.to_owned(),
        arguments: serde_json::Value::Object(arguments.clone()).to_string(),
    })
}

/// The canonical text of one call, in the exact form the embedded model's grammar produces:
/// `<tool_call>\n{"name": "N", "arguments": {"a": "v"}}\n</tool_call>`, arguments in the
/// order they appear in `call.arguments`.
pub fn render_call(call: &ToolCall) -> String {
    let arguments: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&call.arguments).unwrap_or_default();
    let mut out = format!(
        "{OPEN}\n{{\"name\": {}, \"arguments\": {{",
        json_string(&call.name)
    );
    for (i, (key, value)) in arguments.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let value = value
            .as_str()
            .map(json_string)
            .unwrap_or_else(|| value.to_string());
        out.push_str(&format!("{}: {}", json_string(key), value));
    }
    out.push_str(&format!("}}}}\n{CLOSE}"));
    out
}

/// A JSON string literal, escaped the way the grammar allows (serde_json's escaping).
pub fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The paragraph appended to the system prompt that teaches the protocol and lists the tools.
pub fn instructions(tools: &[ToolSpec]) -> String {
    let mut out = String::from(
        "You can use tools. To call a tool, write a block like this in your reply:\n\
         <tool_call>\n{\"name\": \"TOOL_NAME\", \"arguments\": {\"ARGUMENT\": \"VALUE\"}}\n</tool_call>\n\
         All argument values are JSON strings. The result comes back in a <tool_result> block. Tools:\n",
    );
    for tool in tools {
        let params: Vec<String> = tool
            .params
            .iter()
            .map(|p| {
                format!(
                    "{}{}: {}",
                    p.name,
                    if p.required { "" } else { " (optional)" },
                    p.description
                )
            })
            .collect();
        out.push_str(&format!(
            "- {}: {} Arguments: {}\n",
            tool.name,
            tool.description,
            params.join("; ")
        ));
    }
    out
}

/// Rewrite a native-tool conversation into plain text turns for a text-only model: assistant
/// tool calls become their canonical tags, tool results become user turns in `<tool_result>`.
pub fn to_text_messages(messages: &[Message]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for message in messages {
        match message.role {
            Role::Assistant if !message.tool_calls.is_empty() => {
                let mut content = message.content.clone();
                for call in &message.tool_calls {
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&render_call(call));
                }
                out.push(Message::assistant(content));
            }
            Role::Tool => {
                let block = format!("<tool_result>\n{}\n</tool_result>", message.content);
                // Several results for one reply go into one user turn, keeping roles alternating.
                match out.last_mut() {
                    Some(last)
                        if last.role == Role::User && last.content.starts_with("<tool_result>") =>
                    {
                        last.content.push('\n');
                        last.content.push_str(&block);
                    }
                    _ => out.push(Message::user(block)),
                }
            }
            _ => out.push(Message {
                tool_calls: Vec::new(),
                tool_call_id: None,
                ..message.clone()
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ToolParam;
    use expect_test::{Expect, expect};

    fn tools() -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: "bash".into(),
                description: "Run a shell command.".into(),
                params: vec![ToolParam {
                    name: "command".into(),
                    description: "the command".into(),
                    required: true,
                }],
            },
            ToolSpec {
                name: "submit".into(),
                description: "Submit the answer.".into(),
                params: vec![ToolParam {
                    name: "answer".into(),
                    description: "the answer".into(),
                    required: true,
                }],
            },
        ]
    }

    fn check(reply: &str, expect: Expect) {
        let actual = match parse_reply(reply, &tools(), 3) {
            Ok(parsed) => {
                let mut out = format!("text: {:?}\n", parsed.text);
                for call in parsed.calls {
                    out.push_str(&format!("{} {} {}\n", call.id, call.name, call.arguments));
                }
                out
            }
            Err(e) => format!("error: {e}\n"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn parses_calls_and_rejects_malformed_ones() {
        check(
            "just talking",
            expect![[r#"
            text: "just talking"
        "#]],
        );
        check(
            "Let me look.\n<tool_call>\n{\"name\": \"bash\", \"arguments\": {\"command\": \"ls\"}}\n</tool_call>",
            expect![[r#"
                text: "Let me look."
                call_3_0 bash {"command":"ls"}
            "#]],
        );
        check(
            "<tool_call>{\"name\":\"bash\",\"arguments\":{\"command\":\"a\"}}</tool_call><tool_call>{\"name\":\"submit\",\"arguments\":{\"answer\":\"4\"}}</tool_call>",
            expect![[r#"
                text: ""
                call_3_0 bash {"command":"a"}
                call_3_1 submit {"answer":"4"}
            "#]],
        );
        check(
            "<tool_call>{\"name\": \"bash\"",
            expect![[r#"
            error: a <tool_call> block is not closed with </tool_call>
        "#]],
        );
        check(
            "oops </tool_call>",
            expect![[r#"
            error: </tool_call> without a matching <tool_call>
        "#]],
        );
        check(
            "<tool_call>bash ls</tool_call>",
            expect![[r#"
            error: tool call 0 is not a JSON object: expected value at line 1 column 1
        "#]],
        );
        check(
            "<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>",
            expect![[r#"
            error: tool call 0 names unknown tool "rm"; known tools: bash, submit
        "#]],
        );
        check(
            "<tool_call>{\"name\": \"bash\", \"arguments\": {}}</tool_call>",
            expect![[r#"
            error: tool call 0 (bash): missing required argument "command"
        "#]],
        );
        check(
            "<tool_call>{\"name\": \"bash\", \"arguments\": {\"command\": 1}}</tool_call>",
            expect![[r#"
            error: tool call 0 (bash): "arguments" must be an object of strings
        "#]],
        );
        check(
            "<tool_call>{\"name\": \"bash\", \"arguments\": {\"command\": \"x\", \"sudo\": \"y\"}}</tool_call>",
            expect![[r#"
            error: tool call 0 (bash): unknown argument "sudo"
        "#]],
        );
    }

    #[test]
    fn canonical_form_round_trips() {
        let call = ToolCall {
            id: "call_0_0".into(),
            name: "bash".into(),
            arguments: r#"{"command":"echo \"hi\"\n"}"#.into(),
        };
        let text = render_call(&call);
        expect![[r#"
            <tool_call>
            {"name": "bash", "arguments": {"command": "echo \"hi\"\n"}}
            </tool_call>"#]]
        .assert_eq(&text);
        let parsed = parse_reply(&text, &tools(), 0).unwrap();
        assert_eq!(parsed.calls, vec![call]);
    }

    #[test]
    fn text_messages_alternate_roles() {
        let call = ToolCall {
            id: "c".into(),
            name: "bash".into(),
            arguments: r#"{"command":"ls"}"#.into(),
        };
        let messages = vec![
            Message::system("sys"),
            Message::user("go"),
            Message {
                tool_calls: vec![call],
                ..Message::assistant("")
            },
            Message::tool_result("c", "a.txt"),
        ];
        let text = to_text_messages(&messages);
        let roles: Vec<Role> = text.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            vec![Role::System, Role::User, Role::Assistant, Role::User]
        );
        assert_eq!(text[3].content, "<tool_result>\na.txt\n</tool_result>");
    }
}
