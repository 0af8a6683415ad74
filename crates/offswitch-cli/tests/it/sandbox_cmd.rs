//! `offswitch sandbox run`: the limits a trial's sandbox has apply by hand too.

use std::process::Command;

fn sandbox_run(args: &[&str]) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_offswitch"))
        .args(["sandbox", "run"])
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn is_root() -> bool {
    // `/proc/self` belongs to the effective uid.
    let root = std::fs::metadata("/proc/self")
        .is_ok_and(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0);
    if !root {
        eprintln!("skipping: the sandbox's cgroup limits and home volume need root");
    }
    root
}

/// Without flags, `sandbox run` caps processes, memory and the home's size as a trial does
/// (256 processes, 512 MiB, 1 GiB); it used to let 1,000 processes and 2 GiB through.
#[test]
fn sandbox_run_has_the_trial_defaults() {
    if !is_root() {
        return;
    }
    let (_, stderr) = sandbox_run(&[
        "--",
        "bash",
        "-c",
        "for i in $(seq 1000); do sleep 30 & done 2>/dev/null; true",
    ]);
    assert!(
        stderr.contains("status: processes limit exceeded"),
        "{stderr}"
    );
    let (_, stderr) = sandbox_run(&["--", "python3", "-c", "x = bytearray(2 << 30)"]);
    assert!(stderr.contains("status: memory limit exceeded"), "{stderr}");
    let (stdout, stderr) = sandbox_run(&[
        "--",
        "bash",
        "-c",
        "df --output=size -B1M ~ | tail -1; head -c 2G /dev/zero > ~/big",
    ]);
    let size: u64 = stdout.trim().parse().unwrap();
    assert!((900..=1024).contains(&size), "{stdout}");
    assert!(stderr.contains("status: disk limit exceeded"), "{stderr}");
}

/// `--disk` sizes the home; too small a home is the user's mistake (exit 2).
#[test]
fn sandbox_run_disk_flag() {
    if !is_root() {
        return;
    }
    let (stdout, _) = sandbox_run(&[
        "--disk",
        "64M",
        "--",
        "bash",
        "-c",
        "df --output=size -B1M ~ | tail -1",
    ]);
    let size: u64 = stdout.trim().parse().unwrap();
    assert!((48..=64).contains(&size), "{stdout}");
    let status = Command::new(env!("CARGO_BIN_EXE_offswitch"))
        .args(["sandbox", "run", "--disk", "1M", "--", "true"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}
