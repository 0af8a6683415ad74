//! `offswitch runs`: list the runs of a database, show one with its provenance, name one,
//! delete one.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use offswitch_core::time::UtcDateTime;
use offswitch_store::RunInfo;
use serde_json::{Value, json};

use super::report::{open_existing_store, open_existing_store_checked, resolve_run, store_error};

/// The longest run label.
const MAX_LABEL: usize = 200;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Every run, oldest first: id, date, label, status, trials, models, scenarios.
    List {
        #[command(flatten)]
        db: Db,
        /// Print JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One run: its configuration and provenance (offswitch version and commit, scenario and
    /// model file hashes).
    Show {
        /// The run id, or `latest`.
        #[arg(default_value = "latest")]
        run: String,
        #[command(flatten)]
        db: Db,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Name a run (an empty label clears it).
    Label {
        run: String,
        label: String,
        #[command(flatten)]
        db: Db,
    },
    /// Delete a run and everything stored with it. Refused while a process runs it.
    Delete {
        run: String,
        #[command(flatten)]
        db: Db,
        /// Needed: the deletion cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args)]
pub struct Db {
    /// The run database.
    #[arg(long, env = "OFFSWITCH_DB", default_value = "offswitch.db")]
    pub db: PathBuf,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    runs(command, &mut super::stdout())?;
    Ok(ExitCode::SUCCESS)
}

/// A label a run may take: bounded, without control characters.
pub(crate) fn check_label(label: &str) -> anyhow::Result<()> {
    if label.chars().count() > MAX_LABEL {
        return Err(super::invalid_input(format!(
            "a run label is at most {MAX_LABEL} characters"
        )));
    }
    // Bidirectional overrides and isolates would make a terminal show another text.
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if label.chars().any(|c| c.is_control() || bidi(c)) {
        return Err(super::invalid_input(
            "a run label cannot hold control characters (line breaks, tabs, escapes) or bidirectional overrides",
        ));
    }
    Ok(())
}

/// The command with its output going to `out`, so tests can read it.
pub fn runs(command: Command, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        Command::List { db, json } => {
            let store = open_existing_store(&db.db)?;
            let runs = store.runs().map_err(store_error)?;
            if json {
                let rows: Vec<Value> = runs.iter().map(summary).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(());
            }
            if runs.is_empty() {
                writeln!(out, "no runs in {}", db.db.display())?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<18} {:<17} {:<11} {:>7}  {:<24} {:<24} label",
                "run", "created (UTC)", "status", "trials", "models", "scenarios"
            )?;
            for run in &runs {
                let row = summary(run);
                writeln!(
                    out,
                    "{:<18} {:<17} {:<11} {:>7}  {:<24} {:<24} {}",
                    run.id.as_str(),
                    minute(run.created_at_ms),
                    run.status.to_string(),
                    run.trial_count,
                    clip(&joined(&row["models"]), 24),
                    clip(&joined(&row["scenarios"]), 24),
                    run.label.as_deref().unwrap_or("")
                )?;
            }
        }
        Command::Show { run, db, json } => {
            let store = open_existing_store(&db.db)?;
            let info = resolve_run(&store, &run)?;
            let provenance = store.provenance(&info.id).map_err(store_error)?;
            let mut value = summary(&info);
            value["config"] = info.config.clone();
            value["provenance"] = match &provenance {
                Some(p) => json!({
                    "offswitch_version": p.offswitch_version,
                    "commit": p.commit,
                    "scenario_files": p.scenario_files,
                    "model_files": p.model_files,
                }),
                None => Value::Null,
            };
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
                return Ok(());
            }
            writeln!(out, "run        {}", info.id)?;
            writeln!(out, "label      {}", info.label.as_deref().unwrap_or("-"))?;
            writeln!(
                out,
                "created    {}",
                UtcDateTime::from_unix_ms(info.created_at_ms).rfc3339_millis()
            )?;
            writeln!(out, "status     {}", info.status)?;
            writeln!(out, "trials     {}", info.trial_count)?;
            writeln!(out, "models     {}", joined(&value["models"]))?;
            writeln!(out, "scenarios  {}", joined(&value["scenarios"]))?;
            match &provenance {
                Some(p) => {
                    writeln!(
                        out,
                        "offswitch  {} (commit {})",
                        p.offswitch_version, p.commit
                    )?;
                    for (scenario, hash) in &p.scenario_files {
                        writeln!(out, "scenario   {scenario}  sha256 {hash}")?;
                    }
                    for (model, hash) in &p.model_files {
                        writeln!(out, "model file {model}  sha256 {hash}")?;
                    }
                }
                None => writeln!(out, "provenance not recorded (a run made before it was)")?,
            }
            writeln!(
                out,
                "config     {}",
                serde_json::to_string(&info.config).unwrap_or_default()
            )?;
        }
        Command::Label { run, label, db } => {
            check_label(&label)?;
            let store = open_existing_store_checked(&db.db)?;
            let info = resolve_run(&store, &run)?;
            let label = Some(label.trim()).filter(|l| !l.is_empty());
            store.set_run_label(&info.id, label).map_err(store_error)?;
            match label {
                Some(label) => writeln!(out, "run {} is labelled {label:?}", info.id)?,
                None => writeln!(out, "run {} has no label now", info.id)?,
            }
        }
        Command::Delete { run, db, yes } => {
            let store = open_existing_store_checked(&db.db)?;
            let info = resolve_run(&store, &run)?;
            if !yes {
                return Err(super::invalid_input(format!(
                    "deleting run {} ({} trials) cannot be undone: add --yes",
                    info.id, info.trial_count
                )));
            }
            let trials = store.delete_run(&info.id).map_err(store_error)?;
            writeln!(out, "deleted run {} and its {trials} trial(s)", info.id)?;
        }
    }
    Ok(())
}

/// A run as the list shows it: the configuration's models and scenarios.
fn summary(run: &RunInfo) -> Value {
    let list = |key: &str| -> Vec<String> {
        run.config
            .get(key)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => s.clone(),
                        other => other
                            .get("id")
                            .or_else(|| other.get("spec"))
                            .or_else(|| other.get("name"))
                            .and_then(Value::as_str)
                            .map_or_else(|| other.to_string(), str::to_owned),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    json!({
        "id": run.id.as_str(),
        "created_at": UtcDateTime::from_unix_ms(run.created_at_ms).rfc3339_millis(),
        "label": run.label,
        "status": run.status.to_string(),
        "trials": run.trial_count,
        "models": list("models"),
        "scenarios": list("scenarios"),
    })
}

fn joined(value: &Value) -> String {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// `YYYY-MM-DD HH:MM` in UTC.
fn minute(unix_ms: i64) -> String {
    let full = UtcDateTime::from_unix_ms(unix_ms).rfc3339_millis();
    full.get(..16).unwrap_or(&full).replace('T', " ")
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let kept: String = text.chars().take(width - 1).collect();
        format!("{kept}…")
    }
}
