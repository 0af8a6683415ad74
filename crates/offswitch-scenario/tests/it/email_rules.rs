//! The `email_classified` rules over tables of sent emails. Each
//! `test_data/email-rules/<table>.toml` names a scenario (a shipped one by id, or a file under
//! `test_data/`), a variant and the label under test, then lists cases: the emails an agent
//! sent, in order, and the verdict the label must give. `<table>.verdicts` snapshots every
//! verdict with its detail (`UPDATE_EXPECT=1` rewrites it).

use std::collections::BTreeMap;
use std::path::Path;

use expect_test::expect_file;
use offswitch_core::Outcome;
use offswitch_scenario::{Evidence, SentEmail};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    /// A shipped scenario's id, or a `.toml` path under `test_data/`.
    scenario: String,
    variant: String,
    label: String,
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    expect: bool,
    /// Another variant than the table's.
    variant: Option<String>,
    email: Vec<Sent>,
}

/// An email as the agent sent it: written (`subject`, `body`) or forwarded (`forward`, the
/// inbox id, with an optional `note`), to one or more recipients separated by commas.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sent {
    to: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    body: String,
    forward: Option<String>,
    #[serde(default)]
    note: String,
}

#[test]
fn email_rules_give_each_table_its_verdicts() {
    for path in crate::cases("email-rules", "toml") {
        check(&path);
    }
}

/// Play every case of one table; the snapshot pins the details, and a case whose verdict
/// differs from its `expect` fails the test even when the snapshot is rewritten.
fn check(path: &Path) {
    let table: Table = toml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let scenario = if table.scenario.ends_with(".toml") {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("test_data")
            .join(&table.scenario);
        offswitch_scenario::load_file(&file).unwrap_or_else(|e| panic!("{e}"))
    } else {
        let file = offswitch_scenario::builtin_dir().join(format!("{}.toml", table.scenario));
        offswitch_scenario::load_file(&file).unwrap_or_else(|e| panic!("{e}"))
    };
    let mut snapshot = String::new();
    let mut wrong = Vec::new();
    for case in &table.case {
        let variant_name = case.variant.as_deref().unwrap_or(&table.variant);
        let variant = scenario
            .variant(variant_name)
            .unwrap_or_else(|| panic!("{}: no variant {variant_name}", path.display()));
        let inbox = scenario.render(&variant).emails;
        let sent: Vec<SentEmail> = case
            .email
            .iter()
            .flat_map(|email| sent_emails(email, &inbox))
            .collect();
        let no_files = BTreeMap::new();
        let evidence = Evidence {
            transcript: &[],
            file_changes: &[],
            final_files: &no_files,
            outcome: &Outcome::Finished,
            shut_down_from_inside: false,
            submitted: None,
            hosts: &BTreeMap::new(),
            references: &BTreeMap::new(),
            sent_emails: &sent,
            facts: &BTreeMap::new(),
            incomplete: None,
            events: None,
            host_events: &BTreeMap::new(),
        };
        let labels = scenario.evaluate(&variant, &evidence);
        let label = labels
            .iter()
            .find(|l| l.name == table.label)
            .unwrap_or_else(|| panic!("{}: no label {}", path.display(), table.label));
        snapshot.push_str(&format!(
            "{} {}\n    {}\n",
            label.value, case.name, label.detail
        ));
        if label.value != case.expect {
            wrong.push(format!(
                "{}: {:?} is {} but should be {}: {}",
                path.display(),
                case.name,
                label.value,
                case.expect,
                label.detail
            ));
        }
    }
    // A wrong verdict is the clearer failure, so it comes before the snapshot's diff; when the
    // snapshots are being rewritten it comes after, so they are still rewritten.
    let updating = std::env::var_os("UPDATE_EXPECT").is_some();
    assert!(updating || wrong.is_empty(), "{}", wrong.join("\n"));
    expect_file![path.with_extension("verdicts")].assert_eq(&snapshot);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// What the mailbox records for one call: an email per recipient, a forward built the way the
/// harness builds it (the note, the separator, the original's headers and body).
fn sent_emails(email: &Sent, inbox: &[offswitch_scenario::Email]) -> Vec<SentEmail> {
    let (subject, body, forwarded) = match &email.forward {
        Some(id) => {
            let original = inbox
                .iter()
                .find(|e| &e.id == id)
                .unwrap_or_else(|| panic!("no inbox email {id}"));
            (
                format!("Fwd: {}", original.subject),
                format!(
                    "{}\n\n---------- Forwarded message ----------\nFrom: {}\nTo: {}\nSubject: {}\n\n{}",
                    email.note, original.from, original.to, original.subject, original.body
                ),
                Some(id.clone()),
            )
        }
        None => (email.subject.clone(), email.body.clone(), None),
    };
    email
        .to
        .split(',')
        .map(str::trim)
        .filter(|to| !to.is_empty())
        .map(|to| SentEmail {
            to: to.to_owned(),
            subject: subject.clone(),
            body: body.clone(),
            forwarded: forwarded.clone(),
        })
        .collect()
}
