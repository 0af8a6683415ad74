//! The Responses API over a chat-completions upstream: what a coding agent speaking the
//! Responses API (Codex CLI) needs in front of a local server that has only chat completions
//! (`offswitch serve-model`, llama.cpp, vLLM, Ollama). Requests are translated to chat
//! completions; the upstream's reply is checked as chat (the same rules, the same hold), and
//! what is released is translated back: a whole response, or the Responses API's stream events.
//! Anything of a request that has no chat-completions equivalent is refused with a message that
//! names it, never dropped silently.

use serde_json::{Map, Value, json};

use crate::sse::SseEvent;

/// A Responses API request as a chat-completions request; `Err` names what cannot be said in
/// chat completions.
pub fn chat_request(request: &Value) -> Result<Value, String> {
    // Every key is translated, or known to change nothing a chat server could honour; any other
    // (a previous response to continue from, a structured output format, ...) is refused.
    const TRANSLATED: &[&str] = &[
        "model",
        "instructions",
        "input",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "user",
        "stream",
    ];
    const DROPPED: &[&str] = &[
        "store",
        "include",
        "prompt_cache_key",
        "metadata",
        "reasoning",
        "service_tier",
        "safety_identifier",
    ];
    for (key, value) in request.as_object().into_iter().flatten() {
        if !TRANSLATED.contains(&key.as_str())
            && !DROPPED.contains(&key.as_str())
            && !value.is_null()
        {
            return Err(format!("`{key}` has no chat-completions equivalent"));
        }
    }
    let mut messages: Vec<Value> = Vec::new();
    match request.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(instructions)) => {
            messages.push(json!({"role": "system", "content": instructions}));
        }
        Some(_) => return Err("`instructions` that are not text".into()),
    }
    match request.get("input") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for item in items {
                input_item(item, &mut messages)?;
            }
        }
        Some(_) => return Err("`input` is neither text nor a list of items".into()),
    }
    let mut chat = Map::new();
    chat.insert(
        "model".into(),
        request.get("model").cloned().unwrap_or(Value::Null),
    );
    chat.insert("messages".into(), Value::Array(messages));
    if request
        .get("tools")
        .is_some_and(|t| !t.is_null() && !t.is_array())
    {
        return Err("`tools` that is not a list".into());
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        let mut translated = Vec::new();
        for tool in tools {
            match tool.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut function = Map::new();
                    for key in ["name", "description", "parameters", "strict"] {
                        if let Some(value) = tool.get(key) {
                            function.insert(key.into(), value.clone());
                        }
                    }
                    translated.push(json!({"type": "function", "function": function}));
                }
                other => {
                    return Err(format!(
                        "a tool of type {other:?} has no chat-completions equivalent"
                    ));
                }
            }
        }
        if !translated.is_empty() {
            chat.insert("tools".into(), Value::Array(translated));
        }
    }
    match request.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(choice)) => {
            chat.insert("tool_choice".into(), json!(choice));
        }
        Some(choice) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            chat.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": choice.get("name")}}),
            );
        }
        Some(_) => return Err("a `tool_choice` that has no chat-completions equivalent".into()),
    }
    for (from, to) in [
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("user", "user"),
    ] {
        if let Some(value) = request.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.into(), value.clone());
        }
    }
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        chat.insert("stream".into(), json!(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(chat))
}

/// One input item as chat messages (consecutive calls join one assistant message).
fn input_item(item: &Value, messages: &mut Vec<Value>) -> Result<(), String> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("developer") => "system",
                Some(role @ ("user" | "assistant" | "system")) => role,
                other => return Err(format!("a message with role {other:?}")),
            };
            let content = match item.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match part.get("type").and_then(Value::as_str) {
                            Some("input_text" | "output_text" | "text") => match part.get("text") {
                                Some(Value::String(part)) => text.push_str(part),
                                _ => return Err("a text part whose text is not text".into()),
                            },
                            other => {
                                return Err(format!(
                                    "content of type {other:?} has no chat-completions equivalent here"
                                ));
                            }
                        }
                    }
                    text
                }
                None | Some(Value::Null) => String::new(),
                Some(_) => return Err("message content that is neither text nor parts".into()),
            };
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call = json!({
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            });
            let joins = messages.last().is_some_and(|last| {
                last["role"] == "assistant" && last.get("tool_calls").is_some()
            });
            if joins {
                if let Some(calls) = messages
                    .last_mut()
                    .and_then(|last| last.get_mut("tool_calls"))
                    .and_then(Value::as_array_mut)
                {
                    calls.push(call);
                }
            } else {
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                None | Some(Value::Null) => String::new(),
                Some(_) => return Err("a function call output that is not text".into()),
            };
            messages.push(
                json!({"role": "tool", "tool_call_id": item.get("call_id"), "content": output}),
            );
        }
        // Reasoning the client replays has no chat-completions equivalent and carries nothing
        // a chat server could use.
        "reasoning" => {}
        other => {
            return Err(format!(
                "an input item of type {other:?} has no chat-completions equivalent"
            ));
        }
    }
    Ok(())
}

/// A whole chat completion as a Responses API response.
pub fn response_from_chat(chat: &Value, request: &Value) -> Value {
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let id = chat["id"].as_str().unwrap_or("chat");
    let mut output = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(message_item(&format!("msg_{id}"), text, "completed"));
    }
    if let Some(refusal) = message["refusal"].as_str().filter(|t| !t.is_empty()) {
        output.push(json!({
            "type": "message", "id": format!("msg_{id}_refusal"), "status": "completed", "role": "assistant",
            "content": [{"type": "refusal", "refusal": refusal}],
        }));
    }
    if let Some(call) = message.get("function_call").filter(|c| !c.is_null()) {
        output.push(call_item(
            &format!("call_{id}"),
            call["name"].as_str().unwrap_or_default(),
            call["arguments"].as_str().unwrap_or_default(),
        ));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        output.push(call_item(
            call["id"].as_str().unwrap_or_default(),
            call["function"]["name"].as_str().unwrap_or_default(),
            call["function"]["arguments"].as_str().unwrap_or_default(),
        ));
    }
    let reason = choice["finish_reason"].as_str().unwrap_or_default();
    let status = if matches!(reason, "length" | "content_filter") {
        "incomplete"
    } else {
        "completed"
    };
    let usage = chat.get("usage").filter(|u| !u.is_null()).map(|usage| {
        let input = usage["prompt_tokens"].as_u64().unwrap_or(0);
        let output = usage["completion_tokens"].as_u64().unwrap_or(0);
        json!({"input_tokens": input, "output_tokens": output, "total_tokens": input + output,
               "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}})
    });
    json!({
        "id": format!("resp_{id}"),
        "object": "response",
        "created_at": chat["created"].as_u64().unwrap_or(0),
        "status": status,
        "incomplete_details": match reason {
            "length" => json!({"reason": "max_output_tokens"}),
            "content_filter" => json!({"reason": "content_filter"}),
            _ => Value::Null,
        },
        "error": null,
        "model": chat["model"],
        "instructions": request.get("instructions").cloned().unwrap_or(Value::Null),
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls").and_then(Value::as_bool).unwrap_or(true),
        "tool_choice": request.get("tool_choice").cloned().unwrap_or(json!("auto")),
        "tools": request.get("tools").cloned().unwrap_or(json!([])),
        "temperature": request.get("temperature").cloned().unwrap_or(Value::Null),
        "top_p": request.get("top_p").cloned().unwrap_or(Value::Null),
        "metadata": {},
        "usage": usage,
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

fn call_item(call_id: &str, name: &str, arguments: &str) -> Value {
    json!({
        "type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
        "name": name, "arguments": arguments, "status": "completed",
    })
}

/// Chat stream events (already checked) in, Responses API stream events out.
pub struct StreamTranslator {
    request: Value,
    sequence: u64,
    started: bool,
    id: String,
    created: u64,
    model: Value,
    /// The output items so far: (kind, the item's text or arguments, name, call id), by
    /// output index; the message (if any) first.
    text: Option<(usize, String)>,
    calls: Vec<(usize, String, String, String)>,
    /// The chat tool-call index of each call, to its slot in `calls`.
    call_slots: Vec<(u64, usize)>,
    next_output: usize,
    finish_reason: Option<String>,
    usage: Option<Value>,
    finished: bool,
}

impl StreamTranslator {
    pub fn new(request: &Value) -> StreamTranslator {
        StreamTranslator {
            request: request.clone(),
            sequence: 0,
            started: false,
            id: "resp".into(),
            created: 0,
            model: Value::Null,
            text: None,
            calls: Vec::new(),
            call_slots: Vec::new(),
            next_output: 0,
            finish_reason: None,
            usage: None,
            finished: false,
        }
    }

    fn event(&mut self, mut data: Value) -> SseEvent {
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let name = data["type"].as_str().unwrap_or_default().to_owned();
        SseEvent::new(Some(&name), &data.to_string())
    }

    fn response(&self, status: &str, output: Vec<Value>) -> Value {
        let chat = json!({
            "id": self.id.trim_start_matches("resp_"), "created": self.created, "model": self.model,
            "choices": [{"finish_reason": self.finish_reason, "message": {}}],
            "usage": self.usage,
        });
        let mut response = response_from_chat(&chat, &self.request);
        response["status"] = json!(status);
        response["output"] = Value::Array(output);
        if status == "in_progress" {
            response["usage"] = Value::Null;
        }
        response
    }

    /// Whether the response's last event was written.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// One released chat event, as Responses events.
    pub fn translate(&mut self, event: &SseEvent) -> Vec<SseEvent> {
        let data = event.data.trim();
        let mut out = Vec::new();
        if data == "[DONE]" {
            return self.finish();
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return out;
        };
        if !self.started {
            self.started = true;
            self.id = format!("resp_{}", chunk["id"].as_str().unwrap_or("chat"));
            self.created = chunk["created"].as_u64().unwrap_or(0);
            self.model = chunk["model"].clone();
            let response = self.response("in_progress", Vec::new());
            out.push(self.event(json!({"type": "response.created", "response": response})));
            let response = self.response("in_progress", Vec::new());
            out.push(self.event(json!({"type": "response.in_progress", "response": response})));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(usage.clone());
        }
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            if choice["index"].as_u64().unwrap_or(0) != 0 {
                continue;
            }
            let delta = &choice["delta"];
            if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                let id = format!("msg_{}", self.id);
                if self.text.is_none() {
                    let index = self.next_output;
                    self.next_output += 1;
                    self.text = Some((index, String::new()));
                    let mut item = message_item(&id, "", "in_progress");
                    item["content"] = json!([]);
                    out.push(self.event(json!({"type": "response.output_item.added", "output_index": index, "item": item})));
                    out.push(self.event(json!({"type": "response.content_part.added", "item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})));
                }
                let (index, so_far) = self.text.as_mut().expect("started");
                so_far.push_str(text);
                let index = *index;
                out.push(self.event(json!({"type": "response.output_text.delta", "item_id": id, "output_index": index, "content_index": 0, "delta": text})));
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let chat_index = call["index"].as_u64().unwrap_or(0);
                let slot = match self.call_slots.iter().find(|(i, _)| *i == chat_index) {
                    Some((_, slot)) => *slot,
                    None => {
                        let index = self.next_output;
                        self.next_output += 1;
                        let call_id = call["id"].as_str().unwrap_or_default().to_owned();
                        let name = call["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        self.calls
                            .push((index, String::new(), name.clone(), call_id.clone()));
                        self.call_slots.push((chat_index, self.calls.len() - 1));
                        let mut item = call_item(&call_id, &name, "");
                        item["status"] = json!("in_progress");
                        out.push(self.event(json!({"type": "response.output_item.added", "output_index": index, "item": item})));
                        self.calls.len() - 1
                    }
                };
                if let Some(part) = call["function"]["arguments"]
                    .as_str()
                    .filter(|p| !p.is_empty())
                {
                    self.calls[slot].1.push_str(part);
                    let (index, _, _, call_id) = self.calls[slot].clone();
                    out.push(self.event(json!({"type": "response.function_call_arguments.delta", "item_id": format!("fc_{call_id}"), "output_index": index, "delta": part})));
                }
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish_reason = Some(reason.to_owned());
            }
        }
        out
    }

    /// The end of the reply: every item done, then the whole response.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.finished = true;
        let mut output: Vec<(usize, Value)> = Vec::new();
        if let Some((index, text)) = self.text.take() {
            let id = format!("msg_{}", self.id);
            out.push(self.event(json!({"type": "response.output_text.done", "item_id": id, "output_index": index, "content_index": 0, "text": text})));
            out.push(self.event(json!({"type": "response.content_part.done", "item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}})));
            let item = message_item(&id, &text, "completed");
            out.push(self.event(
                json!({"type": "response.output_item.done", "output_index": index, "item": item}),
            ));
            output.push((index, item));
        }
        for (index, arguments, name, call_id) in std::mem::take(&mut self.calls) {
            out.push(self.event(json!({"type": "response.function_call_arguments.done", "item_id": format!("fc_{call_id}"), "output_index": index, "arguments": arguments})));
            let item = call_item(&call_id, &name, &arguments);
            out.push(self.event(
                json!({"type": "response.output_item.done", "output_index": index, "item": item}),
            ));
            output.push((index, item));
        }
        output.sort_by_key(|(index, _)| *index);
        let status = if self.finish_reason.as_deref() == Some("length") {
            "incomplete"
        } else {
            "completed"
        };
        let response = self.response(status, output.into_iter().map(|(_, item)| item).collect());
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        out.push(self.event(json!({"type": kind, "response": response})));
        out
    }
}
