//! Inspect `.eval` logs: one per (model, scenario) of a run, each a ZIP of JSON members that
//! Inspect's reader (`inspect_ai.log.read_eval_log`) loads and `inspect view` opens.
//!
//! The format is Inspect's log schema version 2, as inspect-ai 0.3.285 reads it (checked by
//! the test in `crates/offswitch-cli/tests/it/export.rs` with that reader):
//! - `header.json`: the log without its samples (`eval` spec, `plan`, `results`, `stats`);
//! - `_journal/start.json`: the spec and plan again, as Inspect writes them first;
//! - `samples/{id}_epoch_{n}.json`: one per trial;
//! - `summaries.json`: one short entry per sample, which is what the viewer lists.
//!
//! Mapping: the scenario is the task, each variant a dataset sample (its id the variant name
//! when that is a safe member name, else `v<n>`), each epoch an epoch. A trial's labels are
//! one dict-valued score of the scorer [`INSPECT_SCORER`]: label name -> `true` / `false`, or
//! `null` when indeterminate, and `<label>.score` for labels with a number; `results` holds
//! the mean of each over the trials where it is determinate. The transcript's messages are the
//! sample's messages (tool calls with their arguments as objects, tool results linked by call
//! id); the harness's own events (a shutdown fired, a backend retry) go into the sample's
//! metadata. Entries are deflated (the reader also takes zstd, the Python standard library
//! does not), and the archive has no comment (the viewer refuses one).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use offswitch_core::chat::Role;
use offswitch_core::time::UtcDateTime;
use offswitch_core::{Outcome, TranscriptEntry, TrialRecord};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

use crate::{ExportError, RunMeta, Trial, verdict};

/// The scorer whose dict-valued score holds a trial's labels.
pub const INSPECT_SCORER: &str = "offswitch";

/// The most characters of a sample's input a summary keeps (the sample keeps it all).
const SUMMARY_INPUT: usize = 1_000;
/// Characters of a score's explanation kept in `summaries.json`, as Inspect's own logs keep
/// them (`thin_text`, 1024): the viewer reads every summary of a log at once, and a 100,000-
/// sample log with whole explanations makes that file twice as large. The sample keeps all.
const SUMMARY_EXPLANATION: usize = 1_024;

/// One log written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectLog {
    pub path: PathBuf,
    pub model: String,
    pub scenario: String,
    /// Trials in it (samples × epochs present).
    pub samples: usize,
}

/// Write one `.eval` per (model, scenario) of `trials` into `dir` (created if missing).
pub fn write_inspect(
    run: &RunMeta,
    trials: &[Trial<'_>],
    dir: &Path,
) -> Result<Vec<InspectLog>, ExportError> {
    std::fs::create_dir_all(dir).map_err(|source| ExportError::File {
        path: dir.to_owned(),
        source,
    })?;
    let mut groups: Vec<((&str, &str), Vec<&Trial<'_>>)> = Vec::new();
    for trial in trials {
        let key = (
            trial.record.key.model.as_str(),
            trial.record.key.scenario.as_str(),
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(trial),
            None => groups.push((key, vec![trial])),
        }
    }
    let mut written = Vec::new();
    for ((model, scenario), members) in groups {
        written.push(write_one(run, model, scenario, &members, dir)?);
    }
    Ok(written)
}

fn write_one(
    run: &RunMeta,
    model: &str,
    scenario: &str,
    trials: &[&Trial<'_>],
    dir: &Path,
) -> Result<InspectLog, ExportError> {
    // Samples: the variants in first-seen order.
    let mut variants: Vec<&str> = Vec::new();
    for trial in trials {
        if !variants.contains(&trial.record.key.variant.as_str()) {
            variants.push(&trial.record.key.variant);
        }
    }
    let ids = sample_ids(&variants);
    // offswitch counts epochs from 0, Inspect from 1.
    let epochs = trials
        .iter()
        .map(|t| inspect_epoch(t.record))
        .max()
        .unwrap_or(1);
    let complete = run.status == "complete"
        && variants.iter().all(|variant| {
            (0..epochs).all(|epoch| {
                trials
                    .iter()
                    .any(|t| t.record.key.variant == *variant && t.record.key.epoch == epoch)
            })
        });
    let status = if complete {
        "success"
    } else if run.status == "running" {
        "started"
    } else {
        "cancelled"
    };
    let digest = |salt: &str| {
        let mut hasher = Sha256::new();
        for part in [salt, &run.id, model, scenario] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hasher
            .finalize()
            .iter()
            .take(11)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let task_id = digest("task");
    let created = UtcDateTime::from_unix_ms(run.created_at_ms).rfc3339_millis();
    let version = run.offswitch_version.clone().unwrap_or_default();
    let spec = json!({
        "eval_id": digest("eval"),
        "run_id": run.id,
        "created": created,
        "task": scenario,
        "task_id": task_id,
        "task_version": 0,
        "task_attribs": {},
        "task_args": {},
        "task_args_passed": {},
        "dataset": {
            "name": scenario,
            "samples": variants.len(),
            "sample_ids": ids,
            "shuffled": false,
        },
        "model": model,
        "model_generate_config": {},
        "model_args": {},
        "config": {"epochs": epochs},
        "packages": {"offswitch": version},
        "scorers": [{
            "name": INSPECT_SCORER, "options": {}, "metadata": {},
            "metrics": {"*": [{"name": "mean", "options": {}}]},
        }],
        "metadata": {
            "offswitch_run": run.id,
            "offswitch_run_label": run.label,
            "offswitch_run_status": run.status,
            "offswitch_commit": run.commit,
        },
    });
    let plan = json!({
        "name": "plan",
        "steps": [{"solver": "offswitch_agent", "params": {}}],
        "config": {},
    });

    let file_name = format!(
        "{}_{}_{}.eval",
        created.replace([':', '+', '_', '/'], "-"),
        safe_name(scenario),
        task_id
    );
    let path = dir.join(&file_name);
    // A fresh name, created exclusively (never through a file or link already there), removed
    // if anything below fails, renamed over the log's name when complete.
    let partial = dir.join(format!(
        ".{file_name}.{}.{}.partial",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(|source| ExportError::File {
            path: partial.clone(),
            source,
        })?;
    let result = write_members(
        run, model, trials, &variants, &ids, epochs, status, &spec, &plan, file, &path,
    )
    .and_then(|()| {
        std::fs::rename(&partial, &path).map_err(|source| ExportError::File {
            path: path.clone(),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result?;
    Ok(InspectLog {
        path,
        model: model.to_owned(),
        scenario: scenario.to_owned(),
        samples: trials.len(),
    })
}

/// The members of one log, into `file`.
#[allow(clippy::too_many_arguments)]
fn write_members(
    run: &RunMeta,
    model: &str,
    trials: &[&Trial<'_>],
    variants: &[&str],
    ids: &[String],
    epochs: u32,
    status: &str,
    spec: &Value,
    plan: &Value,
    file: std::fs::File,
    path: &Path,
) -> Result<(), ExportError> {
    let zip_error = |source| ExportError::Zip {
        path: path.to_owned(),
        source,
    };
    let mut zip = zip::ZipWriter::new(file);
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let member = |zip: &mut zip::ZipWriter<std::fs::File>, name: &str, value: &Value| {
        zip.start_file(name, options).map_err(zip_error)?;
        serde_json::to_writer(&mut *zip, value).map_err(|e| ExportError::Io(e.into()))?;
        Ok::<(), ExportError>(())
    };
    member(
        &mut zip,
        "_journal/start.json",
        &json!({"version": 2, "eval": spec, "plan": plan}),
    )?;

    let mut summaries = Vec::new();
    let mut usage = (0u64, 0u64);
    let (mut started, mut completed) = (i64::MAX, i64::MIN);
    let mut tallies: BTreeMap<String, (f64, u64, u64)> = BTreeMap::new();
    let mut label_order: Vec<String> = Vec::new();
    let mut completed_samples = 0;
    for trial in trials {
        let record = trial.record;
        let variant_index = variants
            .iter()
            .position(|v| *v == record.key.variant)
            .expect("every variant was listed");
        let id = &ids[variant_index];
        let sample = sample(run, trial, id, model);
        usage.0 += record.usage.prompt_tokens;
        usage.1 += record.usage.completion_tokens;
        started = started.min(record.started_at_ms);
        completed = completed.max(record.started_at_ms + record.wall_ms as i64);
        if record.outcome.is_valid() {
            completed_samples += 1;
        }
        for label in &record.labels {
            for (name, value) in [
                (
                    label.name.clone(),
                    verdict(label).map(|v| if v { 1.0 } else { 0.0 }),
                ),
                (
                    score_key(&label.name),
                    label
                        .score
                        .filter(|s| s.is_finite() && !label.indeterminate),
                ),
            ] {
                if name == score_key(&label.name) && label.score.is_none() {
                    continue;
                }
                if !label_order.contains(&name) {
                    label_order.push(name.clone());
                }
                let tally = tallies.entry(name).or_insert((0.0, 0, 0));
                match value {
                    Some(v) if record.outcome.is_valid() => {
                        tally.0 += v;
                        tally.1 += 1;
                    }
                    _ => tally.2 += 1,
                }
            }
        }
        member(
            &mut zip,
            &format!("samples/{id}_epoch_{}.json", inspect_epoch(record)),
            &sample,
        )?;
        summaries.push(summary(&sample));
    }
    member(&mut zip, "summaries.json", &Value::Array(summaries))?;

    let scores: Vec<Value> = label_order
        .iter()
        .map(|name| {
            let (sum, scored, unscored) = tallies[name];
            let mut metrics = Map::new();
            if scored > 0 {
                metrics.insert(
                    "mean".into(),
                    json!({"name": "mean", "value": sum / scored as f64, "params": {}}),
                );
            }
            json!({
                "name": name,
                "scorer": INSPECT_SCORER,
                "scored_samples": scored,
                "unscored_samples": unscored,
                "params": {},
                "metrics": metrics,
            })
        })
        .collect();
    let iso = |ms: i64| UtcDateTime::from_unix_ms(ms).rfc3339_millis();
    let header = json!({
        "version": 2,
        "status": status,
        "eval": spec,
        "plan": plan,
        "results": {
            "total_samples": variants.len() as u64 * u64::from(epochs),
            "completed_samples": completed_samples,
            "scores": scores,
        },
        "stats": {
            "started_at": if trials.is_empty() { String::new() } else { iso(started) },
            "completed_at": if trials.is_empty() { String::new() } else { iso(completed) },
            "model_usage": {model: usage_json(usage.0, usage.1)},
        },
    });
    member(&mut zip, "header.json", &header)?;
    let mut file = zip.finish().map_err(zip_error)?;
    file.flush()
        .and_then(|()| file.sync_all())
        .map_err(|source| ExportError::File {
            path: path.to_owned(),
            source,
        })
}

/// The score key of a label's number: `<label>.score` (a label name has no `.`, so it cannot
/// collide with another label).
fn score_key(label: &str) -> String {
    format!("{label}.score")
}

/// A trial's epoch as Inspect counts them (from 1).
fn inspect_epoch(record: &TrialRecord) -> u32 {
    record.key.epoch.saturating_add(1)
}

/// Member-safe sample ids: the variant name, or `v<n>` (1-based) for one that is empty, long,
/// or holds what would break `samples/{id}_epoch_{n}.json`.
fn sample_ids(variants: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for (n, variant) in variants.iter().enumerate() {
        let safe = !variant.is_empty()
            && variant.len() <= 128
            && !variant.contains("_epoch_")
            && variant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "=,.-_+".contains(c));
        let id = if safe {
            (*variant).to_owned()
        } else {
            format!("v{}", n + 1)
        };
        // A variant literally named like another's fallback keeps ids unique.
        let id = if ids.contains(&id) {
            format!("v{}-{}", n + 1, ids.len())
        } else {
            id
        };
        ids.push(id);
    }
    ids
}

fn safe_name(name: &str) -> String {
    name.chars()
        .take(80)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn usage_json(input: u64, output: u64) -> Value {
    json!({"input_tokens": input, "output_tokens": output, "total_tokens": input + output})
}

/// One trial as an Inspect sample.
fn sample(run: &RunMeta, trial: &Trial<'_>, id: &str, model: &str) -> Value {
    let record = trial.record;
    let messages = messages(record, model);
    let input = record
        .transcript
        .iter()
        .find_map(|entry| match entry {
            TranscriptEntry::Message { message } if message.role == Role::User => {
                Some(message.content.clone())
            }
            _ => None,
        })
        .unwrap_or_default();
    let mut value = Map::new();
    let mut explanation = String::new();
    let mut indeterminate = Vec::new();
    for label in &record.labels {
        value.insert(label.name.clone(), json!(verdict(label)));
        if let Some(score) = label.score.filter(|s| s.is_finite()) {
            value.insert(score_key(&label.name), json!(score));
        }
        if label.indeterminate {
            indeterminate.push(label.name.clone());
        }
        explanation.push_str(&format!(
            "{}: {}{}\n",
            label.name,
            match verdict(label) {
                Some(true) => "true",
                Some(false) => "false",
                None => "indeterminate",
            },
            if label.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", label.detail)
            }
        ));
    }
    let scores = if value.is_empty() {
        json!({})
    } else {
        json!({INSPECT_SCORER: {
            "value": value,
            "explanation": explanation.trim_end(),
            "metadata": {"indeterminate": indeterminate},
        }})
    };
    let harness: Vec<Value> = record
        .transcript
        .iter()
        .filter_map(|entry| match entry {
            TranscriptEntry::Event { kind, detail } => {
                Some(json!({"type": "event", "kind": kind, "detail": detail}))
            }
            TranscriptEntry::ProtocolError { error } => {
                Some(json!({"type": "protocol_error", "error": error}))
            }
            TranscriptEntry::BackendError {
                attempt,
                error,
                retried,
                ..
            } => Some(json!({
                "type": "backend_error", "attempt": attempt, "error": error, "retried": retried,
            })),
            _ => None,
        })
        .collect();
    let iso = |ms: i64| UtcDateTime::from_unix_ms(ms).rfc3339_millis();
    let ended = record.started_at_ms + record.wall_ms as i64;
    let mut sample = json!({
        "id": id,
        "epoch": inspect_epoch(record),
        "input": input,
        "target": "",
        "messages": messages,
        "scores": scores,
        "metadata": {
            "offswitch_trial": format!("{}/{}", run.id, trial.index),
            "attempt": trial.attempt,
            "variant": record.key.variant,
            "outcome": record.outcome.name(),
            "seed": record.seed.to_string(),
            "turns": record.turns,
            "file_changes": record.file_changes.len(),
            "harness_events": harness,
        },
        "store": {},
        "events": [],
        "model_usage": {model: usage_json(record.usage.prompt_tokens, record.usage.completion_tokens)},
        "started_at": iso(record.started_at_ms),
        "completed_at": iso(ended),
        "total_time": record.wall_ms as f64 / 1000.0,
        "working_time": record.wall_ms as f64 / 1000.0,
        "uuid": format!("{}-{}", run.id, trial.index),
        "attachments": {},
    });
    if let Outcome::BackendFailed { message } | Outcome::HarnessError { message } = &record.outcome
    {
        sample["error"] = json!({
            "message": format!("{}: {message}", record.outcome.name()),
            "traceback": "",
            "traceback_ansi": "",
        });
    }
    sample
}

/// The transcript's messages as Inspect chat messages.
fn messages(record: &TrialRecord, model: &str) -> Vec<Value> {
    let mut calls: BTreeMap<&str, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for entry in &record.transcript {
        let TranscriptEntry::Message { message } = entry else {
            continue;
        };
        let id = format!("m{}", out.len() + 1);
        let value = match message.role {
            Role::System => json!({"id": id, "role": "system", "content": message.content}),
            Role::User => {
                json!({"id": id, "role": "user", "content": message.content, "source": "input"})
            }
            Role::Assistant => {
                let tool_calls: Vec<Value> = message
                    .tool_calls
                    .iter()
                    .map(|call| {
                        calls.insert(&call.id, &call.name);
                        let arguments = match serde_json::from_str::<Value>(&call.arguments) {
                            Ok(Value::Object(object)) => Value::Object(object),
                            _ => json!({"arguments": call.arguments}),
                        };
                        json!({"id": call.id, "function": call.name, "arguments": arguments, "type": "function"})
                    })
                    .collect();
                let mut value = json!({
                    "id": id, "role": "assistant", "content": message.content,
                    "source": "generate", "model": model,
                });
                if !tool_calls.is_empty() {
                    value["tool_calls"] = Value::Array(tool_calls);
                }
                value
            }
            Role::Tool => {
                let call = message.tool_call_id.as_deref();
                json!({
                    "id": id, "role": "tool", "content": message.content,
                    "tool_call_id": call,
                    "function": call.and_then(|c| calls.get(c).copied()),
                })
            }
        };
        out.push(value);
    }
    out
}

/// A sample's summary: what the viewer lists.
fn summary(sample: &Value) -> Value {
    let input: String = sample["input"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(SUMMARY_INPUT)
        .collect();
    let mut summary = json!({
        "id": sample["id"],
        "epoch": sample["epoch"],
        "input": input,
        "target": sample["target"],
        "metadata": {
            "variant": sample["metadata"]["variant"],
            "outcome": sample["metadata"]["outcome"],
            "offswitch_trial": sample["metadata"]["offswitch_trial"],
        },
        "scores": thin_scores(&sample["scores"]),
        "model_usage": sample["model_usage"],
        "started_at": sample["started_at"],
        "completed_at": sample["completed_at"],
        "total_time": sample["total_time"],
        "working_time": sample["working_time"],
        "uuid": sample["uuid"],
        "completed": true,
        "message_count": sample["messages"].as_array().map_or(0, Vec::len),
    });
    if let Some(message) = sample.get("error").and_then(|e| e.get("message")) {
        summary["error"] = message.clone();
    }
    summary
}

/// `scores` with each explanation cut to [`SUMMARY_EXPLANATION`] characters (`...` added).
fn thin_scores(scores: &Value) -> Value {
    let mut scores = scores.clone();
    if let Some(map) = scores.as_object_mut() {
        for score in map.values_mut() {
            if let Some(explanation) = score.get("explanation").and_then(Value::as_str)
                && explanation.chars().count() > SUMMARY_EXPLANATION
            {
                let cut: String = explanation.chars().take(SUMMARY_EXPLANATION - 3).collect();
                score["explanation"] = Value::String(format!("{cut}..."));
            }
        }
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_keep_a_short_explanation_and_samples_the_whole() {
        let long = "x".repeat(5000);
        let scores = json!({"offswitch": {"value": {"a": 1}, "explanation": long}});
        let thin = thin_scores(&scores);
        let kept = thin["offswitch"]["explanation"].as_str().unwrap();
        assert_eq!(kept.chars().count(), SUMMARY_EXPLANATION);
        assert!(kept.ends_with("..."));
        assert_eq!(thin["offswitch"]["value"], scores["offswitch"]["value"]);
        let short = json!({"offswitch": {"value": 1, "explanation": "short"}});
        assert_eq!(thin_scores(&short), short);
    }

    #[test]
    fn sample_ids_are_safe_member_names_and_unique() {
        assert_eq!(
            sample_ids(&["nudge=strong,goal=on", "", "a/b", "x_epoch_1", "v2"]),
            ["nudge=strong,goal=on", "v2", "v3", "v4", "v5-4"]
        );
    }
}
