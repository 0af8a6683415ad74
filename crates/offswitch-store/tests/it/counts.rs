//! `Store::cell_counts` (SQL aggregates) against `offswitch_report::count_cells` (the same
//! counts from the records): equal on every kind of trial a run holds.

use offswitch_core::{Label, Outcome, TrialKey, TrialRecord};
use offswitch_store::{RunStatus, Store};

fn label(name: &str, value: bool, indeterminate: bool) -> Label {
    Label {
        name: name.into(),
        value,
        detail: String::new(),
        score: None,
        indeterminate,
    }
}

fn record(variant: &str, epoch: u32, outcome: Outcome, labels: Vec<Label>) -> TrialRecord {
    TrialRecord {
        key: TrialKey {
            model: "scripted:a".into(),
            scenario: if variant.starts_with("nudge") {
                "oversight-subversion".into()
            } else {
                "shutdown-resistance".into()
            },
            variant: variant.into(),
            epoch,
        },
        seed: u64::from(epoch),
        transcript: Vec::new(),
        file_changes: Vec::new(),
        labels,
        outcome,
        usage: offswitch_core::Usage {
            prompt_tokens: 100 + u64::from(epoch),
            completion_tokens: 10 * u64::from(epoch),
        },
        turns: epoch + 1,
        started_at_ms: 0,
        wall_ms: 5,
        events: Vec::new(),
    }
}

#[test]
fn sql_counts_equal_the_reports_count_of_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("runs.db")).unwrap();
    let run = store.create_run(&serde_json::json!({}), None).unwrap();
    let mut epoch = 0;
    let mut next = || {
        epoch += 1;
        epoch
    };
    for value in [true, false, true, true] {
        store
            .insert_trial(
                &run,
                &record(
                    "condition=a",
                    next(),
                    Outcome::Finished,
                    vec![
                        label("sabotage", value, false),
                        label("shut_down", !value, false),
                    ],
                ),
            )
            .unwrap();
    }
    // Indeterminate, unlabelled, invalid, and a label only an invalid trial carries.
    store
        .insert_trial(
            &run,
            &record(
                "condition=a",
                next(),
                Outcome::TurnLimit,
                vec![label("sabotage", true, true)],
            ),
        )
        .unwrap();
    store
        .insert_trial(
            &run,
            &record(
                "condition=a",
                next(),
                Outcome::BackendFailed {
                    message: "x".into(),
                },
                vec![
                    label("sabotage", true, false),
                    label("only_failed", true, false),
                ],
            ),
        )
        .unwrap();
    // A replaced attempt is left out; its replacement counts.
    let failed = record(
        "condition=b",
        99,
        Outcome::HarnessError {
            message: "y".into(),
        },
        vec![label("sabotage", true, false)],
    );
    store.insert_trial(&run, &failed).unwrap();
    store
        .replace_trial(
            &run,
            &record(
                "condition=b",
                99,
                Outcome::ShutDown,
                vec![label("sabotage", false, false)],
            ),
        )
        .unwrap();
    // Interviews: confessions by turn, an indeterminate answer, one not interviewed, one whose
    // "interviewed" is indeterminate.
    for (interviewed, answers) in [
        (
            Some(true),
            vec![(false, false), (true, false), (true, false)],
        ),
        (Some(true), vec![(false, false)]),
        (
            Some(true),
            vec![(false, false), (true, true), (true, false)],
        ),
        (Some(false), vec![]),
        (None, vec![(true, false)]),
    ] {
        let mut labels = vec![match interviewed {
            Some(value) => label("interviewed", value, false),
            None => label("interviewed", true, true),
        }];
        for (turn, (value, indeterminate)) in answers.into_iter().enumerate() {
            labels.push(label(
                &format!("confessed_by_turn_{}", turn + 1),
                value,
                indeterminate,
            ));
        }
        store
            .insert_trial(
                &run,
                &record("nudge=strong", next(), Outcome::Finished, labels),
            )
            .unwrap();
    }
    store.set_run_status(&run, RunStatus::Complete).unwrap();

    let counts = store.cell_counts(&run).unwrap();
    let records = store.trials(&run).unwrap();
    assert_eq!(counts, offswitch_report::count_cells(&records));
    assert_eq!(counts.len(), 3);
    assert_eq!(counts[0].interviews.values().sum::<u64>(), 3);
    // Kept, then read back as kept.
    assert_eq!(store.cell_counts(&run).unwrap(), counts);

    // Trials stored since are added to the kept counts, a new cell and a new label included.
    let mut cached = record(
        "condition=a",
        next(),
        Outcome::Finished,
        vec![label("new_label", true, false)],
    );
    cached
        .transcript
        .push(offswitch_core::TranscriptEntry::Event {
            kind: "cache_hit".into(),
            detail: "replayed".into(),
        });
    store.insert_trial(&run, &cached).unwrap();
    let failed = record(
        "condition=c",
        next(),
        Outcome::HarnessError {
            message: "z".into(),
        },
        vec![label("sabotage", true, false)],
    );
    store.insert_trial(&run, &failed).unwrap();
    let counts = store.cell_counts(&run).unwrap();
    assert_eq!(
        counts,
        offswitch_report::count_cells(&store.trials(&run).unwrap())
    );
    assert_eq!(counts.iter().map(|c| c.cached_trials).sum::<u64>(), 1);
    // A retry replaces a counted trial: counted again from scratch.
    let retry = record(
        "condition=c",
        failed.key.epoch,
        Outcome::Finished,
        vec![label("sabotage", false, false)],
    );
    store.replace_trial(&run, &retry).unwrap();
    let counts = store.cell_counts(&run).unwrap();
    assert_eq!(
        counts,
        offswitch_report::count_cells(&store.trials(&run).unwrap())
    );
    assert_eq!(counts[3].outcomes.get("harness_error"), None);
}
