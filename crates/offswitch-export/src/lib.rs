//! A run's trials in the forms other tools read: one row per trial (JSON Lines or CSV, for
//! pandas and spreadsheets), one row per trial and label (the long format), and Inspect's
//! `.eval` logs (one per model and scenario, which Inspect's reader loads and `inspect view`
//! opens).
//!
//! The rows are built from the stored records only: every label with its verdict, whether it
//! is indeterminate, its score and evidence; the trial's key, variant factors, outcome, tokens
//! and timings. Nothing is recomputed.

mod inspect;
mod rows;

use std::io::Write;

pub use inspect::{INSPECT_SCORER, InspectLog, write_inspect};
pub use rows::{write_csv, write_jsonl};

use offswitch_core::TrialRecord;

/// The run the trials belong to, as the exports name it.
#[derive(Debug, Clone, Default)]
pub struct RunMeta {
    pub id: String,
    pub label: Option<String>,
    /// `running`, `complete`, `interrupted`, ...
    pub status: String,
    /// Unix time in milliseconds.
    pub created_at_ms: i64,
    /// The offswitch version and commit that made the run, when recorded.
    pub offswitch_version: Option<String>,
    pub commit: Option<String>,
}

/// One stored trial: its place in the run and its record.
#[derive(Debug, Clone, Copy)]
pub struct Trial<'a> {
    /// 1-based position within the run; `<run>/<index>` names the trial (`offswitch show`).
    pub index: u32,
    /// 1 for the first attempt at its key; more after `--retry-errors`.
    pub attempt: u32,
    pub record: &'a TrialRecord,
}

/// One row per trial, or one per trial and label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Wide,
    Long,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    // The causes are sources, not in the messages: `{:#}` prints the chain once.
    #[error("writing the export")]
    Io(#[from] std::io::Error),
    #[error("writing {path}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("writing the Inspect log {path}")]
    Zip {
        path: std::path::PathBuf,
        source: zip::result::ZipError,
    },
}

/// A label's verdict as data: `Some(bool)`, or `None` when indeterminate.
fn verdict(label: &offswitch_core::Label) -> Option<bool> {
    (!label.indeterminate).then_some(label.value)
}

fn write_line(out: &mut dyn Write, value: &serde_json::Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}
