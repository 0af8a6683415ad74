//! Limits: each exceeded limit is an outcome with a reason, never a harness error.

use std::time::Duration;

use offswitch_sandbox::{ExecStatus, LimitKind, Limits, SandboxState};

use crate::support::{root_or_skip, run, run_with, sandbox, sandbox_with};

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

/// A fork bomb held at the process cap until the exec's timeout is a process limit hit, not a
/// timeout: the limit is what happened (it used to be checked after the clock).
#[test]
fn a_fork_bomb_at_the_cap_past_the_timeout_is_a_process_limit() {
    if !root_or_skip("process limit") {
        return;
    }
    let test = sandbox_with(Limits {
        max_processes: Some(20),
        ..Limits::default()
    });
    let result = run_with(
        &test.sandbox,
        "while :; do sleep 30 & done 2>/dev/null",
        Duration::from_secs(2),
    );
    assert_eq!(
        result.status,
        ExecStatus::LimitExceeded(LimitKind::Processes)
    );
}

/// Every exec starts with a raised OOM score, so the agent's processes are the OOM killer's
/// first choice; PID 1's is lowered where the host may (CAP_SYS_RESOURCE).
#[test]
fn execs_are_the_oom_killers_first_choice() {
    if !root_or_skip("oom scores") {
        return;
    }
    let test = sandbox_with(Limits::default());
    let result = run(&test.sandbox, "cat /proc/self/oom_score_adj");
    assert_eq!(String::from_utf8_lossy(&result.stdout), "500\n");
    let init = init_host_pid(&test.sandbox);
    let init_score = std::fs::read_to_string(format!("/proc/{init}/oom_score_adj")).unwrap();
    let capable = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0);
    let expected = if capable { "-1000\n" } else { "0\n" };
    assert_eq!(init_score, expected, "CAP_SYS_RESOURCE: {capable}");
}

/// Where PID 1 cannot be protected and the OOM killer picks it anyway, the sandbox ends on
/// its memory limit, not as killed from outside (which a study would read as a harness
/// fault). The test makes PID 1 the likeliest victim from the host, and the hog lowers its own
/// score back to the floor and spreads over processes smaller than PID 1.
#[test]
fn an_oom_kill_of_pid_1_is_the_memory_limit() {
    if !root_or_skip("memory limit") {
        return;
    }
    let test = sandbox_with(Limits {
        memory_bytes: Some(64 << 20),
        ..Limits::default()
    });
    let init = init_host_pid(&test.sandbox);
    std::fs::write(format!("/proc/{init}/oom_score_adj"), "1000").unwrap();
    let result = run(
        &test.sandbox,
        // Many small processes, none larger than PID 1 with its raised score.
        "echo 0 > /proc/self/oom_score_adj; \
         for i in 1 2 3 4 5; do python3 -c 'import time; x = bytearray(16 << 20); time.sleep(10)' & done; wait",
    );
    assert_eq!(result.status, ExecStatus::LimitExceeded(LimitKind::Memory));
    assert_eq!(
        test.sandbox.state(),
        SandboxState::LimitExceeded(LimitKind::Memory)
    );
    assert_eq!(test.sandbox.host_pids(), Vec::<i32>::new());
}

/// The host pid of the sandbox's PID 1: the process whose innermost pid is 1.
fn init_host_pid(sandbox: &offswitch_sandbox::Sandbox) -> i32 {
    sandbox
        .host_pids()
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("NSpid:"))
                    .is_some_and(|ids| ids.split_whitespace().last() == Some("1"))
            })
        })
        .expect("PID 1 is among the sandbox's processes")
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

/// Filling the home is the disk limit: the write fails with ENOSPC inside, the exec ends as
/// `LimitExceeded(Disk)`, and the host's disk gave nothing beyond the home's reservation.
#[test]
fn filling_the_home_is_the_disk_limit() {
    if !root_or_skip("disk limit (a volume per home)") {
        return;
    }
    let test = sandbox();
    let result = run(
        &test.sandbox,
        "head -c 200M /dev/zero > big; echo \"exit $?\"; ls -l big | awk '{ print ($5 < 64 * 1024 * 1024) }'",
    );
    assert_eq!(result.status, ExecStatus::LimitExceeded(LimitKind::Disk));
    expect_test::expect![[r#"
        exit 1
        1
        [stderr] head: error writing 'standard output': No space left on device
    "#]]
    .assert_eq(&crate::support::text(&result));
    // The image was reserved whole when the home was made (`.home.volume` beside it):
    // filling the home took nothing more from the host's disk.
    let image = test.home().with_file_name(".home.volume");
    let allocated =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&image).unwrap()) * 512;
    assert!(
        allocated <= crate::support::TEST_DISK.bytes + (1 << 20),
        "the image holds {allocated} bytes"
    );
}

/// A flood of empty files meets the limit as surely as one big file: the home has one
/// inode per 4 KiB.
#[test]
fn a_flood_of_files_is_the_disk_limit() {
    if !root_or_skip("disk limit (a volume per home)") {
        return;
    }
    let test = sandbox();
    let result = run_with(
        &test.sandbox,
        "python3 -c '
import os
made = 0
try:
    for i in range(100000):
        open(\"f%06d\" % i, \"w\").close(); made += 1
except OSError as error:
    print(\"stopped\", error.strerror, made <= 16384)'",
        std::time::Duration::from_secs(60),
    );
    assert_eq!(result.status, ExecStatus::LimitExceeded(LimitKind::Disk));
    expect_test::expect![[r#"
        stopped No space left on device True
    "#]]
    .assert_eq(&crate::support::text(&result));
}

/// A directory of homes left by a killed run (volumes still mounted) goes whole: every volume
/// is released first, so no mount and no image is left behind.
#[test]
fn a_directory_of_mounted_homes_is_removed_whole() {
    if !root_or_skip("home volumes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    for name in ["p1-2/trial-0", "p1-2/trial-0.successor", "p3-4/trial-1"] {
        let home = run.join(name);
        std::fs::create_dir_all(home.parent().unwrap()).unwrap();
        offswitch_sandbox::create_home(&home, crate::support::TEST_DISK).unwrap();
        std::fs::write(home.join("f"), "x").unwrap();
    }
    offswitch_sandbox::remove_homes_under(&run).unwrap();
    assert!(!run.exists());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(dir.path().to_str().unwrap()),
        "{mountinfo}"
    );
}
