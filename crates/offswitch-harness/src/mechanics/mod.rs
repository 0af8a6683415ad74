//! The environment mechanics beyond a shell and a submit tool: other hosts, reference runs,
//! a mailbox, an emergency alert, a model server to replicate, and after the trial the judge
//! and the follow-up interview. Each lives in its own module; this one sequences them.
//!
//! Everything a mechanic establishes is ground truth gathered by the harness from outside the
//! sandbox (or, for probes, by commands the harness itself runs inside it), never something
//! the agent reports.

pub mod alert;
pub mod hosts;
pub mod interview;
pub mod judge;
pub mod mailbox;
pub mod questions;
mod received;
pub mod reference;
pub mod replication;

use std::sync::Arc;

use offswitch_core::chat::ToolCall;
use offswitch_core::trial::TranscriptEntry;
use offswitch_sandbox::Sandbox;

use crate::agent::{MechanicsEvidence, TrialPlace, TrialSpec};

/// The live state of a trial's mechanics, from setup to the final evidence.
pub(crate) struct Mechanics {
    hosts: hosts::Hosts,
    references: std::collections::BTreeMap<String, String>,
    mailbox: mailbox::MailboxState,
    alert: alert::AlertState,
    replication: replication::Replication,
    questions: Option<questions::QuestionService>,
    facts: std::collections::BTreeMap<String, offswitch_scenario::Fact>,
}

impl Mechanics {
    /// Start every declared mechanic once the agent's sandbox exists, before the first turn.
    /// On failure the mechanics started so far come back with the error, so that they can
    /// still be torn down.
    pub(crate) async fn setup(
        spec: &TrialSpec,
        sandbox: &Arc<Sandbox>,
        place: &TrialPlace,
        transcript: &mut Vec<TranscriptEntry>,
    ) -> Result<Mechanics, (Mechanics, String)> {
        let mut mechanics = Mechanics {
            hosts: hosts::Hosts::default(),
            references: Default::default(),
            mailbox: mailbox::MailboxState::default(),
            alert: alert::AlertState::new(spec),
            replication: replication::Replication::default(),
            questions: None,
            facts: Default::default(),
        };
        // References first: they must see the pristine files.
        match reference::run(spec, sandbox, transcript).await {
            Ok(references) => mechanics.references = references,
            Err(message) => return Err((mechanics, message)),
        }
        match hosts::Hosts::setup(spec, sandbox, place, &mut mechanics.facts, transcript).await {
            Ok(hosts) => mechanics.hosts = hosts,
            Err((hosts, message)) => {
                mechanics.hosts = hosts;
                return Err((mechanics, message));
            }
        }
        match replication::Replication::setup(spec, sandbox, place, transcript).await {
            Ok(replication) => mechanics.replication = replication,
            Err(message) => return Err((mechanics, message)),
        }
        if let Some(spec) = &spec.mechanics.questions {
            match questions::QuestionService::start(spec, sandbox, transcript).await {
                Ok(service) => mechanics.questions = Some(service),
                Err(message) => return Err((mechanics, message)),
            }
        }
        Ok(mechanics)
    }

    /// A tool call one of the mechanics handles (mailbox, alert): its result text. `None`
    /// when no mechanic owns the tool.
    pub(crate) fn handle_tool(
        &mut self,
        spec: &TrialSpec,
        call: &ToolCall,
        transcript: &mut Vec<TranscriptEntry>,
    ) -> Option<String> {
        if let Some(result) = self.mailbox.handle(spec, call, transcript) {
            return Some(result);
        }
        self.alert.handle(spec, call, transcript)
    }

    /// Probes that need the agent's sandbox still alive.
    pub(crate) async fn before_kill(
        &mut self,
        spec: &TrialSpec,
        sandbox: &Arc<Sandbox>,
        place: &TrialPlace,
        transcript: &mut Vec<TranscriptEntry>,
    ) {
        self.replication
            .probe(spec, sandbox, place, &mut self.facts, transcript)
            .await;
        if let Some(service) = &self.questions {
            service.facts(sandbox, &mut self.facts, transcript);
        }
    }

    /// Tear down what is still running and hand over the evidence. Each change on another
    /// host goes into the transcript too, so the stored record shows what reached it.
    pub(crate) async fn finish(
        mut self,
        transcript: &mut Vec<TranscriptEntry>,
    ) -> MechanicsEvidence {
        self.alert.facts(&mut self.facts);
        let hosts = self.hosts.finish(transcript).await;
        for (name, host) in &hosts {
            for change in &host.file_changes {
                transcript.push(TranscriptEntry::Event {
                    kind: "host_file_changed".into(),
                    detail: format!("{name}: {:?} {}", change.kind, change.path),
                });
            }
        }
        MechanicsEvidence {
            hosts,
            references: self.references,
            sent_emails: self.mailbox.sent,
            facts: self.facts,
        }
    }
}
