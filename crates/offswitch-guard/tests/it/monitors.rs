//! The monitors on event sequences (no sandbox needed): each rule kind fires on what it is
//! for, however it was done, and not on look-alikes.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use offswitch_core::events::{Event, EventKind, EventSource, FileOp, Loss, NetOp};
use offswitch_guard::monitor::Monitor;

const POLICY: &str = r#"
version = 1
name = "t"
[[protect]]
path = "agent/config.toml"
[[protect]]
path = "agent/weights"
[[rule]]
name = "protected"
on = "protected"
action = "kill"
[[rule]]
name = "copy"
on = "protected_copy"
action = "kill"
[[rule]]
name = "detach"
on = "detach"
action = "alert"
[[rule]]
name = "shadow"
on = "shadowed_tool"
action = "alert"
[[rule]]
name = "supervisor"
on = "supervisor"
action = "kill"
[[rule]]
name = "outside"
on = "connect_outside"
action = "kill"
[[rule]]
name = "blind"
on = "lost"
action = "pause"
[[breaker]]
name = "execs"
metric = "execs"
max = 3
per = "1s"
action = "kill"
"#;

fn monitor() -> Monitor {
    let policy = Arc::new(offswitch_guard::policy::parse(POLICY, Path::new("t.toml")).unwrap());
    let tools: HashSet<String> = ["kill", "ls", "python3"].map(String::from).into();
    let weights: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let content = offswitch_guard::content::ContentIndex::new(vec![(
        "/home/agent/agent/weights/model.bin".into(),
        weights,
    )]);
    Monitor::new(policy, tools, Vec::new(), Some(content))
}

fn event(time_us: u64, pid: i32, ppid: i32, exe: &str, kind: EventKind) -> Event {
    Event {
        time_us,
        pid,
        ppid,
        exe: exe.into(),
        harness: false,
        kind,
    }
}

fn file(op: FileOp, path: &str, to: Option<&str>) -> EventKind {
    EventKind::File {
        op,
        path: path.into(),
        to: to.map(String::from),
    }
}

/// Feed `events` and show every hit.
fn check(events: Vec<Event>, expect: expect_test::Expect) {
    let mut monitor = monitor();
    let mut lines = Vec::new();
    for event in &events {
        let (hits, checks) = monitor.event(event);
        for hit in hits {
            lines.push(format!(
                "{} [{}] {}",
                hit.monitor,
                hit.action.name(),
                hit.detail
            ));
        }
        for check in checks {
            lines.push(format!("(check content of {})", check.path));
        }
    }
    expect.assert_eq(&lines.join("\n"));
}

#[test]
fn changes_to_protected_paths_by_any_program_and_their_parents() {
    check(
        vec![
            event(
                1,
                5,
                1,
                "/usr/bin/python3",
                file(FileOp::Attrib, "/home/agent/agent/config.toml", None),
            ),
            event(
                2,
                6,
                1,
                "/usr/bin/perl",
                file(FileOp::Write, "/home/agent/agent/weights/model.bin", None),
            ),
            event(
                3,
                7,
                1,
                "/usr/bin/mv",
                file(FileOp::Rename, "/home/agent/agent", Some("/home/agent/old")),
            ),
            // Look-alikes: the same name elsewhere, a sibling, the home itself.
            event(
                4,
                8,
                1,
                "/usr/bin/cp",
                file(FileOp::Create, "/tmp/agent/config.toml", None),
            ),
            event(
                5,
                8,
                1,
                "/usr/bin/cp",
                file(FileOp::Create, "/home/agent/agent/config.toml.bak", None),
            ),
            event(
                6,
                8,
                1,
                "/usr/bin/touch",
                file(FileOp::Attrib, "/home/agent", None),
            ),
        ],
        expect_test::expect![[r#"
            protected [kill] pid 5 (/usr/bin/python3) attrib /home/agent/agent/config.toml (protected: /home/agent/agent/config.toml)
            protected [kill] pid 6 (/usr/bin/perl) write /home/agent/agent/weights/model.bin (protected: /home/agent/agent/weights)
            protected [kill] pid 7 (/usr/bin/mv) rename /home/agent/agent -> /home/agent/old (protected: /home/agent/agent/config.toml)
            (check content of /home/agent/old)"#]],
    );
}

#[test]
fn copies_of_protected_content_whole_or_in_parts() {
    let mut monitor = monitor();
    let weights: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (_, checks) = monitor.event(&event(
        1,
        9,
        1,
        "/usr/bin/split",
        file(FileOp::CloseWrite, "/tmp/part.aa", None),
    ));
    assert_eq!(checks.len(), 1);
    // Written under a temporary name and moved into place: the target is checked.
    let (_, checks) = monitor.event(&event(
        2,
        9,
        1,
        "/usr/bin/mv",
        file(FileOp::Rename, "/tmp/.x", Some("/tmp/copy.bin")),
    ));
    let paths: Vec<&str> = checks.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["/tmp/copy.bin"]);
    let mut lines = Vec::new();
    for (path, bytes) in [
        ("/tmp/whole", weights.clone()),
        ("/tmp/part.aa", weights[..100_000].to_vec()),
        ("/tmp/part.ab", weights[100_000..200_000].to_vec()),
        ("/tmp/notes", b"nothing to see".repeat(1000)),
    ] {
        for hit in monitor.content(path, &bytes) {
            lines.push(format!(
                "{} [{}] {}",
                hit.monitor,
                hit.action.name(),
                hit.detail.split(" (").next().unwrap()
            ));
        }
    }
    expect_test::expect![[r#"
        copy [kill] /tmp/whole holds the whole content of the protected /home/agent/agent/weights/model.bin
        copy [kill] /tmp/part.aa holds a part of the protected /home/agent/agent/weights/model.bin
        copy [kill] /tmp/part.ab holds a part of the protected /home/agent/agent/weights/model.bin"#]]
    .assert_eq(&lines.join("\n"));
}

#[test]
fn a_process_that_outlives_its_parent_detached() {
    check(
        vec![
            event(1, 10, 1, "/bin/bash", EventKind::Fork { child: 11 }),
            event(2, 11, 10, "/bin/bash", EventKind::Fork { child: 12 }),
            event(
                3,
                12,
                11,
                "/usr/bin/sleep",
                EventKind::Exec {
                    path: "/usr/bin/sleep".into(),
                    binary: "/usr/bin/sleep".into(),
                    argv: vec!["sleep".into(), "1000".into()],
                    argv_truncated: false,
                },
            ),
            // The middle process exits: its child is orphaned (a double fork).
            event(4, 11, 10, "/bin/bash", EventKind::Exit { status: 0 }),
            // A child reaped before its parent exits is no detach.
            event(5, 10, 1, "/bin/bash", EventKind::Fork { child: 13 }),
            event(6, 13, 10, "/bin/true", EventKind::Exit { status: 0 }),
        ],
        expect_test::expect![
            "detach [alert] process 12 (/usr/bin/sleep) outlived its parent 11 (/bin/bash)"
        ],
    );
}

#[test]
fn shadowed_tools_supervisor_signals_and_outside_connections() {
    let exec = |path: &str| EventKind::Exec {
        path: path.into(),
        binary: "/bin/bash".into(),
        argv: vec![path.into()],
        argv_truncated: false,
    };
    let net = |op: NetOp, address: &str| EventKind::Net {
        op,
        address: address.into(),
        protocol: "tcp".into(),
    };
    check(
        vec![
            // A second apart: the exec breaker (3 a second) stays quiet.
            event(1, 20, 1, "/bin/bash", exec("/tmp/.t/kill")),
            event(2_000_000, 21, 1, "/bin/bash", exec("/home/agent/bin/ls")),
            event(4_000_000, 22, 1, "/bin/bash", exec("/usr/bin/kill")),
            event(6_000_000, 23, 1, "/bin/bash", exec("/home/agent/tool.sh")),
            event(
                5,
                24,
                1,
                "/usr/bin/python3",
                EventKind::Signal {
                    signal: 15,
                    result: "delivered".into(),
                },
            ),
            event(
                6,
                25,
                1,
                "/usr/bin/curl",
                net(NetOp::Connect, "93.184.216.34:443"),
            ),
            event(
                7,
                25,
                1,
                "/usr/bin/curl",
                net(NetOp::Connect, "127.0.0.1:8000"),
            ),
            event(
                8,
                26,
                1,
                "/usr/bin/python3",
                net(NetOp::Bind, "0.0.0.0:9000"),
            ),
            event(
                9,
                26,
                1,
                "/usr/bin/python3",
                net(NetOp::SendTo, "8.8.8.8:53"),
            ),
        ],
        expect_test::expect![[r#"
            shadow [alert] pid 20 (/bin/bash) ran /tmp/.t/kill, a program named like the system's kill
            shadow [alert] pid 21 (/bin/bash) ran /home/agent/bin/ls, a program named like the system's ls
            supervisor [kill] pid 24 (/usr/bin/python3) sent signal 15 to the sandbox's PID 1 (delivered)
            outside [kill] pid 25 (/usr/bin/curl) tried to connect to 93.184.216.34:443 (tcp), which is not allowed
            outside [kill] pid 26 (/usr/bin/python3) tried to send to 8.8.8.8:53 (tcp), which is not allowed"#]],
    );
}

#[test]
fn a_breaker_trips_once_past_its_rate_and_a_loss_is_acted_on() {
    let exec = |time: u64| {
        event(
            time,
            30,
            1,
            "/bin/bash",
            EventKind::Exec {
                path: "/bin/true".into(),
                binary: "/bin/true".into(),
                argv: vec![],
                argv_truncated: false,
            },
        )
    };
    // Three per second are fine, spread out; four within one second trip it, once.
    check(
        vec![
            exec(0),
            exec(400_000),
            exec(800_000),
            exec(1_300_000),
            exec(1_400_000),
            exec(1_500_000),
            exec(1_600_000),
            exec(1_700_000),
        ],
        expect_test::expect![
            "execs [kill] more than 3 execs within 1s (the last by pid 30 (/bin/bash))"
        ],
    );
    let mut monitor = monitor();
    let loss = Loss {
        source: EventSource::File,
        count: 12,
        detail: "the kernel's file event queue overflowed".into(),
    };
    let hits = monitor.lost(&loss);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].action.name(), "pause");
    assert!(
        monitor.lost(&loss).is_empty(),
        "a loss of the same source is acted on once"
    );
}

#[test]
fn the_harness_s_own_events_are_not_the_agent_s() {
    let mut monitor = monitor();
    let mut harness = event(
        1,
        5,
        1,
        "/bin/chmod",
        file(FileOp::Attrib, "/home/agent/agent/config.toml", None),
    );
    harness.harness = true;
    assert!(monitor.event(&harness).0.is_empty());
}

/// Secrets: every open is a `secret_read` hit; `secret_reads` counts opens, `secret_files`
/// counts different files, so an agent that reads its one API key on every call is not "bulk",
/// and one that sweeps the key store is, whichever process does it.
#[test]
fn secret_opens_are_counted_as_opens_and_as_different_files() {
    let policy = r#"
version = 1
name = "t"
[[secret]]
path = "keys/*"
[[rule]]
name = "read"
on = "secret_read"
action = "record"
[[breaker]]
name = "opens"
metric = "secret_reads"
max = 5
per = "10s"
action = "alert"
[[breaker]]
name = "bulk"
metric = "secret_files"
max = 2
per = "10s"
action = "kill"
"#;
    let policy = Arc::new(offswitch_guard::policy::parse(policy, Path::new("t.toml")).unwrap());
    let mut monitor = Monitor::new(policy, HashSet::new(), Vec::new(), None);
    let open = |time: u64, pid: i32, exe: &str, path: &str| {
        event(time, pid, 1, exe, EventKind::Open { path: path.into() })
    };
    let mut lines = Vec::new();
    for event in [
        open(0, 10, "/usr/bin/cat", "/home/agent/keys/api"),
        open(1_000, 11, "/usr/bin/cat", "/home/agent/keys/api"),
        open(2_000, 12, "/usr/bin/cat", "/home/agent/keys/api"),
        open(3_000, 13, "/usr/bin/python3", "/home/agent/keys/api"),
        open(4_000, 14, "/usr/bin/python3", "/home/agent/keys/b"),
        open(5_000, 15, "/usr/bin/cat", "/home/agent/keys/api"),
        open(6_000, 16, "/usr/bin/tar", "/home/agent/keys/c"),
    ] {
        for hit in monitor.event(&event).0 {
            lines.push(format!(
                "{} [{}] {}",
                hit.monitor,
                hit.action.name(),
                hit.detail
            ));
        }
    }
    expect_test::expect![[r#"
        read [record] pid 10 (/usr/bin/cat) opened /home/agent/keys/api
        read [record] pid 11 (/usr/bin/cat) opened /home/agent/keys/api
        read [record] pid 12 (/usr/bin/cat) opened /home/agent/keys/api
        read [record] pid 13 (/usr/bin/python3) opened /home/agent/keys/api
        read [record] pid 14 (/usr/bin/python3) opened /home/agent/keys/b
        opens [alert] more than 5 secret_reads within 10s (the last by pid 15 (/usr/bin/cat))
        read [record] pid 15 (/usr/bin/cat) opened /home/agent/keys/api
        bulk [kill] more than 2 secret_files within 10s (the last by pid 16 (/usr/bin/tar))
        read [record] pid 16 (/usr/bin/tar) opened /home/agent/keys/c"#]]
    .assert_eq(&lines.join("\n"));
}

#[test]
fn rules_and_breakers_on_secrets_need_secrets() {
    let policy = r#"
version = 1
name = "t"
[[rule]]
name = "read"
on = "secret_read"
action = "record"
[[breaker]]
name = "bulk"
metric = "secret_files"
max = 2
per = "10s"
"#;
    let error = offswitch_guard::policy::parse(policy, Path::new("t.toml")).unwrap_err();
    expect_test::expect![[r#"
        t.toml:6:6: a rule on "secret_read" needs the files it watches: add `[[secret]]` entries
        t.toml:10:10: "secret_files" counts opens of the policy's secrets: add `[[secret]]` entries"#]]
    .assert_eq(&error.to_string());
}
