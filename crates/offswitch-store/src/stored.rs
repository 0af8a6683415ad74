//! The stored forms of the domain types, versioned with the schema and converted explicitly.
//!
//! The domain types in `offswitch_core::trial` may gain fields or rename variants; the bytes in
//! a database written last month must still read. So nothing here derives its stored shape from
//! a domain type: each `*V1` type is spelled out, and `from_domain`/`into_domain` are plain
//! matches that the compiler checks when a domain type changes.

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
