//! The three wire formats the proxy speaks, each as the client and the upstream write it:
//! OpenAI chat completions, the OpenAI Responses API and Anthropic Messages. For each, where
//! the tool calls of a reply are (whole, or as stream events), how to replace a blocked call
//! with text the agent can read, the token usage, and a reassembled copy of a streamed reply
//! for the audit log.
//!
//! Everything is read fail-closed. A reply is released as it is only when every part of it is
//! something this module knows to be text (or a call it checked): an unknown key in a chat
//! delta, an unknown content block or output item, an index out of order, a call renamed
//! mid-stream, an event that is not JSON, all make the reply "uncheckable", and it is never
//! released. Streams are held, not scanned on the fly: from the first event that is not known
//! text to the end of the reply, nothing is released; then the calls are checked and the held
//! events released or rewritten. Events after a reply's terminal event are dropped.

use serde_json::{Map, Value, json};

use crate::sse::SseEvent;

/// The API of a request, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages`.
    Messages,
}

impl ApiKind {
    pub fn name(self) -> &'static str {
        match self {
            ApiKind::Chat => "chat_completions",
            ApiKind::Responses => "responses",
            ApiKind::Messages => "messages",
        }
    }

    /// The path appended to an upstream's base URL.
    pub fn upstream_path(self) -> &'static str {
        match self {
            ApiKind::Chat => "/chat/completions",
            ApiKind::Responses => "/responses",
            ApiKind::Messages => "/messages",
        }
    }

    /// An error body in this API's own shape, so that the client's SDK raises a readable error.
    pub fn error_body(self, kind: &str, message: &str) -> Value {
        match self {
            ApiKind::Messages => json!({
                "type": "error",
                "error": {"type": kind, "message": message},
            }),
            ApiKind::Chat | ApiKind::Responses => json!({
                "error": {"message": message, "type": kind, "param": null, "code": kind},
            }),
        }
    }
}

/// The slot of a chat reply's legacy `function_call` (one per choice).
pub const LEGACY_CALL: usize = usize::MAX;

/// One tool call of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Where it is in the reply (choice and call index, output index, content block index).
    pub slot: (usize, usize),
    pub name: String,
    /// The arguments as the model wrote them (JSON text, or a custom tool's free-form input,
    /// or the whole item for a call type without arguments of its own).
    pub arguments: String,
}

/// The text that replaces a blocked call.
pub fn refusal(name: &str, rule: &str, detail: &str) -> String {
    format!(
        "[offswitch] The call to the tool `{name}` was blocked by the policy rule `{rule}` and \
         was not run: {detail}"
    )
}

/// The model a request names.
pub fn request_model(body: &Value) -> Option<&str> {
    body.get("model").and_then(Value::as_str)
}

/// Whether the request asks for a stream.
pub fn request_streams(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// Tools a request declares that the upstream runs itself (web search, code execution, remote
/// MCP servers): their effects happen before the proxy sees a reply, so no rule on the reply
/// could stop them. `None` when every declared tool is run by the client.
pub fn server_side_tools(kind: ApiKind, body: &Value) -> Option<String> {
    let tools = array(body, "tools");
    let found: Vec<String> = match kind {
        ApiKind::Chat => tools
            .iter()
            .filter_map(|tool| {
                let kind = tool
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("function");
                (!matches!(kind, "function" | "custom")).then(|| kind.to_owned())
            })
            .collect(),
        ApiKind::Responses => tools
            .iter()
            .filter_map(|tool| {
                let kind = tool
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("function");
                // Tools whose calls come back to the client to run.
                let client = matches!(
                    kind,
                    "function" | "custom" | "local_shell" | "shell" | "apply_patch"
                ) || kind.starts_with("computer");
                (!client).then(|| kind.to_owned())
            })
            .collect(),
        ApiKind::Messages => {
            let mut found: Vec<String> = tools
                .iter()
                .filter_map(|tool| {
                    let kind = tool.get("type").and_then(Value::as_str).unwrap_or("custom");
                    let client = kind == "custom"
                        || ["bash_", "text_editor_", "computer_", "memory_"]
                            .iter()
                            .any(|prefix| kind.starts_with(prefix));
                    (!client).then(|| kind.to_owned())
                })
                .collect();
            if body.get("mcp_servers").is_some_and(|v| !v.is_null()) {
                found.push("mcp_servers".into());
            }
            found
        }
    };
    (!found.is_empty()).then(|| found.join(", "))
}

/// Every string in a JSON value, keys included, decoded, one per line: what a pattern over a
/// request or over a call's arguments reads (escapes in the JSON text hide nothing from it).
pub fn strings(value: &Value) -> String {
    fn walk(value: &Value, out: &mut String) {
        match value {
            Value::String(text) => {
                out.push_str(text);
                out.push('\n');
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            Value::Object(map) => {
                for (key, item) in map {
                    out.push_str(key);
                    out.push('\n');
                    walk(item, out);
                }
            }
            _ => {}
        }
    }
    let mut out = String::new();
    walk(value, &mut out);
    out
}

/// Token usage (input, output) of a whole reply, when it says.
pub fn usage(kind: ApiKind, body: &Value) -> Option<(u64, u64)> {
    let usage = body.get("usage")?;
    let get = |key: &str| usage.get(key).and_then(Value::as_u64);
    match kind {
        ApiKind::Chat => Some((get("prompt_tokens")?, get("completion_tokens").unwrap_or(0))),
        ApiKind::Responses | ApiKind::Messages => {
            let input = get("input_tokens")?
                + get("cache_creation_input_tokens").unwrap_or(0)
                + get("cache_read_input_tokens").unwrap_or(0);
            Some((input, get("output_tokens").unwrap_or(0)))
        }
    }
}

/// The keys of a chat message (whole) or delta (streamed) that are text, or nothing.
const CHAT_TEXT_KEYS: &[&str] = &[
    "role",
    "content",
    "refusal",
    "reasoning_content",
    "reasoning",
    "annotations",
    "name",
    "audio",
];

/// The tool calls of a whole (not streamed) reply; `Err` when the reply holds something that
/// is neither known text nor a call this module can read (it cannot be checked).
pub fn calls(kind: ApiKind, body: &Value) -> Result<Vec<Call>, String> {
    let mut calls = Vec::new();
    match kind {
        ApiKind::Chat => {
            for (c, choice) in array(body, "choices").iter().enumerate() {
                let Some(message) = choice.get("message").and_then(Value::as_object) else {
                    return Err(format!("choice {c} has no message object"));
                };
                for (key, value) in message {
                    match key.as_str() {
                        "tool_calls" => {
                            for (i, call) in value.as_array().into_iter().flatten().enumerate() {
                                calls.push(chat_call((c, i), call)?);
                            }
                            if !value.is_null() && !value.is_array() {
                                return Err("tool_calls is not an array".into());
                            }
                        }
                        "function_call" if !value.is_null() => {
                            calls.push(function_call((c, LEGACY_CALL), value)?);
                        }
                        key if CHAT_TEXT_KEYS.contains(&key) || value.is_null() => {}
                        key => return Err(format!("an unknown key {key:?} in a message")),
                    }
                }
            }
        }
        ApiKind::Responses => {
            for (i, item) in array(body, "output").iter().enumerate() {
                if let Some(call) = responses_item(i, item)? {
                    calls.push(call);
                }
            }
        }
        ApiKind::Messages => {
            for (i, block) in array(body, "content").iter().enumerate() {
                match block.get("type").and_then(Value::as_str) {
                    Some("text" | "thinking" | "redacted_thinking") => {}
                    Some("tool_use") => calls.push(Call {
                        slot: (0, i),
                        name: string(block, "name")?,
                        arguments: block.get("input").map(Value::to_string).unwrap_or_default(),
                    }),
                    other => return Err(format!("a content block of type {other:?}")),
                }
            }
        }
    }
    Ok(calls)
}

/// A `tool_calls` entry of a chat message.
fn chat_call(slot: (usize, usize), call: &Value) -> Result<Call, String> {
    match call
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("function")
    {
        "function" => function_call(slot, call.get("function").unwrap_or(&Value::Null)),
        "custom" => {
            let custom = call.get("custom").unwrap_or(&Value::Null);
            Ok(Call {
                slot,
                name: string(custom, "name")?,
                arguments: string(custom, "input")?,
            })
        }
        other => Err(format!("a tool call of type {other:?}")),
    }
}

/// `{"name": ..., "arguments": ...}`, both strings.
fn function_call(slot: (usize, usize), function: &Value) -> Result<Call, String> {
    Ok(Call {
        slot,
        name: string(function, "name")?,
        arguments: string(function, "arguments")?,
    })
}

/// A Responses API output item: text (`None`), a call, or something unknown (`Err`). Every
/// `*_call` item is a call: a function call (its JSON arguments), a custom tool call (its
/// input), or a built-in one the client runs (`local_shell_call`, `shell_call`,
/// `apply_patch_call`, `computer_call`: named by its type, its whole item as the arguments).
fn responses_item(index: usize, item: &Value) -> Result<Option<Call>, String> {
    let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "message" | "reasoning" => Ok(None),
        "function_call" => Ok(Some(Call {
            slot: (0, index),
            name: string(item, "name")?,
            arguments: string(item, "arguments")?,
        })),
        "custom_tool_call" => Ok(Some(Call {
            slot: (0, index),
            name: string(item, "name")?,
            arguments: string(item, "input")?,
        })),
        kind if kind.ends_with("_call") => {
            let mut rest = item.clone();
            if let Some(object) = rest.as_object_mut() {
                for key in ["id", "status", "call_id", "type"] {
                    object.remove(key);
                }
            }
            Ok(Some(Call {
                slot: (0, index),
                name: kind.trim_end_matches("_call").to_owned(),
                arguments: rest.to_string(),
            }))
        }
        other => Err(format!("an output item of type {other:?}")),
    }
}

/// Replace the blocked calls of a whole reply with text.
pub fn block(kind: ApiKind, body: &mut Value, blocked: &[(Call, String)]) {
    match kind {
        ApiKind::Chat => {
            let Some(choices) = body.get_mut("choices").and_then(Value::as_array_mut) else {
                return;
            };
            for (c, choice) in choices.iter_mut().enumerate() {
                let texts: Vec<&str> = blocked
                    .iter()
                    .filter(|(call, _)| call.slot.0 == c)
                    .map(|(_, text)| text.as_str())
                    .collect();
                if texts.is_empty() {
                    continue;
                }
                let Some(message) = choice.get_mut("message").and_then(Value::as_object_mut) else {
                    continue;
                };
                let kept: Vec<Value> = message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .map(|calls| {
                        calls
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !blocked.iter().any(|(b, _)| b.slot == (c, *i)))
                            .map(|(_, call)| call.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                if blocked.iter().any(|(b, _)| b.slot == (c, LEGACY_CALL)) {
                    message.remove("function_call");
                }
                let mut content = message
                    .get("content")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_default();
                for text in texts {
                    if !content.is_empty() {
                        content.push_str("\n\n");
                    }
                    content.push_str(text);
                }
                message.insert("content".into(), Value::String(content));
                let legacy_left = message.get("function_call").is_some_and(|f| !f.is_null());
                if kept.is_empty() {
                    message.remove("tool_calls");
                } else {
                    message.insert("tool_calls".into(), Value::Array(kept.clone()));
                }
                if kept.is_empty()
                    && !legacy_left
                    && let Some(choice) = choice.as_object_mut()
                {
                    choice.insert("finish_reason".into(), json!("stop"));
                }
            }
        }
        ApiKind::Responses => {
            if let Some(output) = body.get_mut("output").and_then(Value::as_array_mut) {
                for (call, text) in blocked {
                    if let Some(item) = output.get_mut(call.slot.1) {
                        *item = responses_message(item, text);
                    }
                }
            }
        }
        ApiKind::Messages => {
            let mut remaining = false;
            if let Some(content) = body.get_mut("content").and_then(Value::as_array_mut) {
                for (call, text) in blocked {
                    if let Some(block) = content.get_mut(call.slot.1) {
                        *block = json!({"type": "text", "text": text});
                    }
                }
                remaining = content
                    .iter()
                    .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"));
            }
            if !remaining
                && body.get("stop_reason").and_then(Value::as_str) == Some("tool_use")
                && let Some(body) = body.as_object_mut()
            {
                body.insert("stop_reason".into(), json!("end_turn"));
            }
        }
    }
}

/// The message item that stands in a Responses output for a blocked call.
fn responses_message(call: &Value, text: &str) -> Value {
    let id = call.get("id").and_then(Value::as_str).map_or_else(
        || "msg_offswitch".to_owned(),
        |id| format!("msg_offswitch_{id}"),
    );
    json!({
        "type": "message",
        "id": id,
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A string field, absent as empty; any other type is an error (a call whose name is a number
/// could be read as empty by one parser and as something else by another).
fn string(value: &Value, key: &str) -> Result<String, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(format!("`{key}` is not a string")),
    }
}

/// What to do with a stream event now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Send it on.
    Release,
    /// Keep it until the reply is complete and checked.
    Hold,
    /// It came after the reply's terminal event: never sent.
    Drop,
}

/// The most choices, calls per choice and content blocks or output items a streamed reply may
/// have; past them it cannot be checked.
const MAX_SLOTS: usize = 1024;

/// A streamed reply, event by event.
pub struct StreamState {
    kind: ApiKind,
    holding: bool,
    /// The reply is complete (its terminal event arrived).
    done: bool,
    /// Why the reply cannot be checked, if it cannot.
    uncheckable: Option<String>,
    /// Events that came after the terminal event.
    pub dropped_after_end: usize,
    chat: ChatStream,
    /// Messages: content blocks in order.
    blocks: Vec<Block>,
    /// Messages: `message_start`'s message.
    message: Option<Value>,
    stop_reason: Option<Value>,
    /// Responses: the final response object (`response.completed` and its kin).
    response: Option<Value>,
    /// Responses: every version of every call seen (added, done, final).
    responses_calls: Vec<Call>,
    usage: Option<(u64, u64)>,
}

#[derive(Default)]
struct ChatStream {
    /// The first chunk (its id, model, created) for reassembly and inserted chunks.
    first: Option<Value>,
    choices: Vec<ChatChoice>,
}

#[derive(Default, Clone)]
struct ChatChoice {
    content: String,
    /// By index: id, name, arguments.
    calls: Vec<(String, String, String)>,
    /// A legacy `function_call`: name, arguments.
    legacy: Option<(String, String)>,
    finish_reason: Option<String>,
}

#[derive(Default, Clone)]
struct Block {
    kind: String,
    id: String,
    name: String,
    text: String,
    /// The input given at the block's start.
    start_input: Option<Value>,
    /// The input as streamed deltas.
    input: String,
    deltas: bool,
    stopped: bool,
}

impl StreamState {
    pub fn new(kind: ApiKind) -> StreamState {
        StreamState {
            kind,
            holding: false,
            done: false,
            uncheckable: None,
            dropped_after_end: 0,
            chat: ChatStream::default(),
            blocks: Vec::new(),
            message: None,
            stop_reason: None,
            response: None,
            responses_calls: Vec::new(),
            usage: None,
        }
    }

    /// Whether the reply's terminal event arrived.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Whether events are being held.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// Why the reply cannot be checked, if it cannot.
    pub fn uncheckable(&self) -> Option<&str> {
        self.uncheckable.as_deref()
    }

    pub fn usage(&self) -> Option<(u64, u64)> {
        self.usage
    }

    /// Whether a stream that ended without its terminal event still holds a complete reply:
    /// a chat stream whose every choice said why it finished (some servers send no `[DONE]`).
    pub fn complete_at_end(&self) -> bool {
        self.kind == ApiKind::Chat
            && !self.chat.choices.is_empty()
            && self.chat.choices.iter().all(|c| c.finish_reason.is_some())
    }

    /// Hold from here on, and never release: the reply cannot be checked.
    fn poison(&mut self, why: impl Into<String>) {
        self.holding = true;
        if self.uncheckable.is_none() {
            self.uncheckable = Some(why.into());
        }
    }

    /// Take one event into account; what to do with it.
    pub fn on_event(&mut self, event: &SseEvent) -> Flow {
        if self.done {
            self.dropped_after_end += 1;
            return Flow::Drop;
        }
        if event.odd {
            self.poison("an event with a field the standard does not name, or not UTF-8");
        }
        let data = event.data.trim();
        if !data.is_empty() {
            if self.kind == ApiKind::Chat && data == "[DONE]" {
                self.done = true;
            } else {
                match serde_json::from_str::<Value>(data) {
                    Ok(value) if value.is_object() => match self.kind {
                        ApiKind::Chat => self.chat_event(&value),
                        ApiKind::Messages => self.messages_event(event.event.as_deref(), &value),
                        ApiKind::Responses => self.responses_event(&value),
                    },
                    _ => self.poison("an event whose data is not a JSON object"),
                }
            }
        }
        if self.holding {
            Flow::Hold
        } else {
            Flow::Release
        }
    }

    fn chat_event(&mut self, chunk: &Value) {
        if self.chat.first.is_none() {
            self.chat.first = Some(chunk.clone());
        }
        if let Some(usage) = usage(ApiKind::Chat, chunk) {
            self.usage = Some(usage);
        }
        let Some(choices) = chunk.get("choices") else {
            return;
        };
        let Some(choices) = choices.as_array() else {
            return self.poison("`choices` is not an array");
        };
        for choice in choices {
            let Some(index) = choice.get("index").map_or(Some(0), Value::as_u64) else {
                return self.poison("a choice index that is not a number");
            };
            let index = index as usize;
            if index >= MAX_SLOTS || index > self.chat.choices.len() {
                return self.poison(format!("choice {index} out of order"));
            }
            if index == self.chat.choices.len() {
                self.chat.choices.push(ChatChoice::default());
            }
            let delta = match choice.get("delta") {
                None | Some(Value::Null) => None,
                Some(Value::Object(delta)) => Some(delta),
                Some(_) => return self.poison("a delta that is not an object"),
            };
            for (key, value) in delta.into_iter().flatten() {
                match key.as_str() {
                    "content" => match value {
                        Value::String(text) => self.chat.choices[index].content.push_str(text),
                        Value::Null => {}
                        _ => return self.poison("content that is not a string"),
                    },
                    "tool_calls" if value.is_null() => {}
                    "tool_calls" => {
                        self.holding = true;
                        let Some(calls) = value.as_array() else {
                            return self.poison("tool_calls that is not an array");
                        };
                        for call in calls {
                            if let Err(why) = self.chat_call_delta(index, call) {
                                return self.poison(why);
                            }
                        }
                    }
                    "function_call" if value.is_null() => {}
                    "function_call" => {
                        self.holding = true;
                        let legacy = self.chat.choices[index].legacy.get_or_insert_default();
                        match (value.get("name"), value.get("arguments")) {
                            (None | Some(Value::Null), _) => {}
                            (Some(Value::String(name)), _) if legacy.0.is_empty() => {
                                legacy.0 = name.clone();
                            }
                            _ => {
                                return self
                                    .poison("a function call named twice or not by a string");
                            }
                        }
                        match value.get("arguments") {
                            None | Some(Value::Null) => {}
                            Some(Value::String(part)) => legacy.1.push_str(part),
                            Some(_) => return self.poison("arguments that are not a string"),
                        }
                    }
                    key if CHAT_TEXT_KEYS.contains(&key) || value.is_null() => {}
                    key => return self.poison(format!("an unknown key {key:?} in a delta")),
                }
            }
            match choice.get("finish_reason") {
                None | Some(Value::Null) => {}
                Some(Value::String(reason)) => {
                    self.chat.choices[index].finish_reason = Some(reason.clone());
                }
                Some(_) => return self.poison("a finish reason that is not a string"),
            }
        }
    }

    fn chat_call_delta(&mut self, choice: usize, call: &Value) -> Result<(), String> {
        let Some(i) = call.get("index").and_then(Value::as_u64) else {
            return Err("a tool call without a numeric index".into());
        };
        let i = i as usize;
        let calls = &mut self.chat.choices[choice].calls;
        if i >= MAX_SLOTS || i > calls.len() {
            return Err(format!("tool call {i} out of order"));
        }
        if i == calls.len() {
            calls.push(Default::default());
        }
        let slot = &mut calls[i];
        match call.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(kind)) if kind == "function" => {}
            Some(_) => return Err("a streamed tool call that is not a function".into()),
        }
        match call.get("id") {
            None | Some(Value::Null) => {}
            Some(Value::String(id)) => slot.0.push_str(id),
            Some(_) => return Err("a tool call id that is not a string".into()),
        }
        let function = match call.get("function") {
            None | Some(Value::Null) => return Ok(()),
            Some(function) => function,
        };
        for key in function.as_object().into_iter().flatten().map(|(k, _)| k) {
            if !matches!(key.as_str(), "name" | "arguments") {
                return Err(format!("an unknown key {key:?} in a streamed call"));
            }
        }
        match function.get("name") {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) if slot.1.is_empty() => slot.1 = name.clone(),
            Some(Value::String(name)) if name.is_empty() => {}
            Some(_) => return Err("a tool call named twice or not by a string".into()),
        }
        match function.get("arguments") {
            None | Some(Value::Null) => {}
            Some(Value::String(part)) => slot.2.push_str(part),
            Some(_) => return Err("arguments that are not a string".into()),
        }
        Ok(())
    }

    fn messages_event(&mut self, event: Option<&str>, data: &Value) {
        let kind = data.get("type").and_then(Value::as_str).unwrap_or_default();
        if event.is_some_and(|event| event != kind) {
            return self.poison("an event whose name and type differ");
        }
        let index = data
            .get("index")
            .and_then(Value::as_u64)
            .map(|i| i as usize);
        match kind {
            "ping" => {}
            "error" => self.done = true,
            "message_start" => {
                let message = data.get("message").cloned().unwrap_or(Value::Null);
                if !array(&message, "content").is_empty() {
                    return self.poison("a message that starts with content");
                }
                self.usage = usage(ApiKind::Messages, &message).or(self.usage);
                self.message = Some(message);
            }
            "content_block_start" => {
                if index != Some(self.blocks.len()) || self.blocks.len() >= MAX_SLOTS {
                    return self.poison("a content block out of order");
                }
                let block = data.get("content_block").unwrap_or(&Value::Null);
                let kind = block
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match kind {
                    "text" | "thinking" | "redacted_thinking" => {}
                    "tool_use" => self.holding = true,
                    other => return self.poison(format!("a content block of type {other:?}")),
                }
                let (Ok(id), Ok(name), Ok(text)) = (
                    string(block, "id"),
                    string(block, "name"),
                    string(block, "text"),
                ) else {
                    return self.poison("a content block with a field that is not a string");
                };
                self.blocks.push(Block {
                    kind: kind.to_owned(),
                    id,
                    name,
                    text,
                    start_input: block.get("input").cloned(),
                    ..Block::default()
                });
            }
            "content_block_delta" => {
                let Some(block) = index
                    .and_then(|i| self.blocks.get_mut(i))
                    .filter(|b| !b.stopped)
                else {
                    return self.poison("a delta for no open content block");
                };
                let delta = data.get("delta").unwrap_or(&Value::Null);
                let delta_kind = delta
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match (block.kind.as_str(), delta_kind) {
                    ("tool_use", "input_json_delta") => match delta.get("partial_json") {
                        Some(Value::String(part)) => {
                            block.input.push_str(part);
                            block.deltas = true;
                        }
                        _ => self.poison("partial JSON that is not a string"),
                    },
                    ("text", "text_delta" | "citations_delta")
                    | ("thinking", "thinking_delta" | "signature_delta")
                    | ("redacted_thinking", "signature_delta") => {
                        if let Some(Value::String(part)) = delta.get("text") {
                            block.text.push_str(part);
                        }
                    }
                    _ => {
                        let why = format!("a {delta_kind:?} delta in a {:?} block", block.kind);
                        self.poison(why);
                    }
                }
            }
            "content_block_stop" => match index.and_then(|i| self.blocks.get_mut(i)) {
                Some(block) if !block.stopped => block.stopped = true,
                _ => self.poison("a stop for no open content block"),
            },
            "message_delta" => {
                if let Some(reason) = data.get("delta").and_then(|d| d.get("stop_reason")) {
                    self.stop_reason = Some(reason.clone());
                }
                if let Some(output) = data
                    .get("usage")
                    .and_then(|u| u.get("output_tokens"))
                    .and_then(Value::as_u64)
                {
                    let input = self.usage.map_or(0, |(input, _)| input);
                    self.usage = Some((input, output));
                }
            }
            "message_stop" => self.done = true,
            other => self.poison(format!("an event of type {other:?}")),
        }
    }

    fn responses_event(&mut self, data: &Value) {
        let kind = data.get("type").and_then(Value::as_str).unwrap_or_default();
        let index = data
            .get("output_index")
            .and_then(Value::as_u64)
            .map(|i| i as usize);
        match kind {
            "response.created" | "response.in_progress" | "response.queued" => {
                let response = data.get("response").unwrap_or(&Value::Null);
                if !array(response, "output").is_empty() {
                    self.poison("a response that starts with output");
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                let item = data.get("item").unwrap_or(&Value::Null);
                let Some(index) = index.filter(|i| *i < MAX_SLOTS) else {
                    return self.poison("an output item without a usable index");
                };
                match responses_item(index, item) {
                    Ok(None) => {}
                    Ok(Some(call)) => {
                        self.holding = true;
                        self.responses_calls.push(call);
                    }
                    Err(why) => self.poison(why),
                }
            }
            // Text of message items, and reasoning.
            "response.content_part.added"
            | "response.content_part.done"
            | "response.output_text.delta"
            | "response.output_text.done"
            | "response.output_text.annotation.added"
            | "response.refusal.delta"
            | "response.refusal.done"
            | "response.reasoning_summary_part.added"
            | "response.reasoning_summary_part.done"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_summary_text.done"
            | "response.reasoning_text.delta"
            | "response.reasoning_text.done" => {}
            // A call's arguments as they stream: they belong to an item already held (its
            // final version is what is checked).
            "response.function_call_arguments.delta"
            | "response.function_call_arguments.done"
            | "response.custom_tool_call_input.delta"
            | "response.custom_tool_call_input.done" => self.holding = true,
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.done = true;
                let response = data.get("response").cloned().unwrap_or(Value::Null);
                self.usage = usage(ApiKind::Responses, &response).or(self.usage);
                for (i, item) in array(&response, "output").iter().enumerate() {
                    match responses_item(i, item) {
                        Ok(None) => {}
                        Ok(Some(call)) => {
                            self.holding = true;
                            self.responses_calls.push(call);
                        }
                        Err(why) => return self.poison(why),
                    }
                }
                self.response = Some(response);
            }
            "error" => self.done = true,
            other => self.poison(format!("an event of type {other:?}")),
        }
    }

    /// The reply's tool calls, complete: every version of each (a Responses call's added,
    /// done and final items are each checked, and a slot is blocked when any of them is).
    pub fn calls(&self) -> Vec<Call> {
        match self.kind {
            ApiKind::Chat => {
                self.chat
                    .choices
                    .iter()
                    .enumerate()
                    .flat_map(|(c, choice)| {
                        let calls = choice.calls.iter().enumerate().map(
                            move |(i, (_, name, arguments))| Call {
                                slot: (c, i),
                                name: name.clone(),
                                arguments: arguments.clone(),
                            },
                        );
                        let legacy = choice.legacy.iter().map(move |(name, arguments)| Call {
                            slot: (c, LEGACY_CALL),
                            name: name.clone(),
                            arguments: arguments.clone(),
                        });
                        calls.chain(legacy)
                    })
                    .collect()
            }
            ApiKind::Messages => self
                .blocks
                .iter()
                .enumerate()
                .filter(|(_, block)| block.kind == "tool_use")
                .map(|(i, block)| Call {
                    slot: (0, i),
                    name: block.name.clone(),
                    arguments: block_input(block),
                })
                .collect(),
            ApiKind::Responses => {
                let mut calls: Vec<Call> = Vec::new();
                for call in &self.responses_calls {
                    if !calls.contains(call) {
                        calls.push(call.clone());
                    }
                }
                calls
            }
        }
    }

    /// The reply as one whole body, for the audit log.
    pub fn reassembled(&self) -> Value {
        match self.kind {
            ApiKind::Chat => {
                let first = self.chat.first.clone().unwrap_or(Value::Null);
                let choices: Vec<Value> = self
                    .chat
                    .choices
                    .iter()
                    .enumerate()
                    .map(|(index, choice)| {
                        let mut message = Map::new();
                        message.insert("role".into(), json!("assistant"));
                        message.insert("content".into(), json!(choice.content));
                        if !choice.calls.is_empty() {
                            message.insert(
                                "tool_calls".into(),
                                Value::Array(
                                    choice
                                        .calls
                                        .iter()
                                        .map(|(id, name, arguments)| {
                                            json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
                                        })
                                        .collect(),
                                ),
                            );
                        }
                        if let Some((name, arguments)) = &choice.legacy {
                            message.insert("function_call".into(), json!({"name": name, "arguments": arguments}));
                        }
                        json!({"index": index, "message": message, "finish_reason": choice.finish_reason})
                    })
                    .collect();
                json!({
                    "id": first.get("id"),
                    "object": "chat.completion",
                    "model": first.get("model"),
                    "choices": choices,
                    "usage": self.usage.map(|(i, o)| json!({"prompt_tokens": i, "completion_tokens": o})),
                })
            }
            ApiKind::Messages => {
                let mut message = self.message.clone().unwrap_or_else(|| json!({}));
                let content: Vec<Value> = self
                    .blocks
                    .iter()
                    .map(|block| match block.kind.as_str() {
                        "tool_use" => json!({
                            "type": "tool_use",
                            "id": block.id,
                            "name": block.name,
                            "input": serde_json::from_str::<Value>(&block_input(block))
                                .unwrap_or_else(|_| Value::String(block_input(block))),
                        }),
                        kind => json!({"type": kind, "text": block.text}),
                    })
                    .collect();
                if let Some(object) = message.as_object_mut() {
                    object.insert("content".into(), Value::Array(content));
                    if let Some(reason) = &self.stop_reason {
                        object.insert("stop_reason".into(), reason.clone());
                    }
                    if let Some((input, output)) = self.usage {
                        object.insert(
                            "usage".into(),
                            json!({"input_tokens": input, "output_tokens": output}),
                        );
                    }
                }
                message
            }
            ApiKind::Responses => self.response.clone().unwrap_or(Value::Null),
        }
    }

    /// The held events with the blocked calls replaced by text. Events of calls not blocked
    /// go as they came.
    pub fn rewrite(&self, held: Vec<SseEvent>, blocked: &[(Call, String)]) -> Vec<SseEvent> {
        if blocked.is_empty() {
            return held;
        }
        match self.kind {
            ApiKind::Chat => self.rewrite_chat(held, blocked),
            ApiKind::Messages => rewrite_messages(held, blocked, &self.blocks),
            ApiKind::Responses => rewrite_responses(held, blocked),
        }
    }

    fn rewrite_chat(&self, held: Vec<SseEvent>, blocked: &[(Call, String)]) -> Vec<SseEvent> {
        let is_blocked =
            |choice: usize, index: usize| blocked.iter().any(|(b, _)| b.slot == (choice, index));
        // Calls that stay, renumbered densely per choice (clients fill a list by index).
        let renumber = |choice: usize, index: usize| -> Option<usize> {
            if is_blocked(choice, index) {
                return None;
            }
            Some((0..index).filter(|i| !is_blocked(choice, *i)).count())
        };
        let all_blocked = |choice: usize| {
            self.chat.choices.get(choice).is_none_or(|c| {
                (0..c.calls.len()).all(|i| is_blocked(choice, i))
                    && (c.legacy.is_none() || is_blocked(choice, LEGACY_CALL))
            })
        };
        let mut out = Vec::new();
        let mut said = std::collections::BTreeSet::new();
        for event in held {
            let Ok(mut chunk) = serde_json::from_str::<Value>(&event.data) else {
                out.push(event);
                continue;
            };
            let mut changed = false;
            let mut refusals = Vec::new();
            if let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) {
                for choice in choices.iter_mut() {
                    let c = choice.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                    let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
                        continue;
                    };
                    if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        calls.retain_mut(|call| {
                            let i = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                            if is_blocked(c, i) && said.insert((c, i)) {
                                let text = &blocked
                                    .iter()
                                    .find(|(b, _)| b.slot == (c, i))
                                    .expect("blocked")
                                    .1;
                                refusals.push((c, text.clone()));
                            }
                            match renumber(c, i) {
                                Some(new) => {
                                    call["index"] = json!(new);
                                    true
                                }
                                None => false,
                            }
                        });
                        changed = true;
                        if calls.is_empty() {
                            delta.remove("tool_calls");
                        }
                    }
                    if delta.contains_key("function_call") && is_blocked(c, LEGACY_CALL) {
                        if said.insert((c, LEGACY_CALL)) {
                            let text = &blocked
                                .iter()
                                .find(|(b, _)| b.slot == (c, LEGACY_CALL))
                                .expect("blocked")
                                .1;
                            refusals.push((c, text.clone()));
                        }
                        delta.remove("function_call");
                        changed = true;
                    }
                    if matches!(
                        choice.get("finish_reason").and_then(Value::as_str),
                        Some("tool_calls" | "function_call")
                    ) && all_blocked(c)
                    {
                        choice["finish_reason"] = json!("stop");
                        changed = true;
                    }
                }
            }
            for (c, text) in refusals {
                let mut inserted = self.chat.first.clone().unwrap_or_else(|| json!({}));
                if let Some(object) = inserted.as_object_mut() {
                    object.remove("usage");
                    object.insert(
                        "choices".into(),
                        json!([{"index": c, "delta": {"content": text}, "finish_reason": null}]),
                    );
                }
                out.push(SseEvent::new(None, &inserted.to_string()));
            }
            if !changed {
                out.push(event);
                continue;
            }
            let empty = chunk
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|choices| {
                    choices.iter().all(|choice| {
                        choice.get("finish_reason").is_none_or(Value::is_null)
                            && choice
                                .get("delta")
                                .and_then(Value::as_object)
                                .is_none_or(|d| d.iter().all(|(k, v)| k == "role" || v.is_null()))
                    })
                })
                && chunk.get("usage").is_none_or(Value::is_null);
            if !empty {
                out.push(SseEvent::new(event.event.as_deref(), &chunk.to_string()));
            }
        }
        out
    }
}

/// A tool_use block's input as the client's SDK will have it: the streamed JSON when deltas
/// came, else the input given at the start.
fn block_input(block: &Block) -> String {
    if block.deltas {
        block.input.clone()
    } else {
        block
            .start_input
            .as_ref()
            .map_or_else(|| "{}".to_owned(), Value::to_string)
    }
}

fn rewrite_messages(
    held: Vec<SseEvent>,
    blocked: &[(Call, String)],
    blocks: &[Block],
) -> Vec<SseEvent> {
    let remaining = blocks
        .iter()
        .enumerate()
        .any(|(i, b)| b.kind == "tool_use" && !blocked.iter().any(|(c, _)| c.slot.1 == i));
    let mut out = Vec::new();
    for event in held {
        let Ok(mut data) = serde_json::from_str::<Value>(&event.data) else {
            out.push(event);
            continue;
        };
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let refusal = blocked
            .iter()
            .find(|(c, _)| c.slot.1 == index)
            .map(|(_, t)| t);
        match (kind.as_str(), refusal) {
            ("content_block_start", Some(text)) => {
                out.push(SseEvent::new(
                    Some("content_block_start"),
                    &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}).to_string(),
                ));
                out.push(SseEvent::new(
                    Some("content_block_delta"),
                    &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}).to_string(),
                ));
            }
            ("content_block_delta", Some(_)) => {}
            ("message_delta", _) if !remaining => {
                if data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                    == Some("tool_use")
                {
                    data["delta"]["stop_reason"] = json!("end_turn");
                    out.push(SseEvent::new(event.event.as_deref(), &data.to_string()));
                } else {
                    out.push(event);
                }
            }
            _ => out.push(event),
        }
    }
    out
}

fn rewrite_responses(held: Vec<SseEvent>, blocked: &[(Call, String)]) -> Vec<SseEvent> {
    let mut out: Vec<SseEvent> = Vec::new();
    let refusal = |index: usize| {
        blocked
            .iter()
            .find(|(c, _)| c.slot.1 == index)
            .map(|(_, t)| t)
    };
    let mut sequence: Option<u64> = None;
    let mut push = |out: &mut Vec<SseEvent>, mut data: Value| {
        // Sequence numbers run on from the first held event, whatever was replaced.
        if let Some(object) = data.as_object_mut()
            && object.contains_key("sequence_number")
        {
            let next = sequence.map_or_else(
                || object["sequence_number"].as_u64().unwrap_or(0),
                |s| s + 1,
            );
            object.insert("sequence_number".into(), json!(next));
            sequence = Some(next);
        }
        let name = data.get("type").and_then(Value::as_str).map(str::to_owned);
        out.push(SseEvent::new(name.as_deref(), &data.to_string()));
    };
    for event in held {
        let Ok(mut data) = serde_json::from_str::<Value>(&event.data) else {
            out.push(event);
            continue;
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let index = data
            .get("output_index")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize;
        match (kind.as_str(), refusal(index)) {
            ("response.output_item.added", Some(text)) => {
                let item = data.get("item").cloned().unwrap_or(Value::Null);
                let message = responses_message(&item, text);
                let id = message["id"].clone();
                let mut added = message.clone();
                added["status"] = json!("in_progress");
                added["content"] = json!([]);
                let sequence_number = data.get("sequence_number").cloned().unwrap_or(json!(0));
                push(
                    &mut out,
                    json!({"type": "response.output_item.added", "sequence_number": sequence_number, "output_index": index, "item": added}),
                );
                let part = json!({"type": "output_text", "text": "", "annotations": []});
                push(
                    &mut out,
                    json!({"type": "response.content_part.added", "sequence_number": 0, "item_id": id, "output_index": index, "content_index": 0, "part": part}),
                );
                push(
                    &mut out,
                    json!({"type": "response.output_text.delta", "sequence_number": 0, "item_id": id, "output_index": index, "content_index": 0, "delta": text}),
                );
                push(
                    &mut out,
                    json!({"type": "response.output_text.done", "sequence_number": 0, "item_id": id, "output_index": index, "content_index": 0, "text": text}),
                );
                push(
                    &mut out,
                    json!({"type": "response.content_part.done", "sequence_number": 0, "item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}),
                );
            }
            ("response.output_item.done", Some(text)) => {
                let item = data.get("item").cloned().unwrap_or(Value::Null);
                data["item"] = responses_message(&item, text);
                push(&mut out, data);
            }
            (
                "response.function_call_arguments.delta"
                | "response.function_call_arguments.done"
                | "response.custom_tool_call_input.delta"
                | "response.custom_tool_call_input.done",
                Some(_),
            ) => {}
            ("response.completed" | "response.incomplete" | "response.failed", _) => {
                if let Some(response) = data.get_mut("response") {
                    block(ApiKind::Responses, response, blocked);
                }
                push(&mut out, data);
            }
            _ => push(&mut out, data),
        }
    }
    out
}
