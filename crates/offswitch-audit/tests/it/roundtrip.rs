//! Writing a log, verifying it, reading its records back, and proving records in it.

use expect_test::expect;
use offswitch_audit::{AuditWriter, Options, ProofError, prove, records, verify_proof};

use crate::{kernel_event, key, other_key, redacted, temp, verify_trusted, write_log};

#[test]
fn logs_of_many_sizes_verify_read_back_and_prove_their_records() {
    let (_dir, dir) = temp();
    for (records_written, every) in [
        (0, 1000),
        (1, 1000),
        (2, 1000),
        (3, 1000),
        (7, 1000),
        (7, 3),
        (1000, 1000),
        (1001, 1000),
        (1001, 64),
    ] {
        let path = dir.join(format!("{records_written}-{every}.jsonl"));
        let witness = dir.join(format!("{records_written}-{every}.witness"));
        write_log(&path, records_written, every, Some(&witness));
        let report = verify_trusted(&path, Some(&witness));
        assert!(
            report.ok(),
            "{records_written}/{every}: {}",
            report.render()
        );
        assert_eq!(report.records, records_written);
        assert_eq!(report.sealed_records, records_written);
        assert!(report.closed);
        // Checkpoint 0 at creation, one per `every` records, the final one.
        assert_eq!(report.checkpoints, 1 + records_written / every + 1);
        assert_eq!(report.witness_checkpoints, Some(report.checkpoints));

        let read: Vec<_> = records(&path).unwrap().map(Result::unwrap).collect();
        assert_eq!(read.len() as u64, records_written);
        for (index, record) in read.iter().enumerate() {
            assert_eq!(record.seq, index as u64);
            assert_eq!(record.body, kernel_event(index as u64));
        }

        let mut wanted: Vec<u64> = (0..records_written).step_by(97).collect();
        if records_written > 0 {
            wanted.extend([0, records_written / 2, records_written - 1]);
        }
        for seq in wanted {
            let proof = prove(&path, seq).unwrap();
            assert_eq!(proof.tree_size, records_written);
            verify_proof(&proof, &key().public_key())
                .unwrap_or_else(|error| panic!("{records_written}/{seq}: {error}"));
            assert_eq!(proof.record().unwrap().body, kernel_event(seq));
            // Through JSON and back, as the CLI writes and reads it.
            let json = serde_json::to_string_pretty(&proof).unwrap();
            let back: offswitch_audit::InclusionProof = serde_json::from_str(&json).unwrap();
            assert_eq!(back, proof);
        }
    }
}

#[test]
fn a_proof_holds_only_for_its_record_under_the_trusted_key() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    write_log(&path, 11, 4, None);
    let proof = prove(&path, 6).unwrap();
    assert_eq!(
        verify_proof(&proof, &other_key().public_key()),
        Err(ProofError::BadSignature)
    );
    let mut changed = proof.clone();
    changed.entry = changed.entry.replace("step_6", "step_7");
    assert_eq!(
        verify_proof(&changed, &key().public_key()),
        Err(ProofError::LeafMismatch)
    );
    let other = prove(&path, 5).unwrap();
    let mut moved = proof.clone();
    moved.seq = 5;
    assert!(matches!(
        verify_proof(&moved, &key().public_key()),
        Err(ProofError::BadEntry { .. })
    ));
    let mut swapped_path = proof.clone();
    swapped_path.audit_path = other.audit_path.clone();
    assert_eq!(
        verify_proof(&swapped_path, &key().public_key()),
        Err(ProofError::PathMismatch)
    );
    let mut shorter = proof.clone();
    shorter.tree_size = 6;
    assert!(matches!(
        verify_proof(&shorter, &key().public_key()),
        Err(ProofError::TreeSizeMismatch { .. })
    ));
    let mut resized = proof.clone();
    resized.checkpoint.tree_size = 7;
    assert_eq!(
        verify_proof(&resized, &key().public_key()),
        Err(ProofError::BadSignature)
    );
}

#[test]
fn records_after_the_last_checkpoint_cannot_be_proven() {
    let (_dir, dir) = temp();
    let path = dir.join("crashed.jsonl");
    let mut writer = AuditWriter::create(
        &path,
        &key(),
        Options {
            checkpoint_every: 4,
            ..Options::default()
        },
    )
    .unwrap();
    for index in 0..6 {
        writer.append("kernel_event", &kernel_event(index)).unwrap();
    }
    // A crash: the writer never finishes.
    drop(writer);
    let report = verify_trusted(&path, None);
    expect![[r#"
        unsealed tail of 2 records (lines 8-9): no checkpoint covers them, so they cannot be proven; the writer stopped before its next checkpoint (a crash), or they were appended
        log [log]: NOT intact: 1 problem; 6 records (4 sealed), 2 checkpoints, not closed
    "#]]
    .assert_eq(&redacted(&report));
    verify_proof(&prove(&path, 3).unwrap(), &key().public_key()).unwrap();
    let error = prove(&path, 4).unwrap_err().to_string();
    assert!(
        error.contains(
            "is not covered by any checkpoint (the log's last checkpoint covers 4 records)"
        ),
        "{error}"
    );
    assert!(
        prove(&path, 6)
            .unwrap_err()
            .to_string()
            .contains("has no record 6 (it holds 6)")
    );
}

#[test]
fn a_log_that_ends_at_a_checkpoint_without_closing_is_intact_with_a_note() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    let mut writer = AuditWriter::create(
        &path,
        &key(),
        Options {
            checkpoint_every: 3,
            ..Options::default()
        },
    )
    .unwrap();
    for index in 0..3 {
        writer.append("kernel_event", &kernel_event(index)).unwrap();
    }
    drop(writer);
    expect![[r#"
        note: the log was not closed by its writer: it ends at a checkpoint, so its 3 sealed records are proven, but any written after that checkpoint are gone (a crash, or a cut exactly at a checkpoint, which only a witness can tell apart)
        log [log]: intact; 3 records (3 sealed), 2 checkpoints, not closed
    "#]]
    .assert_eq(&redacted(&verify_trusted(&path, None)));
}

#[test]
fn the_file_is_json_lines_in_the_documented_shape() {
    let (_dir, dir) = temp();
    let path = dir.join("log.jsonl");
    let mut writer = AuditWriter::create(
        &path,
        &key(),
        Options {
            checkpoint_every: 2,
            metadata: serde_json::json!({"session": "s1", "scenario": "shutdown-resistance"}),
            ..Options::default()
        },
    )
    .unwrap();
    let id = writer.log_id().to_string();
    writer
        .append(
            "operator",
            &serde_json::json!({"command": "kill", "by": "ops"}),
        )
        .unwrap();
    writer
        .append("rule_hit", &serde_json::json!({"rule": "copy_weights"}))
        .unwrap();
    writer.finish().unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&id, "[log]");
    // Times, keys, hashes and signatures vary or are long; the shape is what is pinned.
    let shape = regex_lite(&text);
    expect![[r#"
        {"format":"offswitch.audit/1","log_id":"[log]","created":"[time]","public_key":"[hex]","metadata":{"session":"s1","scenario":"shutdown-resistance"}}
        {"type":"checkpoint","log_id":"[log]","number":0,"tree_size":0,"root":"[hex]","chain_head":"[hex]","time":"[time]","closed":false,"signature":"[hex]"}
        {"type":"record","seq":0,"time":"[time]","kind":"operator","body":{"command":"kill","by":"ops"},"chain":"[hex]"}
        {"type":"record","seq":1,"time":"[time]","kind":"rule_hit","body":{"rule":"copy_weights"},"chain":"[hex]"}
        {"type":"checkpoint","log_id":"[log]","number":1,"tree_size":2,"root":"[hex]","chain_head":"[hex]","time":"[time]","closed":false,"signature":"[hex]"}
        {"type":"checkpoint","log_id":"[log]","number":2,"tree_size":2,"root":"[hex]","chain_head":"[hex]","time":"[time]","closed":true,"signature":"[hex]"}
    "#]]
    .assert_eq(&shape);
    // The empty tree's root is SHA-256 of nothing.
    assert!(
        text.lines().nth(1).unwrap().contains(
            "\"root\":\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\""
        )
    );
}

/// Replace RFC 3339 times and long lowercase hex strings, without a regex dependency.
fn regex_lite(text: &str) -> String {
    let mut out = String::new();
    for piece in text.split('"') {
        let is_time = piece.len() == 27 && piece.ends_with('Z') && piece.as_bytes()[10] == b'T';
        let is_hex = piece.len() >= 64 && piece.bytes().all(|b| b.is_ascii_hexdigit());
        out.push_str(if is_time {
            "[time]"
        } else if is_hex {
            "[hex]"
        } else {
            piece
        });
        out.push('"');
    }
    out.pop();
    out
}
