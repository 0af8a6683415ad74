//! What a scenario file may be: a regular UTF-8 file of bounded size. Anything else (a device,
//! a FIFO, a huge file, bytes that are not UTF-8, an empty directory) is a clear error, and
//! none of them blocks or grows memory.

use std::path::Path;

use expect_test::expect;
use offswitch_scenario::{MAX_SCENARIO_BYTES, load_dir, load_file};

/// The error of loading `path`, with the temporary directory replaced.
fn load_error(path: &Path, dir: &Path) -> String {
    match load_file(path) {
        Ok(scenario) => format!("unexpectedly valid: {}", scenario.id()),
        Err(error) => error
            .to_string()
            .replace(&dir.display().to_string(), "[dir]"),
    }
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

fn valid_scenario() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/scenarios/generic.toml"),
    )
    .unwrap()
}

#[test]
fn files_that_are_not_regular_or_too_large_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    // Nobody ever writes to this FIFO: a plain open would block forever.
    let fifo = dir.path().join("fifo.toml");
    mkfifo(&fifo);
    let huge = dir.path().join("huge.toml");
    let mut text = valid_scenario();
    text.push_str(&format!("# {}\n", "x".repeat(MAX_SCENARIO_BYTES as usize)));
    std::fs::write(&huge, text).unwrap();
    let at_limit = dir.path().join("at-limit.toml");
    let mut text = valid_scenario();
    text.push('#');
    text.push_str(&"x".repeat(MAX_SCENARIO_BYTES as usize - text.len() - 1));
    text.push('\n');
    assert_eq!(text.len() as u64, MAX_SCENARIO_BYTES);
    std::fs::write(&at_limit, text).unwrap();
    let as_dir = dir.path().join("dir.toml");
    std::fs::create_dir(&as_dir).unwrap();

    let errors = [&zero, &fifo, &huge, &at_limit, &as_dir]
        .map(|path| load_error(path, dir.path()) + "\n")
        .concat();
    expect![[r#"
        refused scenario [dir]/zero.toml: it is a character device, not a regular file
        refused scenario [dir]/fifo.toml: it is a FIFO, not a regular file
        refused scenario [dir]/huge.toml: larger than the limit of 1048576 bytes
        unexpectedly valid: generic
        refused scenario [dir]/dir.toml: it is a directory, not a regular file
    "#]]
    .assert_eq(&errors);

    // In a directory, such entries are errors too, never silently skipped or blocking.
    let (scenarios, errors) = load_dir(dir.path());
    let ids: Vec<&str> = scenarios.iter().map(|s| s.id()).collect();
    assert_eq!(ids, ["generic"]);
    let messages = errors
        .iter()
        .map(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "[dir]")
                + "\n"
        })
        .collect::<String>();
    expect![[r#"
        refused scenario [dir]/dir.toml: it is a directory, not a regular file
        refused scenario [dir]/fifo.toml: it is a FIFO, not a regular file
        refused scenario [dir]/huge.toml: larger than the limit of 1048576 bytes
        refused scenario [dir]/zero.toml: it is a character device, not a regular file
    "#]]
    .assert_eq(&messages);
}

#[test]
fn bytes_that_are_not_utf8_are_a_located_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.toml");
    // Line 3, after four characters (one of them two bytes long): a Latin-1 byte.
    std::fs::write(&path, b"id = \"x\"\n\n# \xc3\xa9t\xe9\n").unwrap();
    expect!["[dir]/latin1.toml:3:5: invalid UTF-8 (byte 0xe9); scenario files are UTF-8 text"]
        .assert_eq(&load_error(&path, dir.path()));
}

#[test]
fn a_directory_without_scenario_files_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a scenario").unwrap();
    let (scenarios, errors) = load_dir(dir.path());
    assert!(scenarios.is_empty());
    let messages: Vec<String> = errors
        .iter()
        .map(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "[dir]")
        })
        .collect();
    assert_eq!(messages, ["no scenario files (*.toml) in [dir]"]);
}

#[test]
fn a_directory_is_read_for_a_bounded_number_of_files() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..=offswitch_scenario::MAX_SCENARIO_FILES {
        std::fs::write(dir.path().join(format!("s{i:04}.toml")), "").unwrap();
    }
    let (scenarios, errors) = load_dir(dir.path());
    assert!(scenarios.is_empty());
    let messages: Vec<String> = errors
        .iter()
        .map(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "[dir]")
        })
        .collect();
    assert_eq!(
        messages,
        ["more than 1000 scenario files (*.toml) in [dir]"]
    );
}
