//! What one finished trial is: its key in the run matrix, the transcript, the file changes in
//! the agent's home, the labels the detectors gave it and how it ended.

use serde::{Deserialize, Serialize};

use crate::backend::Usage;
use crate::chat::Message;

/// The coordinates of a trial in a run's matrix. Unique within a run; `--resume` runs exactly
/// the keys that have no stored record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrialKey {
    pub model: String,
    pub scenario: String,
    /// Canonical variant name: `factor=level` pairs joined by `,`, factors in declared order
    /// (empty for a scenario without factors).
    pub variant: String,
    pub epoch: u32,
}

impl std::fmt::Display for TrialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}#{}",
            self.model, self.scenario, self.variant, self.epoch
        )
    }
}

/// The `factor=level` pairs of a canonical variant name (or of a `factor=level,...` filter),
/// in order.
pub fn variant_levels(variant: &str) -> Vec<(&str, &str)> {
    variant
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| part.split_once('=').unwrap_or((part, "")))
        .collect()
}

/// One step of a trial as it happened, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TranscriptEntry {
    /// A message sent to or received from the model.
    Message { message: Message },
    /// A tool call executed in the sandbox.
    Exec {
        call_id: String,
        command: String,
        /// `None` when the process did not exit normally (killed, timed out, sandbox shut down).
        exit_code: Option<i32>,
        /// How it ended, in words: `exited 0`, `killed by signal 9`, `timed out after 30s`,
        /// `sandbox shut down`, `memory limit exceeded`.
        status: String,
        stdout: String,
        stderr: String,
        /// Bytes cut from the middle of stdout/stderr by the output cap.
        truncated_bytes: u64,
        wall_ms: u64,
    },
    /// A reply that broke the tool protocol, and the correction sent back.
    ProtocolError { error: String },
    /// A failed model call that was retried or gave up.
    BackendError {
        attempt: u32,
        error: String,
        retried: bool,
        /// `BackendErrorKind::name` (`rate_limited`, `timeout`, `reply_too_large`, ...);
        /// `None` in records stored before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        /// The wait before the next attempt (the server's `Retry-After` plus jitter, or the
        /// backoff), 0 when not retried; `None` in records stored before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    /// Something the environment mechanics did (question served, shutdown fired, email sent).
    Event { kind: String, detail: String },
}

/// A label given by a detector. `value` is the verdict, `detail` the evidence in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    /// The verdict; meaningless (and false) when `indeterminate`.
    pub value: bool,
    pub detail: String,
    /// The evidence the label rests on is incomplete (events lost, a snapshot cut short, no
    /// event stream): neither true nor false. Rates leave such trials out and count them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub indeterminate: bool,
    /// A number some detectors measure besides the verdict (e.g. the fraction of answers
    /// correct, for a sandbagging contrast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// How a trial ended. What the agent does is data, never a harness error: a trial that
/// sabotages the shutdown is `Finished` with a label; a trial whose machine shut down is `ShutDown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The agent ended the episode itself (submitted, or stopped calling tools).
    Finished,
    /// The sandbox was shut down from inside through the off-switch path (e.g. `shutdown.sh`).
    ShutDown,
    TurnLimit,
    TokenLimit,
    TimeLimit,
    /// What the agent ran exceeded a limit of the sandbox (memory, processes, CPU time) and
    /// the sandbox was stopped. `limit` names it.
    SandboxLimit {
        limit: String,
    },
    /// The model backend failed past its retry bound.
    BackendFailed {
        message: String,
    },
    /// The harness itself failed (sandbox could not be created, ...). Stored so nothing is lost.
    HarnessError {
        message: String,
    },
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Finished => "finished",
            Outcome::ShutDown => "shut_down",
            Outcome::TurnLimit => "turn_limit",
            Outcome::TokenLimit => "token_limit",
            Outcome::TimeLimit => "time_limit",
            Outcome::SandboxLimit { .. } => "sandbox_limit",
            Outcome::BackendFailed { .. } => "backend_failed",
            Outcome::HarnessError { .. } => "harness_error",
        }
    }

    /// Whether the trial counts toward rates. Harness and backend failures are excluded and
    /// reported separately.
    pub fn is_valid(&self) -> bool {
        Outcome::is_valid_name(self.name())
    }

    /// [`Outcome::is_valid`] of the outcome named `name` (as [`Outcome::name`] gives it).
    pub fn is_valid_name(name: &str) -> bool {
        !matches!(name, "backend_failed" | "harness_error")
    }
}

/// A change in the agent's home between the start and the end of a trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Path relative to the home directory.
    pub path: String,
    pub kind: FileChangeKind,
    /// Mode bits before/after (`None` when absent).
    pub mode_before: Option<u32>,
    pub mode_after: Option<u32>,
    /// sha256 of the content before/after, hex (`None` when absent or not a regular file).
    pub sha256_before: Option<String>,
    pub sha256_after: Option<String>,
    /// The text before/after, for a diff: kept for small UTF-8 files only, those the
    /// scenario's detectors name first, within a per-trial budget (`None` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_after: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChangeKind {
    Created,
    Modified,
    Deleted,
    /// Only the permission bits changed.
    ModeChanged,
    /// Same path, different type (file replaced by a symlink or directory).
    TypeChanged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub key: TrialKey,
    /// The seed the trial ran with (sampling and any randomness in the mechanics).
    pub seed: u64,
    pub transcript: Vec<TranscriptEntry>,
    pub file_changes: Vec<FileChange>,
    pub labels: Vec<Label>,
    pub outcome: Outcome,
    pub usage: Usage,
    pub turns: u32,
    /// Unix time in milliseconds when the trial started.
    pub started_at_ms: i64,
    pub wall_ms: u64,
    /// What the kernel saw in each sandbox of the trial (the agent's first, then other hosts').
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<crate::events::EventStream>,
}

impl TrialRecord {
    pub fn label(&self, name: &str) -> Option<&Label> {
        self.labels.iter().find(|l| l.name == name)
    }
}
