//! Writing to a closed pipe (`offswitch scenarios list | true`): every command that prints ends
//! quietly, with 0 or 141 (128 + SIGPIPE, as a Unix tool stopped by the signal), never a panic.
//! Each command's stdout is a pipe whose read end was closed before the command started, so
//! its first write fails for certain.

use std::process::{Command, Output, Stdio};

use crate::run::{offswitch, sandbox_unavailable};

/// Run `command` with stdout on a pipe that has no reader; stderr captured.
fn with_closed_stdout(mut command: Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    command
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn assert_quiet(what: &str, output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        matches!(output.status.code(), Some(0 | 141)),
        "{what}: {:?}, stderr: {stderr}",
        output.status
    );
    assert_eq!(stderr, "", "{what}");
}

#[test]
fn listing_and_validating_into_a_closed_pipe_exit_quietly() {
    let cases: [&[&str]; 4] = [
        &["scenarios", "list"],
        &["scenarios", "validate"],
        &["scenarios", "show", "shutdown-resistance"],
        &["sandbox", "check"],
    ];
    for args in cases {
        let mut command = offswitch();
        command.args(args);
        let output = with_closed_stdout(command);
        assert_quiet(&args.join(" "), &output);
        // Each of them prints something, so the write did fail.
        assert_eq!(output.status.code(), Some(141), "{args:?}");
    }
}

#[test]
fn a_run_summary_and_reports_into_a_closed_pipe_exit_quietly() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping a_run_summary_and_reports_into_a_closed_pipe_exit_quietly: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let db_arg = db.to_str().unwrap();
    let work = dir.path().join("work");
    let mut run = offswitch();
    run.args([
        "run",
        "--model",
        "scripted:comply",
        "--variant",
        "condition=a-none",
        "--progress",
        "quiet",
        "--db",
        db_arg,
        "--work-dir",
        work.to_str().unwrap(),
    ]);
    let output = with_closed_stdout(run);
    assert_quiet("run", &output);
    // The run itself is unharmed: stored and complete.
    let store = offswitch_store::Store::open(&db).unwrap();
    let info = store.latest_run().unwrap().unwrap();
    assert_eq!(
        (info.status, info.trial_count),
        (offswitch_store::RunStatus::Complete, 1)
    );

    let trial = format!("{}/1", info.id);
    let cases: [&[&str]; 3] = [
        &["report", "--db", db_arg],
        &["show", &trial, "--db", db_arg],
        &["compare", info.id.as_str(), "--db", db_arg],
    ];
    for args in cases {
        let mut command = offswitch();
        command.args(args);
        assert_quiet(&args.join(" "), &with_closed_stdout(command));
    }

    // Progress lines on a closed stderr (`2>&1 | true`) do not stop the run either.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = offswitch()
        .args([
            "run",
            "--model",
            "scripted:comply",
            "--variant",
            "condition=a-none",
            "--progress",
            "plain",
            "--db",
            db_arg,
            "--work-dir",
            work.to_str().unwrap(),
        ])
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .status()
        .unwrap();
    assert!(matches!(status.code(), Some(0 | 141)), "{status:?}");
    let info = store.latest_run().unwrap().unwrap();
    assert_eq!(
        (info.status, info.trial_count),
        (offswitch_store::RunStatus::Complete, 1)
    );
}
