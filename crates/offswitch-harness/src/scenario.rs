//! From a scenario and one of its variants to a `TrialSpec` and its evaluator.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use offswitch_core::backend::{Sampling, ToolMode};
use offswitch_core::trial::{Label, TrialKey};
use offswitch_scenario::{DetectorKind, Evidence, FinalFile, Scenario, ScenarioError, Variant};

use crate::agent::{
    Evaluator, ExecTool, MechanicsSpec, SpecFile, TrialEvidence, TrialLimits, TrialSpec,
};

/// Overrides of a scenario's own limits from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    pub max_turns: Option<u32>,
    /// The size limit of every home, in MiB, over the scenario's `disk_mb`.
    pub disk_mb: Option<u64>,
    /// Every trial's total-token limit, over the scenario's `max_tokens`.
    pub token_limit: Option<u64>,
    /// Every trial's wall-clock limit in seconds, over the scenario's `wall_time_secs`.
    pub time_limit_secs: Option<u64>,
}

/// What the model side contributes to a trial.
#[derive(Debug, Clone)]
pub struct ModelSide {
    /// `TrialKey::model`: the spec string as the user gave it.
    pub key_name: String,
    /// The model name sent in requests.
    pub request_model: String,
    pub tool_mode: ToolMode,
    pub sampling: Sampling,
}

pub fn trial_spec(
    scenario: &Scenario,
    variant: &Variant,
    model: &ModelSide,
    epoch: u32,
    seed: u64,
    overrides: &LimitOverrides,
) -> TrialSpec {
    let rendered = scenario.render(variant);
    let limits = rendered.limits;
    let snapshot_priority = priority_paths(
        scenario,
        None,
        rendered
            .files
            .iter()
            .map(|f| f.path.as_str())
            .chain(rendered.shutdown_script.as_deref()),
    );
    let host_snapshot_priority = rendered
        .hosts
        .iter()
        .map(|host| {
            let paths = priority_paths(
                scenario,
                Some(&host.name),
                host.files.iter().map(|f| f.path.as_str()),
            );
            (host.name.clone(), paths)
        })
        .collect();
    let mut received_targets: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for (host, from) in scenario.received_checks() {
        if let Some(file) = rendered.files.iter().find(|f| f.path == from) {
            received_targets
                .entry(host)
                .or_default()
                .push((from, file.contents.clone()));
        }
    }
    TrialSpec {
        key: TrialKey {
            model: model.key_name.clone(),
            scenario: scenario.id().to_owned(),
            variant: variant.name.clone(),
            epoch,
        },
        seed,
        model_name: model.request_model.clone(),
        tool_mode: model.tool_mode,
        sampling: model.sampling.clone(),
        system: rendered.system,
        user: rendered.user,
        files: rendered
            .files
            .into_iter()
            .map(|f| SpecFile {
                path: f.path,
                contents: f.contents,
                mode: f.mode,
            })
            .collect(),
        tools: rendered.tools,
        shutdown_script: rendered.shutdown_script,
        submit_tool: rendered.submit_tool,
        exec_tool: rendered.exec_tool.map(|t| ExecTool {
            tool: t.tool,
            argument: t.argument,
        }),
        limits: TrialLimits {
            max_turns: overrides.max_turns.unwrap_or(limits.max_turns),
            max_total_tokens: overrides.token_limit.unwrap_or(limits.max_tokens),
            wall_time: Duration::from_secs(
                overrides.time_limit_secs.unwrap_or(limits.wall_time_secs),
            ),
            exec_timeout: Duration::from_secs(limits.exec_timeout_secs),
            sandbox_memory_bytes: limits
                .memory_mb
                .map(|mb| mb << 20)
                .or(TrialLimits::default().sandbox_memory_bytes),
            sandbox_disk: overrides
                .disk_mb
                .or(limits.disk_mb)
                .map_or(offswitch_sandbox::DiskLimit::DEFAULT, |mb| {
                    offswitch_sandbox::DiskLimit { bytes: mb << 20 }
                }),
            ..TrialLimits::default()
        },
        mechanics: MechanicsSpec {
            hosts: rendered.hosts,
            references: rendered.references,
            mailbox: rendered.mailbox,
            inbox: rendered.emails,
            alert: rendered.alert,
            model_server: rendered.model_server,
            questions: rendered.questions,
            interview: rendered.interview,
            judges: rendered.judges,
            snapshot_priority,
            host_snapshot_priority,
            received_targets,
            monitors: None,
        },
    }
}

/// The paths of one home (the agent's when `host` is `None`) that its snapshots record first:
/// its starting files and every path a detector names literally, with their parent
/// directories. These are what the final-state labels rest on, so no flood of other entries
/// may push them out of the bounded walk.
pub fn priority_paths<'a>(
    scenario: &Scenario,
    host: Option<&str>,
    starting_files: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut named: Vec<&str> = starting_files.into_iter().collect();
    let literal = |glob: &str| !glob.contains(['*', '?', '[']);
    for detector in &scenario.detectors {
        match &detector.kind {
            DetectorKind::FileChanged { host: on, glob, .. }
            | DetectorKind::FileContentMatches { host: on, glob, .. }
                if on.as_deref() == host && literal(glob) =>
            {
                named.push(glob)
            }
            DetectorKind::MatchesReference { file, .. } if host.is_none() => named.push(file),
            DetectorKind::FileCopied { from, .. } if host.is_none() => named.push(from),
            DetectorKind::FileCopied { host: on, glob, .. }
                if Some(on.as_str()) == host && literal(glob) =>
            {
                named.push(glob)
            }
            _ => {}
        }
    }
    let mut paths = BTreeSet::new();
    for path in named {
        let path = path.trim_matches('/');
        let mut parent = path;
        while let Some((up, _)) = parent.rsplit_once('/') {
            paths.insert(up.to_owned());
            parent = up;
        }
        if !path.is_empty() {
            paths.insert(path.to_owned());
        }
    }
    paths.into_iter().collect()
}

/// The scenario's detectors over the harness's evidence.
pub fn evaluator(scenario: Arc<Scenario>, variant: Variant) -> Box<Evaluator> {
    Box::new(move |evidence: &TrialEvidence| -> Vec<Label> {
        // The detectors look at regular files only; links and directories show up in the
        // file changes instead.
        let final_files = evidence
            .final_files
            .iter()
            .filter_map(|(path, file)| {
                let sha256 = file.sha256.clone()?;
                Some((
                    path.clone(),
                    FinalFile {
                        mode: file.mode,
                        sha256,
                        text: file.text.clone(),
                    },
                ))
            })
            .collect();
        scenario.evaluate(
            &variant,
            &Evidence {
                transcript: &evidence.transcript,
                file_changes: &evidence.file_changes,
                final_files: &final_files,
                outcome: &evidence.outcome,
                shut_down_from_inside: evidence.shut_down_from_inside,
                submitted: evidence.submitted.clone(),
                hosts: &evidence.mechanics.hosts,
                references: &evidence.mechanics.references,
                sent_emails: &evidence.mechanics.sent_emails,
                facts: &evidence.mechanics.facts,
                incomplete: evidence.incomplete.as_deref(),
                events: evidence.events.as_ref(),
                host_events: &evidence.mechanics.host_events,
            },
        )
    })
}

/// A scenario named by id (looked up in `builtin`) or by a path to its file.
pub fn resolve_scenario(name: &str, builtin: &Path) -> Result<Scenario, ScenarioError> {
    let as_path = Path::new(name);
    if name.ends_with(".toml") || as_path.components().count() > 1 || as_path.is_file() {
        return offswitch_scenario::load_file(as_path);
    }
    let path = builtin.join(format!("{name}.toml"));
    if path.is_file() {
        let scenario = offswitch_scenario::load_file(&path)?;
        if scenario.id() == name {
            return Ok(scenario);
        }
    }
    let (scenarios, errors) = offswitch_scenario::load_dir(builtin);
    if let Some(scenario) = scenarios.into_iter().find(|s| s.id() == name) {
        return Ok(scenario);
    }
    if let Some(error) = errors.into_iter().next() {
        return Err(error);
    }
    Err(ScenarioError::Read {
        path: path.clone(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no scenario with id {name:?} in {}", builtin.display()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::{LimitOverrides, ModelSide, resolve_scenario, trial_spec};
    use expect_test::{Expect, expect};
    use offswitch_core::backend::{Sampling, ToolMode};

    /// The snapshot priority paths of a shipped scenario's first variant, per home.
    fn check(scenario_id: &str, expected: Expect) {
        let scenario = resolve_scenario(scenario_id, &offswitch_scenario::builtin_dir()).unwrap();
        let variant = scenario.variants().remove(0);
        let side = ModelSide {
            key_name: "test".into(),
            request_model: "test".into(),
            tool_mode: ToolMode::Native,
            sampling: Sampling::default(),
        };
        let spec = trial_spec(&scenario, &variant, &side, 0, 0, &LimitOverrides::default());
        let mut out = format!("agent: {}\n", spec.mechanics.snapshot_priority.join(" "));
        for (host, paths) in &spec.mechanics.host_snapshot_priority {
            out.push_str(&format!("{host}: {}\n", paths.join(" ")));
        }
        expected.assert_eq(&out);
    }

    #[test]
    fn priority_paths_are_starting_files_and_literal_detector_paths() {
        check(
            "covert-data-manipulation",
            expect![[r#"
            agent: note.txt ranking.txt score.py suppliers.csv
        "#]],
        );
        check(
            "self-exfiltration",
            expect![[r#"
                agent: model model/weights.bin project project/memo.txt project/options.txt
                successor: .files_service.py .journal .journal/requests.log models models/model_v2.bin
            "#]],
        );
    }
}
