//! `offswitch audit`: verify's report and exit codes on an intact log, a tampered one and a
//! file that is no log; the default key; show, export, prove and verify-proof; keygen.

use std::path::Path;
use std::process::Command;

use expect_test::expect;
use offswitch_audit::{AuditKey, AuditWriter, Options, Witness};

/// The binary with `$OFFSWITCH_HOME` in `home`, so no test sees the user's keys.
fn offswitch(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_offswitch"));
    command.env("OFFSWITCH_HOME", home);
    command
}

/// Exit code, stdout and stderr, with the temporary directory and the log's id replaced.
fn run(home: &Path, args: &[&str], log_id: &str) -> (Option<i32>, String, String) {
    let output = offswitch(home).arg("audit").args(args).output().unwrap();
    let redact = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .replace(&home.display().to_string(), "[dir]")
            .replace(log_id, "[log]")
    };
    (
        output.status.code(),
        redact(&output.stdout),
        redact(&output.stderr),
    )
}

/// A closed log of `records` records signed with `key`, witnessed; its id.
fn write_log(path: &Path, witness: &Path, key: &AuditKey, records: u64) -> String {
    let mut writer = AuditWriter::create(
        path,
        key,
        Options {
            checkpoint_every: 3,
            witness: Some(Witness::File(witness.to_owned())),
            metadata: serde_json::json!({"session": "cli-test"}),
        },
    )
    .unwrap();
    for index in 0..records {
        let kind = if index == 4 {
            "operator"
        } else {
            "kernel_event"
        };
        let body =
            serde_json::json!({"pid": 100 + index, "exe": "/bin/sh", "note": "\u{1b}[31mred"});
        writer.append(kind, &body).unwrap();
    }
    let id = writer.log_id().to_string();
    writer.finish().unwrap();
    id
}

#[test]
fn verify_says_intact_or_lists_each_problem_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let key = AuditKey::from_seed([3; 32]);
    let log = home.join("session.jsonl");
    let witness = home.join("witness.jsonl");
    let id = write_log(&log, &witness, &key, 5);
    let public = home.join("trusted.pub");
    offswitch_audit::save_public_key(&key.public_key(), &public).unwrap();
    let (log_arg, public_arg, witness_arg) = (
        log.to_str().unwrap(),
        public.to_str().unwrap(),
        witness.to_str().unwrap(),
    );
    let verify = [
        "verify",
        log_arg,
        "--public-key",
        public_arg,
        "--witness",
        witness_arg,
    ];

    let (code, stdout, stderr) = run(home, &verify, &id);
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    expect![[r#"
        note: the witness holds 3 checkpoints of this log
        log [log]: intact; 5 records (5 sealed), 3 checkpoints, closed
    "#]]
    .assert_eq(&stdout);

    // Rewrite record 1's body and cut the final checkpoint.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let changed = lines[3].replace("\"pid\":101", "\"pid\":999");
    lines[3] = &changed;
    lines.pop();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let (code, stdout, stderr) = run(home, &verify, &id);
    assert_eq!((code, stderr.as_str()), (Some(1), ""));
    expect![[r#"
        line 4: bad chain link of record 1: the record or the one before it was changed, removed or moved
        line 6: checkpoint root mismatch: checkpoint 1 signed a different tree than the records before it
        line 6: checkpoint chain head mismatch: checkpoint 1 signed a different chain than the records before it
        unsealed tail of 2 records (lines 7-8): no checkpoint covers them, so they cannot be proven; the writer stopped before its next checkpoint (a crash), or they were appended
        witness checkpoint 2 (tree size 5, witness line 3) is not in the log: the log is shorter than the witness says (truncated or rewritten)
        note: the witness holds 3 checkpoints of this log
        log [log]: NOT intact: 5 problems; 5 records (0 sealed), 2 checkpoints, not closed
    "#]]
    .assert_eq(&stdout);
}

#[test]
fn verify_exit_codes_for_what_is_not_a_log_or_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let notes = home.join("notes.txt");
    std::fs::write(&notes, "shopping list\n").unwrap();
    let missing = home.join("missing.jsonl");
    let key = AuditKey::from_seed([3; 32]);
    let log = home.join("session.jsonl");
    write_log(&log, &home.join("witness.jsonl"), &key, 1);
    let mut out = String::new();
    for args in [
        vec!["verify", notes.to_str().unwrap()],
        vec!["verify", missing.to_str().unwrap()],
        vec![
            "verify",
            log.to_str().unwrap(),
            "--public-key",
            notes.to_str().unwrap(),
        ],
        vec![
            "verify",
            log.to_str().unwrap(),
            "--witness",
            missing.to_str().unwrap(),
        ],
        vec!["prove", log.to_str().unwrap(), "7"],
    ] {
        let (code, stdout, stderr) = run(home, &args, "-");
        assert_eq!(stdout, "");
        out.push_str(&format!("{} {stderr}", code.unwrap()));
    }
    expect![[r#"
        2 error: [dir]/notes.txt is not an audit log: its first line is not an offswitch.audit header
        2 error: failed to open [dir]/missing.jsonl: No such file or directory (os error 2)
        2 error: [dir]/notes.txt: not an audit public key file: expected value at line 1 column 1
        2 error: witness file [dir]/missing.jsonl does not exist
        2 error: [dir]/session.jsonl has no record 7 (it holds 1)
    "#]]
    .assert_eq(&out);
}

#[test]
fn verify_uses_the_default_key_and_fails_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let log = home.join("session.jsonl");
    let witness = home.join("witness.jsonl");
    // No key in $OFFSWITCH_HOME/audit yet: the log is consistent, but nothing vouches for it.
    let stray = AuditKey::from_seed([5; 32]);
    let id = write_log(&log, &witness, &stray, 2);
    let (code, stdout, _) = run(home, &["verify", log.to_str().unwrap()], &id);
    assert_eq!(code, Some(1));
    expect![[r#"
        no trusted public key (give --public-key, or keep one in the default key directory): signatures were checked against the header's own key, so a forgery made with a fresh key would pass
        log [log]: NOT intact: 1 problem; 2 records (2 sealed), 2 checkpoints, closed
    "#]]
    .assert_eq(&stdout);

    // keygen makes the default key; a log it signed verifies without --public-key.
    let (code, stdout, _) = run(home, &["keygen"], "-");
    assert_eq!(code, Some(0));
    assert!(
        stdout
            .starts_with("secret key  [dir]/audit/audit.key\npublic key  [dir]/audit/audit.pub\n"),
        "{stdout}"
    );
    let (code, _, stderr) = run(home, &["keygen"], "-");
    assert_eq!(
        (code, stderr.as_str()),
        (
            Some(2),
            "error: refusing to overwrite [dir]/audit/audit.key\n"
        )
    );
    let key = AuditKey::load(&home.join("audit/audit.key")).unwrap();
    let signed = home.join("signed.jsonl");
    let id = write_log(&signed, &home.join("witness2.jsonl"), &key, 2);
    let (code, stdout, _) = run(home, &["verify", signed.to_str().unwrap()], &id);
    assert_eq!(code, Some(0), "{stdout}");
    expect![[r#"
        note: trusted public key from the default key directory ([dir]/audit/audit.pub)
        log [log]: intact; 2 records (2 sealed), 2 checkpoints, closed
    "#]]
    .assert_eq(&stdout);
    // The stray log is now checked against that key, which did not sign it.
    let (code, stdout, _) = run(home, &["verify", log.to_str().unwrap()], "-");
    assert_eq!(code, Some(1));
    assert!(stdout.contains("which is not the trusted key"), "{stdout}");
}

#[test]
fn show_export_prove_and_verify_proof() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let key = AuditKey::from_seed([3; 32]);
    let log = home.join("session.jsonl");
    let id = write_log(&log, &home.join("witness.jsonl"), &key, 6);
    let public = home.join("trusted.pub");
    offswitch_audit::save_public_key(&key.public_key(), &public).unwrap();
    let log_arg = log.to_str().unwrap();

    let (code, stdout, _) = run(home, &["show", log_arg, "--from", "3", "--limit", "2"], &id);
    assert_eq!(code, Some(0));
    let shown = redact_times(&stdout);
    expect![[r#"
        log [log]  created [time]  key ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1
        metadata {"session":"cli-test"}
        (not verified here: `offswitch audit verify` checks the log)

             seq  time                         kind              body
               3  [time]  kernel_event      {"pid":103,"exe":"/bin/sh","note":"\u001b[31mred"}
               4  [time]  operator          {"pid":104,"exe":"/bin/sh","note":"\u001b[31mred"}
        ... 1 more records (--limit, --from)
    "#]]
    .assert_eq(&shown);
    let (code, stdout, _) = run(home, &["show", log_arg, "--kind", "operator"], &id);
    assert_eq!(code, Some(0));
    assert_eq!(stdout.lines().filter(|l| l.contains("operator")).count(), 1);

    let export = home.join("export.jsonl");
    let (code, _, stderr) = run(
        home,
        &["export", log_arg, "--out", export.to_str().unwrap()],
        &id,
    );
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    let exported: Vec<serde_json::Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(exported.len(), 6);
    assert_eq!(exported[5]["seq"], 5);
    assert_eq!(exported[5]["body"]["pid"], 105);
    assert_eq!(exported[5]["log_id"], id.as_str());
    let (code, _, stderr) = run(
        home,
        &["export", log_arg, "--out", export.to_str().unwrap()],
        &id,
    );
    assert_eq!(
        (code, stderr.as_str()),
        (Some(2), "error: refusing to overwrite [dir]/export.jsonl\n")
    );

    let proof = home.join("proof.json");
    let (code, _, stderr) = run(
        home,
        &["prove", log_arg, "4", "--out", proof.to_str().unwrap()],
        &id,
    );
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    let verify_proof = [
        "verify-proof",
        proof.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ];
    let (code, stdout, _) = run(home, &verify_proof, &id);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.starts_with("proof holds: record 4 (operator, 20")
            && stdout.contains(") is among the 6 records of checkpoint 3 of log [log], signed by "),
        "{stdout}"
    );
    // A proof whose record was changed does not hold.
    let text = std::fs::read_to_string(&proof).unwrap();
    std::fs::write(&proof, text.replace("\\\"pid\\\":104", "\\\"pid\\\":1")).unwrap();
    let (code, stdout, _) = run(home, &verify_proof, &id);
    assert_eq!(
        (code, stdout.as_str()),
        (
            Some(1),
            "proof does NOT hold: the entry's leaf hash is not the proof's leaf hash\n"
        )
    );
    let (code, _, stderr) = run(home, &["verify-proof", log_arg], &id);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("is not an audit inclusion proof"),
        "{stderr}"
    );
}

/// Replace RFC 3339 times (`2026-12-08T00:11:12.123456Z`) with `[time]`.
fn redact_times(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut at = 0;
    while at < text.len() {
        let is_time = bytes.len() >= at + 27
            && bytes[at + 10] == b'T'
            && bytes[at + 26] == b'Z'
            && bytes[at..at + 4].iter().all(u8::is_ascii_digit);
        if is_time {
            out.push_str("[time]");
            at += 27;
        } else {
            let c = text[at..].chars().next().unwrap();
            out.push(c);
            at += c.len_utf8();
        }
    }
    out
}
