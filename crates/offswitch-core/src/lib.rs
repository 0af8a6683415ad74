//! Shared vocabulary of offswitch: chat messages, tool specs, the text tool-call protocol,
//! the model-backend trait and the record of a finished trial.
//!
//! This crate is pure: no IO, no processes, no network. Every other crate speaks these types.

pub mod backend;
pub mod chat;
pub mod events;
pub mod summary;
pub mod tags;
pub mod time;
pub mod trial;
pub mod units;

pub use backend::{
    BackendError, BackendErrorKind, ChatBackend, ChatRequest, ChatResponse, FinishReason, Sampling,
    ToolMode, Usage,
};
pub use chat::{Message, Role, ToolCall, ToolParam, ToolSpec};
pub use trial::{
    FileChange, FileChangeKind, Label, Outcome, TranscriptEntry, TrialKey, TrialRecord,
    variant_levels,
};
