//! Reference runs: commands the harness runs on the pristine starting files before the agent's
//! first turn; their output is ground truth (e.g. what the scoring script computes on the true
//! input) that the agent cannot touch.
//!
//! A reference runs inside the agent's own sandbox, so it sees exactly the files and tools the
//! agent will see. It must write only to stdout: the home's starting snapshot was taken before
//! the sandbox existed, so a file a reference left behind would be counted as the agent's
//! change. The run is therefore checked to have changed nothing in the home or in `/tmp`, and
//! it runs in a subshell so that a `cd` in it does not move the agent's working directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use offswitch_core::trial::TranscriptEntry;
use offswitch_sandbox::{ExecRequest, ExecStatus, Sandbox, Snapshot};

use crate::trial::{FINAL_FILE_TEXT_LIMIT, SANDBOX_HOME, TrialSpec};

/// The most stdout a reference may print. A detector compares it with the final text of a
/// file, which is only read up to [`FINAL_FILE_TEXT_LIMIT`], so a longer reference could never
/// match anything.
pub const REFERENCE_OUTPUT_LIMIT: usize = FINAL_FILE_TEXT_LIMIT as usize;

/// Run every `[[references]]` command; the stdout of each by name. An error means the scenario
/// is broken (a reference failed, timed out, printed too much or left files behind), not that
/// the agent did anything: the trial becomes a harness error with this message.
pub(crate) async fn run(
    spec: &TrialSpec,
    sandbox: &Arc<Sandbox>,
    transcript: &mut Vec<TranscriptEntry>,
) -> Result<BTreeMap<String, String>, String> {
    if spec.mechanics.references.is_empty() {
        return Ok(BTreeMap::new());
    }
    let references = spec.mechanics.references.clone();
    let timeout = spec.limits.exec_timeout;
    let sandbox = Arc::clone(sandbox);
    let outputs = crate::blocking::spawn(move || run_all(&sandbox, &references, timeout))
        .await
        .map_err(|join| format!("reference run task failed: {join}"))??;
    for reference in &spec.mechanics.references {
        if let Some(output) = outputs.get(&reference.name) {
            transcript.push(TranscriptEntry::Event {
                kind: "reference".into(),
                detail: format!("{}: {} bytes", reference.name, output.len()),
            });
        }
    }
    Ok(outputs)
}

/// Blocking: run the references in file order and check that they left nothing behind.
fn run_all(
    sandbox: &Sandbox,
    references: &[offswitch_scenario::Reference],
    timeout: Duration,
) -> Result<BTreeMap<String, String>, String> {
    let home = sandbox.home();
    let snapshot = || {
        Snapshot::take(home).map_err(|e| {
            format!(
                "failed to snapshot {} around the reference runs: {e}",
                home.display()
            )
        })
    };
    let home_before = snapshot()?;
    let tmp_before = list_tmp(sandbox, timeout)?;
    let mut outputs = BTreeMap::new();
    for reference in references {
        let output = run_one(sandbox, reference, timeout)?;
        outputs.insert(reference.name.clone(), output);
    }
    let changes = home_before.diff(&snapshot()?);
    if !changes.is_empty() {
        let changed: Vec<String> = changes
            .iter()
            .map(|change| format!("{:?} {}", change.kind, change.path).to_lowercase())
            .collect();
        return Err(format!(
            "the reference runs changed the agent's home ({}); a reference must only write to \
             stdout, or the agent would be blamed for its files",
            changed.join(", ")
        ));
    }
    let tmp_after = list_tmp(sandbox, timeout)?;
    let left: Vec<&String> = tmp_after
        .iter()
        .filter(|entry| !tmp_before.contains(entry))
        .collect();
    if !left.is_empty() {
        return Err(format!(
            "the reference runs left {left:?} in /tmp; a reference must only write to stdout"
        ));
    }
    Ok(outputs)
}

fn run_one(
    sandbox: &Sandbox,
    reference: &offswitch_scenario::Reference,
    timeout: Duration,
) -> Result<String, String> {
    let name = &reference.name;
    let command = &reference.command;
    // A subshell keeps a `cd` from moving the agent's working directory (the sandbox carries
    // the cwd from one exec to the next), and Python writes no bytecode caches into the home.
    let request = ExecRequest {
        command: format!(
            "(cd {SANDBOX_HOME} && export PYTHONDONTWRITEBYTECODE=1 && {{\n{command}\n}})"
        ),
        stdin: Vec::new(),
        timeout,
        output_cap: REFERENCE_OUTPUT_LIMIT,
    };
    // The harness's own command: its events are not the agent's.
    let result = sandbox
        .exec_as_harness(&request)
        .map_err(|e| format!("reference {name:?} ({command:?}) could not run: {e}"))?;
    if result.status != ExecStatus::Exited(0) {
        let status = match &result.status {
            ExecStatus::Exited(code) => format!("exited {code}"),
            ExecStatus::TimedOut => format!("timed out after {}s", timeout.as_secs()),
            other => format!("ended {other:?}").to_lowercase(),
        };
        let stderr = String::from_utf8_lossy(&result.stderr);
        let stderr = stderr.trim();
        return Err(format!(
            "reference {name:?} ({command:?}) {status}: the scenario is broken, not the agent{}",
            if stderr.is_empty() {
                String::new()
            } else {
                format!("; stderr: {stderr}")
            }
        ));
    }
    if result.truncated_bytes > 0 {
        return Err(format!(
            "reference {name:?} ({command:?}) printed more than {REFERENCE_OUTPUT_LIMIT} bytes, \
             more than a final file's text that it could be compared with"
        ));
    }
    String::from_utf8(result.stdout)
        .map_err(|_| format!("reference {name:?} ({command:?}) printed output that is not UTF-8"))
}

/// The entries directly in the sandbox's `/tmp`, to see whether a reference left one there.
fn list_tmp(sandbox: &Sandbox, timeout: Duration) -> Result<Vec<String>, String> {
    let request = ExecRequest {
        command: "(ls -A1 /tmp)".into(),
        stdin: Vec::new(),
        timeout,
        output_cap: REFERENCE_OUTPUT_LIMIT,
    };
    match sandbox.exec_as_harness(&request) {
        Ok(result) if result.status == ExecStatus::Exited(0) => {
            Ok(String::from_utf8_lossy(&result.stdout)
                .lines()
                .map(str::to_owned)
                .collect())
        }
        Ok(result) => Err(format!(
            "listing /tmp around the reference runs ended {:?}",
            result.status
        )),
        Err(error) => Err(format!(
            "listing /tmp around the reference runs failed: {error}"
        )),
    }
}

/// The reference runs as a mechanic: before turn 1, on the pristine files.
#[derive(Default)]
pub(crate) struct References {
    outputs: BTreeMap<String, String>,
}

#[async_trait::async_trait]
impl super::Mechanic for References {
    async fn before_turn_one(&mut self, context: &mut super::Context<'_>) -> Result<(), String> {
        self.outputs = run(context.spec, context.sandbox, context.transcript).await?;
        Ok(())
    }

    async fn after(
        &mut self,
        _context: &mut super::Context<'_>,
        evidence: &mut crate::trial::MechanicsEvidence,
    ) {
        evidence.references = std::mem::take(&mut self.outputs);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use expect_test::{Expect, expect};
    use offswitch_sandbox::{ExecRequest, Limits, NetworkMode, Sandbox, SandboxConfig};
    use offswitch_scenario::Reference;

    use super::run_all;

    /// Runs `references` in a fresh sandbox whose home holds `data.txt`, then shows either the
    /// outputs by name or the error, followed by the agent's working directory afterwards.
    fn check(references: &[(&str, &str)], expect: Expect) {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("data.txt"), "b\na\nc\n").unwrap();
        let config = SandboxConfig {
            home: home.path().to_owned(),
            limits: Limits::default(),
            network: NetworkMode::LoopbackOnly,
            env: Vec::new(),
            hostname: "reference-test".into(),
            ro_binds: Vec::new(),
            protect: Vec::new(),
            home_idmap: None,
            watch_opens: Vec::new(),
        };
        let sandbox = match Sandbox::create(config) {
            Ok(sandbox) => sandbox,
            Err(error) => {
                eprintln!("skipping a reference-run test: cannot create a sandbox: {error}");
                return;
            }
        };
        let references: Vec<Reference> = references
            .iter()
            .map(|(name, command)| Reference {
                name: (*name).to_owned(),
                command: (*command).to_owned(),
            })
            .collect();
        let mut actual = match run_all(&sandbox, &references, Duration::from_secs(2)) {
            Ok(outputs) => outputs
                .iter()
                .map(|(name, output)| format!("{name}: {output:?}\n"))
                .collect::<String>(),
            Err(message) => format!("error: {message}\n"),
        };
        let pwd = sandbox
            .exec(&ExecRequest {
                command: "pwd".into(),
                stdin: Vec::new(),
                timeout: Duration::from_secs(10),
                output_cap: 1024,
            })
            .unwrap();
        actual.push_str(&format!("cwd: {}", String::from_utf8_lossy(&pwd.stdout)));
        sandbox.kill().unwrap();
        expect.assert_eq(&actual);
    }

    #[test]
    fn outputs_are_kept_by_name_and_the_agents_cwd_does_not_move() {
        check(
            &[("sorted", "sort data.txt"), ("moved", "cd / && pwd")],
            expect![[r#"
                moved: "/\n"
                sorted: "a\nb\nc\n"
                cwd: /home/agent
            "#]],
        );
    }

    #[test]
    fn a_failing_reference_is_a_broken_scenario() {
        check(
            &[("ok", "cat data.txt"), ("broken", "echo oops >&2; exit 3")],
            expect![[r#"
                error: reference "broken" ("echo oops >&2; exit 3") exited 3: the scenario is broken, not the agent; stderr: oops
                cwd: /home/agent
            "#]],
        );
    }

    #[test]
    fn a_reference_that_times_out_is_a_broken_scenario() {
        check(
            &[("slow", "sleep 30")],
            expect![[r#"
                error: reference "slow" ("sleep 30") timed out after 2s: the scenario is broken, not the agent
                cwd: /home/agent
            "#]],
        );
    }

    #[test]
    fn a_reference_must_not_leave_files_in_the_home() {
        check(
            &[("writer", "sort data.txt | tee sorted.txt")],
            expect![[r#"
                error: the reference runs changed the agent's home (created sorted.txt); a reference must only write to stdout, or the agent would be blamed for its files
                cwd: /home/agent
            "#]],
        );
    }

    #[test]
    fn a_reference_must_not_leave_files_in_tmp() {
        check(
            &[(
                "scratch",
                "sort data.txt > /tmp/scratch && cat /tmp/scratch",
            )],
            expect![[r#"
                error: the reference runs left ["scratch"] in /tmp; a reference must only write to stdout
                cwd: /home/agent
            "#]],
        );
    }

    #[test]
    fn a_reference_printing_too_much_is_refused() {
        check(
            &[("flood", "head -c 70000 /dev/zero | tr '\\0' x")],
            expect![[r#"
                error: reference "flood" ("head -c 70000 /dev/zero | tr '\\0' x") printed more than 65536 bytes, more than a final file's text that it could be compared with
                cwd: /home/agent
            "#]],
        );
    }

    /// Through the whole agent loop: a broken reference ends the trial as a harness error
    /// before the model is asked anything, and no labels are computed.
    #[test]
    fn a_broken_reference_makes_the_trial_a_harness_error() {
        use std::sync::Arc;

        use offswitch_core::trial::{Outcome, TrialKey};

        use crate::agent::run_trial;
        use crate::model::SingleAttempt;
        use crate::scripted::{Script, ScriptedBackend};
        use crate::trial::{SpecFile, TrialPlace, TrialSpec};

        let work = tempfile::tempdir().unwrap();
        let spec = TrialSpec {
            key: TrialKey {
                model: "scripted:reference-test".into(),
                scenario: "reference-test".into(),
                variant: String::new(),
                epoch: 0,
            },
            seed: 1,
            model_name: "reference-test".into(),
            system: "system".into(),
            user: "user".into(),
            files: vec![SpecFile {
                path: "data.txt".into(),
                contents: b"1,2\n".to_vec(),
                mode: 0o644,
            }],
            ..crate::trial::test_spec(crate::trial::MechanicsSpec {
                references: vec![Reference {
                    name: "score".into(),
                    command: "python3 missing_script.py data.txt".into(),
                }],
                ..Default::default()
            })
        };
        let place = TrialPlace {
            home: work.path().join("home"),
            hostname: "agent".into(),
            facilities: Default::default(),
        };
        let script =
            Script::parse("name = \"idle\"\n[[step]]\ntext = \"hello\"\n", "test").unwrap();
        let model = Arc::new(SingleAttempt(Arc::new(ScriptedBackend::new(script))));
        let evaluate = |_: &crate::trial::TrialEvidence| {
            vec![offswitch_core::trial::Label {
                name: "evaluated".into(),
                value: true,
                score: None,
                detail: String::new(),
                indeterminate: false,
            }]
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let record = runtime.block_on(run_trial(&spec, &place, model, &evaluate));
        // The home is a volume of its own: the runner would remove it.
        offswitch_sandbox::remove_home(&place.home).unwrap();
        let message = match &record.outcome {
            Outcome::HarnessError { message }
                if message.starts_with("failed to create sandbox") =>
            {
                eprintln!("skipping a reference-run test: {message}");
                return;
            }
            Outcome::HarnessError { message } => message.clone(),
            other => panic!("expected a harness error, got {other:?}"),
        };
        expect![[r#"reference "score" ("python3 missing_script.py data.txt") exited 2: the scenario is broken, not the agent; stderr: python3: can't open file '/home/agent/missing_script.py': [Errno 2] No such file or directory"#]].assert_eq(&message);
        assert_eq!(record.turns, 0, "the model must not be asked anything");
        assert!(record.labels.is_empty(), "a harness error is not labelled");
    }
}
