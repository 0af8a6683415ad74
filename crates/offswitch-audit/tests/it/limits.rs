//! Bounded inputs: bodies, kinds and metadata over their limits are refused by the writer, and a
//! line over the line limit is skipped by the reader, never held.

use offswitch_audit::{AuditError, AuditWriter, MAX_BODY_BYTES, MAX_LINE_BYTES, Options};

use crate::{key, read_lines, temp, verify_trusted, write_lines, write_log};

#[test]
fn a_body_over_the_limit_is_refused_and_the_log_goes_on() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    let mut writer = AuditWriter::create(&path, &key(), Options::default()).unwrap();
    // A string of the limit's length is two quotes over it as JSON.
    let big = serde_json::Value::String("x".repeat(MAX_BODY_BYTES));
    let error = writer.append("kernel_event", &big).unwrap_err();
    assert!(
        matches!(error, AuditError::BodyTooLarge { size, limit } if size == MAX_BODY_BYTES + 2 && limit == MAX_BODY_BYTES),
        "{error}"
    );
    let just_fits = serde_json::Value::String("x".repeat(MAX_BODY_BYTES - 2));
    assert_eq!(writer.append("kernel_event", &just_fits).unwrap(), 0);
    for kind in ["", "has space", "\u{1b}]0;", &"k".repeat(65)] {
        let error = writer.append(kind, &serde_json::json!({})).unwrap_err();
        assert!(
            matches!(error, AuditError::BadKind { .. }),
            "{kind:?}: {error}"
        );
    }
    assert_eq!(
        writer.append("a.b:c-d_e", &serde_json::json!({})).unwrap(),
        1
    );
    writer.finish().unwrap();
    let report = verify_trusted(&path, None);
    assert!(report.ok(), "{}", report.render());
    assert_eq!(report.records, 2);
}

#[test]
fn metadata_over_the_limit_is_refused_and_no_log_is_left() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    let error = AuditWriter::create(
        &path,
        &key(),
        Options {
            metadata: serde_json::json!({"note": "m".repeat(70_000)}),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(error, AuditError::MetadataTooLarge { .. }),
        "{error}"
    );
    assert!(!path.exists());
}

#[test]
fn an_existing_file_is_never_overwritten() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    write_log(&path, 2, 10, None);
    let before = std::fs::read(&path).unwrap();
    let error = AuditWriter::create(&path, &key(), Options::default()).unwrap_err();
    assert!(matches!(error, AuditError::AlreadyExists { .. }), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_line_over_the_limit_is_skipped_and_reported() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    write_log(&path, 3, 10, None);
    let mut lines = read_lines(&path);
    lines.insert(
        3,
        format!("{{\"type\":\"record\",{}}}", "x".repeat(MAX_LINE_BYTES)),
    );
    write_lines(&path, &lines);
    let report = verify_trusted(&path, None);
    let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [format!(
            "line 4: line longer than {MAX_LINE_BYTES} bytes, skipped"
        )]
    );
    assert_eq!(report.records, 3);
}

#[test]
fn the_log_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt as _;
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    write_log(&path, 1, 10, None);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}
