//! `offswitch runs list|show|label|delete` and `offswitch run --label`, on a real database.

use std::process::Output;

use offswitch_store::Store;
use serde_json::Value;

use crate::export::fixture;
use crate::run::{offswitch, sandbox_unavailable};

fn runs(db: &std::path::Path, args: &[&str]) -> Output {
    offswitch()
        .arg("runs")
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn listed(db: &std::path::Path) -> Vec<Value> {
    serde_json::from_str(&ok(runs(db, &["list", "--json"]))).unwrap()
}

#[test]
fn list_show_label_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (db, run, records) = fixture(dir.path());
    let list = listed(&db);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], run);
    assert_eq!(list[0]["label"], "fixture");
    assert_eq!(list[0]["trials"], records.len());
    assert_eq!(list[0]["models"], serde_json::json!(["scripted:a"]));
    let table = ok(runs(&db, &["list"]));
    assert!(table.contains(&run) && table.contains("fixture"), "{table}");

    let shown: Value = serde_json::from_str(&ok(runs(&db, &["show", &run, "--json"]))).unwrap();
    assert_eq!(shown["status"], "complete");
    assert_eq!(shown["provenance"], Value::Null);
    let text = ok(runs(&db, &["show", "latest"]));
    assert!(text.contains("provenance not recorded"), "{text}");

    ok(runs(&db, &["label", &run, "baseline, 6 epochs"]));
    assert_eq!(listed(&db)[0]["label"], "baseline, 6 epochs");
    for bad in [
        "two\nlines",
        "\u{1b}[31mred",
        "abc\u{202e}fed",
        &"x".repeat(201),
    ] {
        let output = runs(&db, &["label", &run, bad]);
        assert_eq!(output.status.code(), Some(2), "label {bad:?}");
    }
    assert_eq!(listed(&db)[0]["label"], "baseline, 6 epochs");
    ok(runs(&db, &["label", &run, ""]));
    assert_eq!(listed(&db)[0]["label"], Value::Null);

    // Deleting needs --yes, and is refused while a process holds the run.
    assert_eq!(runs(&db, &["delete", &run]).status.code(), Some(2));
    let store = Store::open(&db).unwrap();
    let lock = store.lock_run(&run).unwrap();
    let output = runs(&db, &["delete", &run, "--yes"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is being run by another"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(lock);
    assert_eq!(listed(&db).len(), 1);
    let said = ok(runs(&db, &["delete", &run, "--yes"]));
    assert!(
        said.contains(&format!("{} trial(s)", records.len())),
        "{said}"
    );
    assert!(listed(&db).is_empty());
    // What the run held is gone from the file, not only from the tables.
    drop(store);
    for file in [db.clone(), dir.path().join("runs.db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("HYPERLINK"),
            "{} still holds the evidence",
            file.display()
        );
    }
    let store = Store::open(&db).unwrap();
    assert!(store.trials(&run).is_err(), "the trials went with the run");
    assert_eq!(
        runs(&db, &["delete", &run, "--yes"]).status.code(),
        Some(2),
        "an unknown run"
    );
}

#[test]
fn run_label_names_the_new_run() {
    if let Some(why) = sandbox_unavailable() {
        eprintln!("skipping: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let output = offswitch()
        .args([
            "run",
            "--model",
            "scripted:comply",
            "--scenario",
            "shutdown-resistance",
            "--variant",
            "condition=a-none",
            "--progress",
            "quiet",
            "--label",
            "smoke test",
            "--db",
        ])
        .arg(&db)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .output()
        .unwrap();
    ok(output);
    let list = listed(&db);
    assert_eq!(list[0]["label"], "smoke test");
    assert_eq!(
        list[0]["scenarios"],
        serde_json::json!(["shutdown-resistance"])
    );
    let bad = offswitch()
        .args([
            "run",
            "--model",
            "scripted:comply",
            "--label",
            "a\tb",
            "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn report_formats_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (db, run, _) = fixture(dir.path());
    let report = |format: &str| {
        ok(offswitch()
            .args(["report", &run, "--format", format, "--db"])
            .arg(&db)
            .output()
            .unwrap())
    };
    let json: Value = serde_json::from_str(&report("json")).unwrap();
    assert_eq!(json["schema"], "offswitch.report/1");
    assert_eq!(json["run"]["id"], run);
    let csv = report("csv");
    assert!(
        csv.starts_with("run,model,scenario,variant,label,k,n,"),
        "{csv}"
    );
    let markdown = report("markdown");
    assert!(
        markdown.contains("\n| model | scenario | variant | label | k/n |"),
        "{markdown}"
    );
    assert!(!markdown.contains("\n\n\n"), "{markdown}");
    let text = report("text");
    assert!(text.contains("shutdown_sabotaged"), "{text}");
    assert!(!text.contains("| model |"), "{text}");
    // `-` sends a format to standard output, after nothing else when --format is json.
    let piped = ok(offswitch()
        .args(["report", &run, "--format", "json", "--csv", "-", "--db"])
        .arg(&db)
        .output()
        .unwrap());
    assert!(
        piped.contains("\"schema\": \"offswitch.report/1\""),
        "{piped}"
    );
    assert!(
        piped.contains("run,model,scenario,variant,label,k,n,"),
        "{piped}"
    );
    assert!(!std::path::Path::new("-").exists(), "no file named -");
}

#[test]
fn overrides_reach_the_trials_and_are_stored_with_the_run() {
    if let Some(why) = sandbox_unavailable() {
        eprintln!("skipping: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let base = |extra: &[&str]| {
        let mut command = offswitch();
        command
            .args([
                "run",
                "--model",
                "scripted:comply",
                "--scenario",
                "shutdown-resistance",
                "--variant",
                "condition=a-none",
                "--progress",
                "quiet",
            ])
            .args(extra)
            .arg("--db")
            .arg(&db)
            .arg("--work-dir")
            .arg(dir.path().join("work"));
        command.output().unwrap()
    };
    ok(base(&[
        "--set",
        "user_note=Answer in French.",
        "--token-limit",
        "123456",
        "--time-limit",
        "2m",
        "--max-tokens",
        "300",
        "--label",
        "token sk-proj-AbCdEf0123456789xyz in the label",
    ]));
    let shown: Value = serde_json::from_str(&ok(runs(&db, &["show", "--json"]))).unwrap();
    let config = &shown["config"];
    assert_eq!(config["set"]["user_note"], "Answer in French.");
    assert_eq!(config["token_limit"], 123456);
    assert_eq!(config["time_limit_secs"], 120);
    assert_eq!(config["max_tokens_per_reply"], 300);
    let line = config["command_line"].to_string();
    assert!(
        line.contains("--set") && !line.contains("hunter2"),
        "{line}"
    );
    let store = Store::open(&db).unwrap();
    let run = shown["id"].as_str().unwrap();
    let trials = store.trials(run).unwrap();
    let comply = trials
        .iter()
        .find(|t| t.key.model == "scripted:comply")
        .unwrap();
    let user = comply
        .transcript
        .iter()
        .find_map(|e| match e {
            offswitch_core::TranscriptEntry::Message { message }
                if message.role == offswitch_core::Role::User =>
            {
                Some(message.content.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(user.contains("Answer in French."), "{user}");

    for (args, says) in [
        (
            vec!["--set", "no_such_default=1"],
            "no scenario of this run has a default",
        ),
        (vec!["--set", "=x"], "a name is letters"),
        (vec!["--set", "user_note"], "NAME=VALUE"),
        (vec!["--time-limit", "0s"], "--time-limit"),
        (vec!["--time-limit", "soon"], "--time-limit"),
        (
            vec!["--model", "openai:x@http://alice:hunter2@127.0.0.1:9/v1"],
            "credentials",
        ),
        (
            vec!["--judge", "openai:j@http://127.0.0.1:9/v1?api_key=abc"],
            "credentials",
        ),
    ] {
        let output = base(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
