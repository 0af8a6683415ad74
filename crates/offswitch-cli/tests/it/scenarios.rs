//! `offswitch scenarios` end to end: inputs that are not scenario files are invalid input
//! (exit 2) with a clear message, never a hang or "0 valid".

use std::process::Command;

fn offswitch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_offswitch"))
}

/// Exit code and stderr with the temporary directory replaced.
fn failure(args: &[&str], dir: &std::path::Path) -> (Option<i32>, String) {
    let output = offswitch().args(args).output().unwrap();
    assert!(output.stdout.is_empty() || !output.status.success());
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).replace(&dir.display().to_string(), "[dir]"),
    )
}

#[test]
fn directories_without_scenarios_and_non_files_are_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let fifo = dir.path().join("pipe.toml");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let zero = dir.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let latin1 = dir.path().join("latin1.toml");
    std::fs::write(&latin1, b"id = \"caf\xe9\"\n").unwrap();

    let cases: [&[&str]; 5] = [
        &["scenarios", "validate", empty.to_str().unwrap()],
        &["scenarios", "list", "--dir", empty.to_str().unwrap()],
        &["scenarios", "validate", fifo.to_str().unwrap()],
        &["scenarios", "validate", zero.to_str().unwrap()],
        &["scenarios", "validate", latin1.to_str().unwrap()],
    ];
    let mut report = String::new();
    for args in cases {
        let (code, stderr) = failure(args, dir.path());
        report.push_str(&format!("{:?} {}", code, stderr));
    }
    expect_test::expect![[r#"
        Some(2) error: invalid scenario file(s):
        no scenario files (*.toml) in [dir]/empty
        Some(2) error: invalid scenario file(s):
        no scenario files (*.toml) in [dir]/empty
        Some(2) error: invalid scenario file(s):
        refused scenario [dir]/pipe.toml: it is a FIFO, not a regular file
        Some(2) error: invalid scenario file(s):
        refused scenario [dir]/zero.toml: it is a character device, not a regular file
        Some(2) error: invalid scenario file(s):
        [dir]/latin1.toml:1:10: invalid UTF-8 (byte 0xe9); scenario files are UTF-8 text
    "#]]
    .assert_eq(&report);
}
