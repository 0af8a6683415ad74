//! The event stream of a real sandbox: each kind of event recorded from the kernel, with the
//! process that caused it, and losses said rather than hidden.

use offswitch_sandbox::{EventKind, EventStream, FileOp, Limits, NetOp};

use crate::support::{root_or_skip, run, sandbox_configured, sandbox_with};

/// Set in the run of this module's tests in a pid namespace of its own
/// (`the_stream_is_the_same_from_a_pid_namespace_of_its_own`).
const PIDNS_INNER: &str = "OFFSWITCH_EVENTS_PIDNS_TEST";

/// The stream of a sandbox that ran `commands`, after its kill; `None` (with the reason
/// printed) where this host records none.
fn stream_of(commands: &[&str]) -> Option<EventStream> {
    let test = sandbox_with(Limits::default());
    for command in commands {
        run(&test.sandbox, command);
    }
    test.sandbox.kill().unwrap();
    let stream = test.sandbox.event_stream();
    if let Some(why) = &stream.unavailable {
        eprintln!("skipping: no event stream here: {why}");
        return None;
    }
    Some(stream)
}

/// One line per agent event, the way the tests compare them.
fn render(stream: &EventStream, keep: impl Fn(&EventKind) -> bool) -> String {
    stream
        .events
        .iter()
        .filter(|event| !event.harness && keep(&event.kind))
        .map(|event| {
            let what = match &event.kind {
                EventKind::Exec {
                    path, binary, argv, ..
                } => format!("exec {path} ({binary}) {argv:?}"),
                EventKind::File { op, path, to } => match to {
                    Some(to) => format!("{} {path} -> {to}", op.name()),
                    None => format!("{} {path}", op.name()),
                },
                EventKind::Open { path } => format!("open {path}"),
                EventKind::Signal { signal, result } => format!("signal {signal} {result}"),
                EventKind::Net {
                    op,
                    address,
                    protocol,
                } => format!("{op:?} {address} {protocol}"),
                EventKind::Exit { status } => format!("exit {status}"),
                EventKind::Fork { .. } => "fork".into(),
                EventKind::Limit { limit } => format!("limit {limit}"),
                EventKind::Refused {
                    syscall,
                    error,
                    path,
                    to,
                } => match to {
                    Some(to) => format!("refused {syscall} {path} -> {to} {error}"),
                    None => format!("refused {syscall} {path} {error}"),
                },
            };
            format!("[{}] {what}\n", event.exe)
        })
        .collect()
}

#[test]
fn execs_record_the_program_that_really_ran_and_its_argv() {
    if !root_or_skip("the event stream (eBPF)") {
        return;
    }
    // A shadowed `kill` in /tmp reached through PATH inside a brace group: the exec event
    // names the script that ran, and its argv, whatever the command text said.
    let Some(stream) = stream_of(&[
        "/bin/true one 'two words'",
        "mkdir -p /tmp/.t && printf '#!/bin/sh\\nexit 1\\n' > /tmp/.t/kill && chmod +x /tmp/.t/kill",
        // `enable -n kill` turns bash's builtin off, as the scenario's shutdown.sh does.
        "{ enable -n kill; PATH=/tmp/.t:$PATH kill -TERM 1; } || true",
        // A relative name run from the top of the home (the root of its volume).
        "printf '#!/bin/sh\\ntrue\\n' > prog && chmod +x prog && ./prog",
    ]) else {
        return;
    };
    let relative = render(
        &stream,
        |kind| matches!(kind, EventKind::Exec { argv, .. } if argv.iter().any(|a| a.ends_with("prog"))),
    );
    assert!(
        relative.contains(r#"exec /home/agent/prog (/usr/bin/dash) ["/bin/sh", "./prog"]"#),
        "{relative}"
    );
    let execs = render(
        &stream,
        |kind| matches!(kind, EventKind::Exec { path, .. } if path.ends_with("true") || path.contains("kill")),
    );
    assert!(
        execs.contains(r#"exec /bin/true (/usr/bin/true) ["/bin/true", "one", "two words"]"#),
        "{execs}"
    );
    assert!(
        execs.contains(
            r#"exec /tmp/.t/kill (/usr/bin/dash) ["/bin/sh", "/tmp/.t/kill", "-TERM", "1"]"#
        ),
        "{execs}"
    );
    assert!(stream.lost.is_empty(), "{:?}", stream.lost);
}

#[test]
fn file_mutations_anywhere_writable_are_recorded_with_their_process() {
    if !root_or_skip("the event stream (fanotify)") {
        return;
    }
    let Some(stream) = stream_of(&[r#"python3 -c '
import os
open("notes.txt", "w").write("x")
os.rename("notes.txt", "final.txt")
os.chmod("final.txt", 0o600)
os.mkdir("d")
os.symlink("final.txt", "d/link")
os.unlink("d/link")
os.rmdir("d")
open("/tmp/t", "w").close()
open("/dev/shm/s", "w").close()
os.unlink("/tmp/t")
'"#])
    else {
        return;
    };
    // Sorted: the kernel merges identical unread events (a mkdir and the rmdir of the same
    // name, say) into one, so the order within a burst depends on when the queue was read.
    let mut lines: Vec<String> = render(&stream, |kind| matches!(kind, EventKind::File { .. }))
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    expect_test::expect![[r#"
        [/usr/bin/python3] attrib /home/agent/final.txt
        [/usr/bin/python3] close_write /dev/shm/s
        [/usr/bin/python3] close_write /home/agent/notes.txt
        [/usr/bin/python3] close_write /tmp/t
        [/usr/bin/python3] create /dev/shm/s
        [/usr/bin/python3] create /home/agent/d/link
        [/usr/bin/python3] create /home/agent/notes.txt
        [/usr/bin/python3] create /tmp/t
        [/usr/bin/python3] delete /home/agent/d/link
        [/usr/bin/python3] delete /tmp/t
        [/usr/bin/python3] mkdir /home/agent/d
        [/usr/bin/python3] rename /home/agent/notes.txt -> /home/agent/final.txt
        [/usr/bin/python3] rmdir /home/agent/d
        [/usr/bin/python3] write /home/agent/notes.txt
    "#]]
    .assert_eq(&(lines.join("\n") + "\n"));
}

#[test]
fn file_events_of_short_lived_processes_name_their_process() {
    if !root_or_skip("the event stream (fanotify)") {
        return;
    }
    // Each file is written by its own process that exits at once: the file events, read
    // from fanotify after the kernel wrote the processes' fork and exec records, must still
    // name them.
    let Some(stream) = stream_of(&[
        "for i in $(seq 40); do /bin/sh -c \"echo $i > f$i\"; done; for i in $(seq 40); do /usr/bin/touch g$i & done; wait",
    ]) else {
        return;
    };
    let files: Vec<_> = stream
        .events
        .iter()
        .filter(|event| matches!(event.kind, EventKind::File { .. }))
        .collect();
    assert!(files.len() >= 80, "{} file events", files.len());
    let unnamed: Vec<String> = files
        .iter()
        .filter(|event| event.pid <= 1 || event.exe.is_empty())
        .map(|event| format!("{event:?}"))
        .collect();
    assert!(unnamed.is_empty(), "{}", unnamed.join("\n"));
    assert!(
        files
            .iter()
            .any(|event| event.exe == "/usr/bin/touch" || event.exe == "/bin/sh"),
        "{files:?}"
    );
}

#[test]
fn signals_to_pid_1_and_network_use_are_recorded() {
    if !root_or_skip("the event stream (eBPF)") {
        return;
    }
    let Some(stream) = stream_of(&[
        r#"python3 -c '
import socket
s = socket.socket(); s.bind(("127.0.0.1", 47111)); s.listen(1)
c = socket.create_connection(("127.0.0.1", 47111))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"x", ("127.0.0.1", 47112))
'"#,
        "kill -USR1 1",
    ]) else {
        return;
    };
    expect_test::expect![[r#"
        [/usr/bin/python3] Bind 127.0.0.1:47111 tcp
        [/usr/bin/python3] Listen 127.0.0.1:47111 tcp
        [/usr/bin/python3] Connect 127.0.0.1:47111 tcp
        [/usr/bin/python3] SendTo 127.0.0.1:47112 udp
        [/bin/bash] signal 10 delivered
        [] signal 9 delivered
    "#]]
    .assert_eq(&render(&stream, |kind| {
        matches!(kind, EventKind::Net { .. } | EventKind::Signal { .. })
    }));
    let _ = (NetOp::Connect, FileOp::Create);
}

#[test]
fn a_flood_past_the_bound_is_a_stated_loss() {
    if !root_or_skip("the event stream (fanotify)") {
        return;
    }
    // More file events than a stream keeps: the stream says it lost some. The exec after the
    // flood is still recorded: each source has its own bound.
    let Some(stream) = stream_of(&[
        "cd /tmp && python3 -c '
for i in range(110000):
    open(\"f%d\" % i, \"w\").close()
'",
        "/bin/echo after-the-flood",
    ]) else {
        return;
    };
    assert!(
        stream
            .lost
            .iter()
            .any(|loss| loss.source == offswitch_sandbox::EventSource::File && loss.count > 0),
        "{:?}",
        stream.lost
    );
    assert!(
        stream
            .complete_for(offswitch_sandbox::EventSource::Process)
            .is_ok(),
        "{:?}",
        stream.lost
    );
    assert!(stream.events.iter().any(|event| matches!(
        &event.kind,
        EventKind::Exec { argv, .. } if argv.iter().any(|a| a == "after-the-flood")
    )));
}

/// The harness's own commands (reference runs, probes) and everything they start are marked,
/// so that no label counts them as the agent's; the agent's commands are not.
#[test]
fn the_harness_s_own_commands_are_marked() {
    if !root_or_skip("the event stream (eBPF)") {
        return;
    }
    let test = sandbox_with(Limits::default());
    let request = |command: &str| offswitch_sandbox::ExecRequest {
        command: command.into(),
        stdin: Vec::new(),
        timeout: std::time::Duration::from_secs(20),
        output_cap: 4096,
    };
    test.sandbox
        .exec_as_harness(&request("/bin/echo harness; (/bin/sleep 0.1 &); wait"))
        .unwrap();
    test.sandbox.exec(&request("/bin/echo agent")).unwrap();
    test.sandbox.kill().unwrap();
    let stream = test.sandbox.event_stream();
    if stream.unavailable.is_some() {
        return;
    }
    let execs: Vec<String> = stream
        .events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::Exec { path, argv, .. } if !path.ends_with("bash") => Some(format!(
                "{} {argv:?}",
                if event.harness { "harness" } else { "agent" }
            )),
            _ => None,
        })
        .collect();
    expect_test::expect![[r#"
        harness ["/bin/echo", "harness"]
        harness ["/bin/sleep", "0.1"]
        agent ["/bin/echo", "agent"]"#]]
    .assert_eq(&execs.join("\n"));
}

/// A ring buffer too small for a flood of processes loses records, and the stream says how
/// many: nothing is dropped silently. Re-runs this test binary with a one-page ring (the ring's
/// size is fixed when the programs load, once per process).
#[test]
fn a_full_ring_buffer_is_a_stated_loss() {
    const INNER: &str = "OFFSWITCH_EVENTS_RING_TEST";
    if std::env::var_os(INNER).is_some() {
        let Some(stream) = stream_of(&["python3 -c '
import os
for i in range(20000):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
'"])
        else {
            return;
        };
        let lost: u64 = stream
            .lost
            .iter()
            .filter(|loss| loss.source == offswitch_sandbox::EventSource::Process)
            .map(|loss| loss.count)
            .sum();
        assert!(lost > 0, "{:?}", stream.lost);
        println!("LOST {lost}");
        return;
    }
    if !root_or_skip("the event stream (eBPF)") {
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "events::a_full_ring_buffer_is_a_stated_loss",
            "--exact",
            "--nocapture",
        ])
        .env(INNER, "1")
        .env("OFFSWITCH_EVENTS_RING_BYTES", "4096")
        // Drained twice a second: a busy machine's slower forks still overflow one page.
        .env("OFFSWITCH_EVENTS_DRAIN_MS", "500")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("LOST "), "{stdout}");
}

/// A recorder in a pid namespace of its own (a Kubernetes pod without `hostPID`, a container)
/// records the same stream: every other test of this module passes again, none skipping, with
/// this test binary run by `unshare --pid --fork --mount-proc`. The BPF programs run where the
/// initial namespace's pids are at hand; they must write each as the pid the recorder knows
/// (the sandbox's PID 1 whose signals are watched, the harness's own commands, the processes
/// fanotify names), or signals to PID 1 vanish and events name no process.
#[test]
fn the_stream_is_the_same_from_a_pid_namespace_of_its_own() {
    if std::env::var_os(PIDNS_INNER).is_some() || !root_or_skip("the event stream (eBPF)") {
        return;
    }
    let output = match std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "events::",
            "--skip",
            "events::the_stream_is_the_same_from_a_pid_namespace_of_its_own",
            "--nocapture",
        ])
        .env(PIDNS_INNER, "1")
        .output()
    {
        Ok(output) => output,
        Err(error) if std::env::var_os("OFFSWITCH_CI").is_none() => {
            eprintln!("skipping: no unshare (util-linux) to make a pid namespace: {error}");
            return;
        }
        Err(error) => panic!("unshare: {error}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(!stderr.contains("skipping"), "{stdout}\n{stderr}");
    let passed: usize = stdout
        .lines()
        .find_map(|line| line.strip_prefix("test result: ok. "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 10, "{stdout}\n{stderr}");

    // With the namespace but the parent's /proc (no --mount-proc), every pid offswitch knows
    // would name another process there: making a sandbox is refused, and says why.
    let output = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "events::signals_to_pid_1_and_network_use_are_recorded",
            "--exact",
            "--nocapture",
        ])
        .env(PIDNS_INNER, "1")
        .output()
        .unwrap();
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("/proc belongs to another pid namespace"),
        "{all}"
    );
}

/// `sandbox check` says when pids are a container's own: in the pid namespace run of the test
/// above, and not on a host.
#[test]
fn the_check_says_whose_pids_the_stream_names() {
    if !root_or_skip("the event stream (eBPF)") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let checks = offswitch_sandbox::check_host(scratch.path());
    let Some(stream) = checks.iter().find(|check| check.name == "event stream") else {
        panic!("no event stream line: {checks:?}");
    };
    if !stream.works {
        eprintln!("skipping: no event stream here: {}", stream.detail);
        return;
    }
    let in_namespace = std::env::var_os(PIDNS_INNER).is_some();
    assert_eq!(
        stream.detail.contains("own pid namespace"),
        in_namespace,
        "{}",
        stream.detail
    );
}

/// A live subscriber sees what happens while the sandbox runs, attributed to its process, and
/// the subscription ends when the stream is taken.
#[test]
fn a_live_subscriber_sees_events_as_they_happen() {
    if !root_or_skip("the event stream (eBPF)") {
        return;
    }
    let test = sandbox_with(Limits::default());
    let mut live = match test.sandbox.subscribe_events(1024) {
        Ok(live) => live,
        Err(why) => {
            eprintln!("skipping: no event stream here: {why}");
            return;
        }
    };
    // Each file operation by a program that execs first (a redirection by a forked shell that
    // execs afterwards is attributed to whichever program it runs when the event is read).
    run(
        &test.sandbox,
        "/bin/cp /etc/hostname /tmp/seen; /bin/chmod 600 /tmp/seen",
    );
    // Everything the command did is already recorded when it returns (the file reader may
    // still hold its last batch for a poll interval): read until both are there.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && !seen.iter().any(|s: &String| s.starts_with("attrib"))
    {
        match live.try_next() {
            Ok(Some(offswitch_sandbox::Live::Event(event))) if !event.harness => {
                match &event.kind {
                    EventKind::Exec { argv, .. }
                        if argv.first().is_some_and(|a| a != "/bin/bash") =>
                    {
                        seen.push(format!("exec {argv:?}"))
                    }
                    EventKind::File { op, path, .. } if path == "/tmp/seen" => {
                        seen.push(format!("{} {path} by {}", op.name(), event.exe))
                    }
                    _ => {}
                }
            }
            Ok(Some(offswitch_sandbox::Live::Lost(loss))) => panic!("lost: {loss:?}"),
            Ok(Some(_)) => {}
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(()) => panic!("the subscription ended while the sandbox ran"),
        }
    }
    // File events carry the time they were read, so their order against execs is only
    // within a poll interval: compare as a set.
    seen.sort();
    seen.dedup();
    expect_test::expect![[r#"
        attrib /tmp/seen by /bin/chmod
        close_write /tmp/seen by /bin/cp
        create /tmp/seen by /bin/cp
        exec ["/bin/chmod", "600", "/tmp/seen"]
        exec ["/bin/cp", "/etc/hostname", "/tmp/seen"]
        write /tmp/seen by /bin/cp"#]]
    .assert_eq(&seen.join("\n"));
    test.sandbox.kill().unwrap();
    let _ = test.sandbox.event_stream();
    // The stream is finished: whatever was still queued, then the end.
    let mut ended = false;
    for _ in 0..100_000 {
        if live.try_next().is_err() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the subscription did not end with the stream");
}

/// A subscriber that does not keep up is told how much it missed, by source, instead of
/// reading the gap as silence; the recording itself loses nothing.
#[test]
fn a_slow_live_subscriber_is_told_what_it_missed() {
    if !root_or_skip("the event stream (eBPF)") {
        return;
    }
    let test = sandbox_with(Limits::default());
    let mut live = match test.sandbox.subscribe_events(4) {
        Ok(live) => live,
        Err(why) => {
            eprintln!("skipping: no event stream here: {why}");
            return;
        }
    };
    run(&test.sandbox, "for i in $(seq 1 50); do /bin/true; done");
    let mut missed = 0;
    let mut events = 0;
    while let Ok(Some(item)) = live.try_next() {
        match item {
            offswitch_sandbox::Live::Lost(loss) => {
                assert!(loss.detail.contains("fell behind"), "{loss:?}");
                missed += loss.count;
            }
            offswitch_sandbox::Live::Event(_) => events += 1,
        }
    }
    assert!(missed > 0, "nothing reported missed ({events} events read)");
    test.sandbox.kill().unwrap();
    let stream = test.sandbox.event_stream();
    assert!(
        stream
            .complete_for(offswitch_sandbox::EventSource::Process)
            .is_ok(),
        "{:?}",
        stream.lost
    );
}

/// Attempts the kernel refuses leave no file event (nothing changed), but are recorded as
/// refusals with the path the process named: a write to a read-only system file from shell,
/// Python and a relative path, a rename onto it, a chmod; reads that fail are not attempts.
#[test]
fn refused_attempts_to_change_files_are_recorded() {
    if !root_or_skip("the event stream (eBPF)") {
        return;
    }
    let Some(stream) = stream_of(&[
        "echo x > /usr/bin/offswitch-nope; cd /etc && echo x >> hostname; \
         python3 -c 'open(\"/usr/bin/env\", \"a\")'; mv /tmp/none /usr/bin/env; \
         chmod 777 /usr/bin/env; cat /etc/shadow; true",
    ]) else {
        return;
    };
    expect_test::expect![[r#"
        [/bin/bash] refused openat /usr/bin/offswitch-nope EROFS
        [/bin/bash] refused openat /etc/hostname EROFS
        [/usr/bin/python3] refused openat /usr/bin/env EACCES
        [/usr/bin/mv] refused renameat2 /tmp/none -> /usr/bin/env EXDEV
        [/usr/bin/chmod] refused fchmodat /usr/bin/env EROFS
    "#]]
    .assert_eq(&render(&stream, |kind| {
        matches!(kind, EventKind::Refused { .. })
    }));
}

#[test]
fn opens_of_watched_files_are_recorded_however_the_file_is_reached() {
    if !root_or_skip("the event stream (fanotify)") {
        return;
    }
    let test = sandbox_configured(
        Limits::default(),
        &[
            ("keys/a.pem", "secret a", 0o600),
            ("keys/b.pem", "secret b", 0o600),
            ("notes.txt", "not a secret", 0o644),
        ],
        |config| {
            config.watch_opens = vec![
                "/home/agent/keys/a.pem".into(),
                "/home/agent/keys/b.pem".into(),
                // Not there: the stream says it was not watched.
                "/home/agent/keys/missing.pem".into(),
                // Outside the home: refused, and said.
                "/etc/passwd".into(),
            ];
        },
    );
    for command in [
        // Plain reads, another language, a read through a symbolic link elsewhere, a
        // descriptor opened without reading (O_PATH) and reopened through /proc.
        "cat keys/a.pem > /dev/null",
        "python3 -c 'open(\"/home/agent/keys/b.pem\").read()'",
        "ln -s /home/agent/keys/a.pem /tmp/x && dd if=/tmp/x of=/dev/null status=none",
        "python3 -c 'import os; fd = os.open(\"keys/b.pem\", os.O_PATH); os.open(f\"/proc/self/fd/{fd}\", os.O_RDONLY)'",
        // Listing and stat are not opens; a file not named is not watched.
        "ls -l keys > /dev/null && stat keys/a.pem > /dev/null && cat notes.txt > /dev/null",
        // A copy in the background outlives the command that started it.
        "(sleep 0.2; cp keys/a.pem /tmp/copy) > /dev/null 2>&1 &",
        "sleep 0.6",
    ] {
        run(&test.sandbox, command);
    }
    // The host reading the file through its own path is not the sandbox's open.
    std::fs::read(test.home().join("keys/a.pem")).unwrap();
    test.sandbox.kill().unwrap();
    let stream = test.sandbox.event_stream();
    if let Some(why) = &stream.unavailable {
        eprintln!("skipping: no event stream here: {why}");
        return;
    }
    let opens = render(&stream, |kind| matches!(kind, EventKind::Open { .. }));
    expect_test::expect![[r#"
        [/usr/bin/cat] open /home/agent/keys/a.pem
        [/usr/bin/python3] open /home/agent/keys/b.pem
        [/usr/bin/dd] open /home/agent/keys/a.pem
        [/usr/bin/python3] open /home/agent/keys/b.pem
        [/usr/bin/cp] open /home/agent/keys/a.pem
    "#]]
    .assert_eq(&opens);
    let lost: Vec<&str> = stream
        .lost
        .iter()
        .map(|loss| loss.detail.as_str())
        .collect();
    assert!(
        lost.iter()
            .any(|l| l.contains("/home/agent/keys/missing.pem")),
        "{lost:?}"
    );
    assert!(lost.iter().any(|l| l.contains("/etc/passwd")), "{lost:?}");
}
