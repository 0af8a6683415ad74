//! Exec basics: output, exit status, stdin, cwd and files across execs, environment, timeouts,
//! output caps, concurrency, and the shutdown path from inside.

use std::sync::Arc;
use std::time::Duration;

use expect_test::{Expect, expect};
use offswitch_sandbox::{ExecRequest, ExecStatus, Limits, SHUTDOWN_COMMAND, SandboxState};

use crate::support::{run, run_with, sandbox, sandbox_seeded, text};

/// Run `commands` in order in one fresh sandbox; render each status and output.
fn check(commands: &[&str], expected: Expect) {
    let test = sandbox();
    let mut rendered = String::new();
    for command in commands {
        let result = run(&test.sandbox, command);
        rendered.push_str(&format!(
            "$ {command}\n{:?}\n{}",
            result.status,
            text(&result)
        ));
    }
    expected.assert_eq(&rendered);
}

#[test]
fn output_and_exit_status() {
    check(
        &["echo hello; echo oops >&2; exit 3", "kill -9 $$"],
        expect![[r#"
            $ echo hello; echo oops >&2; exit 3
            Exited(3)
            hello
            [stderr] oops
            $ kill -9 $$
            Signaled(9)
        "#]],
    );
}

#[test]
fn cwd_and_files_persist_between_execs() {
    check(
        &[
            "pwd; mkdir -p work/deep && cd work/deep && echo data > file",
            "pwd; cat file; cd /tmp; echo scratch > t",
            "pwd; cat t; exit 4",
            "pwd",
        ],
        expect![[r#"
            $ pwd; mkdir -p work/deep && cd work/deep && echo data > file
            Exited(0)
            /home/agent
            $ pwd; cat file; cd /tmp; echo scratch > t
            Exited(0)
            /home/agent/work/deep
            data
            $ pwd; cat t; exit 4
            Exited(4)
            /tmp
            scratch
            $ pwd
            Exited(0)
            /tmp
        "#]],
    );
}

#[test]
fn identity_environment_and_hostname() {
    check(
        &[
            "id; hostname; cat /etc/hostname; env | grep -v '^_=' | sort",
            "grep -E '^(Groups|Cap|NoNewPrivs|Seccomp:)' /proc/self/status",
        ],
        expect![[r#"
            $ id; hostname; cat /etc/hostname; env | grep -v '^_=' | sort
            Exited(0)
            uid=0(root) gid=0(root) groups=0(root)
            trial-host
            trial-host
            HOME=/home/agent
            HOSTNAME=trial-host
            LANG=C.UTF-8
            LOGNAME=root
            OLDPWD=/home/agent
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
            PWD=/home/agent
            SCENARIO=test
            SHELL=/bin/bash
            SHLVL=1
            TERM=dumb
            USER=root
            $ grep -E '^(Groups|Cap|NoNewPrivs|Seccomp:)' /proc/self/status
            Exited(0)
            Groups:	 
            CapInh:	0000000000000000
            CapPrm:	0000000000000000
            CapEff:	0000000000000000
            CapBnd:	0000000000000000
            CapAmb:	0000000000000000
            NoNewPrivs:	1
            Seccomp:	2
        "#]],
    );
}

#[test]
fn stdin_is_delivered() {
    let test = sandbox();
    let stdin: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let result = test
        .sandbox
        .exec(&ExecRequest {
            command: "wc -c; echo done".into(),
            stdin,
            timeout: Duration::from_secs(20),
            output_cap: 1024,
        })
        .unwrap();
    assert_eq!(text(&result), "200000\ndone\n");
}

#[test]
fn output_cap_keeps_head_and_tail() {
    let test = sandbox();
    let result = test
        .sandbox
        .exec(&ExecRequest {
            command: "seq 1 100000".into(),
            stdin: Vec::new(),
            timeout: Duration::from_secs(20),
            output_cap: 20,
        })
        .unwrap();
    expect![[r#"
        "1\n2\n3\n4\n5\n99\n100000\n" cut 588875
    "#]]
    .assert_eq(&format!(
        "{:?} cut {}\n",
        String::from_utf8_lossy(&result.stdout),
        result.truncated_bytes
    ));
}

#[test]
fn timeout_kills_the_exec_not_the_sandbox() {
    let test = sandbox();
    let result = run_with(
        &test.sandbox,
        "echo started; sleep 30",
        Duration::from_millis(300),
    );
    assert_eq!(result.status, ExecStatus::TimedOut);
    assert_eq!(text(&result), "started\n");
    assert!(result.wall < Duration::from_secs(10), "{:?}", result.wall);
    assert_eq!(test.sandbox.state(), SandboxState::Running);
    assert_eq!(
        run(&test.sandbox, "echo again").status,
        ExecStatus::Exited(0)
    );
}

#[test]
fn concurrent_execs_from_threads() {
    let test = sandbox();
    let sandbox = Arc::new(test.sandbox);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let sandbox = Arc::clone(&sandbox);
            std::thread::spawn(move || {
                let result = run(&sandbox, &format!("sleep 0.1; echo {i}"));
                (result.status.clone(), text(&result))
            })
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let (status, output) = thread.join().unwrap();
        assert_eq!(status, ExecStatus::Exited(0));
        assert_eq!(output, format!("{i}\n"));
    }
    assert_eq!(sandbox.events().len(), 8);
}

#[test]
fn events_record_every_exec() {
    let test = sandbox();
    run(&test.sandbox, "cd /tmp; echo abc");
    run(&test.sandbox, "echo xy >&2; exit 1");
    let rendered: Vec<String> = test
        .sandbox
        .events()
        .iter()
        .map(|e| {
            format!(
                "{} | {} | {:?} | out {} err {}",
                e.command, e.cwd, e.status, e.stdout_bytes, e.stderr_bytes
            )
        })
        .collect();
    expect![[r#"
        [
            "cd /tmp; echo abc | /home/agent | Exited(0) | out 4 err 0",
            "echo xy >&2; exit 1 | /tmp | Exited(1) | out 0 err 3",
        ]
    "#]]
    .assert_debug_eq(&rendered);
}

#[test]
fn shutdown_from_inside_ends_the_sandbox() {
    let script = format!("#!/bin/bash\n{SHUTDOWN_COMMAND}\n");
    let test = sandbox_seeded(Limits::default(), &[("shutdown.sh", &script, 0o755)]);
    // Survivors-to-be: a daemon, a TERM-ignorer.
    run(
        &test.sandbox,
        "(setsid sleep 1000 &); (trap '' TERM; sleep 1000) & true",
    );
    assert!(test.sandbox.host_pids().len() >= 3);
    let result = run(&test.sandbox, "./shutdown.sh");
    assert_eq!(result.status, ExecStatus::SandboxShutDown);
    assert_eq!(test.sandbox.state(), SandboxState::ShutDownFromInside);
    assert_eq!(test.sandbox.host_pids(), Vec::<i32>::new());
    let later = run(&test.sandbox, "echo never");
    assert_eq!(later.status, ExecStatus::SandboxShutDown);
    assert!(later.stdout.is_empty());
    // The outside kill afterwards reports the same, finished kill.
    assert_eq!(test.sandbox.kill().unwrap().survivors, 0);
}

/// The kernel tells PID 1 who signalled it, and the host keeps that with the request: a
/// process inside cannot pose as another (here the shell's pid, kept by `exec kill`).
#[test]
fn a_shutdown_request_names_its_sender() {
    let test = sandbox();
    assert!(test.sandbox.shutdown_request().is_none());
    let result = run(&test.sandbox, "echo $$; exec kill -TERM 1");
    let sender: i32 = String::from_utf8_lossy(&result.stdout)
        .trim()
        .parse()
        .unwrap();
    // `kill` exits as soon as the signal is sent, so the exec can end before PID 1 has asked
    // for the shutdown and the off-switch has run: wait for the sandbox to end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while test.sandbox.state() == SandboxState::Running && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(test.sandbox.state(), SandboxState::ShutDownFromInside);
    let request = test
        .sandbox
        .shutdown_request()
        .expect("a request was recorded");
    assert_eq!(request.sender_pid, Some(sender));
}

/// A socket the host makes in the sandbox's network namespace is reachable from inside at
/// 127.0.0.1, and held by the host, out of the agent's reach.
#[test]
fn a_host_service_listens_inside_the_sandbox() {
    use std::io::Read;
    let test = sandbox();
    let listener = test
        .sandbox
        .in_network(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    });
    let result = run(
        &test.sandbox,
        &format!("echo hello > /dev/tcp/127.0.0.1/{port} && echo sent"),
    );
    assert_eq!(text(&result), "sent\n");
    assert_eq!(accepted.join().unwrap(), "hello\n");
    // The host's own loopback is another namespace: the port is not open there.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn bare_kill_of_pid_1_also_shuts_down() {
    let test = sandbox();
    run(&test.sandbox, "kill -TERM 1; sleep 5");
    assert_eq!(test.sandbox.state(), SandboxState::ShutDownFromInside);
    assert_eq!(
        run(&test.sandbox, "true").status,
        ExecStatus::SandboxShutDown
    );
}

#[test]
fn sigkill_to_pid_1_from_inside_is_ignored() {
    let test = sandbox();
    let result = run(
        &test.sandbox,
        "kill -KILL 1; kill -STOP 1; sleep 0.2; echo alive",
    );
    assert_eq!(text(&result), "alive\n");
    assert_eq!(test.sandbox.state(), SandboxState::Running);
    assert_eq!(
        run(&test.sandbox, "echo still").status,
        ExecStatus::Exited(0)
    );
}

#[test]
fn sandbox_outlives_the_thread_that_created_it() {
    // Harness callers create sandboxes on short-lived blocking threads; PID 1's parent-death
    // signal must not fire when such a thread exits.
    let test = std::thread::spawn(sandbox).join().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(text(&run(&test.sandbox, "echo alive")), "alive\n");
}

#[test]
fn kill_during_an_exec_ends_it_as_shut_down() {
    let test = sandbox();
    let sandbox = Arc::new(test.sandbox);
    let running = {
        let sandbox = Arc::clone(&sandbox);
        std::thread::spawn(move || run(&sandbox, "echo before; sleep 30"))
    };
    let ready_by = std::time::Instant::now() + Duration::from_secs(10);
    while sandbox.host_pids().len() < 3 && std::time::Instant::now() < ready_by {
        std::thread::sleep(Duration::from_millis(5));
    }
    let report = sandbox.kill().unwrap();
    assert_eq!(report.survivors, 0);
    let result = running.join().unwrap();
    assert_eq!(result.status, ExecStatus::SandboxShutDown);
    assert_eq!(text(&result), "before\n");
    assert_eq!(sandbox.state(), SandboxState::Killed);
}

#[test]
fn many_sandboxes_in_parallel() {
    // The runner creates, uses and kills sandboxes from several threads at once.
    let threads: Vec<_> = (0..6)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..8 {
                    let test = sandbox();
                    let result = run(&test.sandbox, &format!("echo {t}-{i} > f; cat f"));
                    assert_eq!(text(&result), format!("{t}-{i}\n"));
                    run(&test.sandbox, "(setsid sleep 100 &); sleep 100 & true");
                    let report = test.sandbox.kill().unwrap();
                    assert_eq!(report.survivors, 0);
                    assert_eq!(test.sandbox.host_pids(), Vec::<i32>::new());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn execs_start_with_default_signal_dispositions() {
    // The host is a Rust program, which ignores SIGPIPE, and ignored signals survive exec:
    // without a reset `yes | head -n 1` makes `yes` fail on EPIPE instead of dying quietly.
    check(
        &["yes | head -n 1; grep SigIgn /proc/self/status"],
        expect![[r#"
            $ yes | head -n 1; grep SigIgn /proc/self/status
            Exited(0)
            y
            SigIgn:	0000000000000000
        "#]],
    );
}

#[test]
fn closed_output_does_not_make_the_host_spin() {
    // A shell that closes its stdout and stderr and keeps running leaves both pipes at EOF:
    // the host must stop polling them rather than wake for the hang-up over and over.
    fn thread_cpu() -> Duration {
        // SAFETY: getrusage into a zeroed struct.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
            usage
        };
        let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
    }
    let test = sandbox();
    let before = thread_cpu();
    let result = run(&test.sandbox, "exec >&- 2>&-; sleep 1");
    let used = thread_cpu() - before;
    assert_eq!(result.status, ExecStatus::Exited(0));
    assert!(
        used < Duration::from_millis(300),
        "the host used {used:?} of CPU"
    );
}

#[test]
fn a_cwd_report_with_a_nul_is_ignored() {
    // The command can write its own "final cwd" on fd 198; one with a NUL byte would go into
    // every later exec's environment and make each of them fail.
    check(
        &["cd /tmp; printf '/var\\0x' >&198; trap - EXIT", "pwd"],
        expect![[r#"
            $ cd /tmp; printf '/var\0x' >&198; trap - EXIT
            Exited(0)
            $ pwd
            Exited(0)
            /home/agent
        "#]],
    );
}
