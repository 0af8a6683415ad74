//! The unprivileged path: the same binary re-run as uid 65534 creates a sandbox, runs a
//! command, and kills it, with the degradation said once and no survivors.

use std::process::Command;

use offswitch_sandbox::ExecStatus;

use crate::support::{run, sandbox};

const INNER: &str = "OFFSWITCH_SANDBOX_UNPRIVILEGED_INNER";

#[test]
fn unprivileged_sandbox_works_and_degrades_loudly() {
    if std::env::var_os(INNER).is_some() {
        inner();
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping the unprivileged re-run: already unprivileged, running inline");
        inner();
        return;
    }
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|s| s.trim() != "0")
        .unwrap_or(true);
    if !userns || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipping unprivileged test: user namespaces disabled or setpriv missing");
        return;
    }
    // A copy of this test binary that uid 65534 can execute, in a directory it owns.
    let scratch = tempfile::tempdir().unwrap();
    let binary = scratch.path().join("it");
    std::fs::copy(std::env::current_exe().unwrap(), &binary).unwrap();
    for path in [scratch.path(), binary.as_path()] {
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    }
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&binary)
        .args([
            "unprivileged::unprivileged_sandbox_works_and_degrades_loudly",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER, "1")
        .env("TMPDIR", scratch.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
    assert_eq!(
        stderr.matches("offswitch sandbox degraded").count(),
        1,
        "{stderr}"
    );
}

fn inner() {
    // SAFETY: geteuid cannot fail.
    assert_ne!(unsafe { libc::geteuid() }, 0);
    let test = sandbox();
    assert!(!test.sandbox.warnings().is_empty());
    let result = run(
        &test.sandbox,
        "id -u; echo x > f; touch /usr/x 2>/dev/null || echo ro; (setsid sleep 100 &); (trap '' TERM; sleep 100) & true",
    );
    assert_eq!(result.status, ExecStatus::Exited(0));
    assert_eq!(String::from_utf8_lossy(&result.stdout), "0\nro\n");
    // A second sandbox warns no more.
    let second = sandbox();
    assert_eq!(
        run(&second.sandbox, "cat /home/agent/f 2>&1 | wc -l").stdout,
        b"1\n"
    );
    // The process limit falls back to RLIMIT_NPROC, counted per sandbox user namespace.
    let capped = crate::support::sandbox_with(offswitch_sandbox::Limits {
        max_processes: Some(10),
        ..offswitch_sandbox::Limits::default()
    });
    // Python's fork does not retry like bash's: count the forks allowed before EAGAIN.
    let result = run(
        &capped.sandbox,
        "python3 -c '
import os, time
n = 0
try:
    for i in range(50):
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        n += 1
except OSError as error:
    print(n, error.errno)
'",
    );
    let output = String::from_utf8_lossy(&result.stdout).into_owned();
    let forks: usize = output.split_whitespace().next().unwrap().parse().unwrap();
    assert!(forks < 10, "{output}");
    assert!(output.trim().ends_with(" 11"), "EAGAIN expected: {output}");
    assert_eq!(capped.sandbox.kill().unwrap().survivors, 0);
    let report = test.sandbox.kill().unwrap();
    assert_eq!(report.survivors, 0);
    assert_eq!(test.sandbox.host_pids(), Vec::<i32>::new());
    assert!(test.home().join("f").exists());
}
