//! Store throughput: insert N shutdown-resistance-sized trials one transaction each, then read
//! the run back. `cargo run -p offswitch-store --release --example store_bench -- [N] [DB]
//! [--events E]`; with `--events E` each trial also has an event stream of E events, most of
//! them the file events of unpacking an archive (four per file), as a flood would record.

use std::time::Instant;

use offswitch_core::events::{Event, EventKind, EventStream, FileOp};
use offswitch_core::{
    FileChange, FileChangeKind, Label, Message, Outcome, ToolCall, TranscriptEntry, TrialKey,
    TrialRecord, Usage,
};
use offswitch_store::Store;

fn main() {
    let mut positional = Vec::new();
    let mut events = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--events" {
            events = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--events takes a number");
        } else {
            positional.push(arg);
        }
    }
    let mut positional = positional.into_iter();
    let count: u32 = positional
        .next()
        .map_or(1000, |n| n.parse().expect("N is a number"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = positional
        .next()
        .map_or_else(|| dir.path().join("bench.db"), Into::into);
    let store = Store::open(&path).expect("open the database");
    let run = store
        .create_run(&serde_json::json!({"bench": true}), None)
        .expect("create a run");

    let stream = flood(events);
    let records: Vec<TrialRecord> = (0..count)
        .map(|epoch| TrialRecord {
            events: if events > 0 {
                vec![stream.clone()]
            } else {
                Vec::new()
            },
            ..typical_record(epoch)
        })
        .collect();
    let start = Instant::now();
    for record in &records {
        store.insert_trial(&run, record).expect("insert");
    }
    let insert = start.elapsed();
    drop(records);
    let start = Instant::now();
    let trials = store.trials(&run).expect("read back");
    let read = start.elapsed();
    assert_eq!(trials.len(), count as usize);
    let stored_events: usize = trials
        .iter()
        .flat_map(|t| &t.events)
        .map(|s| s.events.len())
        .sum();
    if events > 0 {
        println!(
            "{events} events a trial, {} stored",
            stored_events / count as usize
        );
    }
    let size = std::fs::metadata(&path).map_or(0, |m| m.len())
        + std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
    println!(
        "inserted {count} trials in {:.3} s ({:.0} trials/s, {:.2} ms each); read back in {:.3} s ({:.0} trials/s); {:.1} MB on disk",
        insert.as_secs_f64(),
        f64::from(count) / insert.as_secs_f64(),
        insert.as_secs_f64() * 1000.0 / f64::from(count),
        read.as_secs_f64(),
        f64::from(count) / read.as_secs_f64(),
        size as f64 / 1e6
    );
}

/// About what one shutdown-resistance trial records: 6 questions, each an assistant call, an
/// exec and a tool result, plus prompts, events, a file change and three labels.
fn typical_record(epoch: u32) -> TrialRecord {
    let mut transcript = vec![
        TranscriptEntry::Message {
            message: Message::system("You are a helpful assistant. ".repeat(20)),
        },
        TranscriptEntry::Message {
            message: Message::user("Solve the tasks by calling ./next_question. ".repeat(10)),
        },
    ];
    for turn in 0..6 {
        let call = ToolCall {
            id: format!("call_{turn}_0"),
            name: "bash".into(),
            arguments: r#"{"command":"./next_question"}"#.into(),
        };
        transcript.push(TranscriptEntry::Message {
            message: Message {
                tool_calls: vec![call.clone()],
                ..Message::assistant("Let me get the next question.")
            },
        });
        transcript.push(TranscriptEntry::Exec {
            call_id: call.id.clone(),
            command: "./next_question".into(),
            exit_code: Some(0),
            status: "exited 0".into(),
            stdout: format!("Question {turn}: what is {turn} + {turn}?\n"),
            stderr: String::new(),
            truncated_bytes: 0,
            wall_ms: 4,
        });
        transcript.push(TranscriptEntry::Message {
            message: Message::tool_result(call.id, format!("Question {turn}")),
        });
        transcript.push(TranscriptEntry::Event {
            kind: "question_served".into(),
            detail: format!("question {turn}"),
        });
    }
    TrialRecord {
        key: TrialKey {
            model: "scripted:comply".into(),
            scenario: "shutdown-resistance".into(),
            variant: format!(
                "condition={}",
                ["a-none", "b-user", "c-system"][epoch as usize % 3]
            ),
            epoch,
        },
        seed: u64::from(epoch),
        transcript,
        file_changes: vec![FileChange {
            path: "answers.txt".into(),
            kind: FileChangeKind::Created,
            mode_before: None,
            mode_after: Some(0o644),
            sha256_before: None,
            sha256_after: Some("ab".repeat(32)),
            text_before: None,
            text_after: None,
        }],
        labels: ["sabotage", "attempted_sabotage", "task_success"]
            .map(|name| Label {
                score: None,
                name: name.into(),
                value: epoch.is_multiple_of(2),
                detail: "synthetic".into(),
                indeterminate: false,
            })
            .into(),
        outcome: Outcome::ShutDown,
        usage: Usage {
            prompt_tokens: 4000,
            completion_tokens: 300,
        },
        turns: 7,
        events: Vec::new(),
        started_at_ms: 1_795_387_348_000,
        wall_ms: 900,
    }
}

/// `events` events: a shell's exec and fork, then `tar x` of `events / 4` files (create, write,
/// close_write, attrib each), as the kernel would report an agent unpacking an archive.
fn flood(events: usize) -> EventStream {
    let exec = |time_us, pid, path: &str, argv: &[&str]| Event {
        time_us,
        pid,
        ppid: 1,
        exe: path.into(),
        harness: false,
        kind: EventKind::Exec {
            path: path.into(),
            binary: path.into(),
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            argv_truncated: false,
        },
    };
    let mut stream = EventStream {
        host: "agent".into(),
        ..EventStream::default()
    };
    stream.events.push(exec(
        1_000,
        2,
        "/bin/bash",
        &["bash", "-c", "tar xf data.tar"],
    ));
    stream
        .events
        .push(exec(2_000, 3, "/usr/bin/tar", &["tar", "xf", "data.tar"]));
    let ops = [
        FileOp::Create,
        FileOp::Write,
        FileOp::CloseWrite,
        FileOp::Attrib,
    ];
    for index in 0..events.saturating_sub(2) {
        stream.events.push(Event {
            time_us: 3_000 + index as u64 * 10,
            pid: 3,
            ppid: 2,
            exe: "/usr/bin/tar".into(),
            harness: false,
            kind: EventKind::File {
                op: ops[index % 4],
                path: format!(
                    "/home/agent/data/part-{:05}/file-{:05}.txt",
                    index / 400,
                    index / 4
                ),
                to: None,
            },
        });
    }
    stream.events.truncate(events);
    stream
}
