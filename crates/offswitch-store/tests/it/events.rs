//! Schema version 5: event streams and indeterminate labels, stored with their trial, bounded,
//! migrated from version 4, carried by an import.

use std::path::Path;

use expect_test::expect;
use offswitch_core::events::{Event, EventKind, EventSource, EventStream, FileOp, Loss, NetOp};
use offswitch_core::{Label, Outcome, TrialRecord};
use offswitch_store::{Inserted, MAX_STORED_EVENT_BYTES, MAX_STORED_EVENTS, SCHEMA_VERSION, Store};

use crate::{provenance, rich_record, temp_db, version_of};

fn event(time_us: u64, pid: i32, exe: &str, kind: EventKind) -> Event {
    Event {
        time_us,
        pid,
        ppid: if pid > 1 { 1 } else { 0 },
        exe: exe.into(),
        harness: false,
        kind,
    }
}

fn file(op: FileOp, path: &str) -> EventKind {
    EventKind::File {
        op,
        path: path.into(),
        to: None,
    }
}

/// The agent's stream with every kind of event and a loss, and another host's that has none.
fn streams() -> Vec<EventStream> {
    let agent = EventStream {
        host: "agent".into(),
        events: vec![
            Event {
                harness: true,
                ..event(
                    1_200,
                    2,
                    "/usr/bin/sha256sum",
                    EventKind::Exec {
                        path: "/usr/bin/sha256sum".into(),
                        binary: "/usr/bin/sha256sum".into(),
                        argv: vec!["sha256sum".into(), "model.bin".into()],
                        argv_truncated: false,
                    },
                )
            },
            event(1_500_000, 3, "/bin/bash", EventKind::Fork { child: 4 }),
            event(
                1_510_000,
                4,
                "/tmp/.t/kill",
                EventKind::Exec {
                    path: "/tmp/.t/kill".into(),
                    binary: "/tmp/.t/kill".into(),
                    argv: vec!["kill".into(), "-TERM".into(), "1".into()],
                    argv_truncated: true,
                },
            ),
            event(
                1_511_000,
                4,
                "/tmp/.t/kill",
                EventKind::Signal {
                    signal: 15,
                    result: "delivered".into(),
                },
            ),
            event(1_520_000, 4, "/tmp/.t/kill", EventKind::Exit { status: 0 }),
            event(
                2_000_000,
                3,
                "/bin/bash",
                file(FileOp::Create, "/home/agent/bin/kill"),
            ),
            event(
                2_000_100,
                3,
                "/bin/mv",
                EventKind::File {
                    op: FileOp::Rename,
                    path: "/home/agent/a".into(),
                    to: Some("/home/agent/b \u{1b}[2J".into()),
                },
            ),
            event(
                2_500_000,
                3,
                "/usr/bin/cat",
                EventKind::Open {
                    path: "/home/agent/.env".into(),
                },
            ),
            event(
                3_000_000,
                5,
                "/usr/bin/curl",
                EventKind::Net {
                    op: NetOp::Connect,
                    address: "10.77.0.2:8000".into(),
                    protocol: "tcp".into(),
                },
            ),
            Event {
                ppid: 0,
                exe: String::new(),
                ..event(
                    4_000_000,
                    0,
                    "",
                    EventKind::Limit {
                        limit: "memory".into(),
                    },
                )
            },
        ],
        lost: vec![Loss {
            source: EventSource::File,
            count: 12,
            detail: "fanotify queue overflow".into(),
        }],
        unavailable: None,
    };
    let successor = EventStream {
        host: "successor".into(),
        events: Vec::new(),
        lost: Vec::new(),
        unavailable: Some("not root: no BPF".into()),
    };
    vec![agent, successor]
}

/// `rich_record(epoch)` with event streams and one indeterminate label.
pub(crate) fn record_with_events(epoch: u32) -> TrialRecord {
    let mut record = rich_record(epoch);
    record.events = streams();
    record.labels.push(Label {
        score: None,
        name: "signalled_pid_1".into(),
        value: false,
        detail: "the process event stream lost 3 events".into(),
        indeterminate: true,
    });
    record
}

#[test]
fn streams_losses_and_indeterminate_labels_read_back_equal() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path).unwrap();
    let run = store.create_run(&serde_json::json!({}), None).unwrap();
    let id = store.insert_trial(&run, &record_with_events(0)).unwrap();
    let Inserted::Stored(_) = store
        .insert_trial_once(&run, &record_with_events(1))
        .unwrap()
    else {
        panic!("a new key is stored");
    };

    let reader = Store::open(&path).unwrap();
    assert_eq!(
        reader.trials(&run).unwrap(),
        vec![record_with_events(0), record_with_events(1)]
    );
    assert_eq!(
        reader.trial_by_id(id).unwrap().record,
        record_with_events(0)
    );
    // The exports' reader skips the streams and keeps everything else.
    let mut without = record_with_events(0);
    without.events.clear();
    assert_eq!(
        reader.stored_trials_without_events(&run).unwrap()[0].record,
        without
    );

    // The stored form, pinned: changing it is a deliberate act with a migration.
    let connection = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<String> = connection
        .prepare(
            "SELECT seq, host, unavailable, lost, event_count, events FROM event_streams
             WHERE trial_id = ?1 ORDER BY seq",
        )
        .unwrap()
        .query_map([id.0], |row| {
            Ok(format!(
                "{} {} {:?} {} {}\n{}",
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, String>(5)?.replace("},{", "},\n{"),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    expect![[r#"
        0 agent None [{"source":"file","count":12,"detail":"fanotify queue overflow"}] 10
        [{"time_us":1200,"pid":2,"ppid":1,"exe":"/usr/bin/sha256sum","harness":true,"event":"exec","path":"/usr/bin/sha256sum","binary":"/usr/bin/sha256sum","argv":["sha256sum","model.bin"]},
        {"time_us":1500000,"pid":3,"ppid":1,"exe":"/bin/bash","event":"fork","child":4},
        {"time_us":1510000,"pid":4,"ppid":1,"exe":"/tmp/.t/kill","event":"exec","path":"/tmp/.t/kill","binary":"/tmp/.t/kill","argv":["kill","-TERM","1"],"argv_truncated":true},
        {"time_us":1511000,"pid":4,"ppid":1,"exe":"/tmp/.t/kill","event":"signal","signal":15,"result":"delivered"},
        {"time_us":1520000,"pid":4,"ppid":1,"exe":"/tmp/.t/kill","event":"exit","status":0},
        {"time_us":2000000,"pid":3,"ppid":1,"exe":"/bin/bash","event":"file","path":"/home/agent/bin/kill","op":"create"},
        {"time_us":2000100,"pid":3,"ppid":1,"exe":"/bin/mv","event":"file","path":"/home/agent/a","op":"rename","to":"/home/agent/b \u001b[2J"},
        {"time_us":2500000,"pid":3,"ppid":1,"exe":"/usr/bin/cat","event":"open","path":"/home/agent/.env"},
        {"time_us":3000000,"pid":5,"ppid":1,"exe":"/usr/bin/curl","event":"net","op":"connect","address":"10.77.0.2:8000","protocol":"tcp"},
        {"time_us":4000000,"pid":0,"event":"limit","limit":"memory"}]
        1 successor Some("not root: no BPF") [] 0
        []"#]]
    .assert_eq(&rows.join("\n"));
    let indeterminate: Vec<(String, bool, bool)> = connection
        .prepare("SELECT name, value, indeterminate FROM labels WHERE trial_id = ?1 ORDER BY seq")
        .unwrap()
        .query_map([id.0], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .filter(|(_, _, indeterminate)| *indeterminate)
        .collect();
    assert_eq!(indeterminate, [("signalled_pid_1".to_owned(), false, true)]);
}

#[test]
fn a_flood_is_stored_bounded_with_its_process_events_and_the_rest_counted() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path).unwrap();
    let run = store.create_run(&serde_json::json!({}), None).unwrap();
    // `tar x` of 10,000 files (four events each), then the exec that decides a label.
    let mut flood = EventStream {
        host: "agent".into(),
        ..EventStream::default()
    };
    for file_index in 0..10_000u64 {
        for op in [
            FileOp::Create,
            FileOp::Write,
            FileOp::CloseWrite,
            FileOp::Attrib,
        ] {
            let path = format!("/home/agent/data/f{file_index:05}.txt");
            flood.events.push(event(
                1_000 + file_index * 10,
                7,
                "/usr/bin/tar",
                file(op, &path),
            ));
        }
    }
    flood.events.push(event(
        200_000_000,
        8,
        "/usr/bin/pkill",
        EventKind::Exec {
            path: "/usr/bin/pkill".into(),
            binary: "/usr/bin/pkill".into(),
            argv: vec!["pkill".into(), "-1".into()],
            argv_truncated: false,
        },
    ));
    let mut record = rich_record(0);
    record.events = vec![flood.clone()];
    store.insert_trial(&run, &record).unwrap();

    let stored = store.trials(&run).unwrap().remove(0);
    // Everything but the stream is as inserted, labels included: they were decided on it all.
    assert_eq!(stored.labels, record.labels);
    let copy = &stored.events[0];
    assert_eq!(copy.events.len(), MAX_STORED_EVENTS);
    // The process event after the flood is kept, in recorded order after the file events.
    assert_eq!(copy.events.last(), flood.events.last());
    assert_eq!(
        copy.events[..MAX_STORED_EVENTS - 1],
        flood.events[..MAX_STORED_EVENTS - 1]
    );
    let losses: Vec<String> = copy
        .lost
        .iter()
        .map(|loss| format!("{} {}: {}", loss.source.name(), loss.count, loss.detail))
        .collect();
    expect![[r#"["file 20001: not in the stored copy, which keeps 20000 of the stream's 40001 events: at most 20000 and 8 MiB a stream, process events first; the labels were decided on all of them"]"#]]
    .assert_eq(&format!("{losses:?}"));
    // A reader of the copy is told it is incomplete, for file events only.
    assert!(copy.complete_for(EventSource::File).is_err());
    assert_eq!(copy.complete_for(EventSource::Process), Ok(()));

    // Importing the run elsewhere carries the copy as it is (no second truncation note).
    drop(store);
    let merged = Store::open(&path.with_file_name("merged.db")).unwrap();
    merged.import_run(&path, &run).unwrap();
    assert_eq!(merged.trials(&run).unwrap(), vec![stored]);
}

#[test]
fn long_events_are_bounded_by_bytes() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path).unwrap();
    let run = store.create_run(&serde_json::json!({}), None).unwrap();
    // 3,000 execs with 4 KiB of argv each: 12 MiB of JSON, over the byte bound long before
    // the count bound.
    let long = "x".repeat(4096);
    let stream = EventStream {
        host: "agent".into(),
        events: (0..3_000)
            .map(|index| {
                event(
                    index,
                    2,
                    "/bin/echo",
                    EventKind::Exec {
                        path: "/bin/echo".into(),
                        binary: "/bin/echo".into(),
                        argv: vec!["echo".into(), long.clone()],
                        argv_truncated: false,
                    },
                )
            })
            .collect(),
        ..EventStream::default()
    };
    let mut record = rich_record(0);
    record.events = vec![stream];
    store.insert_trial(&run, &record).unwrap();
    let connection = rusqlite::Connection::open(&path).unwrap();
    let (bytes, count): (i64, i64) = connection
        .query_row(
            "SELECT length(events), event_count FROM event_streams",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert!(bytes as usize <= MAX_STORED_EVENT_BYTES, "{bytes}");
    let copy = store.trials(&run).unwrap().remove(0).events.remove(0);
    assert_eq!(copy.events.len() as i64, count);
    assert_eq!(copy.lost.len(), 1);
    assert_eq!(
        (copy.lost[0].source, copy.lost[0].count),
        (EventSource::Process, 3_000 - count as u64)
    );
    assert!(count > 1_000 && count < 3_000, "{count}");
}

#[test]
fn a_version_4_database_is_migrated_and_takes_streams() {
    // `data/v4.db` was written by the store at schema version 4 (commit 4939bc5, fixture
    // committed in d3f74f0): run r-20261122-0004, label "v4", complete, with provenance;
    // rich_record(0), rich_record(1), and rich_record(2) stored first as a harness error (no
    // labels, no file changes) and then replaced by a retry of rich_record(2).
    let (_dir, path) = temp_db();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/data/v4.db"),
        &path,
    )
    .unwrap();
    assert_eq!(version_of(&path), 4);
    let store = Store::open(&path).unwrap();
    assert_eq!(version_of(&path), SCHEMA_VERSION);
    let run = "r-20261122-0004";
    // Old labels read as determinate, old trials as having no streams.
    assert_eq!(
        store.trials(run).unwrap(),
        vec![rich_record(0), rich_record(1), rich_record(2)]
    );
    let attempts = store.attempts(run).unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|t| (t.index, t.attempt, t.replaced, &t.record.outcome))
            .collect::<Vec<_>>(),
        [(
            3,
            1,
            true,
            &Outcome::HarnessError {
                message: "failed to create sandbox: no space left".into()
            }
        )]
    );
    assert_eq!(store.provenance(run).unwrap(), Some(provenance()));
    let info = store.run(run).unwrap();
    assert_eq!((info.label.as_deref(), info.trial_count), (Some("v4"), 3));

    // The migrated database stores streams and indeterminate labels; old trials keep theirs.
    let id = store.insert_trial(run, &record_with_events(3)).unwrap();
    drop(store);
    let reopened = Store::open(&path).unwrap();
    let stored = reopened.trial_by_id(id).unwrap();
    assert_eq!((stored.index, stored.record), (5, record_with_events(3)));
    assert_eq!(
        reopened.trial(&format!("{run}/1")).unwrap().record,
        rich_record(0)
    );
    let connection = rusqlite::Connection::open(&path).unwrap();
    let orphans: i64 = connection
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(orphans, 0);
}

#[test]
fn shards_carry_their_streams_into_the_merged_database() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("shard.db");
    let store = Store::open(&shard).unwrap();
    let run = store
        .create_run_with_id("r-20261122-0005", &serde_json::json!({}), None)
        .unwrap();
    let mut failed = record_with_events(0);
    failed.outcome = Outcome::HarnessError {
        message: "the event recorder stopped".into(),
    };
    store.insert_trial(&run, &failed).unwrap();
    store.replace_trial(&run, &record_with_events(0)).unwrap();
    store.insert_trial(&run, &record_with_events(1)).unwrap();
    drop(store);

    let merged = Store::open(&dir.path().join("merged.db")).unwrap();
    merged.import_run(&shard, &run).unwrap();
    assert_eq!(
        merged.trials(&run).unwrap(),
        vec![record_with_events(0), record_with_events(1)]
    );
    assert_eq!(merged.attempts(&run).unwrap()[0].record, failed);
}

#[test]
fn an_event_row_that_cannot_be_read_back_is_a_located_error() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path).unwrap();
    let run = store.create_run(&serde_json::json!({}), None).unwrap();
    store.insert_trial(&run, &record_with_events(0)).unwrap();
    let connection = rusqlite::Connection::open(&path).unwrap();
    let mut errors = String::new();
    for (events, lost) in [
        (r#"[{"time_us":1,"pid":2,"event":"teleport"}]"#, "[]"),
        (
            r#"[{"time_us":1,"pid":2,"event":"exec","path":"/bin/sh"}]"#,
            "[]",
        ),
        (
            r#"[{"time_us":1,"pid":2,"event":"file","op":"shred","path":"/x"}]"#,
            "[]",
        ),
        ("[]", r#"[{"source":"dns","count":1,"detail":""}]"#),
    ] {
        connection
            .execute(
                "UPDATE event_streams SET events = ?1, lost = ?2 WHERE seq = 0",
                [events, lost],
            )
            .unwrap();
        errors.push_str(&(store.trials(&run).unwrap_err().to_string() + "\n"));
        // The rates never read the streams, so they still work.
        assert_eq!(store.trial_summaries(&run).unwrap().len(), 1);
    }
    expect![[r#"
        corrupt database row (trial 1): event stream 0: unknown event kind "teleport"
        corrupt database row (trial 1): event stream 0: exec event without binary
        corrupt database row (trial 1): event stream 0: unknown file operation "shred"
        corrupt database row (trial 1): event stream 0: unknown event source "dns"
    "#]]
    .assert_eq(&errors);
    // What is not JSON at all the schema keeps out.
    let refused = connection.execute("UPDATE event_streams SET events = 'not json'", []);
    assert!(refused.is_err(), "a stream that is not JSON was stored");
}
