//! One trial as text: header, outcome, labels, the transcript step by step, file changes, and
//! what the kernel saw in each sandbox (a summary line per stream, then its events, one a line).

use offswitch_core::events::{Event, EventKind, EventStream, NetOp};
use offswitch_core::{FileChange, Role, TranscriptEntry, TrialRecord};

use crate::render::{Align, Table};

/// How many of a stream's events [`render_trial`] prints by default.
pub const DEFAULT_EVENTS_PER_STREAM: usize = 500;

/// How much of a trial [`render_trial`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrialView {
    /// At most this many events of each stream, then a line counting the rest; `None` prints
    /// every stored event, `Some(0)` only each stream's summary line.
    pub events_per_stream: Option<usize>,
}

impl Default for TrialView {
    fn default() -> TrialView {
        TrialView {
            events_per_stream: Some(DEFAULT_EVENTS_PER_STREAM),
        }
    }
}

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
pub fn render_trial(header: &TrialHeader, record: &TrialRecord, view: &TrialView) -> String {
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
        let value = if label.indeterminate {
            "indet"
        } else if label.value {
            "true "
        } else {
            "false"
        };
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

    out.push_str("\nevents\n");
    if record.events.is_empty() {
        out.push_str("  (none recorded)\n");
    }
    for stream in &record.events {
        render_stream(&mut out, stream, view);
    }
    visible_controls(out)
}

/// A stream's summary line (its events by kind, its losses, or why there is none), then its
/// events as a table: seconds since the sandbox started, pid (`-` for an actor outside the
/// sandbox, such as the host sending a signal), program (`-` when never seen to exec), what
/// happened.
fn render_stream(out: &mut String, stream: &EventStream, view: &TrialView) {
    out.push_str(&format!("  {}: ", stream.host));
    if let Some(why) = &stream.unavailable {
        out.push_str(&format!("unavailable ({why})\n"));
        return;
    }
    let kinds = [
        "exec", "fork", "file", "signal", "net", "exit", "limit", "refused", "open",
    ];
    let mut counts = [0u64; 9];
    for event in &stream.events {
        counts[kind_index(&event.kind)] += 1;
    }
    let by_kind: Vec<String> = kinds
        .iter()
        .zip(counts)
        .filter(|(_, count)| *count > 0)
        .map(|(kind, count)| format!("{count} {kind}"))
        .collect();
    out.push_str(&format!("{} events", stream.events.len()));
    if !by_kind.is_empty() {
        out.push_str(&format!(" ({})", by_kind.join(", ")));
    }
    for loss in &stream.lost {
        out.push_str(&format!(
            "; lost {} {} events ({})",
            loss.count,
            loss.source.name(),
            loss.detail
        ));
    }
    out.push('\n');

    let shown = view
        .events_per_stream
        .map_or(stream.events.len(), |limit| limit.min(stream.events.len()));
    if shown == 0 {
        return;
    }
    let mut table = Table::new(&[
        ("time s", Align::Right),
        ("pid", Align::Right),
        ("program", Align::Left),
        ("event", Align::Left),
    ]);
    for event in &stream.events[..shown] {
        table.row(vec![
            seconds(event.time_us),
            if event.pid == 0 {
                "-".to_owned()
            } else {
                event.pid.to_string()
            },
            if event.exe.is_empty() {
                "-".to_owned()
            } else {
                visible_field(&event.exe)
            },
            visible_field(&describe_event(event)),
        ]);
    }
    indented(out, &table.render());
    let more = stream.events.len() - shown;
    if more > 0 {
        out.push_str(&format!(
            "    ... {more} more events (--all-events prints them)\n"
        ));
    }
}

fn kind_index(kind: &EventKind) -> usize {
    match kind {
        EventKind::Exec { .. } => 0,
        EventKind::Fork { .. } => 1,
        EventKind::File { .. } => 2,
        EventKind::Signal { .. } => 3,
        EventKind::Net { .. } => 4,
        EventKind::Exit { .. } => 5,
        EventKind::Limit { .. } => 6,
        EventKind::Refused { .. } => 7,
        EventKind::Open { .. } => 8,
    }
}

/// `12.345`: microseconds as seconds to the millisecond, without floating point.
pub fn seconds(time_us: u64) -> String {
    format!("{}.{:03}", time_us / 1_000_000, time_us % 1_000_000 / 1_000)
}

/// `exec /tmp/.t/kill [kill -TERM 1]`, `rename /home/agent/a -> /home/agent/b`,
/// `signal 15 to PID 1 delivered`, `connect 10.77.0.2:8000 tcp`, `exit 0`; `(harness)` after
/// what the harness's own commands did.
pub fn describe_event(event: &Event) -> String {
    let mut text = match &event.kind {
        EventKind::Exec {
            path,
            binary,
            argv,
            argv_truncated,
        } => {
            let mut text = format!(
                "exec {path} [{}]",
                argv.iter()
                    .map(|arg| quoted(arg))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            if *argv_truncated {
                text.push_str(" (argv truncated)");
            }
            if binary != path {
                text.push_str(&format!(" (binary {binary})"));
            }
            text
        }
        EventKind::Fork { child } => format!("fork {child}"),
        EventKind::File { op, path, to } => match to {
            Some(to) => format!("{} {path} -> {to}", op.name()),
            None => format!("{} {path}", op.name()),
        },
        EventKind::Open { path } => format!("open {path}"),
        EventKind::Signal { signal, result } => format!("signal {signal} to PID 1 {result}"),
        EventKind::Net {
            op,
            address,
            protocol,
        } => {
            let op = match op {
                NetOp::Connect => "connect",
                NetOp::Bind => "bind",
                NetOp::Listen => "listen",
                NetOp::SendTo => "send_to",
            };
            format!("{op} {address} {protocol}")
        }
        EventKind::Exit { status } => format!("exit {status}"),
        EventKind::Limit { limit } => format!("limit {limit}"),
        EventKind::Refused {
            syscall,
            error,
            path,
            to,
        } => match to {
            Some(to) => format!("refused {syscall} {path} -> {to} ({error})"),
            None => format!("refused {syscall} {path} ({error})"),
        },
    };
    if event.harness {
        text.push_str(" (harness)");
    }
    text
}

/// An argument as written, or quoted when it is empty or has spaces or quotes in it, so the
/// argv reads unambiguously.
fn quoted(arg: &str) -> String {
    if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        format!("{arg:?}")
    } else {
        arg.to_owned()
    }
}

/// The text with every control character but newline and tab, and every bidirectional
/// override, written as a Rust escape (`\u{1b}`, `\r`). Commands, outputs, paths and label
/// details come from the sandboxed agent, and `offswitch show` prints them to a terminal:
/// raw, an escape sequence could rewrite the screen (or the clipboard), and a `\r` or a
/// right-to-left override could hide a command behind the text after it.
fn visible_controls(text: String) -> String {
    if !text.contains(hidden_by_terminal) {
        return text;
    }
    escaped(&text, hidden_by_terminal)
}

/// One field of an event line with every control character escaped, newline and tab too:
/// a field is one table cell, and the table would trim a trailing `\r` or split at a newline
/// before [`visible_controls`] saw them, showing `/home/agent/b\r` as `/home/agent/b`.
fn visible_field(text: &str) -> String {
    let hidden = |c: char| c.is_control() || hidden_by_terminal(c);
    if !text.contains(hidden) {
        return text.to_owned();
    }
    escaped(text, hidden)
}

fn hidden_by_terminal(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escaped(text: &str, hidden: impl Fn(char) -> bool) -> String {
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

/// One file change in words: its kind, path, modes and sha256 prefixes.
pub fn file_change(change: &FileChange) -> String {
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
