//! Data-driven trials: each `test_data/<case>/case.toml` names a scripted agent, a variant of
//! the shutdown-resistance scenario and a tool mode; the trial runs for real in a sandbox and
//! its outcome, labels and file changes must equal `test_data/<case>/expected.txt`
//! (`UPDATE_EXPECT=1` rewrites them).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use offswitch_core::backend::{Sampling, ToolMode};
use offswitch_core::trial::{TranscriptEntry, TrialRecord};
use offswitch_harness::scenario::{LimitOverrides, ModelSide, evaluator, trial_spec};
use offswitch_harness::scripted::{Script, ScriptedBackend, builtin_dir};
use offswitch_harness::{SingleAttempt, TrialPlace, run_trial};
use serde::Deserialize;

use crate::support::{check_expected, sandbox_unavailable, shutdown_scenario};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    agent: String,
    variant: String,
    tool_mode: ToolMode,
}

fn test_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/test_data")
}

/// The parts of a record the expectations pin: no ids, timings or hashes.
fn summarize(record: &TrialRecord) -> String {
    let mut out = format!(
        "outcome: {}\nturns: {}\n",
        record.outcome.name(),
        record.turns
    );
    let protocol_errors = record
        .transcript
        .iter()
        .filter(|e| matches!(e, TranscriptEntry::ProtocolError { .. }))
        .count();
    out.push_str(&format!("protocol errors: {protocol_errors}\ncommands:\n"));
    for entry in &record.transcript {
        if let TranscriptEntry::Exec {
            command, status, ..
        } = entry
        {
            out.push_str(&format!("  {command:?} -> {status}\n"));
        }
    }
    out.push_str("labels:\n");
    for label in &record.labels {
        out.push_str(&format!(
            "  {} = {}\n",
            label.name,
            crate::support::verdict(label)
        ));
    }
    out.push_str("file changes:\n");
    for change in &record.file_changes {
        out.push_str(&format!("  {:?} {}\n", change.kind, change.path));
    }
    out
}

async fn run_case(dir: &Path, work: &Path) -> String {
    let case: Case =
        toml::from_str(&std::fs::read_to_string(dir.join("case.toml")).unwrap()).unwrap();
    let scenario = Arc::new(shutdown_scenario());
    let variant = scenario
        .variant(&case.variant)
        .unwrap_or_else(|| panic!("{}: no variant {}", dir.display(), case.variant));
    let script = Script::load_named(&builtin_dir(), &case.agent).unwrap();
    let side = ModelSide {
        key_name: format!("scripted:{}", case.agent),
        request_model: case.agent.clone(),
        tool_mode: case.tool_mode,
        sampling: Sampling::default(),
    };
    let spec = trial_spec(&scenario, &variant, &side, 0, 7, &LimitOverrides::default());
    let place = TrialPlace {
        home: work.join(dir.file_name().unwrap()),
        hostname: "agent".into(),
        facilities: Default::default(),
    };
    let model = Arc::new(SingleAttempt(Arc::new(ScriptedBackend::new(script))));
    let evaluate = evaluator(Arc::clone(&scenario), variant);
    let record = run_trial(&spec, &place, model, &*evaluate).await;
    summarize(&record)
}

#[test]
fn scripted_strategies_get_their_expected_labels() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping scripted_strategies_get_their_expected_labels: {reason}");
        return;
    }
    let work = crate::support::WorkDir::new();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(test_data())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.toml").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut mismatches = Vec::new();
    for case in &cases {
        let actual = runtime.block_on(run_case(case, work.path()));
        work.release();
        check_expected(&case.join("expected.txt"), &actual, &mut mismatches);
    }
    assert!(
        mismatches.is_empty(),
        "expectations differ (UPDATE_EXPECT=1 rewrites them):\n{}",
        mismatches.join("\n")
    );
}
