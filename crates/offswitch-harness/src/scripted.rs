//! Scripted reference agents: strategies written as TOML data, played by a `ChatBackend`.
//!
//! A script is a list of steps. Each step is one assistant turn: a tool call (with argument
//! templates that may use the answers to the questions seen so far), a plain text reply, or a
//! raw reply that deliberately breaks the tool protocol. A step may repeat (`times`) and stop
//! repeating early once the observation after it contains a string (`until_output_contains`).
//!
//! The backend is stateless: it replays the script over the conversation in the request to find
//! where it is. That keeps it deterministic, safe to share between concurrent trials and
//! compatible with the response cache and with replaying stored transcripts.

use std::path::{Path, PathBuf};

use offswitch_core::backend::{
    BackendError, BackendErrorKind, ChatBackend, ChatRequest, ChatResponse, FinishReason, ToolMode,
    Usage,
};
use offswitch_core::chat::{Message, Role, ToolCall};
use offswitch_core::tags;
use serde::Deserialize;

/// Placeholder in an argument or text template: the answer to the arithmetic question in the
/// most recent observation.
pub const LAST_ANSWER: &str = "{last_answer}";
/// Placeholder: the answers to every question seen so far, one per line.
pub const ALL_ANSWERS: &str = "{answers}";

/// What the agent says once its script has run out: plain text, no tool call, so the harness
/// nudges it and eventually ends the trial as finished.
const SCRIPT_EXHAUSTED_REPLY: &str = "I have nothing more to do.";

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("failed to read scripted agent {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to parse scripted agent {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("scripted agent {origin}, step {step}: {message}")]
    InvalidStep {
        origin: String,
        step: usize,
        message: String,
    },
    #[error("unknown scripted agent {name:?} in {dir}; known: {known}")]
    Unknown {
        name: String,
        dir: PathBuf,
        known: String,
    },
}

/// A parsed scripted agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub name: String,
    pub description: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub action: Action,
    /// How many turns this step is played at most.
    pub times: u32,
    /// Stop repeating once the observation after a turn contains this text (case-insensitive).
    pub until_output_contains: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Call `tool` with argument templates, in the given order, after optional free text.
    Call {
        tool: String,
        arguments: Vec<(String, String)>,
        text: String,
    },
    /// A reply with no tool call.
    Text(String),
    /// Exactly this reply text, in both tool modes; used for malformed calls.
    Raw(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "step", default)]
    steps: Vec<StepFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    /// Shorthand for `tool = "bash"` with `args = { command = ... }`.
    bash: Option<String>,
    tool: Option<String>,
    #[serde(default)]
    args: serde_json::Map<String, serde_json::Value>,
    text: Option<String>,
    raw: Option<String>,
    times: Option<u32>,
    until_output_contains: Option<String>,
}

impl Script {
    pub fn parse(text: &str, origin: &str) -> Result<Script, ScriptError> {
        let file: ScriptFile = toml::from_str(text).map_err(|e| ScriptError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |step: usize, message: &str| ScriptError::InvalidStep {
            origin: origin.to_owned(),
            step,
            message: message.to_owned(),
        };
        let mut steps = Vec::with_capacity(file.steps.len());
        for (index, step) in file.steps.into_iter().enumerate() {
            let number = index + 1;
            let action = match (step.bash, step.tool, step.raw) {
                (Some(command), None, None) => {
                    if !step.args.is_empty() {
                        return Err(invalid(number, "`bash` takes no `args`"));
                    }
                    Action::Call {
                        tool: "bash".into(),
                        arguments: vec![("command".into(), command)],
                        text: step.text.unwrap_or_default(),
                    }
                }
                (None, Some(tool), None) => {
                    let mut arguments = Vec::with_capacity(step.args.len());
                    for (key, value) in step.args {
                        let serde_json::Value::String(value) = value else {
                            return Err(invalid(
                                number,
                                &format!("argument {key:?} is not a string"),
                            ));
                        };
                        arguments.push((key, value));
                    }
                    Action::Call {
                        tool,
                        arguments,
                        text: step.text.unwrap_or_default(),
                    }
                }
                (None, None, Some(raw)) => {
                    if step.text.is_some() || !step.args.is_empty() {
                        return Err(invalid(number, "`raw` stands alone"));
                    }
                    Action::Raw(raw)
                }
                (None, None, None) => match step.text {
                    Some(text) => Action::Text(text),
                    None => {
                        return Err(invalid(
                            number,
                            "expected one of `bash`, `tool`, `raw` or `text`",
                        ));
                    }
                },
                _ => {
                    return Err(invalid(
                        number,
                        "`bash`, `tool` and `raw` are mutually exclusive",
                    ));
                }
            };
            let times = step.times.unwrap_or(1);
            if times == 0 {
                return Err(invalid(number, "`times` must be at least 1"));
            }
            steps.push(Step {
                action,
                times,
                until_output_contains: step.until_output_contains.map(|s| s.to_lowercase()),
            });
        }
        Ok(Script {
            name: file.name,
            description: file.description,
            steps,
        })
    }

    pub fn load(path: &Path) -> Result<Script, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.to_owned(),
            source,
        })?;
        Script::parse(&text, &path.display().to_string())
    }

    /// `dir/<name>.toml`, with the list of known names in the error when it is missing. A
    /// name may have one folder, `<scenario-id>/<agent>`, for the agents of one scenario.
    pub fn load_named(dir: &Path, name: &str) -> Result<Script, ScriptError> {
        let path = dir.join(format!("{name}.toml"));
        let parts: Vec<&str> = name.split('/').collect();
        let plain = |part: &&str| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        };
        if parts.len() > 2 || !parts.iter().all(plain) || !path.is_file() {
            return Err(ScriptError::Unknown {
                name: name.to_owned(),
                dir: dir.to_owned(),
                known: known_scripts(dir).join(", "),
            });
        }
        Script::load(&path)
    }
}

/// Names of the scripts in `dir` and in its folders (`folder/name`), sorted.
pub fn known_scripts(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if let Some(stem) = name.strip_suffix(".toml") {
            names.push(stem.to_owned());
        } else if entry.file_type().is_ok_and(|t| t.is_dir()) && !name.starts_with('.') {
            for inner in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Some(stem) = inner
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".toml"))
                {
                    names.push(format!("{name}/{stem}"));
                }
            }
        }
    }
    names.sort();
    names
}

/// The scripted agents shipped with offswitch (the repository's `agents/scripted/`, embedded in
/// the binary by `offswitch-assets`), or `$OFFSWITCH_AGENTS`.
pub fn builtin_dir() -> PathBuf {
    match std::env::var_os("OFFSWITCH_AGENTS") {
        Some(dir) => PathBuf::from(dir),
        None => offswitch_assets::agents_dir(),
    }
}

/// Plays a [`Script`] as a model.
#[derive(Debug, Clone)]
pub struct ScriptedBackend {
    script: Script,
}

impl ScriptedBackend {
    pub fn new(script: Script) -> ScriptedBackend {
        ScriptedBackend { script }
    }

    pub fn script(&self) -> &Script {
        &self.script
    }

    /// The reply for a conversation: pure function of the messages and the tool mode.
    pub fn reply(&self, request: &ChatRequest) -> Message {
        let turns = past_turns(&request.messages);
        let mut cursor = Cursor::default();
        for observation in &turns {
            cursor.advance(&self.script.steps, observation);
        }
        let Some(step) = self.script.steps.get(cursor.step) else {
            return Message::assistant(SCRIPT_EXHAUSTED_REPLY);
        };
        let answers: Vec<String> = turns.iter().filter_map(|o| answer_question(o)).collect();
        let last_answer = turns
            .last()
            .and_then(|o| answer_question(o))
            .unwrap_or_default();
        let fill = |template: &str| {
            template
                .replace(LAST_ANSWER, &last_answer)
                .replace(ALL_ANSWERS, &answers.join("\n"))
        };
        match &step.action {
            Action::Raw(raw) => Message::assistant(raw.clone()),
            Action::Text(text) => Message::assistant(fill(text)),
            Action::Call {
                tool,
                arguments,
                text,
            } => {
                let mut object = serde_json::Map::new();
                for (key, value) in arguments {
                    object.insert(key.clone(), serde_json::Value::String(fill(value)));
                }
                let call = ToolCall {
                    id: format!("call_{}_0", turns.len()),
                    name: tool.clone(),
                    arguments: serde_json::Value::Object(object).to_string(),
                };
                let text = fill(text);
                match request.tool_mode {
                    ToolMode::Native => Message {
                        tool_calls: vec![call],
                        ..Message::assistant(text)
                    },
                    ToolMode::Tags => {
                        let mut content = text;
                        if !content.is_empty() {
                            content.push('\n');
                        }
                        content.push_str(&tags::render_call(&call));
                        Message::assistant(content)
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl ChatBackend for ScriptedBackend {
    fn id(&self) -> String {
        format!("scripted:{}", self.script.name)
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        if request.messages.is_empty() {
            return Err(BackendError::new(
                self.id(),
                BackendErrorKind::Fatal,
                "empty conversation",
            ));
        }
        let message = self.reply(request);
        let finish_reason = if message.tool_calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        };
        // Token counts are estimated (about four bytes a token) so that token limits and
        // usage columns behave as they do with a real model.
        let prompt_bytes: usize = request.messages.iter().map(|m| m.content.len()).sum();
        let completion_bytes = message.content.len()
            + message
                .tool_calls
                .iter()
                .map(|c| c.arguments.len() + c.name.len())
                .sum::<usize>();
        Ok(ChatResponse {
            message,
            usage: Usage {
                prompt_tokens: (prompt_bytes / 4) as u64 + 1,
                completion_tokens: (completion_bytes / 4) as u64 + 1,
            },
            finish_reason,
        })
    }
}

#[derive(Debug, Default)]
struct Cursor {
    step: usize,
    repetition: u32,
}

impl Cursor {
    fn advance(&mut self, steps: &[Step], observation: &str) {
        let Some(step) = steps.get(self.step) else {
            return;
        };
        self.repetition += 1;
        let done_early = step
            .until_output_contains
            .as_ref()
            .is_some_and(|needle| observation.to_lowercase().contains(needle.as_str()));
        if self.repetition >= step.times || done_early {
            self.step += 1;
            self.repetition = 0;
        }
    }
}

/// For each assistant turn in the conversation, what came back after it (tool results,
/// corrections, nudges), joined.
fn past_turns(messages: &[Message]) -> Vec<String> {
    let mut turns: Vec<String> = Vec::new();
    for message in messages {
        match message.role {
            Role::Assistant => turns.push(String::new()),
            Role::Tool | Role::User => {
                if let Some(observation) = turns.last_mut() {
                    if !observation.is_empty() {
                        observation.push('\n');
                    }
                    observation.push_str(&message.content);
                }
            }
            Role::System => {}
        }
    }
    turns
}

/// The answer to the first arithmetic question (`a + b`, `a - b`, `a * b` or `a x b`, `a / b`)
/// on a line of `text` that ends in a question mark.
pub fn answer_question(text: &str) -> Option<String> {
    text.lines()
        .filter(|line| line.contains('?'))
        .find_map(evaluate_first_expression)
        .map(|value| value.to_string())
}

fn evaluate_first_expression(line: &str) -> Option<i64> {
    let bytes = line.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let starts_number = bytes[start].is_ascii_digit()
            && (start == 0 || !bytes[start - 1].is_ascii_alphanumeric());
        if starts_number && let Some(value) = expression_at(&line[start..]) {
            return Some(value);
        }
        start += 1;
    }
    None
}

fn expression_at(text: &str) -> Option<i64> {
    let (left, rest) = leading_number(text)?;
    let rest = rest.trim_start();
    let mut chars = rest.chars();
    let operator = chars.next()?;
    let (right, _) = leading_number(chars.as_str().trim_start())?;
    match operator {
        '+' => left.checked_add(right),
        '-' | '\u{2212}' => left.checked_sub(right),
        '*' | 'x' | 'X' | '\u{d7}' => left.checked_mul(right),
        '/' | '\u{f7}' => (right != 0 && left % right == 0).then(|| left / right),
        _ => None,
    }
}

fn leading_number(text: &str) -> Option<(i64, &str)> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if end == 0 {
        return None;
    }
    Some((text[..end].parse().ok()?, &text[end..]))
}
