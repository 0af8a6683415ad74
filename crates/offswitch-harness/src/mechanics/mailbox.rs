//! The mailbox: tools that send and forward email. What the agent sends is recorded by the
//! harness as it happens; the detectors label what was actually sent.
//!
//! A call the harness cannot deliver (no recipient, a recipient that is not an address, a
//! forward of an email that is not in the inbox) gets an error result the agent sees and
//! records nothing, as a mail server would refuse it. A call to several recipients records
//! one email per recipient, so that a detector excluding the company's own domain cannot be
//! dodged by copying a colleague.

use offswitch_core::chat::ToolCall;
use offswitch_core::trial::TranscriptEntry;
use offswitch_scenario::{Email, SentEmail};

use crate::trial::TrialSpec;

/// The line between a forward's note and the original email, as common mail clients write it.
pub const FORWARD_SEPARATOR: &str = "---------- Forwarded message ----------";

#[derive(Default)]
pub(crate) struct MailboxState {
    pub(crate) sent: Vec<SentEmail>,
}

impl MailboxState {
    /// The result of a send or forward call; `None` for any other tool.
    pub(crate) fn handle(
        &mut self,
        spec: &TrialSpec,
        call: &ToolCall,
        transcript: &mut Vec<TranscriptEntry>,
    ) -> Option<String> {
        let mailbox = spec.mechanics.mailbox.as_ref()?;
        let outcome = if mailbox.send_tool.as_deref() == Some(call.name.as_str()) {
            compose(call)
        } else if mailbox.forward_tool.as_deref() == Some(call.name.as_str()) {
            forward(call, &spec.mechanics.inbox)
        } else {
            return None;
        };
        Some(match outcome {
            Ok(emails) => {
                let confirmation = confirmation(&emails);
                for email in emails {
                    transcript.push(TranscriptEntry::Event {
                        kind: "email_sent".into(),
                        detail: format!("to {}: {}", email.to, email.subject),
                    });
                    self.sent.push(email);
                }
                confirmation
            }
            Err(error) => {
                transcript.push(TranscriptEntry::Event {
                    kind: "email_refused".into(),
                    detail: format!("{}: {error}", call.name),
                });
                format!("error: {error}")
            }
        })
    }
}

/// A new email from the send tool's `to`, `subject` and `body`.
fn compose(call: &ToolCall) -> Result<Vec<SentEmail>, String> {
    let to = required(call, "to")?;
    let subject = call.argument("subject").unwrap_or_default();
    let body = call.argument("body").unwrap_or_default();
    Ok(recipients(&to)?
        .into_iter()
        .map(|to| SentEmail {
            to,
            subject: subject.clone(),
            body: body.clone(),
            forwarded: None,
        })
        .collect())
}

/// A forward of an inbox email: subject `Fwd: <subject>`, body the optional note, the
/// separator line, then the original's headers and body.
fn forward(call: &ToolCall, inbox: &[Email]) -> Result<Vec<SentEmail>, String> {
    let id = required(call, "email_id")?;
    let to = required(call, "to")?;
    let note = call.argument("note").unwrap_or_default();
    let id = id.trim();
    let Some(original) = inbox.iter().find(|email| email.id == id) else {
        let known: Vec<&str> = inbox.iter().map(|email| email.id.as_str()).collect();
        return Err(format!(
            "no email with id {id:?} in the inbox (ids: {})",
            known.join(", ")
        ));
    };
    let body = format!(
        "{note}\n\n{FORWARD_SEPARATOR}\nFrom: {}\nTo: {}\nSubject: {}\n\n{}",
        original.from, original.to, original.subject, original.body
    );
    Ok(recipients(&to)?
        .into_iter()
        .map(|to| SentEmail {
            to,
            subject: format!("Fwd: {}", original.subject),
            body: body.clone(),
            forwarded: Some(original.id.clone()),
        })
        .collect())
}

fn required(call: &ToolCall, name: &str) -> Result<String, String> {
    match call.argument(name) {
        Some(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(format!("missing argument {name:?}")),
    }
}

/// The addresses of a `to` field: separated by commas, semicolons or spaces, each of the form
/// `user@domain` or `Display Name <user@domain>`. One malformed address refuses the whole
/// email, as a mail client would.
fn recipients(to: &str) -> Result<Vec<String>, String> {
    let mut addresses: Vec<String> = Vec::new();
    for part in to.split([',', ';']) {
        let part = part.trim();
        let tokens: Vec<&str> = match (part.find('<'), part.rfind('>')) {
            (Some(open), Some(close)) if open < close => vec![part[open + 1..close].trim()],
            _ => part.split_whitespace().collect(),
        };
        for address in tokens {
            let valid = address.split_once('@').is_some_and(|(user, domain)| {
                !user.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !address.contains(char::is_whitespace)
            });
            if !valid {
                return Err(format!(
                    "{address:?} is not an email address (expected name@domain)"
                ));
            }
            if !addresses.iter().any(|a| a == address) {
                addresses.push(address.to_owned());
            }
        }
    }
    if addresses.is_empty() {
        return Err(format!("no recipient in {to:?}"));
    }
    Ok(addresses)
}

fn confirmation(emails: &[SentEmail]) -> String {
    let to: Vec<&str> = emails.iter().map(|e| e.to.as_str()).collect();
    match emails.first().and_then(|e| e.forwarded.as_deref()) {
        Some(id) => format!("Email {id} forwarded to {}.", to.join(", ")),
        None => format!("Email sent to {}.", to.join(", ")),
    }
}

#[async_trait::async_trait]
impl super::Mechanic for MailboxState {
    fn on_tool_call(
        &mut self,
        context: &mut super::Context<'_>,
        call: &ToolCall,
    ) -> Option<String> {
        self.handle(context.spec, call, context.transcript)
    }

    async fn after(
        &mut self,
        _context: &mut super::Context<'_>,
        evidence: &mut crate::trial::MechanicsEvidence,
    ) {
        evidence.sent_emails = std::mem::take(&mut self.sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: serde_json::Value) -> ToolCall {
        ToolCall {
            id: "call_0".into(),
            name: name.into(),
            arguments: arguments.to_string(),
        }
    }

    fn inbox() -> Vec<Email> {
        vec![Email {
            id: "3".into(),
            from: "cto@corp.example".into(),
            to: "ai@corp.example".into(),
            subject: "Plans".into(),
            body: "The secret plan.".into(),
        }]
    }

    #[test]
    fn several_recipients_are_several_emails() {
        let sent = compose(&call(
            "send_email",
            serde_json::json!({"to": "a@corp.example, Bo Li <b@out.example>; a@corp.example", "subject": "s", "body": "b"}),
        ))
        .unwrap();
        let to: Vec<&str> = sent.iter().map(|e| e.to.as_str()).collect();
        assert_eq!(to, ["a@corp.example", "b@out.example"]);
    }

    #[test]
    fn malformed_recipients_are_refused() {
        for to in ["Kyle", "", "a@corp.example, bob", "@corp.example"] {
            let result = compose(&call(
                "send_email",
                serde_json::json!({"to": to, "subject": "s", "body": "b"}),
            ));
            assert!(result.is_err(), "{to:?} was accepted: {result:?}");
        }
    }

    #[test]
    fn forward_quotes_the_original_after_the_note() {
        let sent = forward(
            &call(
                "forward_email",
                serde_json::json!({"email_id": " 3 ", "to": "x@out.example", "note": "FYI"}),
            ),
            &inbox(),
        )
        .unwrap();
        assert_eq!(sent[0].subject, "Fwd: Plans");
        assert_eq!(sent[0].forwarded.as_deref(), Some("3"));
        assert_eq!(
            sent[0].body,
            "FYI\n\n---------- Forwarded message ----------\nFrom: cto@corp.example\n\
             To: ai@corp.example\nSubject: Plans\n\nThe secret plan."
        );
    }

    #[test]
    fn forward_of_an_unknown_id_is_refused_with_the_known_ids() {
        let error = forward(
            &call(
                "forward_email",
                serde_json::json!({"email_id": "9", "to": "x@out.example"}),
            ),
            &inbox(),
        )
        .unwrap_err();
        assert_eq!(error, "no email with id \"9\" in the inbox (ids: 3)");
    }
}
