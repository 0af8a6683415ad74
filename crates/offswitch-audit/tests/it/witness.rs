//! Witnesses: a command that gets each checkpoint on stdin (its failures and timeouts are the
//! writer's errors, and a timeout kills its whole process group), and a witness file that
//! serves several logs.

use std::path::Path;
use std::time::{Duration, Instant};

use offswitch_audit::{AuditError, AuditWriter, Options, Witness, WitnessCommand};

use crate::{kernel_event, key, redacted, temp, verify_trusted, write_log};

/// A new log at `path`, a checkpoint every `every` records, each given on stdin to the shell
/// `script`, which has `timeout` to finish.
fn with_witness(
    path: &Path,
    every: u64,
    script: &str,
    timeout: Duration,
) -> Result<AuditWriter, AuditError> {
    AuditWriter::create(
        path,
        &key(),
        Options {
            checkpoint_every: every,
            witness: Some(Witness::Command(WitnessCommand {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                timeout,
            })),
            ..Options::default()
        },
    )
}

#[test]
fn a_witness_command_receives_every_checkpoint_and_its_copy_verifies_the_log() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    let copy = dir.join("copied.jsonl");
    let script = format!("cat >> '{}'", copy.display());
    let mut writer = with_witness(&path, 2, &script, Duration::from_secs(10)).unwrap();
    for index in 0..5 {
        writer.append("kernel_event", &kernel_event(index)).unwrap();
    }
    let last = writer.finish().unwrap();
    assert!(last.closed);
    assert_eq!((last.number, last.tree_size), (3, 5));
    let report = verify_trusted(&path, Some(&copy));
    assert!(report.ok(), "{}", report.render());
    assert_eq!(report.witness_checkpoints, Some(4));
}

#[test]
fn a_failing_witness_command_is_an_error_but_the_log_keeps_its_checkpoint() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    let error = with_witness(
        &path,
        Options::default().checkpoint_every,
        "cat > /dev/null; exit 3",
        Duration::from_secs(10),
    )
    .err()
    .unwrap();
    assert!(
        matches!(&error, AuditError::Witness { number: 0, reason } if reason.contains("exit status: 3")),
        "{error}"
    );
    // Checkpoint 0 was written and synced before the witness was asked.
    assert_eq!(verify_trusted(&path, None).checkpoints, 1);
}

#[test]
fn a_witness_command_that_hangs_is_killed_with_its_children() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    let pid_file = dir.join("child.pid");
    // The witness starts a child that would outlive it, then hangs.
    let script = format!("sleep 300 & echo $! > '{}'; sleep 300", pid_file.display());
    let started = Instant::now();
    let error = with_witness(
        &path,
        Options::default().checkpoint_every,
        &script,
        Duration::from_millis(300),
    )
    .err()
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        error
            .to_string()
            .contains("did not finish within 0.3 s and was killed"),
        "{error}"
    );
    let child: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The orphaned child was killed with the group (it may linger a moment as a zombie until
    // init reaps it, so its state is read, not just its existence).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = std::fs::read_to_string(format!("/proc/{child}/stat"))
            .map(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false);
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the witness's child {child} survived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The checkpoints `append` writes are witnessed on the sealer's thread: a witness that does
/// not answer holds up no append, and `finish` waits for every checkpoint to be witnessed.
#[test]
fn appends_do_not_wait_for_a_slow_witness_and_finish_waits_for_all() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    let copy = dir.join("copied.jsonl");
    let gate = dir.join("gate");
    // The witness copies a checkpoint only once the gate exists (bounded by its timeout).
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.01; done; cat >> '{}'",
        gate.display(),
        copy.display()
    );
    std::fs::write(&gate, "").unwrap();
    let mut writer = with_witness(&path, 100, &script, Duration::from_secs(60)).unwrap();
    // `create` waited for checkpoint 0.
    let witnessed = || {
        std::fs::read_to_string(&copy)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(witnessed(), 1);
    std::fs::remove_file(&gate).unwrap();
    for index in 0..150 {
        writer.append("kernel_event", &kernel_event(index)).unwrap();
    }
    // Checkpoint 1 (after record 100) is written, and its witness is still at the gate:
    // every append returned all the same.
    assert_eq!(witnessed(), 1);
    assert_eq!(verify_trusted(&path, None).checkpoints, 2);
    std::fs::write(&gate, "").unwrap();
    let last = writer.finish().unwrap();
    assert_eq!((last.number, last.tree_size), (2, 150));
    assert_eq!(witnessed(), 3);
    let report = verify_trusted(&path, Some(&copy));
    assert!(report.ok(), "{}", report.render());
}

/// A witness that fails on a checkpoint nobody waited for: the next append says so (its own
/// record is in the log), and the writer goes on.
#[test]
fn a_failed_witness_of_an_automatic_checkpoint_is_reported_by_a_later_append() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    let ok = dir.join("ok");
    let script = format!("cat > /dev/null; [ -e '{}' ] || exit 5", ok.display());
    std::fs::write(&ok, "").unwrap();
    let mut writer = with_witness(&path, 1000, &script, Duration::from_secs(60)).unwrap();
    std::fs::remove_file(&ok).unwrap();
    // Checkpoint 1 goes to the witness with record 1,000; its failure arrives with a later
    // append, long before checkpoint 2 (the witness runs in milliseconds; from record 1,000 on
    // the loop waits 2 ms an append, for at most 990 appends).
    let mut index = 0;
    let error = loop {
        assert!(index < 1990, "no append reported the failed witness");
        match writer.append("kernel_event", &kernel_event(index)) {
            Ok(seq) => assert_eq!(seq, index),
            Err(error) => break error,
        }
        if index >= 1000 {
            std::thread::sleep(Duration::from_millis(2));
        }
        index += 1;
    };
    assert!(
        index >= 999,
        "an append failed before checkpoint 1: {error}"
    );
    assert!(
        matches!(&error, AuditError::Witness { number: 1, reason } if reason.contains("exit status: 5")),
        "{error}"
    );
    // The failing append's record is in the log, and the writer goes on.
    std::fs::write(&ok, "").unwrap();
    let next = writer
        .append("kernel_event", &kernel_event(index + 1))
        .unwrap();
    assert_eq!(next, index + 1);
    writer.finish().unwrap();
    let report = verify_trusted(&path, None);
    assert!(report.ok(), "{}", report.render());
    assert_eq!(report.records, index + 2);
}

#[test]
fn one_witness_file_serves_several_logs() {
    let (_dir, dir) = temp();
    let witness = dir.join("witness.jsonl");
    let first = dir.join("first.jsonl");
    let second = dir.join("second.jsonl");
    write_log(&first, 5, 2, Some(&witness));
    write_log(&second, 3, 2, Some(&witness));
    for path in [&first, &second] {
        let report = verify_trusted(path, Some(&witness));
        assert!(report.ok(), "{}", report.render());
    }
    // A witness without any checkpoint of the log is a problem: the log may have been replaced.
    let third = dir.join("third.jsonl");
    write_log(&third, 1, 2, None);
    let report = verify_trusted(&third, Some(&witness));
    expect_test::expect![[r#"
        the witness holds no checkpoint of this log: the log was replaced, or never witnessed
        log [log]: NOT intact: 1 problem; 1 records (1 sealed), 2 checkpoints, closed
    "#]]
    .assert_eq(&redacted(&report));
}
