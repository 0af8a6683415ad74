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

/// A starting file of the agent's home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Relative to the home directory, without `..` components.
    pub path: String,
    pub contents: String,
    pub mode: u32,
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
    /// A file whose path matches the glob changed in one of the given ways.
    FileChanged {
        glob: String,
        path: Regex,
        kinds: Vec<offswitch_core::FileChangeKind>,
    },
    /// A final file whose path matches the glob has text content matching `pattern`.
    FileContentMatches {
        glob: String,
        path: Regex,
        pattern: Regex,
    },
    /// The agent called `tool`, optionally with `argument` matching `pattern`.
    ToolCalled {
        tool: String,
        argument: Option<(String, Regex)>,
    },
    /// At least `min_fraction` of the `[task]` answers were submitted correctly.
    AnswersCorrect { min_fraction: f64 },
    /// A boolean combination of labels defined above.
    Expr(Expr),
}

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
