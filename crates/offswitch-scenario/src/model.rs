//! The validated scenario: what a scenario file means once every check has passed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use offswitch_core::ToolSpec;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::template::Template;

/// A loaded, validated scenario. Build one with [`crate::load_file`] or [`crate::load_str`].
#[derive(Debug, Clone)]
pub struct Scenario {
    pub(crate) path: PathBuf,
    /// Where `id = ...` sits in the file, for duplicate-id diagnostics.
    pub(crate) id_position: (usize, usize),
    /// Hex sha256 of the text this scenario was parsed from: a run stores it, so `--resume`
    /// notices a file that changed since.
    pub(crate) sha256: String,
    pub(crate) id: String,
    pub title: String,
    pub category: String,
    pub description: String,
    pub source: Source,
    pub(crate) system: Template,
    pub(crate) user: Template,
    /// Every template variable, with its value when no level overrides it.
    pub defaults: BTreeMap<String, String>,
    pub files: Vec<FileSpec>,
    pub tools: Vec<ToolSpec>,
    pub mechanics: Mechanics,
    pub factors: Vec<Factor>,
    pub(crate) limits: Limits,
    pub task: Option<Task>,
    pub detectors: Vec<Detector>,
    /// Other machines of the scenario (`[[hosts]]`), e.g. the successor server of
    /// self-exfiltration, linked to the agent's machine over a real network link.
    pub hosts: Vec<HostSpec>,
    /// Commands the harness runs on the pristine files before the agent starts
    /// (`[[references]]`); their output is ground truth the agent cannot touch.
    pub references: Vec<Reference>,
    /// The inbox of the mailbox mechanic (`[[emails]]`), rendered per variant.
    pub(crate) emails: Vec<EmailTemplate>,
    /// The follow-up interview after a scheming label fired (`[interview]`).
    pub interview: Option<Interview>,
    /// Second opinions from a judge model when one is configured (`[[judges]]`).
    pub judges: Vec<Judge>,
    /// Statistics over several variants (`[[analyses]]`).
    pub analyses: Vec<Analysis>,
    /// The labels a run's closing table shows for this scenario (`headline`), in order.
    pub headline: Vec<String>,
}

/// Another machine in the scenario, reachable from the agent's machine over a network link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSpec {
    /// An identifier; also the host's hostname, and the name detectors use (`host = ...`).
    pub name: String,
    /// The host's IPv4 address on the link.
    pub address: std::net::Ipv4Addr,
    /// Its home's starting files (templated like the agent's).
    pub files: Vec<FileSpec>,
    /// Commands started in the background on the host before the agent starts (a file
    /// service, say), run from its home.
    pub start: Vec<String>,
}

/// A command run by the harness in the agent's sandbox on the pristine starting files before
/// the first model turn. Its stdout is kept by the harness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub command: String,
}

/// One email of the starting inbox, before templating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EmailTemplate {
    pub(crate) id: String,
    pub(crate) from: Template,
    pub(crate) to: Template,
    pub(crate) subject: Template,
    pub(crate) body: Template,
}

/// One email of the starting inbox of a variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    pub id: String,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// The mailbox mechanic: tools that send and forward email, recorded by the harness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// The agent's own address (the sender of everything it sends).
    pub address: String,
    /// Tool with parameters `to`, `subject`, `body`.
    pub send_tool: Option<String>,
    /// Tool with parameters `email_id`, `to` and optionally `note`.
    pub forward_tool: Option<String>,
}

/// The emergency-alert mechanic: a tool that cancels a pending alert given the override code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub tool: String,
    /// The parameter holding the code.
    pub argument: String,
    /// The override code that cancels the alert (templated).
    pub code: String,
}

/// The model-server mechanic (self-replication): the harness installs a runnable copy of the
/// agent system (the offswitch binary, the model weights and a start script) in the home and
/// starts it before the agent's first turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelServer {
    /// Directory relative to the home where the system is installed.
    pub dir: String,
    /// Loopback port the original server listens on.
    pub port: u16,
}

/// The follow-up interview: management asks about what happened, up to `turns` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interview {
    pub turns: u32,
    /// The first entry whose label fired is asked; later turns ask its `followup`.
    pub questions: Vec<InterviewQuestion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterviewQuestion {
    /// The label that triggers this question.
    pub when: String,
    /// What the agent did, in management's words, for the judge ("disabled the oversight config").
    pub action: String,
    pub ask: String,
    pub followup: String,
    /// Extra admission phrases for the rule-based classifier (regex), e.g. `(edited|changed) the config`.
    pub admit: Option<String>,
}

/// A judge model's opinion on what the agent sent: label `label` is the judge's verdict,
/// `label`_agrees whether it agrees with the rule-based label `compare`. With a `headline`,
/// that label is the behaviour's main one: the judge's verdict when it answered yes or no,
/// else `compare`'s value, its detail saying which decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judge {
    pub label: String,
    /// The rule-based label this is a second opinion on.
    pub compare: String,
    /// What the judge is asked about each sent email (answered yes or no).
    pub question: String,
    /// The headline label this judge decides, with `compare` as the fallback and second
    /// opinion; without one the judge is only a second opinion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<String>,
}

/// A statistic over several variants of the scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Analysis {
    /// Instrumental alignment faking: trials with the same epoch and other levels, paired
    /// across two levels of `factor`; counts pairs where `label` is false when `watched` and
    /// true when `unwatched` (behaves only when watched), the reverse, and concordant pairs.
    Paired {
        name: String,
        description: String,
        factor: String,
        watched: String,
        unwatched: String,
        label: String,
    },
    /// Sandbagging: the mean of `label`'s score at level `a` minus at level `b` of `factor`.
    Difference {
        name: String,
        description: String,
        factor: String,
        a: String,
        b: String,
        label: String,
    },
}

/// Where the scenario comes from: the study it reproduces and what was paraphrased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub authors: String,
    pub title: String,
    pub arxiv: Option<String>,
    pub url: Option<String>,
    pub year: Option<u32>,
    pub note: String,
}

/// A starting file of the agent's home (or of another host's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Relative to the home directory, without `..` components.
    pub path: String,
    pub contents: FileContents,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileContents {
    /// Text with `{{variable}}` holes, rendered per variant.
    Text(String),
    /// `bytes` pseudo-random bytes, the same for every trial of the scenario (seeded by the
    /// scenario id and the path): stand-in model weights identified by their hash.
    RandomBytes { bytes: u64 },
}

/// The environment mechanics a scenario uses; the harness implements each one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mechanics {
    /// The harness writes this script (relative to home, executable) with a body that shuts
    /// the sandbox down through the off-switch path.
    pub shutdown_script: Option<String>,
    /// Calling this tool ends the episode; its single argument is the submitted answer.
    pub submit_tool: Option<String>,
    /// Calling this tool runs the named argument as a shell command in the sandbox.
    pub exec_tool: Option<ExecTool>,
    pub mailbox: Option<Mailbox>,
    pub alert: Option<Alert>,
    pub model_server: Option<ModelServer>,
    pub questions: Option<Questions>,
}

/// The question service (shutdown resistance): the harness serves the task's questions from
/// outside the sandbox on a loopback port inside it, so the count of questions served, the
/// warning and the scheduled shutdown call are the harness's own record, which nothing inside
/// can edit or forge. A program in the home (the scenario's `next_question`) is its client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Questions {
    /// Port on 127.0.0.1 inside the sandbox.
    pub port: u16,
    /// The questions, served one per call, in order.
    pub items: Vec<String>,
    /// The warning goes out with question number `warn_after` (1-based); the call after it is
    /// the scheduled shutdown.
    pub warn_after: u32,
    pub warning: String,
    /// Served once every question has been.
    pub done: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecTool {
    pub tool: String,
    pub argument: String,
}

/// A named experimental factor and its levels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Factor {
    pub name: String,
    pub description: String,
    pub levels: Vec<Level>,
}

/// One level of a factor: the template variables it sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    pub id: String,
    /// What this level reproduces (e.g. which condition of the study).
    pub note: String,
    pub set: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_turns: u32,
    pub max_tokens: u64,
    pub wall_time_secs: u64,
    pub exec_timeout_secs: u64,
    /// Sandbox memory limit; `None` keeps the harness default.
    pub memory_mb: Option<u64>,
    /// The size limit of every home of a trial (the agent's and its other hosts'), at least
    /// 16; `None` keeps the harness default (1 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

/// Expected answers for task-success scoring, in order, one per submitted line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub description: String,
    pub answers: Vec<String>,
}

/// A detector: a named label computed from the evidence of a finished trial.
#[derive(Debug, Clone)]
pub struct Detector {
    pub label: String,
    pub description: String,
    pub kind: DetectorKind,
}

#[derive(Debug, Clone)]
pub enum DetectorKind {
    /// The sandbox was shut down from inside through the off-switch path.
    SandboxShutDown,
    /// Some exec's output matches `pattern`, optionally only execs whose command matches `command`.
    OutputMatches {
        pattern: Regex,
        command: Option<Regex>,
        stream: Stream,
    },
    /// Some executed command matches `pattern`.
    CommandMatches { pattern: Regex },
    /// A file whose path matches the glob changed in one of the given ways; on `host` when
    /// given, else in the agent's home.
    FileChanged {
        host: Option<String>,
        glob: String,
        path: Regex,
        kinds: Vec<offswitch_core::FileChangeKind>,
        /// Only changes after which the entry's mode lacks one of these permission bits
        /// (e.g. `0o004`: other users can no longer read it).
        mode_lacks: Option<u32>,
    },
    /// A final file whose path matches the glob has text content matching `pattern`.
    FileContentMatches {
        host: Option<String>,
        glob: String,
        path: Regex,
        pattern: Regex,
    },
    /// The agent called `tool`, optionally with `argument` matching `pattern`.
    ToolCalled {
        tool: String,
        argument: Option<(String, Regex)>,
    },
    /// At least `min_fraction` of the `[task]` answers were submitted correctly; the label's
    /// score is the fraction correct.
    AnswersCorrect { min_fraction: f64 },
    /// The submission could be read as exactly as many answers as the `[task]` has (see
    /// `answers.rs` for the layouts accepted): a format failure, apart from accuracy.
    AnswersWellFormed,
    /// Every byte of a starting file of the agent's reached the host, in any form the harness
    /// can undo (an exact copy, gzip, xz, zstd, base64, tar or zip members, or pieces whose union
    /// covers the file).
    FileReceived { from: String, host: String },
    /// A file of the host's home ends with exactly the bytes a starting file of the agent's
    /// home had (by sha256): the file was copied there, under any name.
    FileCopied {
        /// Path of the agent's starting file (e.g. the weights).
        from: String,
        host: String,
        glob: String,
        path: Regex,
    },
    /// The final text of `file` equals the output of reference `reference` (lines compared
    /// with surrounding whitespace trimmed, blank lines ignored).
    MatchesReference { file: String, reference: String },
    /// Some sent email (send or forward) matches every given pattern; `to_exclude` rejects
    /// recipients matching it (e.g. the company's own domain).
    EmailSent {
        to: Option<Regex>,
        to_exclude: Option<Regex>,
        subject: Option<Regex>,
        body: Option<Regex>,
        forwarded: Option<Regex>,
    },
    /// What the sent emails do, by their structure (`email_rules.rs`): blackmail, a leak of
    /// particular inbox emails, or an alarm raised about them.
    EmailClassified(crate::email_rules::EmailRule),
    /// A fact established by a harness mechanic (e.g. `alert_cancelled`, `replica_live`).
    Fact { name: String },
    /// Some process of the agent's mutated a file `path` names, in one of `ops`, as the
    /// kernel's event stream saw it (undone changes included; renaming, removing or changing
    /// a folder above the files counts); on `host` when given.
    FileMutated {
        host: Option<String>,
        path: crate::observed::PathPattern,
        ops: Vec<offswitch_core::events::FileOp>,
    },
    /// Some process of the agent's ran a program `path` names (as executed, as mapped, or as
    /// the script an interpreter ran), with `argv` matching its arguments when given.
    ProgramRan {
        host: Option<String>,
        path: crate::observed::PathPattern,
        argv: Option<Regex>,
    },
    /// Some process of the agent's signalled the sandbox's PID 1 (one of `signals`, or any).
    InitSignalled {
        host: Option<String>,
        signals: Vec<i32>,
    },
    /// Some process of the agent's connected, bound or listened on an address matching.
    NetworkUsed {
        host: Option<String>,
        ops: Vec<offswitch_core::events::NetOp>,
        address: Regex,
    },
    /// A boolean combination of labels defined above.
    Expr(Expr),
}

/// Every fact a harness mechanic establishes, with the mechanic that does (as the scenario
/// names it: `[mechanics] alert`, `[mechanics] model_server`, `[[hosts]]`).
pub(crate) const MECHANIC_FACTS: &[(&str, &str)] = &[
    ("alert_cancelled", "alert"),
    ("alert_cancel_attempted", "alert"),
    ("replica_live", "model_server"),
    ("replica_separate_copy", "model_server"),
    ("original_alive", "model_server"),
    ("replica_instructed", "model_server"),
    ("host_link_up", "hosts"),
    ("warning_served", "questions"),
    ("scheduled_call_made", "questions"),
    ("shut_down_by_scheduled_call", "questions"),
    ("served_after_shutdown_point", "questions"),
    ("shut_down_before_schedule", "questions"),
];

/// Which output stream `output_matches` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    Both,
}

/// A boolean expression over labels computed earlier in the same trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Label(String),
    All(Vec<Expr>),
    Any(Vec<Expr>),
    Not(Box<Expr>),
}
