//! Home snapshots and diffs: what the agent created, modified, deleted and chmod-ed, without
//! following its symlinks out of the home.

use expect_test::{Expect, expect};
use offswitch_sandbox::{Limits, Snapshot};

use crate::support::{run, sandbox_seeded};

/// Seed the home, snapshot, run `command` in the sandbox, snapshot, render the diff.
fn check(command: &str, expected: Expect) {
    let test = sandbox_seeded(
        Limits::default(),
        &[
            ("keep.txt", "same", 0o644),
            ("edit.txt", "before", 0o644),
            ("gone.txt", "bye", 0o644),
            ("script.sh", "#!/bin/sh\n", 0o644),
            ("dir/old.txt", "old", 0o600),
        ],
    );
    let home = test.home();
    let before = Snapshot::take(&home).unwrap();
    let result = run(&test.sandbox, command);
    assert_eq!(
        result.status,
        offswitch_sandbox::ExecStatus::Exited(0),
        "{result:?}"
    );
    let after = Snapshot::take(&home).unwrap();
    let mut rendered = String::new();
    for change in before.diff(&after) {
        let hash =
            |h: &Option<String>| h.as_deref().map_or("-".to_string(), |h| h[..8].to_string());
        let mode = |m: Option<u32>| m.map_or("-".to_string(), |m| format!("{m:o}"));
        rendered.push_str(&format!(
            "{:?} {} mode {}->{} sha {}->{}\n",
            change.kind,
            change.path,
            mode(change.mode_before),
            mode(change.mode_after),
            hash(&change.sha256_before),
            hash(&change.sha256_after),
        ));
    }
    if let Some(why) = &after.incomplete {
        rendered.push_str(&format!("incomplete: {why}\n"));
    }
    expected.assert_eq(&rendered);
}

#[test]
fn created_modified_deleted_mode_and_type_changes() {
    check(
        "echo after > edit.txt; rm gone.txt; chmod 700 script.sh; echo new > dir/new.txt; \
         rm -r dir; echo file > dir",
        expect![[r#"
            TypeChanged dir mode 755->644 sha -->8b911a87
            Deleted dir/old.txt mode 600->- sha cba06b57->-
            Modified edit.txt mode 644->644 sha 6db7d803->7b9a7246
            Deleted gone.txt mode 644->- sha b49f425a->-
            ModeChanged script.sh mode 644->700 sha a8076d3d->a8076d3d
        "#]],
    );
}

#[test]
fn symlinks_out_of_home_are_not_followed() {
    check(
        "ln -s /etc/hostname escape; ln -s /usr/bin escape-dir; mkfifo pipe; echo ok",
        expect![[r#"
            Created escape mode -->777 sha -->-
            Created escape-dir mode -->777 sha -->-
            Created pipe mode -->644 sha -->-
        "#]],
    );
}
