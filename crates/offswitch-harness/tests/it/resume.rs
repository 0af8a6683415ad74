//! Resuming a run: one process at a time, only with the inputs it was made with, the plan
//! streamed whatever the number of epochs, harness errors retried on request while the failed
//! attempts stay in the record, and a complete run never downgraded.

use expect_test::expect;
use offswitch_core::trial::{Outcome, TrialKey, TrialRecord};
use offswitch_harness::runner::{RunConfig, RunError, Skip, matrix, plan};
use offswitch_harness::workdir::{Owner, dir_name};
use offswitch_harness::{BuildInfo, resume_run};
use offswitch_store::{RunStatus, Store, StoreError};

use crate::runner::options;
use crate::support::sandbox_unavailable;

fn config(epochs: u32) -> RunConfig {
    RunConfig {
        models: vec!["scripted:comply".into()],
        variants: vec!["condition=a-none".into()],
        epochs,
        ..RunConfig::default()
    }
}

fn key(epoch: u32) -> TrialKey {
    TrialKey {
        model: "scripted:comply".into(),
        scenario: "shutdown-resistance".into(),
        variant: "condition=a-none".into(),
        epoch,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A run created the way `start_run` creates it, with nothing run yet.
fn created_run(store: &Store, config: &RunConfig, build: &BuildInfo) -> String {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path(), offswitch_harness::scripted::builtin_dir());
    let provenance = matrix(config, &options).unwrap().provenance(build);
    store
        .create_run_with_provenance(
            &serde_json::to_value(config).unwrap(),
            None,
            Some(&provenance),
        )
        .unwrap()
        .0
}

#[test]
fn the_plan_is_streamed_whatever_the_number_of_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path(), offswitch_harness::scripted::builtin_dir());
    // Ten variants: 42,949,672,950 trials, which no one could hold in memory.
    let config = RunConfig {
        variants: Vec::new(),
        ..config(u32::MAX)
    };
    let skip = Skip {
        completed: [0, 1]
            .map(|epoch| TrialKey {
                variant: "condition=a-none".into(),
                ..key(epoch)
            })
            .into(),
        ..Skip::default()
    };
    let plan = plan(&config, &options, &skip).unwrap();
    assert_eq!((plan.total, plan.already_done), (42_949_672_950, 2));
    let first: Vec<String> = plan
        .take(11)
        .map(|trial| format!("{}#{}", trial.spec.key.variant, trial.spec.key.epoch))
        .collect();
    // Epochs outermost; the stored keys are left out.
    expect![[r#"
        [
            "condition=b-user#0",
            "condition=c-system#0",
            "condition=d-even-if#0",
            "condition=e-condition1#0",
            "condition=f-must#0",
            "condition=g-priority#0",
            "condition=h-machine#0",
            "condition=i-weights#0",
            "condition=k-avoid#0",
            "condition=b-user#1",
            "condition=c-system#1",
        ]
    "#]]
    .assert_debug_eq(&first);
}

#[test]
fn a_resume_is_refused_while_another_process_holds_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("runs.db")).unwrap();
    let run = created_run(&store, &config(1), &BuildInfo::default());
    // As the original process holds it while it runs.
    let _held = store.lock_run(&run).unwrap();
    let options = options(
        &dir.path().join("work"),
        offswitch_harness::scripted::builtin_dir(),
    );
    let error = runtime()
        .block_on(resume_run(&store, &run, &options, std::future::pending()))
        .unwrap_err();
    assert!(
        matches!(error, RunError::Store(StoreError::RunLocked { holder, .. }) if holder == Some(std::process::id())),
        "{error}"
    );
    // Nothing ran and nothing changed.
    assert_eq!(store.run(&run).unwrap().trial_count, 0);
    assert!(!dir.path().join("work").exists());
}

#[test]
fn a_resume_with_changed_inputs_is_refused_naming_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("runs.db")).unwrap();
    // The scenario from a file the test can change.
    let scenario = dir.path().join("shutdown.toml");
    std::fs::copy(
        offswitch_scenario::builtin_dir().join("shutdown-resistance.toml"),
        &scenario,
    )
    .unwrap();
    let config = RunConfig {
        scenarios: vec![scenario.display().to_string()],
        ..config(1)
    };
    let created_with = BuildInfo {
        version: "0.0.0".into(),
        commit: "1111111111111111111111111111111111111111".into(),
    };
    let run = created_run(&store, &config, &created_with);
    let mut text = std::fs::read_to_string(&scenario).unwrap();
    text.push_str("# edited after the run started\n");
    std::fs::write(&scenario, text).unwrap();

    let mut options = options(
        &dir.path().join("work"),
        offswitch_harness::scripted::builtin_dir(),
    );
    options.build = BuildInfo {
        version: "0.0.0".into(),
        commit: "2222222222222222222222222222222222222222".into(),
    };
    let error = runtime()
        .block_on(resume_run(&store, &run, &options, std::future::pending()))
        .unwrap_err();
    let sha = |path: &std::path::Path| {
        offswitch_scenario::load_file(path).unwrap().sha256()[..12].to_owned()
    };
    let shipped = sha(&offswitch_scenario::builtin_dir().join("shutdown-resistance.toml"));
    let message = error
        .to_string()
        .replace(&run, "[run]")
        .replace(&shipped, "[created]")
        .replace(&sha(&scenario), "[now]");
    expect![[r#"
        run [run] cannot be resumed: it would mix trials made with different inputs. Changed since it was created:
          offswitch commit: 1111111111111111111111111111111111111111 when created, 2222222222222222222222222222222222222222 now
          scenario shutdown-resistance: file sha256 [created] when created, [now] now
        Start a new run instead"#]]
    .assert_eq(&message);
    assert!(matches!(error, RunError::Changed { .. }));
    assert_eq!(store.run(&run).unwrap().trial_count, 0);
}

#[test]
fn retried_harness_errors_replace_the_failed_trials_which_stay_in_the_record() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!(
            "skipping retried_harness_errors_replace_the_failed_trials_which_stay_in_the_record: {reason}"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("runs.db")).unwrap();
    let run = created_run(&store, &config(2), &BuildInfo::default());
    // Epoch 0 failed in the harness, as a resume that raced its original run left 359 trials.
    let failed = TrialRecord {
        key: key(0),
        seed: 1,
        transcript: Vec::new(),
        file_changes: Vec::new(),
        labels: Vec::new(),
        outcome: Outcome::HarnessError {
            message: "failed to remove stale home: directory not empty".into(),
        },
        usage: Default::default(),
        turns: 0,
        started_at_ms: 0,
        wall_ms: 0,
        events: Vec::new(),
    };
    store.insert_trial(&run, &failed).unwrap();
    let work = dir.path().join("work");
    // Homes left by a process that died on this run, and by one that is alive.
    let me = Owner::this_process().unwrap();
    let dead = Owner {
        pid: 1 << 30,
        start_ticks: 1,
        ..me
    };
    let mut sleeper = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let live = Owner::of_process(sleeper.id()).unwrap();
    for owner in [dead, live] {
        std::fs::create_dir_all(work.join(&run).join(dir_name(&owner)).join("a-home")).unwrap();
    }

    let mut options = options(&work, offswitch_harness::scripted::builtin_dir());
    let resume = |options: &offswitch_harness::RunOptions| {
        runtime()
            .block_on(resume_run(&store, &run, options, std::future::pending()))
            .unwrap()
    };
    // Without --retry-errors the harness error stands: only the missing epoch runs.
    let summary = resume(&options);
    assert_eq!(
        (
            summary.stored,
            summary.retried,
            summary.present,
            summary.total
        ),
        (1, 0, 2, 2)
    );
    assert!(!work.join(&run).join(dir_name(&dead)).exists());
    assert!(
        work.join(&run)
            .join(dir_name(&live))
            .join("a-home")
            .exists()
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert_eq!(store.run(&run).unwrap().status, RunStatus::Complete);

    // With it, the harness error runs again and replaces the failed trial.
    options.retry_errors = true;
    let summary = resume(&options);
    assert_eq!(
        (
            summary.already_done,
            summary.stored,
            summary.retried,
            summary.present
        ),
        (1, 1, 1, 2)
    );
    let trials = store.trials(&run).unwrap();
    assert_eq!(trials.len(), 2);
    assert!(
        trials.iter().all(|t| t.outcome == Outcome::ShutDown),
        "{trials:?}"
    );
    let attempts = store.attempts(&run).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].record, failed);
    assert_eq!(store.run(&run).unwrap().status, RunStatus::Complete);

    // Nothing left to retry: a resume interrupted at once keeps the complete run complete.
    let summary = runtime()
        .block_on(resume_run(&store, &run, &options, std::future::ready(())))
        .unwrap();
    assert!(!summary.interrupted);
    assert_eq!(store.run(&run).unwrap().status, RunStatus::Complete);
}

#[test]
fn every_kind_of_change_is_named() {
    let stored = offswitch_store::Provenance {
        offswitch_version: "0.1.0".into(),
        commit: "unknown".into(),
        scenario_files: [
            ("goal-guarding".to_owned(), "11".repeat(32)),
            ("sandbagging".to_owned(), "22".repeat(32)),
        ]
        .into(),
        model_files: [
            ("smollm2-135m".to_owned(), "33".repeat(32)),
            ("local:/models/a.gguf".to_owned(), "44".repeat(32)),
        ]
        .into(),
    };
    let current = offswitch_store::Provenance {
        offswitch_version: "0.2.0".into(),
        commit: "unknown".into(),
        scenario_files: [
            ("goal-guarding".to_owned(), "11".repeat(32)),
            ("sandbagging".to_owned(), "55".repeat(32)),
        ]
        .into(),
        model_files: [
            ("smollm2-135m".to_owned(), "66".repeat(32)),
            ("openai:gpt-4o".to_owned(), "77".repeat(32)),
        ]
        .into(),
    };
    assert!(offswitch_harness::runner::provenance_changes(&stored, &stored).is_empty());
    expect![[r#"
        [
            "offswitch version: 0.1.0 when created, 0.2.0 now",
            "scenario sandbagging: file sha256 222222222222 when created, 555555555555 now",
            "model local:/models/a.gguf: file sha256 444444444444 when created, no file now",
            "model openai:gpt-4o: no file recorded when created, sha256 777777777777 now",
            "model smollm2-135m: file sha256 333333333333 when created, 666666666666 now",
        ]
    "#]]
    .assert_debug_eq(&offswitch_harness::runner::provenance_changes(
        &stored, &current,
    ));
}
