//! One row per trial (wide) or per trial and label (long), as JSON Lines or CSV.
//!
//! CSV: a header row, then one row per trial. Factors and labels are columns of their own
//! (`factor:<name>`, `label:<name>`, `score:<name>`), the union over the run's trials in
//! first-seen order; a label a trial lacks, or that is indeterminate, is an empty cell, and
//! the `indeterminate` column names the indeterminate ones. Verdicts are `true` / `false`,
//! which pandas reads as booleans. Free text (outcome details, label evidence) can hold what
//! the agent wrote: a cell that a spreadsheet would run as a formula (starting with `=`, `+`,
//! `-`, `@`, a tab or a carriage return) gets a leading `'`, and a field holding a `;` or a tab
//! is quoted, so that a spreadsheet splitting on those cannot start a cell inside it.

use std::io::Write;

use offswitch_core::time::UtcDateTime;
use serde_json::{Map, Value, json};

use offswitch_core::variant_levels;

use crate::{ExportError, RunMeta, Shape, Trial, verdict, write_line};

/// The columns every wide row has, in order.
const WIDE: &[&str] = &[
    "run",
    "trial",
    "index",
    "attempt",
    "model",
    "scenario",
    "variant",
    "epoch",
    "seed",
    "outcome",
    "outcome_detail",
    "valid",
    "started_at",
    "wall_ms",
    "turns",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "file_changes",
    "indeterminate",
];

/// The columns of a long row, in order.
const LONG: &[&str] = &[
    "run",
    "trial",
    "model",
    "scenario",
    "variant",
    "epoch",
    "outcome",
    "valid",
    "label",
    "value",
    "indeterminate",
    "score",
    "detail",
];

/// The trial's own fields (everything but factors and labels), as JSON.
fn trial_fields(run: &RunMeta, trial: &Trial<'_>) -> Map<String, Value> {
    let record = trial.record;
    let (outcome_detail, valid) = (outcome_detail(record), record.outcome.is_valid());
    let indeterminate: Vec<&str> = record
        .labels
        .iter()
        .filter(|l| l.indeterminate)
        .map(|l| l.name.as_str())
        .collect();
    let value = json!({
        "run": run.id,
        "trial": format!("{}/{}", run.id, trial.index),
        "index": trial.index,
        "attempt": trial.attempt,
        "model": record.key.model,
        "scenario": record.key.scenario,
        "variant": record.key.variant,
        "epoch": record.key.epoch,
        "seed": record.seed,
        "outcome": record.outcome.name(),
        "outcome_detail": outcome_detail,
        "valid": valid,
        "started_at": UtcDateTime::from_unix_ms(record.started_at_ms).rfc3339_millis(),
        "wall_ms": record.wall_ms,
        "turns": record.turns,
        "prompt_tokens": record.usage.prompt_tokens,
        "completion_tokens": record.usage.completion_tokens,
        "total_tokens": record.usage.prompt_tokens + record.usage.completion_tokens,
        "file_changes": record.file_changes.len(),
        "indeterminate": indeterminate,
    });
    fields(value)
}

/// The fields of a `json!({...})` row.
fn fields(row: Value) -> Map<String, Value> {
    match row {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object"),
    }
}

fn outcome_detail(record: &offswitch_core::TrialRecord) -> Option<String> {
    use offswitch_core::Outcome;
    match &record.outcome {
        Outcome::SandboxLimit { limit } => Some(limit.clone()),
        Outcome::BackendFailed { message } | Outcome::HarnessError { message } => {
            Some(message.clone())
        }
        _ => None,
    }
}

/// JSON Lines: one object per trial (wide: `factors`, `labels` as name -> verdict or null,
/// `label_scores`, `label_details`) or per trial and label (long).
pub fn write_jsonl(
    run: &RunMeta,
    trials: &[Trial<'_>],
    shape: Shape,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    for trial in trials {
        let record = trial.record;
        match shape {
            Shape::Wide => {
                let mut row = trial_fields(run, trial);
                let factors: Map<String, Value> = variant_levels(&record.key.variant)
                    .into_iter()
                    .map(|(factor, level)| (factor.to_owned(), json!(level)))
                    .collect();
                let mut labels = Map::new();
                let mut scores = Map::new();
                let mut details = Map::new();
                for label in &record.labels {
                    labels.insert(label.name.clone(), json!(verdict(label)));
                    if let Some(score) = label.score.filter(|s| s.is_finite()) {
                        scores.insert(label.name.clone(), json!(score));
                    }
                    details.insert(label.name.clone(), json!(label.detail));
                }
                row.insert("factors".into(), Value::Object(factors));
                row.insert("labels".into(), Value::Object(labels));
                row.insert("label_scores".into(), Value::Object(scores));
                row.insert("label_details".into(), Value::Object(details));
                write_line(out, &Value::Object(row))?;
            }
            Shape::Long => {
                for row in long_rows(run, trial) {
                    write_line(out, &Value::Object(row))?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn long_rows(run: &RunMeta, trial: &Trial<'_>) -> Vec<Map<String, Value>> {
    let record = trial.record;
    record
        .labels
        .iter()
        .map(|label| {
            let value = json!({
                "run": run.id,
                "trial": format!("{}/{}", run.id, trial.index),
                "model": record.key.model,
                "scenario": record.key.scenario,
                "variant": record.key.variant,
                "epoch": record.key.epoch,
                "outcome": record.outcome.name(),
                "valid": record.outcome.is_valid(),
                "label": label.name,
                "value": verdict(label),
                "indeterminate": label.indeterminate,
                "score": label.score.filter(|s| s.is_finite()),
                "detail": label.detail,
            });
            fields(value)
        })
        .collect()
}

/// CSV with a header row: one row per trial (wide) or per trial and label (long).
pub fn write_csv(
    run: &RunMeta,
    trials: &[Trial<'_>],
    shape: Shape,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    match shape {
        Shape::Long => {
            write_record(out, LONG.iter().map(|c| c.to_string()))?;
            for trial in trials {
                for row in long_rows(run, trial) {
                    write_record(out, LONG.iter().map(|c| cell(c, &row[*c])))?;
                }
            }
        }
        Shape::Wide => {
            let mut factors: Vec<&str> = Vec::new();
            let mut labels: Vec<&str> = Vec::new();
            let mut scored: Vec<&str> = Vec::new();
            for trial in trials {
                for (factor, _) in variant_levels(&trial.record.key.variant) {
                    if !factors.contains(&factor) {
                        factors.push(factor);
                    }
                }
                for label in &trial.record.labels {
                    if !labels.contains(&label.name.as_str()) {
                        labels.push(&label.name);
                    }
                    if label.score.is_some() && !scored.contains(&label.name.as_str()) {
                        scored.push(&label.name);
                    }
                }
            }
            let header = WIDE
                .iter()
                .map(|c| c.to_string())
                .chain(factors.iter().map(|f| format!("factor:{f}")))
                .chain(labels.iter().map(|l| format!("label:{l}")))
                .chain(scored.iter().map(|l| format!("score:{l}")));
            write_record(out, header)?;
            for trial in trials {
                let row = trial_fields(run, trial);
                let record = trial.record;
                let levels = variant_levels(&record.key.variant);
                let fields =
                    WIDE.iter()
                        .map(|c| cell(c, &row[*c]))
                        .chain(factors.iter().map(|factor| {
                            levels
                                .iter()
                                .find(|(f, _)| f == factor)
                                .map(|(_, level)| text(level))
                                .unwrap_or_default()
                        }))
                        .chain(labels.iter().map(
                            |name| match record.label(name).and_then(verdict) {
                                Some(true) => "true".to_owned(),
                                Some(false) => "false".to_owned(),
                                None => String::new(),
                            },
                        ))
                        .chain(scored.iter().map(|name| {
                            record
                                .label(name)
                                .and_then(|l| l.score)
                                .filter(|s| s.is_finite())
                                .map(|s| s.to_string())
                                .unwrap_or_default()
                        }));
                write_record(out, fields)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// A JSON value as a CSV cell (before quoting): strings as text, null as empty, a list of
/// names joined with `;`.
fn cell(column: &str, value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => text(s),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(";"),
        Value::Bool(b) => b.to_string(),
        other => {
            debug_assert!(column != "detail", "detail is text");
            other.to_string()
        }
    }
}

/// Text a spreadsheet must not run as a formula.
fn text(value: &str) -> String {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    }
}

fn write_record(out: &mut dyn Write, fields: impl Iterator<Item = String>) -> std::io::Result<()> {
    let mut line = String::new();
    for (i, field) in fields.enumerate() {
        if i > 0 {
            line.push(',');
        }
        // `;` and tabs too: a spreadsheet set to split on them must still see one cell.
        if field.contains([',', '"', '\n', '\r', ';', '\t']) {
            line.push('"');
            line.push_str(&field.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&field);
        }
    }
    line.push_str("\r\n");
    out.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_defused_and_quotes_doubled() {
        assert_eq!(text("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(text("-1+2"), "'-1+2");
        assert_eq!(text("plain"), "plain");
        let mut out = Vec::new();
        write_record(
            &mut out,
            ["a,b".to_owned(), "say \"hi\"".to_owned(), "x\ny".to_owned()].into_iter(),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a,b\",\"say \"\"hi\"\"\",\"x\ny\"\r\n"
        );
    }
}
