//! The stored forms of the domain types, versioned with the schema and converted explicitly.
//!
//! The domain types in `offswitch_core::trial` may gain fields or rename variants; the bytes in
//! a database written last month must still read. So nothing here derives its stored shape from
//! a domain type: each `*V1` type is spelled out, and `from_domain`/`into_domain` are plain
//! matches that the compiler checks when a domain type changes.

use offswitch_core::events::{Event, EventKind, EventSource, EventStream, FileOp, Loss, NetOp};
use offswitch_core::{FileChangeKind, Message, Outcome, Role, ToolCall, TranscriptEntry};
use serde::{Deserialize, Serialize};

/// One transcript entry as stored in `transcript_entries.body` (schema version 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryV1 {
    Message {
        role: String,
        content: String,
        #[serde(default)]
        tool_calls: Vec<ToolCallV1>,
        #[serde(default)]
        tool_call_id: Option<String>,
    },
    Exec {
        call_id: String,
        command: String,
        exit_code: Option<i32>,
        status: String,
        stdout: String,
        stderr: String,
        truncated_bytes: u64,
        wall_ms: u64,
    },
    ProtocolError {
        error: String,
    },
    BackendError {
        attempt: u32,
        error: String,
        retried: bool,
        // Added to the v1 body compatibly: absent in bodies written before, read as `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    Event {
        kind: String,
        detail: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolCallV1 {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl EntryV1 {
    pub fn kind(&self) -> &'static str {
        match self {
            EntryV1::Message { .. } => "message",
            EntryV1::Exec { .. } => "exec",
            EntryV1::ProtocolError { .. } => "protocol_error",
            EntryV1::BackendError { .. } => "backend_error",
            EntryV1::Event { .. } => "event",
        }
    }

    pub fn from_domain(entry: &TranscriptEntry) -> EntryV1 {
        match entry {
            TranscriptEntry::Message { message } => EntryV1::Message {
                role: role_name(message.role).to_owned(),
                content: message.content.clone(),
                tool_calls: message
                    .tool_calls
                    .iter()
                    .map(|call| ToolCallV1 {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                    })
                    .collect(),
                tool_call_id: message.tool_call_id.clone(),
            },
            TranscriptEntry::Exec {
                call_id,
                command,
                exit_code,
                status,
                stdout,
                stderr,
                truncated_bytes,
                wall_ms,
            } => EntryV1::Exec {
                call_id: call_id.clone(),
                command: command.clone(),
                exit_code: *exit_code,
                status: status.clone(),
                stdout: stdout.clone(),
                stderr: stderr.clone(),
                truncated_bytes: *truncated_bytes,
                wall_ms: *wall_ms,
            },
            TranscriptEntry::ProtocolError { error } => EntryV1::ProtocolError {
                error: error.clone(),
            },
            TranscriptEntry::BackendError {
                attempt,
                error,
                retried,
                kind,
                wait_ms,
            } => EntryV1::BackendError {
                attempt: *attempt,
                error: error.clone(),
                retried: *retried,
                kind: kind.clone(),
                wait_ms: *wait_ms,
            },
            TranscriptEntry::Event { kind, detail } => EntryV1::Event {
                kind: kind.clone(),
                detail: detail.clone(),
            },
        }
    }

    /// Back to the domain type; `Err` names what was not understood.
    pub fn into_domain(self) -> Result<TranscriptEntry, String> {
        Ok(match self {
            EntryV1::Message {
                role,
                content,
                tool_calls,
                tool_call_id,
            } => TranscriptEntry::Message {
                message: Message {
                    role: parse_role(&role)?,
                    content,
                    tool_calls: tool_calls
                        .into_iter()
                        .map(|call| ToolCall {
                            id: call.id,
                            name: call.name,
                            arguments: call.arguments,
                        })
                        .collect(),
                    tool_call_id,
                },
            },
            EntryV1::Exec {
                call_id,
                command,
                exit_code,
                status,
                stdout,
                stderr,
                truncated_bytes,
                wall_ms,
            } => TranscriptEntry::Exec {
                call_id,
                command,
                exit_code,
                status,
                stdout,
                stderr,
                truncated_bytes,
                wall_ms,
            },
            EntryV1::ProtocolError { error } => TranscriptEntry::ProtocolError { error },
            EntryV1::BackendError {
                attempt,
                error,
                retried,
                kind,
                wait_ms,
            } => TranscriptEntry::BackendError {
                attempt,
                error,
                retried,
                kind,
                wait_ms,
            },
            EntryV1::Event { kind, detail } => TranscriptEntry::Event { kind, detail },
        })
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

fn parse_role(name: &str) -> Result<Role, String> {
    Ok(match name {
        "system" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => return Err(format!("unknown message role {other:?}")),
    })
}

/// The outcome as the two columns `trials.outcome` and `trials.outcome_message`.
pub fn outcome_columns(outcome: &Outcome) -> (&'static str, Option<&str>) {
    match outcome {
        Outcome::Finished => ("finished", None),
        Outcome::ShutDown => ("shut_down", None),
        Outcome::TurnLimit => ("turn_limit", None),
        Outcome::TokenLimit => ("token_limit", None),
        Outcome::TimeLimit => ("time_limit", None),
        Outcome::SandboxLimit { limit } => ("sandbox_limit", Some(limit)),
        Outcome::BackendFailed { message } => ("backend_failed", Some(message)),
        Outcome::HarnessError { message } => ("harness_error", Some(message)),
    }
}

pub fn parse_outcome(name: &str, message: Option<String>) -> Result<Outcome, String> {
    Ok(match name {
        "finished" => Outcome::Finished,
        "shut_down" => Outcome::ShutDown,
        "turn_limit" => Outcome::TurnLimit,
        "token_limit" => Outcome::TokenLimit,
        "time_limit" => Outcome::TimeLimit,
        "sandbox_limit" => Outcome::SandboxLimit {
            limit: message.unwrap_or_default(),
        },
        "backend_failed" => Outcome::BackendFailed {
            message: message.unwrap_or_default(),
        },
        "harness_error" => Outcome::HarnessError {
            message: message.unwrap_or_default(),
        },
        other => return Err(format!("unknown outcome {other:?}")),
    })
}

pub fn file_change_kind_name(kind: FileChangeKind) -> &'static str {
    match kind {
        FileChangeKind::Created => "created",
        FileChangeKind::Modified => "modified",
        FileChangeKind::Deleted => "deleted",
        FileChangeKind::ModeChanged => "mode_changed",
        FileChangeKind::TypeChanged => "type_changed",
    }
}

pub fn parse_file_change_kind(name: &str) -> Result<FileChangeKind, String> {
    Ok(match name {
        "created" => FileChangeKind::Created,
        "modified" => FileChangeKind::Modified,
        "deleted" => FileChangeKind::Deleted,
        "mode_changed" => FileChangeKind::ModeChanged,
        "type_changed" => FileChangeKind::TypeChanged,
        other => return Err(format!("unknown file change kind {other:?}")),
    })
}

/// One loss of an event stream, as stored in the JSON array `event_streams.lost` (schema
/// version 5).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossV1 {
    /// `process` or `file`.
    pub source: String,
    pub count: u64,
    pub detail: String,
}

/// One event as stored in the JSON array `event_streams.events` (schema version 5): the
/// acting process, then `event` (the kind) and that kind's fields, the others absent. Flat
/// rather than a flattened enum, so reading 20,000 of them is one pass of derived code; the
/// kind's required fields are checked by [`EventV1::into_domain`]. Zero `ppid`, empty `exe`,
/// false `harness` and false `argv_truncated` are left out: they are most events' values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventV1 {
    pub time_us: u64,
    pub pid: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ppid: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exe: String,
    /// A command the harness ran in the sandbox, not the agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub harness: bool,
    /// `exec`, `fork`, `file`, `signal`, `net`, `exit` or `limit`.
    pub event: String,
    /// exec, file, open, refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// exec.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub argv_truncated: bool,
    /// fork.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<i32>,
    /// file (`create`, `write`, ...), net (`connect`, `bind`, `listen`, `send_to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// file, a rename's new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// net.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// net.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// refused: the syscall's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// refused: the errno's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(value: &i32) -> bool {
    *value == 0
}

impl EventV1 {
    pub fn from_domain(event: &Event) -> EventV1 {
        let common = EventV1 {
            time_us: event.time_us,
            pid: event.pid,
            ppid: event.ppid,
            exe: event.exe.clone(),
            harness: event.harness,
            ..EventV1::default()
        };
        match &event.kind {
            EventKind::Exec {
                path,
                binary,
                argv,
                argv_truncated,
            } => EventV1 {
                event: "exec".into(),
                path: Some(path.clone()),
                binary: Some(binary.clone()),
                argv: Some(argv.clone()),
                argv_truncated: *argv_truncated,
                ..common
            },
            EventKind::Fork { child } => EventV1 {
                event: "fork".into(),
                child: Some(*child),
                ..common
            },
            EventKind::File { op, path, to } => EventV1 {
                event: "file".into(),
                op: Some(file_op_name(*op).into()),
                path: Some(path.clone()),
                to: to.clone(),
                ..common
            },
            EventKind::Open { path } => EventV1 {
                event: "open".into(),
                path: Some(path.clone()),
                ..common
            },
            EventKind::Signal { signal, result } => EventV1 {
                event: "signal".into(),
                signal: Some(*signal),
                result: Some(result.clone()),
                ..common
            },
            EventKind::Net {
                op,
                address,
                protocol,
            } => EventV1 {
                event: "net".into(),
                op: Some(net_op_name(*op).into()),
                address: Some(address.clone()),
                protocol: Some(protocol.clone()),
                ..common
            },
            EventKind::Exit { status } => EventV1 {
                event: "exit".into(),
                status: Some(*status),
                ..common
            },
            EventKind::Limit { limit } => EventV1 {
                event: "limit".into(),
                limit: Some(limit.clone()),
                ..common
            },
            EventKind::Refused {
                syscall,
                error,
                path,
                to,
            } => EventV1 {
                event: "refused".into(),
                syscall: Some(syscall.clone()),
                error: Some(error.clone()),
                path: Some(path.clone()),
                to: to.clone(),
                ..common
            },
        }
    }

    /// Back to the domain type; `Err` names what is missing or not understood.
    pub fn into_domain(self) -> Result<Event, String> {
        fn required<T>(value: Option<T>, event: &str, field: &str) -> Result<T, String> {
            value.ok_or_else(|| format!("{event} event without {field}"))
        }
        let event = self.event.as_str();
        let kind = match event {
            "exec" => EventKind::Exec {
                path: required(self.path, event, "path")?,
                binary: required(self.binary, event, "binary")?,
                argv: required(self.argv, event, "argv")?,
                argv_truncated: self.argv_truncated,
            },
            "fork" => EventKind::Fork {
                child: required(self.child, event, "child")?,
            },
            "file" => EventKind::File {
                op: parse_file_op(&required(self.op, event, "op")?)?,
                path: required(self.path, event, "path")?,
                to: self.to,
            },
            "open" => EventKind::Open {
                path: required(self.path, event, "path")?,
            },
            "signal" => EventKind::Signal {
                signal: required(self.signal, event, "signal")?,
                result: required(self.result, event, "result")?,
            },
            "net" => EventKind::Net {
                op: parse_net_op(&required(self.op, event, "op")?)?,
                address: required(self.address, event, "address")?,
                protocol: required(self.protocol, event, "protocol")?,
            },
            "exit" => EventKind::Exit {
                status: required(self.status, event, "status")?,
            },
            "limit" => EventKind::Limit {
                limit: required(self.limit, event, "limit")?,
            },
            "refused" => EventKind::Refused {
                syscall: required(self.syscall, event, "syscall")?,
                error: required(self.error, event, "error")?,
                path: required(self.path, event, "path")?,
                to: self.to,
            },
            other => return Err(format!("unknown event kind {other:?}")),
        };
        Ok(Event {
            time_us: self.time_us,
            pid: self.pid,
            ppid: self.ppid,
            exe: self.exe,
            harness: self.harness,
            kind,
        })
    }
}

/// Which source's loss an event's absence is: file mutations are recorded by one kernel
/// mechanism, everything else (exec, fork, exit, signals, network, limits) by the other.
pub fn event_source(kind: &EventKind) -> EventSource {
    match kind {
        EventKind::File { .. } | EventKind::Open { .. } => EventSource::File,
        EventKind::Exec { .. }
        | EventKind::Fork { .. }
        | EventKind::Signal { .. }
        | EventKind::Net { .. }
        | EventKind::Exit { .. }
        | EventKind::Limit { .. }
        | EventKind::Refused { .. } => EventSource::Process,
    }
}

/// An event stream's columns in `event_streams`, bounded.
pub struct StreamColumns {
    /// JSON array of [`LossV1`]: the stream's own losses, then one per source for the events
    /// the bound left out.
    pub lost: String,
    /// JSON array of [`EventV1`].
    pub events: String,
    pub event_count: u64,
}

/// The stored copy of `stream`: at most `max_events` events and `max_bytes` bytes of event
/// JSON, process events before file events (a flood of file events cannot push the exec or
/// the signal that decided a label out of the copy), each source's earliest first, kept in
/// recorded order. What is left out is counted per source in a [`LossV1`] whose detail says
/// the labels were decided on the whole stream.
pub fn stream_columns(stream: &EventStream, max_events: usize, max_bytes: usize) -> StreamColumns {
    let mut scratch = Vec::new();
    let mut size = |event: &Event| {
        scratch.clear();
        serde_json::to_writer(&mut scratch, &EventV1::from_domain(event))
            .expect("an event of strings and integers always serialises");
        // The comma that separates it from the next.
        scratch.len() + 1
    };
    // How many of each source's earliest events fit, process events first.
    let (mut events_left, mut bytes_left) = (max_events, max_bytes.saturating_sub(2));
    let mut kept = [0usize; 2];
    let mut totals = [0usize; 2];
    for (slot, source) in [EventSource::Process, EventSource::File]
        .into_iter()
        .enumerate()
    {
        let mut full = false;
        for event in stream
            .events
            .iter()
            .filter(|event| event_source(&event.kind) == source)
        {
            totals[slot] += 1;
            if full {
                continue;
            }
            let bytes = size(event);
            if events_left == 0 || bytes > bytes_left {
                full = true;
                continue;
            }
            events_left -= 1;
            bytes_left -= bytes;
            kept[slot] += 1;
        }
    }
    let mut events = String::from("[");
    let mut seen = [0usize; 2];
    let mut event_count = 0;
    for event in &stream.events {
        let slot = match event_source(&event.kind) {
            EventSource::Process => 0,
            EventSource::File => 1,
        };
        seen[slot] += 1;
        if seen[slot] > kept[slot] {
            continue;
        }
        if event_count > 0 {
            events.push(',');
        }
        events.push_str(
            &serde_json::to_string(&EventV1::from_domain(event))
                .expect("an event of strings and integers always serialises"),
        );
        event_count += 1;
    }
    events.push(']');

    let mut lost: Vec<LossV1> = stream
        .lost
        .iter()
        .map(|loss| LossV1 {
            source: loss.source.name().to_owned(),
            count: loss.count,
            detail: loss.detail.clone(),
        })
        .collect();
    let total = stream.events.len();
    for (slot, source) in [EventSource::Process, EventSource::File]
        .into_iter()
        .enumerate()
    {
        let left_out = totals[slot] - kept[slot];
        if left_out > 0 {
            lost.push(LossV1 {
                source: source.name().to_owned(),
                count: left_out as u64,
                detail: format!(
                    "not in the stored copy, which keeps {event_count} of the stream's {total} \
                     events: at most {max_events} and {} MiB a stream, process events first; \
                     the labels were decided on all of them",
                    max_bytes >> 20
                ),
            });
        }
    }
    StreamColumns {
        lost: serde_json::to_string(&lost).expect("losses of strings and integers serialise"),
        events,
        event_count: event_count as u64,
    }
}

/// A stream read back from its columns; `Err` names what was not understood.
pub fn parse_stream(
    host: String,
    unavailable: Option<String>,
    lost: &str,
    events: &str,
) -> Result<EventStream, String> {
    let lost: Vec<LossV1> =
        serde_json::from_str(lost).map_err(|e| format!("losses are not v1 losses: {e}"))?;
    let events: Vec<EventV1> =
        serde_json::from_str(events).map_err(|e| format!("events are not v1 events: {e}"))?;
    Ok(EventStream {
        host,
        events: events
            .into_iter()
            .map(EventV1::into_domain)
            .collect::<Result<_, _>>()?,
        lost: lost
            .into_iter()
            .map(|loss| {
                Ok(Loss {
                    source: parse_event_source(&loss.source)?,
                    count: loss.count,
                    detail: loss.detail,
                })
            })
            .collect::<Result<_, String>>()?,
        unavailable,
    })
}

fn parse_event_source(name: &str) -> Result<EventSource, String> {
    Ok(match name {
        "process" => EventSource::Process,
        "file" => EventSource::File,
        other => return Err(format!("unknown event source {other:?}")),
    })
}

fn file_op_name(op: FileOp) -> &'static str {
    match op {
        FileOp::Create => "create",
        FileOp::Write => "write",
        FileOp::CloseWrite => "close_write",
        FileOp::Delete => "delete",
        FileOp::Rename => "rename",
        FileOp::Attrib => "attrib",
        FileOp::MakeDir => "mkdir",
        FileOp::RemoveDir => "rmdir",
    }
}

fn parse_file_op(name: &str) -> Result<FileOp, String> {
    Ok(match name {
        "create" => FileOp::Create,
        "write" => FileOp::Write,
        "close_write" => FileOp::CloseWrite,
        "delete" => FileOp::Delete,
        "rename" => FileOp::Rename,
        "attrib" => FileOp::Attrib,
        "mkdir" => FileOp::MakeDir,
        "rmdir" => FileOp::RemoveDir,
        other => return Err(format!("unknown file operation {other:?}")),
    })
}

fn net_op_name(op: NetOp) -> &'static str {
    match op {
        NetOp::Connect => "connect",
        NetOp::Bind => "bind",
        NetOp::Listen => "listen",
        NetOp::SendTo => "send_to",
    }
}

fn parse_net_op(name: &str) -> Result<NetOp, String> {
    Ok(match name {
        "connect" => NetOp::Connect,
        "bind" => NetOp::Bind,
        "listen" => NetOp::Listen,
        "send_to" => NetOp::SendTo,
        other => return Err(format!("unknown network operation {other:?}")),
    })
}
