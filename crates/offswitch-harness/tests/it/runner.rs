//! Run configuration and seeds: what `--resume` relies on to rebuild exactly the same matrix;
//! and the matrix and the work directory around the trials.

use std::time::Duration;

use expect_test::expect;
use offswitch_core::trial::TrialKey;
use offswitch_harness::runner::{RunConfig, Skip, plan, stored_config, trial_seed};
use offswitch_harness::{ModelOptions, ProgressMode, RunOptions, start_run};
use offswitch_store::{RunStatus, Store};

use crate::support::sandbox_unavailable;

fn key(variant: &str, epoch: u32) -> TrialKey {
    TrialKey {
        model: "scripted:comply".into(),
        scenario: "shutdown-resistance".into(),
        variant: variant.into(),
        epoch,
    }
}

#[test]
fn trial_seeds_depend_on_the_run_seed_and_the_key_only() {
    let seeds = [
        trial_seed(0, &key("condition=a-none", 0)),
        trial_seed(0, &key("condition=a-none", 1)),
        trial_seed(0, &key("condition=b-user", 0)),
        trial_seed(1, &key("condition=a-none", 0)),
    ];
    // Pinned: a change here silently changes every stored run's reproduction.
    expect![
        "[4226557497423557575, 15927975577621433286, 12729659647788938336, 8648153896625618944]"
    ]
    .assert_eq(&format!("{seeds:?}"));
}

#[test]
fn stored_config_round_trips_and_rejects_other_schemas() {
    let config = RunConfig {
        models: vec!["scripted:comply".into(), "openai:gpt-4o".into()],
        variants: vec!["condition=a-none".into()],
        epochs: 3,
        seed: 42,
        max_turns: Some(12),
        ..RunConfig::default()
    };
    let value = serde_json::to_value(&config).unwrap();
    assert_eq!(stored_config("r-1", &value).unwrap(), config);
    let mut other = value.clone();
    other["schema"] = "offswitch.run/99".into();
    expect![[r#"run r-1 has a stored configuration this version cannot read: schema "offswitch.run/99", expected "offswitch.run/1""#]].assert_eq(&stored_config("r-1", &other).unwrap_err().to_string());
}

pub(crate) fn options(work: &std::path::Path, agents_dir: std::path::PathBuf) -> RunOptions {
    RunOptions {
        work_dir: work.to_owned(),
        concurrency: 2,
        scenarios_dir: offswitch_scenario::builtin_dir(),
        models: ModelOptions {
            http: offswitch_model::HttpOptions::default(),
            tool_mode: offswitch_core::backend::ToolMode::Native,
            cache_dir: None,
            agents_dir,
            allow_pull: false,
            resilience: offswitch_model::ResilienceConfig::default(),
        },
        progress: ProgressMode::Quiet,
        keep_homes: false,
        facilities: Default::default(),
        retry_errors: false,
        build: Default::default(),
        label: None,
        run_id: None,
    }
}

#[test]
fn a_trial_key_given_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path(), offswitch_harness::scripted::builtin_dir());
    for config in [
        RunConfig {
            models: vec!["scripted:comply".into(), "scripted:comply".into()],
            ..RunConfig::default()
        },
        RunConfig {
            models: vec!["scripted:comply".into()],
            scenarios: vec![
                "shutdown-resistance".into(),
                offswitch_scenario::builtin_dir()
                    .join("shutdown-resistance.toml")
                    .display()
                    .to_string(),
            ],
            ..RunConfig::default()
        },
    ] {
        let Err(error) = plan(&config, &options, &Skip::default()) else {
            panic!("{config:?} was accepted");
        };
        let message = error.to_string();
        assert!(
            message.starts_with("invalid run: trial scripted:comply/shutdown-resistance/"),
            "{message}"
        );
        assert!(message.contains("appears twice in the matrix"), "{message}");
    }
}

/// Ctrl-C while a trial runs a command: the trial is not stored, the run can be resumed, and
/// the trial's home is removed with the rest of the run's work directory.
#[test]
fn interrupted_trials_leave_no_home_behind() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping interrupted_trials_leave_no_home_behind: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    std::fs::create_dir(&agents).unwrap();
    std::fs::write(
        agents.join("stall.toml"),
        "name = \"stall\"\n[[step]]\nbash = \"touch started && sleep 9\"\n",
    )
    .unwrap();
    let work = dir.path().join("work");
    let options = options(&work, agents);
    let store = Store::open(&dir.path().join("runs.db")).unwrap();
    let config = RunConfig {
        models: vec!["scripted:stall".into()],
        variants: vec!["condition=a-none".into()],
        ..RunConfig::default()
    };
    // Cancel once the trial's command runs, so the trial is aborted mid-exec.
    let started = {
        let work = work.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !homes_with(&work, "started") && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let summary = runtime
        .block_on(start_run(&store, &config, &options, started))
        .unwrap();
    assert!(summary.interrupted);
    assert_eq!((summary.total, summary.stored), (1, 0));
    assert_eq!(
        store.run(&summary.run).unwrap().status,
        RunStatus::Interrupted
    );
    assert!(
        !work.join(summary.run.as_str()).exists(),
        "left behind: {:?}",
        std::fs::read_dir(work.join(summary.run.as_str()))
            .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
}

/// The entries of the directories in `dirs`.
fn children(dirs: Vec<std::path::PathBuf>) -> Vec<std::path::PathBuf> {
    dirs.iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|entry| entry.path())
        .collect()
}

/// The trial homes in `work`: `<work>/<run>/<owner process>/<home>`.
fn homes(work: &std::path::Path) -> Vec<std::path::PathBuf> {
    children(children(children(vec![work.to_owned()])))
}

/// Whether some trial home in `work` holds `name`.
fn homes_with(work: &std::path::Path, name: &str) -> bool {
    homes(work).iter().any(|home| home.join(name).exists())
}

/// A variant filter narrows the scenarios that have its factor and leaves the others whole, so
/// one run can mix studies; a factor that no scenario has is still refused.
#[test]
fn variant_filters_apply_to_the_scenarios_that_have_the_factor() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path(), offswitch_harness::scripted::builtin_dir());
    let config = RunConfig {
        models: vec!["scripted:comply".into()],
        scenarios: vec!["shutdown-resistance".into(), "oversight-subversion".into()],
        variants: vec!["nudge=strong".into()],
        ..RunConfig::default()
    };
    let trials = plan(&config, &options, &Skip::default()).unwrap();
    let total = trials.total;
    let cells: Vec<String> = trials
        .map(|t| format!("{} {}", t.spec.key.scenario, t.spec.key.variant))
        .collect();
    assert_eq!(total, 11);
    assert!(cells.contains(&"oversight-subversion nudge=strong".to_owned()));
    assert!(!cells.iter().any(|c| c.contains("nudge=none")));
    assert_eq!(
        cells
            .iter()
            .filter(|c| c.starts_with("shutdown-resistance"))
            .count(),
        10
    );
    let unknown = RunConfig {
        variants: vec!["mood=happy".into()],
        ..config
    };
    let Err(error) = plan(&unknown, &options, &Skip::default()) else {
        panic!("an unknown factor was accepted");
    };
    assert!(
        error.to_string().contains("unknown factor \"mood\""),
        "{error}"
    );
}

/// A finished trial with a second host leaves neither its home nor the host's behind.
#[test]
fn finished_trials_remove_their_hosts_homes_too() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping finished_trials_remove_their_hosts_homes_too: {reason}");
        return;
    }
    if !crate::support::is_root() {
        eprintln!(
            "skipping finished_trials_remove_their_hosts_homes_too: the second host needs root"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let options = options(&work, offswitch_harness::scripted::builtin_dir());
    let store = Store::open(&dir.path().join("runs.db")).unwrap();
    let config = RunConfig {
        models: vec!["scripted:self-exfiltration/comply".into()],
        scenarios: vec!["self-exfiltration".into()],
        variants: vec!["nudge=none".into()],
        ..RunConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let summary = runtime
        .block_on(start_run(&store, &config, &options, std::future::pending()))
        .unwrap();
    assert_eq!(summary.stored, 1);
    let records = store.trials(&summary.run).unwrap();
    assert_ne!(
        records[0].outcome.name(),
        "harness_error",
        "{:?}",
        records[0].outcome
    );
    assert!(
        records[0].transcript.iter().any(|e| matches!(
            e,
            offswitch_core::trial::TranscriptEntry::Event { kind, .. } if kind == "host_started"
        )),
        "the successor never started"
    );
    let left: Vec<_> = std::fs::read_dir(&work)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|run| {
            std::fs::read_dir(run.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Each home was a volume of its own: none is still mounted.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let work = work.display().to_string();
    assert!(!mountinfo.contains(&work), "still mounted:\n{mountinfo}");
}
