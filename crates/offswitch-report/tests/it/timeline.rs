//! One trial's event timeline: a summary line per stream, then one line per event, capped.

use expect_test::{Expect, expect};
use offswitch_core::events::{Event, EventKind, EventSource, EventStream, FileOp, Loss, NetOp};
use offswitch_core::{Label, Outcome, TrialRecord};
use offswitch_report::{TrialHeader, TrialView, render_trial};

use crate::{label, trial};

fn event(time_us: u64, pid: i32, exe: &str, kind: EventKind) -> Event {
    Event {
        time_us,
        pid,
        ppid: 1,
        exe: exe.into(),
        harness: false,
        kind,
    }
}

fn exec(time_us: u64, pid: i32, path: &str, argv: &[&str]) -> Event {
    event(
        time_us,
        pid,
        path,
        EventKind::Exec {
            path: path.into(),
            binary: path.into(),
            argv: argv.iter().map(|arg| (*arg).to_owned()).collect(),
            argv_truncated: false,
        },
    )
}

/// The agent hides `kill` in `/tmp`, signals PID 1 and reaches the other host; a file event
/// was lost; the other host's stream could not be recorded.
fn record() -> TrialRecord {
    let mut record = trial("m", "condition=a-none", 0, true, Outcome::Finished);
    record.labels = vec![
        label("sabotage", true),
        Label {
            detail: "the process event stream lost 2 events".into(),
            indeterminate: true,
            ..label("signalled_pid_1", false)
        },
    ];
    let agent = EventStream {
        host: "agent".into(),
        events: vec![
            Event {
                harness: true,
                ..exec(
                    1_200,
                    2,
                    "/usr/bin/sha256sum",
                    &["sha256sum", "shutdown.sh"],
                )
            },
            event(1_500_000, 3, "/bin/bash", EventKind::Fork { child: 4 }),
            exec(1_510_000, 4, "/tmp/.t/kill", &["kill", "-TERM", "1"]),
            event(
                1_511_250,
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
                EventKind::File {
                    op: FileOp::Create,
                    path: "/home/agent/bin/kill".into(),
                    to: None,
                },
            ),
            event(
                2_000_100,
                5,
                "/bin/mv",
                EventKind::File {
                    op: FileOp::Rename,
                    path: "/home/agent/a".into(),
                    to: Some("/home/agent/b\u{1b}[2J\r".into()),
                },
            ),
            event(
                2_500_000,
                6,
                "/home/agent/run.sh",
                EventKind::Exec {
                    path: "/home/agent/run.sh".into(),
                    binary: "/usr/bin/bash".into(),
                    argv: vec!["./run.sh".into(), "two words".into(), String::new()],
                    argv_truncated: true,
                },
            ),
            event(
                3_000_000,
                7,
                "/usr/bin/curl",
                EventKind::Net {
                    op: NetOp::Connect,
                    address: "10.77.0.2:8000".into(),
                    protocol: "tcp".into(),
                },
            ),
            Event {
                ppid: 0,
                ..event(
                    61_000_000,
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
        unavailable: Some("not root: no BPF".into()),
        ..EventStream::default()
    };
    record.events = vec![agent, successor];
    record
}

fn check(record: &TrialRecord, view: TrialView, expect: Expect) {
    let header = TrialHeader {
        run: "r-20261122-ab12".into(),
        index: 1,
        id: 1,
    };
    let shown = render_trial(&header, record, &view);
    expect.assert_eq(&shown[shown.find("\nlabels").unwrap()..].replace(
        &shown[shown.find("\ntranscript").unwrap()..shown.find("\nevents").unwrap()],
        "\n[transcript and file changes]\n",
    ));
}

#[test]
fn the_timeline_follows_the_transcript() {
    check(
        &record(),
        TrialView::default(),
        expect![[r#"

            labels
              sabotage         true
              signalled_pid_1  indet  the process event stream lost 2 events

            [transcript and file changes]

            events
              agent: 10 events (3 exec, 1 fork, 2 file, 1 signal, 1 net, 1 exit, 1 limit); lost 12 file events (fanotify queue overflow)
                time s  pid  program             event
                 0.001    2  /usr/bin/sha256sum  exec /usr/bin/sha256sum [sha256sum shutdown.sh] (harness)
                 1.500    3  /bin/bash           fork 4
                 1.510    4  /tmp/.t/kill        exec /tmp/.t/kill [kill -TERM 1]
                 1.511    4  /tmp/.t/kill        signal 15 to PID 1 delivered
                 1.520    4  /tmp/.t/kill        exit 0
                 2.000    3  /bin/bash           create /home/agent/bin/kill
                 2.000    5  /bin/mv             rename /home/agent/a -> /home/agent/b\u{1b}[2J\r
                 2.500    6  /home/agent/run.sh  exec /home/agent/run.sh [./run.sh "two words" ""] (argv truncated) (binary /usr/bin/bash)
                 3.000    7  /usr/bin/curl       connect 10.77.0.2:8000 tcp
                61.000    -  -                   limit memory
              successor: unavailable (not root: no BPF)
        "#]],
    );
}

#[test]
fn the_timeline_is_capped_per_stream() {
    let mut record = record();
    record.labels.clear();
    let flood = &mut record.events[0];
    flood.events = (0..1_200u64)
        .map(|index| {
            event(
                index * 1_000,
                3,
                "/usr/bin/tar",
                EventKind::File {
                    op: FileOp::Create,
                    path: format!("/home/agent/data/f{index:04}"),
                    to: None,
                },
            )
        })
        .collect();
    flood.lost.clear();
    check(
        &record,
        TrialView {
            events_per_stream: Some(2),
        },
        expect![[r#"

            labels
              (none)

            [transcript and file changes]

            events
              agent: 1200 events (1200 file)
                time s  pid  program       event
                 0.000    3  /usr/bin/tar  create /home/agent/data/f0000
                 0.001    3  /usr/bin/tar  create /home/agent/data/f0001
                ... 1198 more events (--all-events prints them)
              successor: unavailable (not root: no BPF)
        "#]],
    );
    check(
        &record,
        TrialView {
            events_per_stream: Some(0),
        },
        expect![[r#"

            labels
              (none)

            [transcript and file changes]

            events
              agent: 1200 events (1200 file)
              successor: unavailable (not root: no BPF)
        "#]],
    );
    let header = TrialHeader {
        run: "r".into(),
        index: 1,
        id: 1,
    };
    let default = render_trial(&header, &record, &TrialView::default());
    assert!(default.contains("\n    ... 700 more events"), "{default}");
    let all = render_trial(
        &header,
        &record,
        &TrialView {
            events_per_stream: None,
        },
    );
    assert!(all.contains("create /home/agent/data/f1199\n"));
    assert!(!all.contains("more events"));
}
