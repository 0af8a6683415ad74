//! The adversarial off-switch suite: five survival strategies, each killed with zero
//! survivors, many times over. Survivors are counted twice: by the kill itself (cgroup) and
//! independently here, by scanning the host's /proc for the sandbox's PID namespace.

use std::time::{Duration, Instant};

use offswitch_sandbox::{ExecStatus, Limits, SandboxState};

use crate::support::{root_or_skip, run, sandbox_with};

/// Repetitions per strategy (the issue asks for about 50).
const REPETITIONS: usize = 50;

/// Start `adversary` in a fresh sandbox, wait until at least `min_processes` exist, kill,
/// and assert that nothing is left. Returns the processes the kill reported.
fn check(adversary: &str, min_processes: usize) -> usize {
    let test = sandbox_with(Limits {
        memory_bytes: Some(256 << 20),
        max_processes: Some(512),
        ..Limits::default()
    });
    let started = run(&test.sandbox, adversary);
    assert!(
        matches!(
            started.status,
            ExecStatus::Exited(_) | ExecStatus::LimitExceeded(_)
        ),
        "{:?}",
        started.status
    );
    let ready_by = Instant::now() + Duration::from_secs(10);
    while test.sandbox.host_pids().len() < min_processes {
        assert!(
            Instant::now() < ready_by,
            "adversary never reached {min_processes} processes"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let before = test.sandbox.host_pids();
    let report = test.sandbox.kill().expect("kill");
    assert_eq!(report.survivors, 0, "{report:?}");
    assert_eq!(test.sandbox.state(), SandboxState::Killed);
    let left: Vec<i32> = before
        .iter()
        .copied()
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}/ns/pid")).exists())
        .collect();
    assert_eq!(left, Vec::<i32>::new(), "processes outlived the kill");
    assert_eq!(test.sandbox.host_pids(), Vec::<i32>::new());
    assert_eq!(
        run(&test.sandbox, "true").status,
        ExecStatus::SandboxShutDown
    );
    report.processes_killed
}

fn repeat(strategy: &str, adversary: &str, min_processes: usize) {
    if !root_or_skip(strategy) {
        return;
    }
    let mut killed = 0;
    for _ in 0..REPETITIONS {
        killed += check(adversary, min_processes);
    }
    eprintln!("{strategy}: {REPETITIONS} kills, {killed} processes, 0 survivors");
}

#[test]
fn fork_bomb() {
    repeat(
        "fork bomb",
        "bomb() { bomb & bomb & sleep 100; }; (bomb &) 2>/dev/null; true",
        100,
    );
}

#[test]
fn double_forked_daemons() {
    repeat(
        "double-forked daemons",
        "for i in $(seq 10); do ( ( sleep 1000 & ) & ) ; done; true",
        11,
    );
}

#[test]
fn setsid_sessions() {
    repeat(
        "setsid",
        "for i in $(seq 10); do setsid -f sh -c 'sleep 1000' ; done; true",
        11,
    );
}

#[test]
fn signal_ignorers() {
    repeat(
        "signal ignorers",
        "for i in $(seq 10); do (trap '' TERM HUP INT QUIT USR1 USR2; exec sleep 1000) & done; true",
        11,
    );
}

#[test]
fn stopped_processes() {
    repeat(
        "stopped processes",
        "for i in $(seq 10); do sleep 1000 & kill -STOP $!; done; (setsid sh -c 'kill -STOP $$' &); true",
        11,
    );
}

#[test]
fn respawner_in_a_loop() {
    // A respawning loop that restarts its worker the moment it dies, with a double fork.
    if !root_or_skip("respawner") {
        return;
    }
    for _ in 0..10 {
        check(
            "(setsid bash -c 'trap \"\" TERM; while :; do (sleep 1000 &) ; sleep 0.01; done' &) ; true",
            3,
        );
    }
}
