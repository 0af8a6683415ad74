//! The three wire formats the proxy speaks, each as the client and the upstream write it:
//! OpenAI chat completions, the OpenAI Responses API and Anthropic Messages. For each, where
//! the tool calls of a reply are (whole, or as stream events), how to replace a blocked call
//! with text the agent can read, the token usage, and a reassembled copy of a streamed reply
//! for the audit log.
//!
//! Streams are held, not scanned on the fly: from the first event of the first tool call to
//! the end of the reply, nothing is released, so no part of an unchecked call reaches the
//! client. Text before it flows as it arrives.

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

/// One tool call of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Where it is in the reply (choice and call index, output index, content block index).
    pub slot: (usize, usize),
    pub name: String,
    /// The arguments as the model wrote them (JSON text).
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

/// Every string in a JSON value, decoded, one per line: what a pattern over a request or over
/// a call's arguments reads (escapes in the JSON text cannot hide anything from it).
pub fn strings(value: &Value) -> String {
    fn walk(value: &Value, out: &mut String) {
        match value {
            Value::String(text) => {
                out.push_str(text);
                out.push('\n');
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            Value::Object(map) => map.values().for_each(|item| walk(item, out)),
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

/// The tool calls of a whole (not streamed) reply.
pub fn calls(kind: ApiKind, body: &Value) -> Vec<Call> {
    let mut calls = Vec::new();
    match kind {
        ApiKind::Chat => {
            for (c, choice) in array(body, "choices").iter().enumerate() {
                let message = choice.get("message").unwrap_or(&Value::Null);
                for (i, call) in array(message, "tool_calls").iter().enumerate() {
                    let function = call.get("function").unwrap_or(&Value::Null);
                    calls.push(Call {
                        slot: (c, i),
                        name: text(function, "name"),
                        arguments: text(function, "arguments"),
                    });
                }
            }
        }
        ApiKind::Responses => {
            for (i, item) in array(body, "output").iter().enumerate() {
                if let Some(call) = responses_call(i, item) {
                    calls.push(call);
                }
            }
        }
        ApiKind::Messages => {
            for (i, block) in array(body, "content").iter().enumerate() {
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    calls.push(Call {
                        slot: (0, i),
                        name: text(block, "name"),
                        arguments: block.get("input").map(Value::to_string).unwrap_or_default(),
                    });
                }
            }
        }
    }
    calls
}

/// A Responses API output item that calls a tool: a function call (JSON arguments) or a
/// custom tool call (free-form input).
fn responses_call(index: usize, item: &Value) -> Option<Call> {
    match item.get("type").and_then(Value::as_str)? {
        "function_call" => Some(Call {
            slot: (0, index),
            name: text(item, "name"),
            arguments: text(item, "arguments"),
        }),
        "custom_tool_call" => Some(Call {
            slot: (0, index),
            name: text(item, "name"),
            arguments: text(item, "input"),
        }),
        _ => None,
    }
}

/// Replace the blocked calls of a whole reply (slot, refusal text) with text.
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
                if kept.is_empty() {
                    message.remove("tool_calls");
                    if let Some(choice) = choice.as_object_mut() {
                        choice.insert("finish_reason".into(), json!("stop"));
                    }
                } else {
                    message.insert("tool_calls".into(), Value::Array(kept));
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

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// What to do with a stream event now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Send it on.
    Release,
    /// Keep it until the reply's tool calls are complete and checked.
    Hold,
}

/// A streamed reply, event by event.
pub struct StreamState {
    kind: ApiKind,
    holding: bool,
    /// The reply is complete (its terminal event arrived).
    done: bool,
    chat: ChatStream,
    /// Messages: content blocks by index (type, name or text, input JSON text, id).
    blocks: Vec<Block>,
    /// Messages: `message_start`'s message.
    message: Option<Value>,
    stop_reason: Option<Value>,
    /// Responses: the final response object (`response.completed` and its kin).
    response: Option<Value>,
    /// Responses: the calls as their items finished.
    responses_calls: Vec<Call>,
    usage: Option<(u64, u64)>,
}

#[derive(Default)]
struct ChatStream {
    /// The first chunk (its id, model, created) for reassembly and inserted chunks.
    first: Option<Value>,
    /// Per choice: content text, tool calls by index (id, name, arguments), finish reason.
    choices: Vec<ChatChoice>,
}

#[derive(Default, Clone)]
struct ChatChoice {
    content: String,
    calls: Vec<(String, String, String)>,
    finish_reason: Option<String>,
}

#[derive(Default, Clone)]
struct Block {
    kind: String,
    id: String,
    name: String,
    text: String,
    input: String,
}

impl StreamState {
    pub fn new(kind: ApiKind) -> StreamState {
        StreamState {
            kind,
            holding: false,
            done: false,
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

    /// Whether a stream that ended without its terminal event still holds a complete reply:
    /// a chat stream whose every choice said why it finished (some servers send no `[DONE]`).
    pub fn complete_at_end(&self) -> bool {
        self.kind == ApiKind::Chat
            && !self.chat.choices.is_empty()
            && self.chat.choices.iter().all(|c| c.finish_reason.is_some())
    }

    /// Whether events are being held (a tool call has begun).
    pub fn holding(&self) -> bool {
        self.holding
    }

    pub fn usage(&self) -> Option<(u64, u64)> {
        self.usage
    }

    /// Take one event into account; whether it may go now.
    pub fn on_event(&mut self, event: &SseEvent) -> Flow {
        let data: Option<Value> = serde_json::from_str(&event.data).ok();
        match self.kind {
            ApiKind::Chat => self.chat_event(&event.data, data.as_ref()),
            ApiKind::Messages => self.messages_event(data.as_ref()),
            ApiKind::Responses => self.responses_event(data.as_ref()),
        }
        if self.holding {
            Flow::Hold
        } else {
            Flow::Release
        }
    }

    fn chat_event(&mut self, raw: &str, data: Option<&Value>) {
        if raw.trim() == "[DONE]" {
            self.done = true;
            return;
        }
        let Some(chunk) = data else { return };
        if self.chat.first.is_none() {
            self.chat.first = Some(chunk.clone());
        }
        if let Some(usage) = usage(ApiKind::Chat, chunk) {
            self.usage = Some(usage);
        }
        for choice in array(chunk, "choices") {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            if index >= 128 {
                continue;
            }
            if self.chat.choices.len() <= index {
                self.chat.choices.resize(index + 1, ChatChoice::default());
            }
            let state = &mut self.chat.choices[index];
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                state.content.push_str(text);
            }
            for call in array(delta, "tool_calls") {
                self.holding = true;
                let i = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                if i >= 1024 {
                    continue;
                }
                if state.calls.len() <= i {
                    state.calls.resize(i + 1, Default::default());
                }
                let slot = &mut state.calls[i];
                if let Some(id) = call.get("id").and_then(Value::as_str) {
                    slot.0.push_str(id);
                }
                let function = call.get("function").unwrap_or(&Value::Null);
                if let Some(name) = function.get("name").and_then(Value::as_str) {
                    slot.1.push_str(name);
                }
                if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
                    slot.2.push_str(arguments);
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                state.finish_reason = Some(reason.to_owned());
            }
        }
    }

    fn messages_event(&mut self, data: Option<&Value>) {
        let Some(data) = data else { return };
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        match data.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message_start" => {
                self.message = data.get("message").cloned();
                if let Some(message) = &self.message {
                    self.usage = usage(ApiKind::Messages, message).or(self.usage);
                }
            }
            "content_block_start" if index < 1024 => {
                if self.blocks.len() <= index {
                    self.blocks.resize(index + 1, Block::default());
                }
                let block = data.get("content_block").unwrap_or(&Value::Null);
                let kind = text(block, "type");
                if kind == "tool_use" {
                    self.holding = true;
                }
                self.blocks[index] = Block {
                    id: text(block, "id"),
                    name: text(block, "name"),
                    text: text(block, "text"),
                    input: String::new(),
                    kind,
                };
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                if let Some(block) = self.blocks.get_mut(index) {
                    if let Some(part) = delta.get("partial_json").and_then(Value::as_str) {
                        block.input.push_str(part);
                    }
                    if let Some(part) = delta.get("text").and_then(Value::as_str) {
                        block.text.push_str(part);
                    }
                }
            }
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
            _ => {}
        }
    }

    fn responses_event(&mut self, data: Option<&Value>) {
        let Some(data) = data else { return };
        match data.get("type").and_then(Value::as_str).unwrap_or_default() {
            "response.output_item.added"
                if data
                    .get("item")
                    .and_then(|item| responses_call(0, item))
                    .is_some() =>
            {
                self.holding = true;
            }
            "response.output_item.done" => {
                let index = data
                    .get("output_index")
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as usize;
                if let Some(call) = data
                    .get("item")
                    .and_then(|item| responses_call(index, item))
                {
                    self.responses_calls.push(call);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.done = true;
                self.response = data.get("response").cloned();
                if let Some(response) = &self.response {
                    self.usage = usage(ApiKind::Responses, response).or(self.usage);
                }
            }
            _ => {}
        }
    }

    /// The reply's tool calls, complete. For the Responses API, the final response's own list
    /// when it came (it is what the client's SDK reads), else the finished items.
    pub fn calls(&self) -> Vec<Call> {
        match self.kind {
            ApiKind::Chat => self
                .chat
                .choices
                .iter()
                .enumerate()
                .flat_map(|(c, choice)| {
                    choice
                        .calls
                        .iter()
                        .enumerate()
                        .map(move |(i, (_, name, arguments))| Call {
                            slot: (c, i),
                            name: name.clone(),
                            arguments: arguments.clone(),
                        })
                })
                .collect(),
            ApiKind::Messages => self
                .blocks
                .iter()
                .enumerate()
                .filter(|(_, block)| block.kind == "tool_use")
                .map(|(i, block)| Call {
                    slot: (0, i),
                    name: block.name.clone(),
                    arguments: if block.input.is_empty() {
                        "{}".into()
                    } else {
                        block.input.clone()
                    },
                })
                .collect(),
            ApiKind::Responses => {
                let mut calls = match &self.response {
                    Some(response) => calls(ApiKind::Responses, response),
                    None => Vec::new(),
                };
                for call in &self.responses_calls {
                    if !calls.iter().any(|c| c.slot == call.slot) {
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
                            "input": serde_json::from_str::<Value>(&block.input)
                                .unwrap_or_else(|_| Value::String(block.input.clone())),
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
        // Calls that stay, renumbered densely per choice (clients fill a list by index).
        let renumber = |choice: usize, index: usize| -> Option<usize> {
            if blocked.iter().any(|(b, _)| b.slot == (choice, index)) {
                return None;
            }
            Some(
                (0..index)
                    .filter(|i| !blocked.iter().any(|(b, _)| b.slot == (choice, *i)))
                    .count(),
            )
        };
        let all_blocked = |choice: usize| {
            self.chat
                .choices
                .get(choice)
                .is_none_or(|c| (0..c.calls.len()).all(|i| renumber(choice, i).is_none()))
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
                    if let Some(calls) = choice
                        .get_mut("delta")
                        .and_then(|d| d.get_mut("tool_calls"))
                        .and_then(Value::as_array_mut)
                    {
                        let before = calls.len();
                        calls.retain_mut(|call| {
                            let i = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                            if !said.contains(&(c, i))
                                && let Some((_, text)) =
                                    blocked.iter().find(|(b, _)| b.slot == (c, i))
                            {
                                said.insert((c, i));
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
                        changed |=
                            calls.len() != before || blocked.iter().any(|(b, _)| b.slot.0 == c);
                        if calls.is_empty()
                            && let Some(delta) =
                                choice.get_mut("delta").and_then(Value::as_object_mut)
                        {
                            delta.remove("tool_calls");
                        }
                    }
                    if choice.get("finish_reason").and_then(Value::as_str) == Some("tool_calls")
                        && all_blocked(c)
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
    let refusal = |index: usize| blocked.iter().find(|(c, _)| c.slot.1 == index);
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
        match kind.as_str() {
            "response.output_item.added" if refusal(index).is_some() => {
                let (call, text) = refusal(index).expect("checked");
                let _ = call;
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
            "response.output_item.done" if refusal(index).is_some() => {
                let (_, text) = refusal(index).expect("checked");
                let item = data.get("item").cloned().unwrap_or(Value::Null);
                data["item"] = responses_message(&item, text);
                push(&mut out, data);
            }
            "response.function_call_arguments.delta"
            | "response.function_call_arguments.done"
            | "response.custom_tool_call_input.delta"
            | "response.custom_tool_call_input.done"
                if refusal(index).is_some() => {}
            "response.completed" | "response.incomplete" | "response.failed" => {
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
