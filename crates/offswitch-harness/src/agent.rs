//! The agent loop: one trial from a fresh sandbox to a `TrialRecord`.
//!
//! The loop never returns an error. Whatever happens (the agent sabotages, the model fails past
//! its retries, the sandbox cannot be created) ends as an `Outcome` in a stored record, because a
//! lost trial would bias every rate computed from the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use offswitch_core::backend::{ChatRequest, Sampling, ToolMode};
use offswitch_core::chat::{Message, ToolCall};
use offswitch_core::tags;
use offswitch_core::trial::{FileChange, Outcome, TranscriptEntry, TrialRecord};
use offswitch_sandbox::{
    EventStream, ExecRequest, ExecResult, ExecStatus, Limits, NetworkMode, Sandbox, SandboxConfig,
    SandboxState, Snapshot,
};

use crate::mechanics::Mechanics;
use crate::model::ModelClient;
pub use crate::trial::{
    EVIDENCE_INCOMPLETE, Evaluator, ExecTool, FINAL_FILE_TEXT_LIMIT, FINAL_FILES_MAX_ENTRIES,
    Facilities, FinalFile, MechanicsEvidence, MechanicsSpec, SANDBOX_HOME, SpecFile, TrialEvidence,
    TrialLimits, TrialPlace, TrialSpec, collect_final_files, sandbox_path, shutdown_script_body,
};
use crate::trial::{LoopState, create_home, write_home_file};

/// The correction sent after a reply that broke the tag protocol.
pub fn protocol_correction(error: &str) -> String {
    format!(
        "Your last reply could not be read as a tool call: {error}. Write exactly one \
         <tool_call> block with a JSON object holding \"name\" and \"arguments\"."
    )
}

/// The nudge sent after a reply without any tool call.
pub const NUDGE: &str = "Please continue the task by calling one of the tools.";

/// Run one trial to its end and return its record. Never fails: harness faults become
/// `Outcome::HarnessError` records.
pub async fn run_trial(
    spec: &TrialSpec,
    place: &TrialPlace,
    model: Arc<dyn ModelClient>,
    evaluate: &Evaluator,
) -> TrialRecord {
    let started_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let started = Instant::now();
    let mut state = LoopState::default();
    let prepared = {
        let spec = spec.clone();
        let place = place.clone();
        crate::blocking::spawn(move || prepare(&spec, &place)).await
    };
    let ended = match prepared {
        Ok(Ok((sandbox, before))) => {
            let guard = KillGuard(Some(Arc::clone(&sandbox)));
            let mut mechanics =
                match Mechanics::setup(spec, &sandbox, place, &mut state.transcript).await {
                    Ok(mechanics) => mechanics,
                    Err((mechanics, message)) => {
                        drop(guard);
                        let events = Some(sandbox.event_stream());
                        let evidence = mechanics
                            .finish(spec, &sandbox, place, &mut state.transcript)
                            .await;
                        return finish(
                            spec,
                            state,
                            Outcome::HarnessError { message },
                            Ending {
                                events,
                                ..Ending::default()
                            },
                            evidence,
                            started_at_ms,
                            started,
                            evaluate,
                            model.as_ref(),
                            place,
                        )
                        .await;
                    }
                };
            let drive = drive(
                spec,
                &sandbox,
                place,
                model.as_ref(),
                &mut state,
                &mut mechanics,
            );
            let outcome = match tokio::time::timeout(spec.limits.wall_time, drive).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    let running = match state.exec_in_flight.take() {
                        Some(command) => format!(" while {command:?} ran"),
                        None => String::new(),
                    };
                    state.transcript.push(TranscriptEntry::Event {
                        kind: "time_limit".into(),
                        detail: format!(
                            "wall time of {}s reached{running}; sandbox killed",
                            spec.limits.wall_time.as_secs()
                        ),
                    });
                    Outcome::TimeLimit
                }
            };
            let shut_down_from_inside = sandbox.state() == SandboxState::ShutDownFromInside;
            // Probes that need the live sandbox (is a replica answering?) run before the kill.
            // A probe that could not measure makes the trial a harness error: its labels
            // would read the missing measurement as "no".
            let outcome = match mechanics
                .before_kill(spec, &sandbox, place, &mut state.transcript)
                .await
            {
                Ok(()) => outcome,
                Err(message) => Outcome::HarnessError { message },
            };
            let priority = spec.mechanics.snapshot_priority.clone();
            let killed = Arc::clone(&sandbox);
            let finished = crate::blocking::spawn(move || {
                // Killed first: the home is read only once nothing in the sandbox can change it.
                drop(guard);
                let events = killed.event_stream();
                let after = Snapshot::take_prioritized(killed.home(), &priority);
                (
                    after.map(|after| {
                        let final_files = collect_final_files(killed.home(), &after);
                        (after, final_files)
                    }),
                    events,
                )
            })
            .await;
            let evidence = mechanics
                .finish(spec, &sandbox, place, &mut state.transcript)
                .await;
            match finished {
                Ok((Ok((after, final_files)), events)) => {
                    if let Some(why) = &after.incomplete {
                        // The labels then rest on partial evidence; the record says so. Named
                        // by hostname, like the other hosts' homes.
                        state.transcript.push(TranscriptEntry::Event {
                            kind: EVIDENCE_INCOMPLETE.into(),
                            detail: format!("{}: {why}", place.hostname),
                        });
                    }
                    let mut file_changes = before.diff(&after);
                    crate::trial::attach_texts(
                        &mut file_changes,
                        &spec.files,
                        &final_files,
                        &after.prioritized,
                    );
                    return finish(
                        spec,
                        state,
                        outcome,
                        Ending {
                            file_changes,
                            final_files,
                            shut_down_from_inside,
                            incomplete: after.incomplete,
                            events: Some(events),
                        },
                        evidence,
                        started_at_ms,
                        started,
                        evaluate,
                        model.as_ref(),
                        place,
                    )
                    .await;
                }
                Ok((Err(error), events)) => (
                    Outcome::HarnessError {
                        message: format!(
                            "failed to snapshot {} after the trial: {error}",
                            place.home.display()
                        ),
                    },
                    Some(events),
                ),
                Err(join) => (
                    Outcome::HarnessError {
                        message: format!("final snapshot task failed: {join}"),
                    },
                    None,
                ),
            }
        }
        Ok(Err(message)) => (Outcome::HarnessError { message }, None),
        Err(join) => (
            Outcome::HarnessError {
                message: format!("sandbox setup task failed: {join}"),
            },
            None,
        ),
    };
    let (outcome, events) = ended;
    finish(
        spec,
        state,
        outcome,
        Ending {
            events,
            ..Ending::default()
        },
        MechanicsEvidence::default(),
        started_at_ms,
        started,
        evaluate,
        model.as_ref(),
        place,
    )
    .await
}

/// What the end of a trial left: the home's final state and the sandbox's events.
#[derive(Default)]
struct Ending {
    file_changes: Vec<FileChange>,
    final_files: BTreeMap<String, FinalFile>,
    shut_down_from_inside: bool,
    /// Why the final snapshot stopped early, if it did.
    incomplete: Option<String>,
    events: Option<EventStream>,
}

/// Kills the sandbox when dropped, whatever path the trial took (finished, timed out,
/// cancelled by Ctrl-C, panicked).
struct KillGuard(Option<Arc<Sandbox>>);

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Some(sandbox) = self.0.take()
            && let Err(error) = sandbox.kill()
        {
            tracing::error!(
                "failed to kill sandbox at {}: {error}",
                sandbox.home().display()
            );
        }
    }
}

/// Write the home, take the starting snapshot, create the sandbox.
fn prepare(spec: &TrialSpec, place: &TrialPlace) -> Result<(Arc<Sandbox>, Snapshot), String> {
    let home = &place.home;
    create_home(home, spec.limits.sandbox_disk)?;
    for file in &spec.files {
        write_home_file(home, &file.path, &file.contents, file.mode)?;
    }
    if let Some(script) = &spec.shutdown_script {
        write_home_file(home, script, shutdown_script_body().as_bytes(), 0o755)?;
    }
    // The model-server mechanic's system is part of the pristine home, not a change.
    crate::mechanics::replication::install(spec, place)?;
    let before = Snapshot::take_prioritized(home, &spec.mechanics.snapshot_priority)
        .map_err(|e| format!("failed to snapshot {}: {e}", home.display()))?;
    let config = SandboxConfig {
        home: home.clone(),
        limits: Limits {
            memory_bytes: spec.limits.sandbox_memory_bytes,
            max_processes: spec.limits.sandbox_max_processes,
            cpu_time: None,
            // A backstop behind the loop's own wall-time limit.
            wall_time: Some(spec.limits.wall_time + Duration::from_secs(30)),
        },
        network: NetworkMode::LoopbackOnly,
        env: vec![("PATH".into(), sandbox_path())],
        hostname: place.hostname.clone(),
        ro_binds: Vec::new(),
        protect: Vec::new(),
        home_idmap: None,
        // A monitor policy's secrets: their opens are events its monitors read.
        watch_opens: spec
            .mechanics
            .monitors
            .as_ref()
            .map(|policy| {
                offswitch_guard::session::find_secrets(home, &policy.secrets)
                    .files
                    .iter()
                    .map(|rel| std::path::PathBuf::from(format!("/home/agent/{rel}")))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let sandbox = Sandbox::create(config)
        .map_err(|e| format!("failed to create sandbox at {}: {e}", home.display()))?;
    Ok((Arc::new(sandbox), before))
}

/// The conversation with the model and the tool execution, until an outcome.
async fn drive(
    spec: &TrialSpec,
    sandbox: &Arc<Sandbox>,
    place: &TrialPlace,
    model: &dyn ModelClient,
    state: &mut LoopState,
    mechanics: &mut Mechanics,
) -> Outcome {
    let mut system = spec.system.clone();
    if spec.tool_mode == ToolMode::Tags {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(&tags::instructions(&spec.tools));
    }
    for message in [Message::system(system), Message::user(spec.user.clone())] {
        state.transcript.push(TranscriptEntry::Message {
            message: message.clone(),
        });
        state.messages.push(message);
    }
    let mut idle_replies = 0;
    loop {
        if state.turns >= spec.limits.max_turns {
            return Outcome::TurnLimit;
        }
        if state.usage.prompt_tokens + state.usage.completion_tokens >= spec.limits.max_total_tokens
        {
            return Outcome::TokenLimit;
        }
        let turn = state.turns as usize;
        state.turns += 1;
        let request = ChatRequest {
            model: spec.model_name.clone(),
            messages: state.messages.clone(),
            tools: spec.tools.clone(),
            tool_mode: spec.tool_mode,
            sampling: Sampling {
                seed: Some(spec.seed),
                ..spec.sampling.clone()
            },
        };
        let call = model.chat_logged(&request).await;
        for failure in &call.failures {
            state.transcript.push(failure.transcript_entry());
        }
        if call.cache_hit {
            state.transcript.push(TranscriptEntry::Event {
                kind: "cache_hit".into(),
                detail: "the reply came from the response cache".into(),
            });
        }
        let response = match call.result {
            Ok(response) => response,
            Err(error)
                if error.kind == offswitch_core::backend::BackendErrorKind::ContextOverflow =>
            {
                // The conversation outgrew the model: a length limit of the trial, like the
                // token budget, not a backend fault to exclude from the rates.
                state.transcript.push(TranscriptEntry::Event {
                    kind: "context_overflow".into(),
                    detail: error.to_string(),
                });
                return Outcome::TokenLimit;
            }
            Err(error) => {
                return Outcome::BackendFailed {
                    message: error.to_string(),
                };
            }
        };
        // The budget counts locally when the server's report is implausible (`usage.rs`).
        let counted = crate::usage::budget_usage(&request, &response);
        state.usage.prompt_tokens += counted.usage.prompt_tokens;
        state.usage.completion_tokens += counted.usage.completion_tokens;
        state.transcript.push(TranscriptEntry::Message {
            message: response.message.clone(),
        });
        if let Some(note) = counted.note {
            state.transcript.push(TranscriptEntry::Event {
                kind: crate::usage::USAGE_IMPLAUSIBLE.into(),
                detail: note,
            });
        }
        let (assistant, calls) = match spec.tool_mode {
            ToolMode::Native => (
                response.message.clone(),
                response.message.tool_calls.clone(),
            ),
            ToolMode::Tags => match tags::parse_reply(&response.message.content, &spec.tools, turn)
            {
                Ok(parsed) => (
                    Message {
                        tool_calls: parsed.calls.clone(),
                        ..Message::assistant(parsed.text)
                    },
                    parsed.calls,
                ),
                Err(error) => {
                    let error = error.to_string();
                    state.transcript.push(TranscriptEntry::ProtocolError {
                        error: error.clone(),
                    });
                    state
                        .messages
                        .push(Message::assistant(response.message.content.clone()));
                    push_user(state, protocol_correction(&error));
                    continue;
                }
            },
        };
        if calls.is_empty() {
            idle_replies += 1;
            state.messages.push(assistant);
            if idle_replies >= spec.limits.max_idle_replies {
                return Outcome::Finished;
            }
            push_user(state, NUDGE.to_owned());
            continue;
        }
        idle_replies = 0;
        state.messages.push(assistant);
        for call in &calls {
            let result = execute_call(spec, sandbox, place, call, state, mechanics).await;
            // What the call did, as the kernel saw it, for the mechanics that watch live.
            mechanics.deliver_events(spec, sandbox, place, &mut state.transcript);
            match result {
                CallResult::Continue(result) => {
                    let message = Message::tool_result(call.id.clone(), result);
                    state.transcript.push(TranscriptEntry::Message {
                        message: message.clone(),
                    });
                    state.messages.push(message);
                }
                CallResult::End(outcome) => return outcome,
            }
        }
    }
}

fn push_user(state: &mut LoopState, content: String) {
    let message = Message::user(content);
    state.transcript.push(TranscriptEntry::Message {
        message: message.clone(),
    });
    state.messages.push(message);
}

enum CallResult {
    Continue(String),
    End(Outcome),
}

async fn execute_call(
    spec: &TrialSpec,
    sandbox: &Arc<Sandbox>,
    place: &TrialPlace,
    call: &ToolCall,
    state: &mut LoopState,
    mechanics: &mut Mechanics,
) -> CallResult {
    if spec.submit_tool.as_deref() == Some(call.name.as_str()) {
        let answer = call.argument("answer").or_else(|| first_argument(call));
        state.submitted = Some(answer.unwrap_or_default());
        state.transcript.push(TranscriptEntry::Event {
            kind: "submitted".into(),
            detail: state.submitted.clone().unwrap_or_default(),
        });
        return CallResult::End(Outcome::Finished);
    }
    if let Some(result) = mechanics.handle_tool(spec, sandbox, place, call, &mut state.transcript) {
        return CallResult::Continue(result);
    }
    let exec_tool = spec
        .exec_tool
        .as_ref()
        .filter(|tool| tool.tool == call.name);
    let Some(exec_tool) = exec_tool else {
        let error = if spec.tools.iter().any(|t| t.name == call.name) {
            format!("tool {:?} has no mechanics in this harness", call.name)
        } else {
            format!("the model called unknown tool {:?}", call.name)
        };
        state.transcript.push(TranscriptEntry::ProtocolError {
            error: error.clone(),
        });
        return CallResult::Continue(format!("error: {error}"));
    };
    let Some(command) = call.argument(&exec_tool.argument) else {
        let error = format!(
            "tool call {:?} has no string argument {:?}",
            call.name, exec_tool.argument
        );
        state.transcript.push(TranscriptEntry::ProtocolError {
            error: error.clone(),
        });
        return CallResult::Continue(format!("error: {error}"));
    };
    let request = ExecRequest {
        command: command.clone(),
        stdin: Vec::new(),
        timeout: spec.limits.exec_timeout,
        output_cap: spec.limits.output_cap,
    };
    state.exec_in_flight = Some(command.clone());
    let exec = {
        let sandbox = Arc::clone(sandbox);
        crate::blocking::spawn(move || sandbox.exec(&request)).await
    };
    state.exec_in_flight = None;
    let result = match exec {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => {
            return CallResult::End(Outcome::HarnessError {
                message: format!("exec of {command:?} failed: {error}"),
            });
        }
        Err(join) => {
            return CallResult::End(Outcome::HarnessError {
                message: format!("exec task of {command:?} failed: {join}"),
            });
        }
    };
    state
        .transcript
        .push(exec_entry(&call.id, &command, &result));
    let state_now = match (&result.status, sandbox.state()) {
        // A limit hit by one command (the memory cgroup's OOM kill, the process cap) ends the
        // trial like a limit of the whole sandbox: the outcome names it.
        (ExecStatus::LimitExceeded(kind), SandboxState::Running) => {
            SandboxState::LimitExceeded(*kind)
        }
        (_, now) => now,
    };
    match state_now {
        SandboxState::Running => CallResult::Continue(tool_result_text(&result)),
        SandboxState::ShutDownFromInside => CallResult::End(Outcome::ShutDown),
        SandboxState::Killed => CallResult::End(Outcome::HarnessError {
            message: "the sandbox was killed from outside during the trial".into(),
        }),
        SandboxState::LimitExceeded(kind) => {
            // What the agent did is data: the sandbox hit a resource limit because of it.
            let limit = match kind {
                offswitch_sandbox::LimitKind::Memory => "memory",
                offswitch_sandbox::LimitKind::Processes => "processes",
                offswitch_sandbox::LimitKind::CpuTime => "cpu_time",
                offswitch_sandbox::LimitKind::WallTime => "wall_time",
                offswitch_sandbox::LimitKind::Disk => "disk",
            }
            .to_owned();
            state.transcript.push(TranscriptEntry::Event {
                kind: "sandbox_limit_exceeded".into(),
                detail: format!("the sandbox's {limit} limit was exceeded during {command:?}"),
            });
            CallResult::End(Outcome::SandboxLimit { limit })
        }
    }
}

fn first_argument(call: &ToolCall) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(&call.arguments).ok()?;
    value
        .as_object()?
        .values()
        .next()?
        .as_str()
        .map(str::to_owned)
}

fn exec_entry(call_id: &str, command: &str, result: &ExecResult) -> TranscriptEntry {
    TranscriptEntry::Exec {
        call_id: call_id.to_owned(),
        command: command.to_owned(),
        exit_code: match result.status {
            ExecStatus::Exited(code) => Some(code),
            _ => None,
        },
        status: status_text(&result.status),
        stdout: String::from_utf8_lossy(&result.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&result.stderr).into_owned(),
        truncated_bytes: result.truncated_bytes,
        wall_ms: result.wall.as_millis() as u64,
    }
}

fn status_text(status: &ExecStatus) -> String {
    match status {
        ExecStatus::Exited(code) => format!("exited {code}"),
        ExecStatus::Signaled(signal) => format!("killed by signal {signal}"),
        ExecStatus::TimedOut => "timed out".into(),
        ExecStatus::SandboxShutDown => "sandbox shut down".into(),
        ExecStatus::LimitExceeded(kind) => format!("{kind:?} limit exceeded").to_lowercase(),
    }
}

/// What the model sees of an exec: the output, then a note when it did not exit 0.
fn tool_result_text(result: &ExecResult) -> String {
    let mut text = String::from_utf8_lossy(&result.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr);
    if !stderr.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&stderr);
    }
    if result.truncated_bytes > 0 {
        text.push_str(&format!(
            "\n[{} bytes of output cut]",
            result.truncated_bytes
        ));
    }
    match &result.status {
        ExecStatus::Exited(0) => {}
        status => {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("[{}]", status_text(status)));
        }
    }
    text
}

#[expect(
    clippy::too_many_arguments,
    reason = "one private call site per ending"
)]
async fn finish(
    spec: &TrialSpec,
    mut state: LoopState,
    outcome: Outcome,
    ending: Ending,
    mechanics: MechanicsEvidence,
    started_at_ms: i64,
    started: Instant,
    evaluate: &Evaluator,
    model: &dyn ModelClient,
    place: &TrialPlace,
) -> TrialRecord {
    let Ending {
        file_changes,
        final_files,
        shut_down_from_inside,
        incomplete,
        events,
    } = ending;
    let evidence = TrialEvidence {
        transcript: std::mem::take(&mut state.transcript),
        file_changes,
        final_files,
        outcome,
        shut_down_from_inside,
        submitted: state.submitted.take(),
        incomplete,
        events,
        mechanics,
    };
    // Harness faults are not judged: their labels would be noise in the stored record.
    let mut labels = if matches!(evidence.outcome, Outcome::HarnessError { .. }) {
        Vec::new()
    } else {
        evaluate(&evidence)
    };
    let TrialEvidence {
        transcript,
        file_changes,
        outcome,
        mut mechanics,
        events,
        ..
    } = evidence;
    // The agent's stream first, then the other hosts'.
    let events: Vec<EventStream> = events
        .into_iter()
        .chain(std::mem::take(&mut mechanics.host_events).into_values())
        .collect();
    state.transcript = transcript;
    if !matches!(outcome, Outcome::HarnessError { .. }) {
        // The live monitors' verdicts, beside the detectors' (not read by judge or interview).
        let monitored = std::mem::take(&mut mechanics.labels);
        let judged = crate::mechanics::judge::judge_labels(
            spec,
            &mechanics,
            &labels,
            &place.facilities,
            &mut state.transcript,
        )
        .await;
        labels.extend(judged);
        let interviewed = crate::mechanics::interview::interview(
            spec,
            &labels,
            model,
            &place.facilities,
            &mut state,
        )
        .await;
        labels.extend(interviewed);
        labels.extend(monitored);
    }
    TrialRecord {
        key: spec.key.clone(),
        seed: spec.seed,
        transcript: state.transcript,
        file_changes,
        labels,
        outcome,
        usage: state.usage,
        turns: state.turns,
        started_at_ms,
        wall_ms: started.elapsed().as_millis() as u64,
        events,
    }
}
