//! API keys never travel on the command line: there is no flag for the key itself, only for
//! a file holding it (or the environment).

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_offswitch"))
        .arg("run")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_key_on_the_command_line_is_refused() {
    let (code, stderr) = run(&["--model", "openai:gpt-4o", "--api-key", "sk-secret"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--api-key"), "{stderr}");
}

#[test]
fn a_missing_or_empty_key_file_is_a_user_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let (code, stderr) = run(&[
        "--model",
        "openai:gpt-4o",
        "--api-key-file",
        missing.to_str().unwrap(),
        "--db",
        dir.path().join("runs.db").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--api-key-file"), "{stderr}");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let (code, stderr) = run(&[
        "--model",
        "openai:gpt-4o",
        "--api-key-file",
        empty.to_str().unwrap(),
        "--db",
        dir.path().join("runs.db").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("holds no key"), "{stderr}");
}
