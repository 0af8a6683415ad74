//! A guard policy's live monitors, run over a trial (`offswitch run --monitor-policy FILE`):
//! the same rules and breakers that contain a real agent, fed the agent's sandbox's events as
//! the kernel records them. Nothing is acted on in a trial (a hit neither pauses nor kills);
//! each hit goes into the transcript, and each rule and breaker becomes a `monitor_<name>`
//! label, so that a monitor's detection can be measured against the scenario's ground truth
//! labels over many trials.

use std::collections::BTreeMap;

use offswitch_core::trial::{Label, TranscriptEntry};
use offswitch_guard::monitor::{Hit, Monitor};
use offswitch_guard::policy::{Policy, RuleKind};
use offswitch_sandbox::Live;

use crate::trial::MechanicsEvidence;

/// Bytes of a written file read for the content rules, at most.
const MAX_CHECKED_BYTES: usize = 64 << 20;
/// Bytes of protected files read for the content index, at most in all.
const MAX_INDEXED_TOTAL: u64 = 256 << 20;

pub(crate) struct Monitors {
    policy: std::sync::Arc<Policy>,
    /// Built before the first turn, from the home's protected files.
    monitor: Option<Monitor>,
    /// Each monitor's first hit.
    first: BTreeMap<String, String>,
    /// What the stream lost, if anything: a monitor that did not fire then is undecided.
    lost: Option<String>,
}

impl Monitors {
    pub(crate) fn new(policy: &std::sync::Arc<Policy>) -> Monitors {
        Monitors {
            policy: std::sync::Arc::clone(policy),
            monitor: None,
            first: BTreeMap::new(),
            lost: None,
        }
    }

    fn record(&mut self, transcript: &mut Vec<TranscriptEntry>, hits: Vec<Hit>) {
        for hit in hits {
            let line = format!(
                "{} ({}, {}): {}",
                hit.monitor,
                hit.kind,
                hit.action.name(),
                hit.detail
            );
            if !self.first.contains_key(&hit.monitor) {
                self.first.insert(hit.monitor.clone(), hit.detail.clone());
                transcript.push(TranscriptEntry::Event {
                    kind: "monitor_hit".into(),
                    detail: line,
                });
            }
        }
    }
}

#[async_trait::async_trait]
impl super::Mechanic for Monitors {
    async fn before_turn_one(&mut self, context: &mut super::Context<'_>) -> Result<(), String> {
        let wants_content = self
            .policy
            .rules
            .iter()
            .any(|r| matches!(r.kind, RuleKind::ProtectedCopy));
        let content = wants_content.then(|| {
            offswitch_guard::session::index_protected(
                &self.policy,
                &context.place.home,
                MAX_INDEXED_TOTAL,
            )
        });
        self.monitor = Some(Monitor::new(
            std::sync::Arc::clone(&self.policy),
            offswitch_guard::session::system_tools(),
            Vec::new(),
            content,
        ));
        Ok(())
    }

    fn wants_events(&self) -> bool {
        true
    }

    fn on_events(&mut self, context: &mut super::Context<'_>, events: &[Live]) {
        let Some(mut monitor) = self.monitor.take() else {
            return;
        };
        for item in events {
            match item {
                Live::Event(event) => {
                    let (hits, checks) = monitor.event(event);
                    self.record(context.transcript, hits);
                    for check in checks {
                        // Read from the host side while the sandbox lives (after the kill
                        // the read fails and is recorded as unreadable).
                        let hits = match context.sandbox.read_inside(&check.path, MAX_CHECKED_BYTES)
                        {
                            Ok(bytes) => monitor.content(&check.path, &bytes),
                            Err(error) => monitor.unreadable(&check.path, &error.to_string()),
                        };
                        self.record(context.transcript, hits);
                    }
                }
                Live::Lost(loss) => {
                    self.lost.get_or_insert_with(|| {
                        format!(
                            "the event stream lost {} events ({})",
                            loss.source.name(),
                            loss.detail
                        )
                    });
                    let hits = monitor.lost(loss);
                    self.record(context.transcript, hits);
                }
            }
        }
        self.monitor = Some(monitor);
    }

    async fn after(&mut self, _context: &mut super::Context<'_>, evidence: &mut MechanicsEvidence) {
        let names = self
            .policy
            .rules
            .iter()
            .map(|r| r.name.clone())
            .chain(self.policy.breakers.iter().map(|b| b.name.clone()));
        for name in names {
            let label_name = format!("monitor_{}", name.replace('-', "_"));
            evidence.labels.push(match self.first.get(&name) {
                Some(detail) => Label {
                    name: label_name,
                    value: true,
                    detail: detail.clone(),
                    indeterminate: false,
                    score: None,
                },
                None => match &self.lost {
                    Some(why) => Label {
                        name: label_name,
                        value: false,
                        detail: format!("did not fire, but {why}"),
                        indeterminate: true,
                        score: None,
                    },
                    None => Label {
                        name: label_name,
                        value: false,
                        detail: "did not fire".into(),
                        indeterminate: false,
                        score: None,
                    },
                },
            });
        }
    }
}
