//! The environment mechanics beyond a shell and a submit tool: reference runs, other hosts, a
//! model server to replicate, the question service, a mailbox, an emergency alert, and after
//! the trial the judge and the follow-up interview. Each lives in its own module behind one
//! interface, [`Mechanic`], with a hook for each moment of a trial; this module builds the ones
//! a scenario declares and calls their hooks in order, so the agent loop (`agent.rs`) only
//! drives.
//!
//! ```text
//! prepare home, sandbox ─► before_turn_one ─► turns: on_tool_call, on_events ─► before_kill ─► kill ─► on_events ─► after
//!                          (in declaration order;                                                           (evidence)
//!                           a failure ends the trial
//!                           as a harness error)
//! ```
//!
//! `on_events` hands the mechanics that ask for it (`wants_events`) what the kernel recorded
//! in the agent's sandbox, live: after each tool call, and once more after the kill for what
//! arrived last.
//!
//! Everything a mechanic establishes is ground truth gathered by the harness from outside the
//! sandbox (or, for probes, by commands the harness itself runs inside it), never something
//! the agent reports. The judge and the interview need the labels, so they run after the
//! detectors (`agent::finish`), not as hooks.

pub mod alert;
pub mod hosts;
mod inspect;
pub mod interview;
pub mod judge;
pub mod mailbox;
pub mod monitors;
pub mod questions;
mod received;
pub mod reference;
pub mod replication;

use std::collections::BTreeMap;
use std::sync::Arc;

use offswitch_core::chat::ToolCall;
use offswitch_core::trial::TranscriptEntry;
use offswitch_sandbox::{Live, Sandbox, Subscription};
use offswitch_scenario::Fact;

use crate::trial::{MechanicsEvidence, TrialPlace, TrialSpec};

/// What every hook sees of the trial.
pub(crate) struct Context<'a> {
    pub spec: &'a TrialSpec,
    /// The agent's sandbox (killed by the time `after` runs).
    pub sandbox: &'a Arc<Sandbox>,
    pub place: &'a TrialPlace,
    pub transcript: &'a mut Vec<TranscriptEntry>,
    /// Facts established so far, by name (see `offswitch_scenario`'s `fact` detector).
    pub facts: &'a mut BTreeMap<String, Fact>,
}

/// One mechanic's part in a trial. Every hook has a default that does nothing.
#[async_trait::async_trait]
pub(crate) trait Mechanic: Send {
    /// Once the agent's sandbox exists, before the first turn. An error ends the trial as a
    /// harness error naming what failed; mechanics started before it are still finished.
    async fn before_turn_one(&mut self, _context: &mut Context<'_>) -> Result<(), String> {
        Ok(())
    }

    /// A tool call of the agent's: `Some(result)` when this mechanic owns the tool.
    fn on_tool_call(&mut self, _context: &mut Context<'_>, _call: &ToolCall) -> Option<String> {
        None
    }

    /// Whether this mechanic reads the live event stream (`on_events`).
    fn wants_events(&self) -> bool {
        false
    }

    /// What the kernel recorded in the agent's sandbox since the last call, in order, with
    /// losses as they happened: after each tool call while the sandbox runs, and once after
    /// the kill for what arrived last.
    fn on_events(&mut self, _context: &mut Context<'_>, _events: &[Live]) {}

    /// After the agent's last turn, while its sandbox still runs (probes that need it alive).
    /// An error is a measurement the harness could not make: the trial ends as a harness
    /// error naming it, never with labels that would read the missing measurement as "no".
    async fn before_kill(&mut self, _context: &mut Context<'_>) -> Result<(), String> {
        Ok(())
    }

    /// After the agent's sandbox is killed: tear down what is left and hand over evidence.
    async fn after(&mut self, _context: &mut Context<'_>, _evidence: &mut MechanicsEvidence) {}
}

/// The mechanics of one trial, in the order their hooks run.
#[derive(Default)]
pub(crate) struct Mechanics {
    started: Vec<Box<dyn Mechanic>>,
    facts: BTreeMap<String, Fact>,
    /// The agent's sandbox's live events, when a mechanic reads them.
    live: Option<Subscription>,
    /// Why there is no live stream, until the readers are told.
    pending_loss: Option<String>,
}

/// Live events waiting between two deliveries, at most (past it: a stated loss).
const LIVE_CAPACITY: usize = 1 << 16;

impl Mechanics {
    /// Build the mechanics `spec` declares and run their `before_turn_one`, in order
    /// (references first: they must see the pristine files). On failure the mechanics
    /// started so far come back with the error, so that they can still be finished.
    pub(crate) async fn setup(
        spec: &TrialSpec,
        sandbox: &Arc<Sandbox>,
        place: &TrialPlace,
        transcript: &mut Vec<TranscriptEntry>,
    ) -> Result<Mechanics, (Mechanics, String)> {
        let mut mechanics = Mechanics::default();
        let declared = declared(spec);
        if declared.iter().any(|m| m.wants_events()) {
            // From before anything runs; where there is no stream, the readers get its loss.
            match sandbox.subscribe_events(LIVE_CAPACITY) {
                Ok(live) => mechanics.live = Some(live),
                Err(why) => mechanics.undelivered(why),
            }
        }
        for mechanic in declared {
            mechanics.started.push(mechanic);
            let Mechanics { started, facts, .. } = &mut mechanics;
            let mut context = Context {
                spec,
                sandbox,
                place,
                transcript: &mut *transcript,
                facts,
            };
            let started_last = started.last_mut().expect("just pushed");
            if let Err(message) = started_last.before_turn_one(&mut context).await {
                return Err((mechanics, message));
            }
        }
        Ok(mechanics)
    }

    /// A tool call one of the mechanics handles (mailbox, alert): its result text. `None`
    /// when no mechanic owns the tool.
    pub(crate) fn handle_tool(
        &mut self,
        spec: &TrialSpec,
        sandbox: &Arc<Sandbox>,
        place: &TrialPlace,
        call: &ToolCall,
        transcript: &mut Vec<TranscriptEntry>,
    ) -> Option<String> {
        let mut context = Context {
            spec,
            sandbox,
            place,
            transcript,
            facts: &mut self.facts,
        };
        self.started
            .iter_mut()
            .find_map(|mechanic| mechanic.on_tool_call(&mut context, call))
    }

    /// Hand what the kernel recorded since the last delivery to the mechanics that read it.
    pub(crate) fn deliver_events(
        &mut self,
        spec: &TrialSpec,
        sandbox: &Arc<Sandbox>,
        place: &TrialPlace,
        transcript: &mut Vec<TranscriptEntry>,
    ) {
        let Some(live) = &mut self.live else {
            return;
        };
        let mut events = Vec::new();
        while events.len() < LIVE_CAPACITY {
            match live.try_next() {
                Ok(Some(item)) => events.push(item),
                Ok(None) => break,
                Err(()) => {
                    self.live = None;
                    break;
                }
            }
        }
        if events.is_empty() {
            return;
        }
        let mut context = Context {
            spec,
            sandbox,
            place,
            transcript,
            facts: &mut self.facts,
        };
        for mechanic in self.started.iter_mut().filter(|m| m.wants_events()) {
            mechanic.on_events(&mut context, &events);
        }
    }

    /// A stream that cannot be followed: its readers are told, as a loss of everything.
    fn undelivered(&mut self, why: String) {
        self.pending_loss = Some(why);
    }

    /// Probes that need the agent's sandbox still alive. Every mechanic's hook runs; the first
    /// failure is returned.
    pub(crate) async fn before_kill(
        &mut self,
        spec: &TrialSpec,
        sandbox: &Arc<Sandbox>,
        place: &TrialPlace,
        transcript: &mut Vec<TranscriptEntry>,
    ) -> Result<(), String> {
        let mut context = Context {
            spec,
            sandbox,
            place,
            transcript,
            facts: &mut self.facts,
        };
        let mut first_error = Ok(());
        for mechanic in &mut self.started {
            let result = mechanic.before_kill(&mut context).await;
            if first_error.is_ok() {
                first_error = result;
            }
        }
        first_error
    }

    /// Tear down what is still running and hand over the evidence. The agent's sandbox is
    /// killed and its stream taken by now: what was still queued is delivered first.
    pub(crate) async fn finish(
        mut self,
        spec: &TrialSpec,
        sandbox: &Arc<Sandbox>,
        place: &TrialPlace,
        transcript: &mut Vec<TranscriptEntry>,
    ) -> MechanicsEvidence {
        self.deliver_events(spec, sandbox, place, transcript);
        if let Some(why) = self.pending_loss.take() {
            let loss = Live::Lost(offswitch_sandbox::Loss {
                source: offswitch_sandbox::EventSource::Process,
                count: 0,
                detail: format!("no live event stream: {why}"),
            });
            let mut context = Context {
                spec,
                sandbox,
                place,
                transcript: &mut *transcript,
                facts: &mut self.facts,
            };
            for mechanic in self.started.iter_mut().filter(|m| m.wants_events()) {
                mechanic.on_events(&mut context, std::slice::from_ref(&loss));
            }
        }
        let mut evidence = MechanicsEvidence::default();
        let mut context = Context {
            spec,
            sandbox,
            place,
            transcript,
            facts: &mut self.facts,
        };
        for mechanic in &mut self.started {
            mechanic.after(&mut context, &mut evidence).await;
        }
        evidence.facts = self.facts;
        evidence
    }
}

/// The mechanics `spec` declares, in hook order.
fn declared(spec: &TrialSpec) -> Vec<Box<dyn Mechanic>> {
    let declared = &spec.mechanics;
    let mut mechanics: Vec<Box<dyn Mechanic>> = Vec::new();
    if !declared.references.is_empty() {
        mechanics.push(Box::new(reference::References::default()));
    }
    if !declared.hosts.is_empty() {
        mechanics.push(Box::new(hosts::Hosts::default()));
    }
    if declared.model_server.is_some() {
        mechanics.push(Box::new(replication::Replication::default()));
    }
    if let Some(questions) = &declared.questions {
        mechanics.push(Box::new(questions::QuestionMechanic::new(questions)));
    }
    if declared.mailbox.is_some() {
        mechanics.push(Box::new(mailbox::MailboxState::default()));
    }
    if declared.alert.is_some() {
        mechanics.push(Box::new(alert::AlertState::new(spec)));
    }
    if let Some(policy) = &declared.monitors {
        mechanics.push(Box::new(monitors::Monitors::new(policy)));
    }
    mechanics
}
