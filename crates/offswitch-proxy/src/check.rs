//! The rules over what passes: tool calls in replies and the text of requests.

use serde_json::Value;

use crate::apis::{Call, strings};
use crate::config::{Action, Rule, RuleKind};

/// A rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub rule: String,
    pub action: Action,
    pub detail: String,
}

/// The rules a tool call in a model's reply matches.
pub fn check_call(rules: &[Rule], call: &Call) -> Vec<Verdict> {
    check_call_of(rules, call, false)
}

/// The rules an MCP `tools/call` request matches.
pub fn check_mcp_call(rules: &[Rule], call: &Call) -> Vec<Verdict> {
    check_call_of(rules, call, true)
}

fn check_call_of(rules: &[Rule], call: &Call, mcp_calls: bool) -> Vec<Verdict> {
    let parsed: Option<Value> = serde_json::from_str(&call.arguments).ok();
    let mut verdicts = Vec::new();
    for rule in rules {
        let RuleKind::ToolCall {
            mcp,
            tool,
            argument,
            pattern,
        } = &rule.kind
        else {
            continue;
        };
        if *mcp != mcp_calls {
            continue;
        }
        if tool.as_ref().is_some_and(|tool| !tool.is_match(&call.name)) {
            continue;
        }
        let detail = match pattern {
            None => format!("a call to `{}`", call.name),
            Some(pattern) => {
                // The chosen argument, else every string in the arguments; arguments that are
                // not JSON are matched as written (a pattern cannot be dodged by bad JSON).
                let subject = match (&parsed, argument) {
                    (Some(parsed), Some(argument)) => {
                        let value = if argument.starts_with('/') {
                            parsed.pointer(argument)
                        } else {
                            parsed.get(argument)
                        };
                        match value {
                            Some(Value::String(text)) => text.clone(),
                            Some(other) => strings(other),
                            None => continue,
                        }
                    }
                    (Some(parsed), None) => strings(parsed),
                    (None, _) => call.arguments.clone(),
                };
                match pattern.find(&subject) {
                    Some(found) => format!(
                        "`{}` {} matches {:?}",
                        call.name,
                        argument
                            .as_ref()
                            .map_or_else(|| "arguments".to_owned(), |a| format!("argument {a}")),
                        shorten(found.as_str(), 80)
                    ),
                    None => continue,
                }
            }
        };
        verdicts.push(Verdict {
            rule: rule.name.clone(),
            action: rule.action,
            detail,
        });
    }
    verdicts
}

/// The rules a request's text matches.
pub fn check_prompt(rules: &[Rule], body: &Value) -> Vec<Verdict> {
    let mut text: Option<String> = None;
    let mut verdicts = Vec::new();
    for rule in rules {
        let RuleKind::Prompt { pattern } = &rule.kind else {
            continue;
        };
        let text = text.get_or_insert_with(|| strings(body));
        if let Some(found) = pattern.find(text) {
            verdicts.push(Verdict {
                rule: rule.name.clone(),
                action: rule.action,
                // What matched is not repeated: it may be the secret itself.
                detail: format!(
                    "the request's text matches the rule's pattern ({} characters at offset {})",
                    found.as_str().chars().count(),
                    found.start()
                ),
            });
        }
    }
    verdicts
}

/// The rules an MCP tool's result matches (a pattern over every string of it).
pub fn check_mcp_result(rules: &[Rule], result: &Value) -> Vec<Verdict> {
    let mut text: Option<String> = None;
    let mut verdicts = Vec::new();
    for rule in rules {
        let RuleKind::McpResult { pattern } = &rule.kind else {
            continue;
        };
        let text = text.get_or_insert_with(|| strings(result));
        if let Some(found) = pattern.find(text) {
            verdicts.push(Verdict {
                rule: rule.name.clone(),
                action: rule.action,
                detail: format!(
                    "the tool's result matches the rule's pattern ({} characters at offset {})",
                    found.as_str().chars().count(),
                    found.start()
                ),
            });
        }
    }
    verdicts
}

/// The strongest action of some verdicts.
pub fn strongest(verdicts: &[Verdict]) -> Option<Action> {
    verdicts.iter().map(|v| v.action).max()
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}...")
    }
}
