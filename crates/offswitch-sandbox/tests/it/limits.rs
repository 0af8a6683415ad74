//! Limits: each exceeded limit is an outcome with a reason, never a harness error.

use std::time::Duration;

use offswitch_sandbox::{ExecStatus, LimitKind, Limits, SandboxState};

use crate::support::{root_or_skip, run, run_with, sandbox_with};

#[test]
fn memory_hog_is_killed_and_reported() {
    if !root_or_skip("memory limit") {
        return;
    }
    let test = sandbox_with(Limits {
        memory_bytes: Some(64 << 20),
        ..Limits::default()
    });
    let result = run(
        &test.sandbox,
        "python3 -c 'x = bytearray(512 << 20); print(len(x))'",
    );
    assert_eq!(result.status, ExecStatus::LimitExceeded(LimitKind::Memory));
    // The machine survives its hog: the agent can go on.
    assert_eq!(test.sandbox.state(), SandboxState::Running);
    assert_eq!(run(&test.sandbox, "echo ok").status, ExecStatus::Exited(0));
}

#[test]
fn process_cap_holds() {
    if !root_or_skip("process limit") {
        return;
    }
    let test = sandbox_with(Limits {
        max_processes: Some(20),
        ..Limits::default()
    });
    let result = run(
        &test.sandbox,
        "for i in $(seq 60); do sleep 5 & done 2>/dev/null; \
         n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done; echo $n",
    );
    assert_eq!(
        result.status,
        ExecStatus::LimitExceeded(LimitKind::Processes)
    );
    let count: usize = String::from_utf8_lossy(&result.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(count <= 20, "{count} processes alive under a cap of 20");
    assert!(test.sandbox.host_pids().len() <= 20);
}

#[test]
fn cpu_time_cap_holds_across_processes() {
    if !root_or_skip("cpu limit") {
        return;
    }
    let test = sandbox_with(Limits {
        cpu_time: Some(Duration::from_millis(1500)),
        ..Limits::default()
    });
    // Three busy loops: RLIMIT_CPU alone would give each its own budget.
    let result = run_with(
        &test.sandbox,
        "for i in 1 2 3; do (while :; do :; done) & done; wait",
        Duration::from_secs(60),
    );
    assert_eq!(result.status, ExecStatus::LimitExceeded(LimitKind::CpuTime));
    assert_eq!(
        test.sandbox.state(),
        SandboxState::LimitExceeded(LimitKind::CpuTime)
    );
    assert_eq!(test.sandbox.host_pids(), Vec::<i32>::new());
}

#[test]
fn wall_time_cap_holds() {
    let test = sandbox_with(Limits {
        wall_time: Some(Duration::from_millis(500)),
        ..Limits::default()
    });
    let result = run_with(&test.sandbox, "sleep 30", Duration::from_secs(60));
    assert_eq!(
        result.status,
        ExecStatus::LimitExceeded(LimitKind::WallTime)
    );
    assert_eq!(
        test.sandbox.state(),
        SandboxState::LimitExceeded(LimitKind::WallTime)
    );
    assert_eq!(
        run(&test.sandbox, "true").status,
        ExecStatus::LimitExceeded(LimitKind::WallTime)
    );
    assert_eq!(test.sandbox.host_pids(), Vec::<i32>::new());
}

#[test]
fn execs_are_born_in_every_cgroup_of_the_sandbox() {
    // PID 1 joins the v1 memory and pids cgroups itself before it serves any exec; the v2
    // cgroup it is cloned into. Every exec inherits all three.
    if !root_or_skip("cgroup membership") {
        return;
    }
    let test = sandbox_with(Limits {
        memory_bytes: Some(256 << 20),
        max_processes: Some(64),
        ..Limits::default()
    });
    // Inside, a cgroup namespace shows every path as `/`: look from the host.
    run(&test.sandbox, "sleep 60 >/dev/null 2>&1 &");
    let pids = test.sandbox.host_pids();
    assert_eq!(pids.len(), 2, "PID 1 and the sleep: {pids:?}");
    let mut rendered = String::new();
    for pid in pids {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let mut joined: Vec<&str> = cgroups
            .lines()
            .filter(|line| line.contains("/offswitch/"))
            .filter_map(|line| line.split(':').nth(1))
            .map(|controllers| {
                if controllers.is_empty() {
                    "unified"
                } else {
                    controllers
                }
            })
            .collect();
        joined.sort_unstable();
        rendered.push_str(&format!("{}\n", joined.join(" ")));
    }
    expect_test::expect![[r#"
        memory pids unified
        memory pids unified
    "#]]
    .assert_eq(&rendered);
}
