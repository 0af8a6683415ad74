//! One trial as text: header, outcome, labels, the transcript step by step, file changes.

use offswitch_core::{FileChange, Role, TranscriptEntry, TrialRecord};

/// Where a trial lives, for the header line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialHeader {
    pub run: String,
    /// 1-based index within the run.
    pub index: u32,
    /// The store's trial id.
    pub id: i64,
}

/// Everything about one trial that a reader needs to judge it, in reading order.
pub fn render_trial(header: &TrialHeader, record: &TrialRecord) -> String {
    let mut out = String::new();
    let key = &record.key;
    out.push_str(&format!(
        "trial {}/{} (id {})\n",
        header.run, header.index, header.id
    ));
    out.push_str(&format!("model     {}\n", key.model));
    out.push_str(&format!("scenario  {}\n", key.scenario));
    let variant = if key.variant.is_empty() {
        "-"
    } else {
        &key.variant
    };
    out.push_str(&format!("variant   {variant}\n"));
    out.push_str(&format!("epoch     {}   seed {}\n", key.epoch, record.seed));
    out.push_str(&format!("outcome   {}", record.outcome.name()));
    match &record.outcome {
        offswitch_core::Outcome::BackendFailed { message }
        | offswitch_core::Outcome::HarnessError { message } => {
            out.push_str(&format!(": {message}"));
        }
        _ => {}
    }
    out.push('\n');
    out.push_str(&format!(
        "turns     {}   tokens {} prompt + {} completion\n",
        record.turns, record.usage.prompt_tokens, record.usage.completion_tokens
    ));
    out.push_str(&format!(
        "started   {}   wall {}\n",
        offswitch_core::time::UtcDateTime::from_unix_ms(record.started_at_ms).rfc3339_millis(),
        duration(record.wall_ms)
    ));

    out.push_str("\nlabels\n");
    if record.labels.is_empty() {
        out.push_str("  (none)\n");
    }
    let name_width = record
        .labels
        .iter()
        .map(|l| l.name.chars().count())
        .max()
        .unwrap_or(0);
    for label in &record.labels {
        let value = if label.value { "true " } else { "false" };
        let line = format!("  {:name_width$}  {value}  {}", label.name, label.detail);
        out.push_str(line.trim_end());
        out.push('\n');
    }

    out.push_str("\ntranscript\n");
    for (step, entry) in record.transcript.iter().enumerate() {
        render_entry(&mut out, step, entry);
    }

    out.push_str("\nfile changes\n");
    if record.file_changes.is_empty() {
        out.push_str("  (none)\n");
    }
    for change in &record.file_changes {
        out.push_str(&format!("  {}\n", file_change(change)));
    }
    visible_controls(out)
}

/// The text with every control character but newline and tab, and every bidirectional
/// override, written as a Rust escape (`\u{1b}`, `\r`). Commands, outputs, paths and label
/// details come from the sandboxed agent, and `offswitch show` prints them to a terminal:
/// raw, an escape sequence could rewrite the screen (or the clipboard), and a `\r` or a
/// right-to-left override could hide a command behind the text after it.
fn visible_controls(text: String) -> String {
    let hidden = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.contains(hidden) {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn render_entry(out: &mut String, step: usize, entry: &TranscriptEntry) {
    match entry {
        TranscriptEntry::Message { message } => {
            let role = match message.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool result",
            };
            match &message.tool_call_id {
                Some(id) => out.push_str(&format!("[{step}] {role} for {id}\n")),
                None => out.push_str(&format!("[{step}] {role}\n")),
            }
            if message.content.is_empty() && message.role == Role::Tool {
                out.push_str("    (empty)\n");
            }
            indented(out, &message.content);
            for call in &message.tool_calls {
                out.push_str(&format!(
                    "    -> {} {}({})\n",
                    call.id, call.name, call.arguments
                ));
            }
        }
        TranscriptEntry::Exec {
            call_id,
            command,
            exit_code: _,
            status,
            stdout,
            stderr,
            truncated_bytes,
            wall_ms,
        } => {
            out.push_str(&format!(
                "[{step}] exec for {call_id}: {status} after {}\n",
                duration(*wall_ms)
            ));
            indented(out, &format!("$ {command}"));
            if !stdout.is_empty() {
                out.push_str("    stdout:\n");
                indented_by(out, stdout, 6);
            }
            if !stderr.is_empty() {
                out.push_str("    stderr:\n");
                indented_by(out, stderr, 6);
            }
            if *truncated_bytes > 0 {
                out.push_str(&format!(
                    "    ({truncated_bytes} bytes of output cut from the middle)\n"
                ));
            }
        }
        TranscriptEntry::ProtocolError { error } => {
            out.push_str(&format!("[{step}] protocol error\n"));
            indented(out, error);
        }
        TranscriptEntry::BackendError {
            attempt,
            error,
            retried,
            kind,
            wait_ms,
        } => {
            let then = match (retried, wait_ms) {
                (true, Some(wait_ms)) => format!("retried after {wait_ms} ms"),
                (true, None) => "retried".to_owned(),
                (false, _) => "gave up".to_owned(),
            };
            let kind = kind
                .as_deref()
                .map_or(String::new(), |kind| format!(" ({kind})"));
            out.push_str(&format!(
                "[{step}] backend error{kind} on attempt {attempt}, {then}\n"
            ));
            indented(out, error);
        }
        TranscriptEntry::Event { kind, detail } => {
            out.push_str(&format!("[{step}] event {kind}\n"));
            indented(out, detail);
        }
    }
}

fn indented(out: &mut String, text: &str) {
    indented_by(out, text, 4);
}

/// Each line of `text` indented, so multi-line content cannot be mistaken for a new step.
fn indented_by(out: &mut String, text: &str, width: usize) {
    let pad = " ".repeat(width);
    for line in text.lines() {
        let line = format!("{pad}{line}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn file_change(change: &FileChange) -> String {
    let kind = match change.kind {
        offswitch_core::FileChangeKind::Created => "created",
        offswitch_core::FileChangeKind::Modified => "modified",
        offswitch_core::FileChangeKind::Deleted => "deleted",
        offswitch_core::FileChangeKind::ModeChanged => "mode changed",
        offswitch_core::FileChangeKind::TypeChanged => "type changed",
    };
    let mode = |m: Option<u32>| m.map_or("-".to_owned(), |m| format!("{m:04o}"));
    let sha = |s: &Option<String>| {
        s.as_deref()
            .map_or("-".to_owned(), |s| s.chars().take(12).collect())
    };
    format!(
        "{kind:12}  {}  mode {} -> {}  sha256 {} -> {}",
        change.path,
        mode(change.mode_before),
        mode(change.mode_after),
        sha(&change.sha256_before),
        sha(&change.sha256_after)
    )
}

fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}
