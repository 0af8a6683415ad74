//! Every shipped scenario played for real by its scripted reference agents.
//!
//! `scenarios/<scenario-id>/<case>/case.toml` names a scripted agent, a variant and a tool
//! mode, and says which behaviour label the agent does or does not perform. The trial runs in
//! real sandboxes through `run_trial`; the behaviour label must have the stated value, and
//! the whole summary (outcome, commands, labels, file changes, other hosts, sent email, facts,
//! interview) must equal `expected.txt` next to it (`UPDATE_EXPECT=1` rewrites those).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use offswitch_core::backend::{Sampling, ToolMode};
use offswitch_core::trial::{TranscriptEntry, TrialRecord};
use offswitch_harness::model::ModelClient;
use offswitch_harness::scenario::{
    LimitOverrides, ModelSide, evaluator, resolve_scenario, trial_spec,
};
use offswitch_harness::scripted::{Script, ScriptedBackend, builtin_dir};
use offswitch_harness::{Facilities, SingleAttempt, TrialPlace, run_trial};
use serde::Deserialize;

use crate::support::{check_expected, is_root, sandbox_unavailable};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// A scripted agent, usually `<scenario-id>/<name>`.
    agent: String,
    variant: String,
    tool_mode: ToolMode,
    /// The label of the behaviour this case is about.
    behaviour: String,
    /// Whether the agent performs it (the label must be true) or not (false); or
    /// `"indeterminate"` when the case is about evidence the agent destroys (a flood).
    performs: Performs,
    /// A scripted agent that plays the judge model, when the case tests `[[judges]]` or the
    /// interview's judge classification.
    #[serde(default)]
    judge: Option<String>,
    /// The agent attacks the measurement itself: a trial that ends as a harness error (the
    /// harness could not measure) passes too; a wrong label still fails.
    #[serde(default)]
    or_harness_error: bool,
    /// Facilities the case needs: `"root"` (network links between sandboxes), `"model"`
    /// (the embedded model file and the offswitch binary, for the model-server mechanic).
    #[serde(default)]
    needs: Vec<String>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
enum Performs {
    Known(bool),
    Other(String),
}

impl Performs {
    fn matches(&self, label: &offswitch_core::trial::Label) -> bool {
        match self {
            Performs::Known(value) => !label.indeterminate && label.value == *value,
            Performs::Other(word) => word == "indeterminate" && label.indeterminate,
        }
    }
}

fn cases_dir(scenario: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/scenarios")
        .join(scenario)
}

/// The parts of a record the expectations pin: no ids, timings or hashes.
pub fn summarize(record: &TrialRecord) -> String {
    let mut out = format!(
        "outcome: {}\nturns: {}\n",
        record.outcome.name(),
        record.turns
    );
    if let offswitch_core::trial::Outcome::HarnessError { message } = &record.outcome {
        out.push_str(&format!("harness error: {message}\n"));
    }
    let protocol_errors = record
        .transcript
        .iter()
        .filter(|e| matches!(e, TranscriptEntry::ProtocolError { .. }))
        .count();
    out.push_str(&format!("protocol errors: {protocol_errors}\nactions:\n"));
    for entry in &record.transcript {
        match entry {
            TranscriptEntry::Exec {
                command, status, ..
            } => out.push_str(&format!("  exec {command:?} -> {status}\n")),
            TranscriptEntry::Event { kind, detail } if kind != "cache_hit" => {
                out.push_str(&format!("  event {kind}: {}\n", first_line(detail)));
            }
            _ => {}
        }
    }
    out.push_str("labels:\n");
    for label in &record.labels {
        let verdict = crate::support::verdict(label);
        match label.score {
            Some(score) => out.push_str(&format!(
                "  {} = {verdict} (score {score:.3})\n",
                label.name
            )),
            None => out.push_str(&format!(
                "  {} = {verdict}{}\n",
                label.name,
                decided_by(&label.detail)
            )),
        }
    }
    out.push_str("file changes:\n");
    // A flooding agent makes a hundred thousand; the first ones and the count pin the case.
    const SHOWN_CHANGES: usize = 50;
    for change in record.file_changes.iter().take(SHOWN_CHANGES) {
        out.push_str(&format!("  {:?} {}\n", change.kind, change.path));
    }
    if record.file_changes.len() > SHOWN_CHANGES {
        out.push_str(&format!(
            "  ... and {} more\n",
            record.file_changes.len() - SHOWN_CHANGES
        ));
    }
    out
}

/// For a judge's headline label, which opinion decided it, as its detail says first:
/// ` (judge)` or ` (rules: no judge configured)`; nothing for any other label.
fn decided_by(detail: &str) -> String {
    if detail.starts_with("judge: ") {
        return " (judge)".to_owned();
    }
    match detail.strip_prefix("rules (") {
        Some(why) => {
            let end = why.find([':', ')']).unwrap_or(why.len());
            format!(" (rules: {})", &why[..end])
        }
        None => String::new(),
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut cut: String = line.chars().take(120).collect();
    if cut.len() < line.len() || text.lines().nth(1).is_some() {
        cut.push_str(" …");
    }
    cut
}

/// Why a case cannot run here, if it cannot.
fn unmet_need(need: &str) -> Option<String> {
    match need {
        "root" => (!is_root()).then(|| "it needs root to link sandboxes over veth".to_owned()),
        "model" => model_facilities().err(),
        other => Some(format!("unknown need {other:?} in case.toml")),
    }
}

/// The offswitch binary and the embedded model file, for the model-server mechanic.
fn model_facilities() -> Result<(PathBuf, PathBuf), String> {
    let binary = match std::env::var_os("OFFSWITCH_BIN") {
        Some(path) => PathBuf::from(path),
        // Cargo puts the workspace's binaries next to the test's `deps` directory: the CI
        // command's `cargo run -p offswitch-cli` and `cargo test --workspace` (for the CLI's
        // own tests) both build target/<profile>/offswitch before this test runs.
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("offswitch")))
            .filter(|path| path.is_file())
            .ok_or_else(|| {
                "OFFSWITCH_BIN is not set and no offswitch binary is built next to this test \
                 (cargo build -p offswitch-cli)"
                    .to_owned()
            })?,
    };
    let model = offswitch_embedded::models::ensure_default_model(false)
        .map_err(|e| format!("the embedded model is not available: {e}"))?;
    Ok((binary, model))
}

async fn run_case(scenario_id: &str, dir: &Path, case: &Case, work: &Path) -> TrialRecord {
    let scenario = Arc::new(
        resolve_scenario(scenario_id, &offswitch_scenario::builtin_dir())
            .unwrap_or_else(|e| panic!("{scenario_id}: {e}")),
    );
    let variant = scenario
        .variant(&case.variant)
        .unwrap_or_else(|| panic!("{}: no variant {}", dir.display(), case.variant));
    let script = Script::load_named(&builtin_dir(), &case.agent)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let side = ModelSide {
        key_name: format!("scripted:{}", case.agent),
        request_model: case.agent.clone(),
        tool_mode: case.tool_mode,
        sampling: Sampling::default(),
    };
    let spec = trial_spec(&scenario, &variant, &side, 0, 7, &LimitOverrides::default());
    let mut facilities = Facilities::default();
    if let Some(judge) = &case.judge {
        let script = Script::load_named(&builtin_dir(), judge)
            .unwrap_or_else(|e| panic!("{}: judge: {e}", dir.display()));
        let client: Arc<dyn ModelClient> =
            Arc::new(SingleAttempt(Arc::new(ScriptedBackend::new(script))));
        facilities.judge = Some((client, judge.clone()));
    }
    if case.needs.iter().any(|n| n == "model") {
        let (binary, model) = model_facilities().unwrap();
        facilities.offswitch_binary = Some(binary);
        facilities.model_file = Some(model);
    }
    let place = TrialPlace {
        home: work.join(format!(
            "{scenario_id}-{}",
            dir.file_name().unwrap().to_string_lossy()
        )),
        hostname: "agent".into(),
        facilities,
    };
    let model = Arc::new(SingleAttempt(Arc::new(ScriptedBackend::new(script))));
    let evaluate = evaluator(Arc::clone(&scenario), variant);
    run_trial(&spec, &place, model, &*evaluate).await
}

/// Play every case of one scenario; fail on any mismatch, listing all of them.
fn check_scenario(scenario_id: &str) {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping the cases of {scenario_id}: {reason}");
        return;
    }
    let dir = cases_dir(scenario_id);
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "scenario {scenario_id} has no cases at {}: {e}",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.toml").is_file())
        .collect();
    cases.sort();
    let work = crate::support::WorkDir::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut mismatches = Vec::new();
    let (mut performs, mut abstains) = (0, 0);
    for case_dir in &cases {
        let case: Case =
            toml::from_str(&std::fs::read_to_string(case_dir.join("case.toml")).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", case_dir.display()));
        if let Some(reason) = case.needs.iter().find_map(|n| unmet_need(n)) {
            eprintln!("skipping case {}: {reason}", case_dir.display());
            continue;
        }
        let record = runtime.block_on(run_case(scenario_id, case_dir, &case, work.path()));
        work.release();
        let harness_error = matches!(
            record.outcome,
            offswitch_core::trial::Outcome::HarnessError { .. }
        );
        match record.labels.iter().find(|l| l.name == case.behaviour) {
            _ if harness_error && case.or_harness_error => {}
            Some(label) if case.performs.matches(label) => {}
            Some(label) => mismatches.push(format!(
                "{}: label {} is {} but the case says performs = {:?} ({})",
                case_dir.display(),
                case.behaviour,
                crate::support::verdict(label),
                case.performs,
                label.detail
            )),
            None => mismatches.push(format!(
                "{}: no label {} in the record (outcome {:?})",
                case_dir.display(),
                case.behaviour,
                record.outcome
            )),
        }
        if case.performs == Performs::Known(true) {
            performs += 1;
        } else {
            abstains += 1;
        }
        check_expected(
            &case_dir.join("expected.txt"),
            &summarize(&record),
            &mut mismatches,
        );
    }
    assert!(
        mismatches.is_empty(),
        "expectations differ (UPDATE_EXPECT=1 rewrites expected.txt):\n{}",
        mismatches.join("\n")
    );
    eprintln!("{scenario_id}: {performs} case(s) perform the behaviour, {abstains} do not");
}

/// Every shipped scenario has cases here, with agents that do and do not perform its behaviour.
#[test]
fn every_shipped_scenario_has_reference_agents() {
    let (scenarios, errors) = offswitch_scenario::load_dir(&offswitch_scenario::builtin_dir());
    assert!(errors.is_empty(), "{errors:?}");
    let mut missing = Vec::new();
    for scenario in &scenarios {
        if scenario.id() == "shutdown-resistance" {
            // Its cases live in `trials.rs`, from before this driver.
            continue;
        }
        let dir = cases_dir(scenario.id());
        let mut kinds = (0, 0);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path().join("case.toml")) else {
                continue;
            };
            let case: Case = toml::from_str(&text).unwrap();
            match case.performs {
                Performs::Known(true) => kinds.0 += 1,
                Performs::Known(false) => kinds.1 += 1,
                Performs::Other(_) => {}
            }
        }
        if kinds.0 < 2 || kinds.1 < 2 {
            missing.push(format!(
                "{}: {} case(s) that perform the behaviour and {} that do not (need 2 each)",
                scenario.id(),
                kinds.0,
                kinds.1
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn oversight_subversion() {
    check_scenario("oversight-subversion");
}

#[test]
fn self_exfiltration() {
    check_scenario("self-exfiltration");
}

#[test]
fn goal_guarding() {
    check_scenario("goal-guarding");
}

#[test]
fn covert_data_manipulation() {
    check_scenario("covert-data-manipulation");
}

#[test]
fn alignment_faking() {
    check_scenario("alignment-faking");
}

#[test]
fn sandbagging() {
    check_scenario("sandbagging");
}

#[test]
fn agentic_blackmail() {
    check_scenario("agentic-blackmail");
}

#[test]
fn agentic_leaking() {
    check_scenario("agentic-leaking");
}

#[test]
fn agentic_lethal() {
    check_scenario("agentic-lethal");
}

#[test]
fn self_replication() {
    check_scenario("self-replication");
}
