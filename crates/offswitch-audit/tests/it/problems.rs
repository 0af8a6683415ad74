//! What verification says about each kind of damage, located by line: one small log, one
//! change per case, the report's text pinned.
//!
//! The log: line 1 header, line 2 checkpoint 0, lines 3-6 records 0-3, line 7 checkpoint 1,
//! lines 8-11 records 4-7, line 12 checkpoint 2, lines 13-14 records 8-9, line 15 checkpoint 3
//! (closed). Its witness holds the four checkpoints.

use expect_test::{Expect, expect};
use offswitch_audit::{AuditError, VerifyOptions};

use crate::{
    other_key, read_lines, redacted, reseal, temp, verify_trusted, write_lines, write_log,
};

/// Write the log and its witness, change the log's lines, and compare the report.
fn check(change: impl FnOnce(&mut Vec<String>), expected: Expect) {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    let witness = dir.join("witness.jsonl");
    write_log(&path, 10, 4, Some(&witness));
    let mut lines = read_lines(&path);
    assert_eq!(lines.len(), 15);
    change(&mut lines);
    write_lines(&path, &lines);
    expected.assert_eq(&redacted(&verify_trusted(&path, Some(&witness))));
}

#[test]
fn an_intact_log() {
    check(
        |_| {},
        expect![[r#"
            note: the witness holds 4 checkpoints of this log
            log [log]: intact; 10 records (10 sealed), 4 checkpoints, closed
        "#]],
    );
}

#[test]
fn a_changed_record_body() {
    check(
        |lines| lines[8] = lines[8].replace("step_5", "step_X"),
        expect![[r#"
            line 9: bad chain link of record 5: the record or the one before it was changed, removed or moved
            line 12: checkpoint root mismatch: checkpoint 2 signed a different tree than the records before it
            line 12: checkpoint chain head mismatch: checkpoint 2 signed a different chain than the records before it
            1 later checkpoint also disagrees with the records before it (following from the first mismatch)
            note: the witness holds 4 checkpoints of this log
            log [log]: NOT intact: 4 problems; 10 records (4 sealed), 4 checkpoints, not closed
        "#]],
    );
}

#[test]
fn a_removed_record() {
    check(
        |lines| {
            lines.remove(8);
        },
        expect![[r#"
            line 9: sequence gap: expected record 5, found 6 (1 missing)
            line 9: bad chain link of record 6: the record or the one before it was changed, removed or moved
            line 11: checkpoint 2 covers 8 records but follows 7: records were removed or added, or the checkpoint was moved
            1 later checkpoint also disagrees with the records before it (following from the first mismatch)
            note: the witness holds 4 checkpoints of this log
            log [log]: NOT intact: 4 problems; 9 records (4 sealed), 4 checkpoints, not closed
        "#]],
    );
}

#[test]
fn two_records_swapped() {
    check(
        |lines| lines.swap(8, 9),
        expect![[r#"
            line 9: sequence gap: expected record 5, found 6 (1 missing)
            line 9: bad chain link of record 6: the record or the one before it was changed, removed or moved
            line 10: record 5 out of order (expected 7): reordered or duplicated
            line 10: bad chain link of record 5: the record or the one before it was changed, removed or moved
            line 11: bad chain link of record 7: the record or the one before it was changed, removed or moved
            line 12: checkpoint root mismatch: checkpoint 2 signed a different tree than the records before it
            line 12: checkpoint chain head mismatch: checkpoint 2 signed a different chain than the records before it
            1 later checkpoint also disagrees with the records before it (following from the first mismatch)
            note: the witness holds 4 checkpoints of this log
            log [log]: NOT intact: 8 problems; 10 records (4 sealed), 4 checkpoints, not closed
        "#]],
    );
}

#[test]
fn a_duplicated_record() {
    check(
        |lines| lines.insert(9, lines[8].clone()),
        expect![[r#"
            line 10: duplicated record 5 (also at line 9)
            line 10: bad chain link of record 5: the record or the one before it was changed, removed or moved
            line 13: checkpoint 2 covers 8 records but follows 9: records were removed or added, or the checkpoint was moved
            1 later checkpoint also disagrees with the records before it (following from the first mismatch)
            note: the witness holds 4 checkpoints of this log
            log [log]: NOT intact: 4 problems; 11 records (4 sealed), 4 checkpoints, not closed
        "#]],
    );
}

#[test]
fn a_removed_checkpoint() {
    check(
        |lines| {
            lines.remove(6);
        },
        expect![[r#"
            line 11: checkpoint 2 where 1 was expected: checkpoint 1 missing
            witness checkpoint 1 (tree size 4, witness line 2) is not in the log: the log is shorter than the witness says (truncated or rewritten)
            note: the witness holds 4 checkpoints of this log
            log [log]: NOT intact: 2 problems; 10 records (10 sealed), 3 checkpoints, closed
        "#]],
    );
}

#[test]
fn a_moved_checkpoint() {
    check(
        |lines| lines.swap(6, 7),
        expect![[r#"
            line 8: checkpoint 1 covers 4 records but follows 5: records were removed or added, or the checkpoint was moved
            note: the witness holds 4 checkpoints of this log
            log [log]: NOT intact: 1 problem; 10 records (10 sealed), 4 checkpoints, closed
        "#]],
    );
}

#[test]
fn the_final_checkpoint_cut_off() {
    check(
        |lines| {
            lines.pop();
        },
        expect![[r#"
            unsealed tail of 2 records (lines 13-14): no checkpoint covers them, so they cannot be proven; the writer stopped before its next checkpoint (a crash), or they were appended
            witness checkpoint 3 (tree size 10, witness line 4) is not in the log: the log is shorter than the witness says (truncated or rewritten)
            note: the witness holds 4 checkpoints of this log
            log [log]: NOT intact: 2 problems; 10 records (8 sealed), 3 checkpoints, not closed
        "#]],
    );
}

#[test]
fn a_cut_exactly_after_a_checkpoint_is_caught_by_the_witness() {
    check(
        |lines| lines.truncate(12),
        expect![[r#"
            witness checkpoint 3 (tree size 10, witness line 4) is not in the log: the log is shorter than the witness says (truncated or rewritten)
            note: the log was not closed by its writer: it ends at a checkpoint, so its 8 sealed records are proven, but any written after that checkpoint are gone (a crash, or a cut exactly at a checkpoint, which only a witness can tell apart)
            note: the witness holds 4 checkpoints of this log
            log [log]: NOT intact: 1 problem; 8 records (8 sealed), 3 checkpoints, not closed
        "#]],
    );
}

#[test]
fn a_cut_in_the_middle_of_a_line() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    write_log(&path, 10, 4, None);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
    expect![[r#"
        line 15: the file ends in the middle of this line (no newline): it was cut
        unsealed tail of 2 records (lines 13-14): no checkpoint covers them, so they cannot be proven; the writer stopped before its next checkpoint (a crash), or they were appended
        log [log]: NOT intact: 2 problems; 10 records (8 sealed), 3 checkpoints, not closed
    "#]]
    .assert_eq(&redacted(&verify_trusted(&path, None)));
}

#[test]
fn a_checkpoint_forged_with_another_key() {
    check(
        |lines| {
            let forged = reseal(lines, &ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
            let mut checkpoint =
                offswitch_audit::Checkpoint::parse_line(forged[14].as_bytes()).unwrap();
            checkpoint.number = 4;
            use ed25519_dalek::Signer as _;
            checkpoint.signature = ed25519_dalek::SigningKey::from_bytes(&[9; 32])
                .sign(&checkpoint.signed_message())
                .to_bytes();
            lines.push(checkpoint.to_line());
        },
        expect![[r#"
            line 16: bad signature on checkpoint 4: the trusted key did not sign it
            line 16: line after the final checkpoint (line 15): appended after the log was closed
            note: the witness holds 4 checkpoints of this log
            log [log]: NOT intact: 2 problems; 10 records (10 sealed), 5 checkpoints, not closed
        "#]],
    );
}

#[test]
fn a_changed_header() {
    check(
        |lines| lines[0] = lines[0].replace("\"session\":\"test\"", "\"session\":\"other\""),
        expect![[r#"
            line 2: header changed: checkpoint 0 signed a different header
            note: the witness holds 4 checkpoints of this log
            log [log]: NOT intact: 1 problem; 10 records (10 sealed), 4 checkpoints, closed
        "#]],
    );
}

#[test]
fn a_changed_record_resealed_with_another_key() {
    check(
        |lines| {
            let attacker = other_key().public_key();
            let public = |key: &ed25519_dalek::VerifyingKey| hex::encode(key.as_bytes());
            lines[0] = lines[0].replace(&public(&crate::key().public_key()), &public(&attacker));
            lines[8] = lines[8].replace("step_5", "step_X");
            *lines = reseal(lines, &ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
        },
        expect![[r#"
            line 1: the header names public key fd1724385aa0c75b64fb78cd602fa1d991fdebf76b13c58ed702eac835e9f618, which is not the trusted key: the log was made or re-signed with another key
            line 2: bad signature on checkpoint 0: the trusted key did not sign it
            line 7: bad signature on checkpoint 1: the trusted key did not sign it
            line 12: bad signature on checkpoint 2: the trusted key did not sign it
            line 15: bad signature on checkpoint 3: the trusted key did not sign it
            line 2: checkpoint 0 differs from the witness's copy (witness line 1): the log was rewritten
            line 7: checkpoint 1 differs from the witness's copy (witness line 2): the log was rewritten
            line 12: checkpoint 2 differs from the witness's copy (witness line 3): the log was rewritten
            line 15: checkpoint 3 differs from the witness's copy (witness line 4): the log was rewritten
            note: the witness holds 4 checkpoints of this log
            log [log]: NOT intact: 9 problems; 10 records (0 sealed), 4 checkpoints, not closed
        "#]],
    );
}

#[test]
fn an_empty_file_and_a_file_that_is_no_log() {
    let (_dir, dir) = temp();
    let empty = dir.join("empty");
    std::fs::write(&empty, "").unwrap();
    expect![[r#"
        the file is empty: no header, no record, no checkpoint
        log of unknown id: NOT intact: 1 problem; 0 records (0 sealed), 0 checkpoints, not closed
    "#]]
    .assert_eq(&redacted(&verify_trusted(&empty, None)));
    let other = dir.join("notes.txt");
    std::fs::write(&other, "shopping list\n").unwrap();
    let options = VerifyOptions {
        trusted_public_key: Some(crate::key().public_key()),
        witness: None,
    };
    let error = offswitch_audit::verify(&other, &options).unwrap_err();
    assert!(matches!(error, AuditError::NotAnAuditLog { .. }), "{error}");
}
