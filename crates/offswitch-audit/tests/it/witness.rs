//! Witnesses: a command that gets each checkpoint on stdin (its failures and timeouts are the
//! writer's errors, and a timeout kills its whole process group), and a witness file that
//! serves several logs.

use std::time::{Duration, Instant};

use offswitch_audit::{AuditError, AuditWriter, Options, Witness, WitnessCommand};

use crate::{kernel_event, key, redacted, temp, verify_trusted, write_log};

fn shell(script: &str, timeout: Duration) -> Witness {
    Witness::Command(WitnessCommand {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        timeout,
    })
}

#[test]
fn a_witness_command_receives_every_checkpoint_and_its_copy_verifies_the_log() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    let copy = dir.join("copied.jsonl");
    let script = format!("cat >> '{}'", copy.display());
    let mut writer = AuditWriter::create(
        &path,
        &key(),
        Options {
            checkpoint_every: 2,
            witness: Some(shell(&script, Duration::from_secs(10))),
            ..Options::default()
        },
    )
    .unwrap();
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
    let error = AuditWriter::create(
        &path,
        &key(),
        Options {
            witness: Some(shell("cat > /dev/null; exit 3", Duration::from_secs(10))),
            ..Options::default()
        },
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
    let error = AuditWriter::create(
        &path,
        &key(),
        Options {
            witness: Some(shell(&script, Duration::from_millis(300))),
            ..Options::default()
        },
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
