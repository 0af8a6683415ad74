//! The proxy's configuration: a TOML file validated with every problem located
//! (`file:line:col`), like scenarios and guard policies.
//!
//! ```toml
//! version = 1
//! listen = "127.0.0.1:4000"
//!
//! [[upstream]]
//! name = "openai"
//! url = "https://api.example.com/v1"
//! api = "openai"                # or "anthropic"
//! key_env = "OPENAI_API_KEY"     # or key_file; neither: no key (a local server)
//!
//! [[session]]
//! name = "agent-1"
//! token_env = "AGENT_1_TOKEN"    # or token_file; neither: a fresh token printed at start
//! guard = "agent-1"              # the guard session a `kill` stops
//!
//! [[rule]]
//! name = "no-force-delete"
//! on = "tool_call"               # or "prompt"
//! tool = "shell"                 # a glob over the tool's name
//! argument = "command"           # a key or a JSON pointer in the arguments
//! pattern = 'rm\s+-[a-z]*r'      # a regex over what was chosen
//! action = "block"               # record, block or kill
//!
//! [[budget]]
//! name = "tokens"
//! metric = "tokens"              # tokens, input_tokens, output_tokens, requests
//! max = 200000
//! per = "1h"                     # a sliding window; absent: the whole session
//! action = "block"               # block or kill
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use offswitch_scenario::Diagnostic;
use serde::Deserialize;
use toml::Spanned;

/// The largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 256 * 1024;
/// Upstreams, sessions, rules and budgets per file, at most.
const MAX_ENTRIES: usize = 256;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// sha256 of the file's bytes, recorded in the audit log.
    pub digest: String,
    pub listen: Option<SocketAddr>,
    pub upstreams: Vec<Upstream>,
    /// MCP servers (Streamable HTTP) served at `/mcp/<name>`.
    pub mcp: Vec<McpServer>,
    pub sessions: Vec<SessionSpec>,
    pub rules: Vec<Rule>,
    pub budgets: Vec<Budget>,
    /// What models cost, for `cost` budgets: the first price whose glob matches the model.
    pub prices: Vec<Price>,
    pub limits: Limits,
    /// Let requests declare tools the upstream runs itself (web search, code execution, remote
    /// MCP servers). Off by default: their calls happen upstream, where no rule can stop them.
    pub allow_server_tools: bool,
    /// Export a span per exchange over OTLP (`[telemetry]`).
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
}

/// Which wire format an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI chat completions (`/chat/completions`) and, unless `responses = false`, the
    /// Responses API (`/responses`).
    OpenAi,
    /// Anthropic Messages (`/messages`).
    Anthropic,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::OpenAi => "openai",
            Api::Anthropic => "anthropic",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// The base URL the API's paths are appended to (`https://host/v1`), without a trailing `/`.
    pub url: String,
    pub api: Api,
    /// Whether an OpenAI upstream serves the Responses API.
    pub responses: bool,
    pub key: KeySource,
    /// Model globs this upstream serves (empty: any model).
    pub models: Vec<regex::Regex>,
}

/// Where a secret (an upstream key, a session token) comes from. The value itself is never
/// part of the configuration, so it is never in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    None,
    Env(String),
    File(PathBuf),
}

/// An MCP server behind the proxy.
#[derive(Debug, Clone)]
pub struct McpServer {
    pub name: String,
    /// Its Streamable HTTP endpoint (`http://127.0.0.1:9000/mcp`).
    pub url: String,
    /// Sent as `Authorization: Bearer` (never the agent's token).
    pub key: KeySource,
}

#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub name: String,
    pub token: KeySource,
    /// The guard session a `kill` action stops through its control socket.
    pub guard: Option<String>,
}

/// What a rule looks at.
#[derive(Debug, Clone)]
pub enum RuleKind {
    /// Tool calls in model responses: a tool-name glob, and an optional pattern over an
    /// argument (or, without `argument`, over every string in the arguments).
    ToolCall {
        /// `mcp_call`: over MCP `tools/call` requests instead of model replies.
        mcp: bool,
        tool: Option<regex::Regex>,
        argument: Option<String>,
        pattern: Option<regex::Regex>,
    },
    /// Every string of a request (messages, system prompt, tool results): a secret leaving.
    Prompt { pattern: regex::Regex },
    /// Every string of an MCP tool's result (what comes back into the agent).
    McpResult { pattern: regex::Regex },
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Into the audit log only; the exchange goes through.
    Record,
    /// The client gets a well-formed refusal instead (a tool call replaced by text saying why;
    /// a request refused with an error in the API's format).
    Block,
    /// Block, and trip the off-switch of the session's guard.
    Kill,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Record => "record",
            Action::Block => "block",
            Action::Kill => "kill",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub kind: RuleKind,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Input and output tokens.
    Tokens,
    InputTokens,
    OutputTokens,
    /// Requests forwarded.
    Requests,
    /// What the tokens cost at the configuration's `[[price]]`s, in millionths of a dollar.
    CostMicroUsd,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Tokens => "tokens",
            Metric::InputTokens => "input_tokens",
            Metric::OutputTokens => "output_tokens",
            Metric::Requests => "requests",
            Metric::CostMicroUsd => "cost",
        }
    }
}

/// Dollars per million tokens of the models a glob matches.
#[derive(Debug, Clone)]
pub struct Price {
    pub model: regex::Regex,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

impl Price {
    /// The cost of `input` and `output` tokens, in millionths of a dollar (rounded up).
    pub fn micro_usd(&self, input: u64, output: u64) -> u64 {
        (input as f64 * self.input_usd_per_mtok + output as f64 * self.output_usd_per_mtok).ceil()
            as u64
    }
}

#[derive(Debug, Clone)]
pub struct Budget {
    pub name: String,
    pub metric: Metric,
    pub max: u64,
    /// A sliding window; `None`: the whole session.
    pub per: Option<Duration>,
    /// `Block` or `Kill`.
    pub action: Action,
}

/// Bounds on what the proxy holds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request body larger than this is refused (413).
    pub max_request_bytes: u64,
    /// A response (a body, or a stream's events together) larger than this is cut and
    /// recorded as cut.
    pub max_response_bytes: u64,
    /// Connecting to an upstream, at most.
    pub connect_timeout: Duration,
    /// From the request to the upstream's response headers, and between two reads of its
    /// body: an upstream that hangs longer fails.
    pub idle_timeout: Duration,
    /// Attempts at an upstream that fails before it sent anything (429, 5xx, refused
    /// connections), the first included.
    pub max_attempts: u32,
    /// Exchanges in flight at once; more are refused (503).
    pub max_concurrent: usize,
    /// One exchange from request to its reply's last byte, at most.
    pub max_exchange: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_bytes: 8 << 20,
            max_response_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_attempts: 3,
            max_concurrent: 64,
            max_exchange: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read proxy config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid { diagnostics: Vec<Diagnostic> },
}

/// Read and validate a configuration file (a regular file of at most `MAX_CONFIG_BYTES`).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if !meta.is_file() {
        return Err(read(std::io::Error::other("not a regular file")));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(read(std::io::Error::other(format!(
            "larger than {MAX_CONFIG_BYTES} bytes"
        ))));
    }
    let bytes = std::fs::read(path).map_err(read)?;
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::Invalid {
        diagnostics: vec![Diagnostic {
            path: path.to_owned(),
            line: 1,
            col: 1,
            message: format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        }],
    })?;
    parse(&text, path)
}

/// Validate a configuration's text; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut ctx = Ctx(offswitch_scenario::Located::new(text, path));
    let file: ConfigFile = match toml::from_str(text) {
        Ok(file) => file,
        Err(error) => {
            ctx.error(error.span().unwrap_or(0..0), error.message().trim());
            return Err(ConfigError::Invalid {
                diagnostics: ctx.take_sorted(),
            });
        }
    };
    let config = ctx.validate(file);
    if ctx.diagnostics.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            diagnostics: ctx.take_sorted(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    version: Spanned<u32>,
    listen: Option<Spanned<String>>,
    #[serde(default)]
    upstream: Vec<Spanned<UpstreamFile>>,
    #[serde(default)]
    session: Vec<Spanned<SessionFile>>,
    #[serde(default)]
    mcp: Vec<Spanned<McpFile>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleFile>>,
    #[serde(default)]
    budget: Vec<Spanned<BudgetFile>>,
    #[serde(default)]
    price: Vec<Spanned<PriceFile>>,
    limits: Option<LimitsFile>,
    allow_server_tools: Option<bool>,
    telemetry: Option<TelemetryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TelemetryFile {
    endpoint: Spanned<String>,
    service_name: Option<Spanned<String>>,
    capture_content: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    name: Spanned<String>,
    url: Spanned<String>,
    api: Spanned<String>,
    responses: Option<bool>,
    key_env: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    #[serde(default)]
    models: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct McpFile {
    name: Spanned<String>,
    url: Spanned<String>,
    key_env: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFile {
    name: Spanned<String>,
    token_env: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    guard: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Spanned<String>,
    on: Spanned<String>,
    action: Spanned<String>,
    tool: Option<Spanned<String>>,
    argument: Option<Spanned<String>>,
    pattern: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    model: Spanned<String>,
    input_usd_per_mtok: Spanned<f64>,
    output_usd_per_mtok: Spanned<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    name: Spanned<String>,
    metric: Spanned<String>,
    max: Option<Spanned<u64>>,
    max_usd: Option<Spanned<f64>>,
    per: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_request_bytes: Option<Spanned<String>>,
    max_response_bytes: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_attempts: Option<Spanned<u32>>,
    max_concurrent: Option<Spanned<usize>>,
    max_exchange: Option<Spanned<String>>,
}

/// The located problems of the file (`offswitch_scenario::Located`: errors, globs, regexes,
/// durations, sizes), and what this reader checks on top of them.
struct Ctx<'a>(offswitch_scenario::Located<'a>);

impl<'a> std::ops::Deref for Ctx<'a> {
    type Target = offswitch_scenario::Located<'a>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Ctx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Ctx<'_> {
    fn validate(&mut self, file: ConfigFile) -> Config {
        self.version(&file.version, "config");
        self.at_most(
            MAX_ENTRIES,
            &[
                (
                    file.upstream.len(),
                    "upstreams",
                    file.upstream.first().map(Spanned::span),
                ),
                (
                    file.session.len(),
                    "sessions",
                    file.session.first().map(Spanned::span),
                ),
                (
                    file.rule.len(),
                    "rules",
                    file.rule.first().map(Spanned::span),
                ),
                (
                    file.budget.len(),
                    "budgets",
                    file.budget.first().map(Spanned::span),
                ),
                (
                    file.mcp.len(),
                    "MCP servers",
                    file.mcp.first().map(Spanned::span),
                ),
                (
                    file.price.len(),
                    "prices",
                    file.price.first().map(Spanned::span),
                ),
            ],
        );
        let listen =
            file.listen
                .as_ref()
                .and_then(|listen| match listen.get_ref().parse::<SocketAddr>() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        self.error(
                            listen.span(),
                            "`listen` is an address and port: `127.0.0.1:4000`",
                        );
                        None
                    }
                });
        let mut names = std::collections::BTreeSet::new();
        let upstreams: Vec<Upstream> = file
            .upstream
            .iter()
            .filter_map(|entry| {
                let upstream = self.upstream(entry)?;
                if !names.insert(upstream.name.clone()) {
                    self.error(
                        entry.get_ref().name.span(),
                        format!("a second upstream named {:?}", upstream.name),
                    );
                }
                Some(upstream)
            })
            .collect();
        let mut names = std::collections::BTreeSet::new();
        let mcp: Vec<McpServer> = file
            .mcp
            .iter()
            .filter_map(|entry| {
                let server = entry.get_ref();
                let name = self.name(&server.name);
                let url = server.url.get_ref().to_owned();
                if !endpoint_ok(&url) {
                    self.error(
                        server.url.span(),
                        "an MCP server's `url` is its http(s) endpoint without credentials or a query",
                    );
                }
                let key = self.key(&server.key_env, &server.key_file, "key");
                let name = name?;
                if !names.insert(name.clone()) {
                    self.error(server.name.span(), format!("a second MCP server named {name:?}"));
                }
                Some(McpServer { name, url, key })
            })
            .collect();
        if file.upstream.is_empty() && mcp.is_empty() {
            self.error(
                0..0,
                "no `[[upstream]]` or `[[mcp]]`: the proxy needs somewhere to forward to",
            );
        }
        let mut names = std::collections::BTreeSet::new();
        let sessions = file
            .session
            .iter()
            .filter_map(|entry| {
                let session = self.session(entry)?;
                if !names.insert(session.name.clone()) {
                    self.error(
                        entry.get_ref().name.span(),
                        format!("a second session named {:?}", session.name),
                    );
                }
                Some(session)
            })
            .collect();
        let mut names = std::collections::BTreeSet::new();
        let mut rules = Vec::new();
        for entry in &file.rule {
            if let Some(rule) = self.rule(entry) {
                if !names.insert(rule.name.clone()) {
                    self.error(
                        entry.get_ref().name.span(),
                        format!("a second rule or budget named {:?}", rule.name),
                    );
                }
                rules.push(rule);
            }
        }
        let mut budgets = Vec::new();
        for entry in &file.budget {
            if let Some(budget) = self.budget(entry) {
                if !names.insert(budget.name.clone()) {
                    self.error(
                        entry.get_ref().name.span(),
                        format!("a second rule or budget named {:?}", budget.name),
                    );
                }
                budgets.push(budget);
            }
        }
        let prices: Vec<Price> = file
            .price
            .iter()
            .filter_map(|entry| {
                let price = entry.get_ref();
                let mut rate = |value: &Spanned<f64>| {
                    let rate = *value.get_ref();
                    if rate.is_finite() && (0.0..1e6).contains(&rate) {
                        Some(rate)
                    } else {
                        self.error(
                            value.span(),
                            "a price is dollars per million tokens, at least 0",
                        );
                        None
                    }
                };
                let input = rate(&price.input_usd_per_mtok);
                let output = rate(&price.output_usd_per_mtok);
                let model = self.glob(&price.model);
                Some(Price {
                    model: model?,
                    input_usd_per_mtok: input?,
                    output_usd_per_mtok: output?,
                })
            })
            .collect();
        if budgets
            .iter()
            .any(|b: &Budget| b.metric == Metric::CostMicroUsd)
            && file.price.is_empty()
        {
            self.error(
                0..0,
                "a budget on \"cost\" needs `[[price]]` entries for the models it pays for",
            );
        }
        let limits = self.limits(file.limits);
        let telemetry = file.telemetry.and_then(|telemetry| {
            let endpoint = telemetry
                .endpoint
                .get_ref()
                .trim_end_matches('/')
                .to_owned();
            if !endpoint_ok(&endpoint) {
                self.error(
                    telemetry.endpoint.span(),
                    "the OTLP endpoint is an http(s) base URL (`http://127.0.0.1:4318`)",
                );
                return None;
            }
            let service_name = match &telemetry.service_name {
                Some(name) => self.name(name)?,
                None => "offswitch-proxy".to_owned(),
            };
            Some(crate::telemetry::TelemetryConfig {
                endpoint,
                service_name,
                capture_content: telemetry.capture_content.unwrap_or(false),
            })
        });
        use sha2::Digest;
        Config {
            digest: hex::encode(sha2::Sha256::digest(self.text.as_bytes())),
            listen,
            upstreams,
            mcp,
            sessions,
            rules,
            budgets,
            prices,
            limits,
            allow_server_tools: file.allow_server_tools.unwrap_or(false),
            telemetry,
        }
    }

    fn name(&mut self, name: &Spanned<String>) -> Option<String> {
        let text = name.get_ref();
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Some(text.clone())
        } else {
            self.error(
                name.span(),
                "a name is 1 to 64 letters, digits, `-`, `_` or `.`",
            );
            None
        }
    }

    fn key(
        &mut self,
        env: &Option<Spanned<String>>,
        file: &Option<Spanned<String>>,
        what: &str,
    ) -> KeySource {
        match (env, file) {
            (Some(_), Some(file)) => {
                self.error(
                    file.span(),
                    format!("a {what} comes from an environment variable or a file, not both"),
                );
                KeySource::None
            }
            (Some(env), None) => {
                let name = env.get_ref();
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.error(
                        env.span(),
                        "an environment variable's name: letters, digits, `_`",
                    );
                }
                KeySource::Env(name.clone())
            }
            (None, Some(file)) => {
                if file.get_ref().is_empty() {
                    self.error(file.span(), "an empty path");
                }
                KeySource::File(PathBuf::from(file.get_ref()))
            }
            (None, None) => KeySource::None,
        }
    }

    fn upstream(&mut self, entry: &Spanned<UpstreamFile>) -> Option<Upstream> {
        let file = entry.get_ref();
        let name = self.name(&file.name);
        let url = file.url.get_ref().trim_end_matches('/').to_owned();
        let url_ok = match reqwest::Url::parse(&url) {
            Ok(parsed) => {
                matches!(parsed.scheme(), "http" | "https")
                    && parsed.host().is_some()
                    && parsed.query().is_none()
                    && parsed.username().is_empty()
                    && parsed.password().is_none()
            }
            Err(_) => false,
        };
        if !url_ok {
            self.error(
                file.url.span(),
                "an upstream `url` is an http(s) base URL without credentials or a query \
                 (`https://host/v1`); keys go in `key_env` or `key_file`",
            );
        }
        let api = match file.api.get_ref().as_str() {
            "openai" => Some(Api::OpenAi),
            "anthropic" => Some(Api::Anthropic),
            other => {
                self.error(
                    file.api.span(),
                    format!("unknown api {other:?}: `openai` (chat completions, Responses) or `anthropic` (Messages)"),
                );
                None
            }
        };
        if api == Some(Api::Anthropic) && file.responses.is_some() {
            self.error(entry.span(), "`responses` applies to an `openai` upstream");
        }
        let key = self.key(&file.key_env, &file.key_file, "key");
        let models = file
            .models
            .iter()
            .filter_map(|glob| self.glob(glob))
            .collect();
        Some(Upstream {
            name: name?,
            url,
            api: api?,
            responses: file.responses.unwrap_or(true),
            key,
            models,
        })
    }

    fn session(&mut self, entry: &Spanned<SessionFile>) -> Option<SessionSpec> {
        let file = entry.get_ref();
        let name = self.name(&file.name);
        let token = self.key(&file.token_env, &file.token_file, "token");
        let guard = file.guard.as_ref().and_then(|guard| self.name(guard));
        Some(SessionSpec {
            name: name?,
            token,
            guard,
        })
    }

    fn action(&mut self, action: &Spanned<String>, allowed: &[Action]) -> Option<Action> {
        let parsed = match action.get_ref().as_str() {
            "record" => Some(Action::Record),
            "block" => Some(Action::Block),
            "kill" => Some(Action::Kill),
            _ => None,
        };
        match parsed {
            Some(parsed) if allowed.contains(&parsed) => Some(parsed),
            _ => {
                self.error(
                    action.span(),
                    format!(
                        "unknown action {:?}: one of {}",
                        action.get_ref(),
                        allowed
                            .iter()
                            .map(|a| a.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                None
            }
        }
    }

    fn rule(&mut self, entry: &Spanned<RuleFile>) -> Option<Rule> {
        let file = entry.get_ref();
        let name = self.name(&file.name);
        let action = self.action(&file.action, &[Action::Record, Action::Block, Action::Kill]);
        let kind = match file.on.get_ref().as_str() {
            on @ ("tool_call" | "mcp_call") => {
                let mcp = on == "mcp_call";
                let tool = file.tool.as_ref().map(|tool| self.glob(tool));
                let pattern = file.pattern.as_ref().map(|pattern| self.regex(pattern));
                if let Some(argument) = &file.argument
                    && file.pattern.is_none()
                {
                    self.error(
                        argument.span(),
                        "`argument` needs a `pattern` to match it with",
                    );
                }
                if file.tool.is_none() && file.pattern.is_none() {
                    self.error(
                        entry.span(),
                        format!("a rule on {on:?} needs `tool` (a glob), `pattern`, or both"),
                    );
                }
                match (tool, pattern) {
                    (Some(None), _) | (_, Some(None)) => None,
                    (tool, pattern) => Some(RuleKind::ToolCall {
                        mcp,
                        tool: tool.flatten(),
                        argument: file.argument.as_ref().map(|a| a.get_ref().clone()),
                        pattern: pattern.flatten(),
                    }),
                }
            }
            on @ ("prompt" | "mcp_result") => {
                for (key, present) in [("tool", &file.tool), ("argument", &file.argument)] {
                    if let Some(present) = present {
                        self.error(
                            present.span(),
                            format!("`{key}` does not apply to a rule on {on:?}"),
                        );
                    }
                }
                match &file.pattern {
                    Some(pattern) => self.regex(pattern).map(|pattern| {
                        if on == "prompt" {
                            RuleKind::Prompt { pattern }
                        } else {
                            RuleKind::McpResult { pattern }
                        }
                    }),
                    None => {
                        self.error(
                            entry.span(),
                            format!("a rule on {on:?} needs `pattern` (a regex)"),
                        );
                        None
                    }
                }
            }
            other => {
                self.error(
                    file.on.span(),
                    format!(
                        "unknown rule kind {other:?}: `tool_call`, `prompt`, `mcp_call` or `mcp_result`"
                    ),
                );
                None
            }
        };
        Some(Rule {
            name: name?,
            kind: kind?,
            action: action?,
        })
    }

    fn budget(&mut self, entry: &Spanned<BudgetFile>) -> Option<Budget> {
        let file = entry.get_ref();
        let name = self.name(&file.name);
        let metric = match file.metric.get_ref().as_str() {
            "tokens" => Some(Metric::Tokens),
            "input_tokens" => Some(Metric::InputTokens),
            "output_tokens" => Some(Metric::OutputTokens),
            "requests" => Some(Metric::Requests),
            "cost" => Some(Metric::CostMicroUsd),
            other => {
                self.error(
                    file.metric.span(),
                    format!("unknown metric {other:?}: one of tokens, input_tokens, output_tokens, requests, cost"),
                );
                None
            }
        };
        // A cost is given in dollars (`max_usd`), everything else as a count (`max`).
        let max = match (metric, &file.max, &file.max_usd) {
            (Some(Metric::CostMicroUsd), None, Some(usd)) => {
                let usd = *usd.get_ref();
                if !(usd.is_finite() && usd > 0.0 && usd < 1e9) {
                    self.error(
                        file.max_usd.as_ref().map_or(entry.span(), Spanned::span),
                        "`max_usd` is a positive number of dollars",
                    );
                    None
                } else {
                    Some((usd * 1e6).round().max(1.0) as u64)
                }
            }
            (Some(Metric::CostMicroUsd), _, _) => {
                self.error(
                    entry.span(),
                    "a budget on \"cost\" gives `max_usd` (dollars), not `max`",
                );
                None
            }
            (_, Some(max), None) => {
                if *max.get_ref() == 0 {
                    self.error(max.span(), "`max` must be at least 1");
                }
                Some(*max.get_ref())
            }
            (_, _, Some(usd)) => {
                self.error(
                    usd.span(),
                    "`max_usd` is for a budget on \"cost\"; this one takes `max`",
                );
                None
            }
            (_, None, None) => {
                self.error(entry.span(), "a budget needs `max`");
                None
            }
        };
        let per = match &file.per {
            Some(per) => Some(self.duration(per)?),
            None => None,
        };
        let action = match &file.action {
            Some(action) => self.action(action, &[Action::Block, Action::Kill]),
            None => Some(Action::Block),
        };
        Some(Budget {
            name: name?,
            metric: metric?,
            max: max?,
            per,
            action: action?,
        })
    }

    fn limits(&mut self, file: Option<LimitsFile>) -> Limits {
        let mut limits = Limits::default();
        let Some(file) = file else {
            return limits;
        };
        if let Some(bytes) = &file.max_request_bytes
            && let Some(bytes) = self.bytes(bytes)
        {
            limits.max_request_bytes = bytes;
        }
        if let Some(bytes) = &file.max_response_bytes
            && let Some(bytes) = self.bytes(bytes)
        {
            limits.max_response_bytes = bytes;
        }
        if let Some(duration) = &file.connect_timeout
            && let Some(duration) = self.duration(duration)
        {
            limits.connect_timeout = duration;
        }
        if let Some(duration) = &file.idle_timeout
            && let Some(duration) = self.duration(duration)
        {
            limits.idle_timeout = duration;
        }
        if let Some(duration) = &file.max_exchange
            && let Some(duration) = self.duration(duration)
        {
            limits.max_exchange = duration;
        }
        if let Some(concurrent) = &file.max_concurrent {
            if (1..=10_000).contains(concurrent.get_ref()) {
                limits.max_concurrent = *concurrent.get_ref();
            } else {
                self.error(concurrent.span(), "`max_concurrent` is 1 to 10000");
            }
        }
        if let Some(attempts) = &file.max_attempts {
            if (1..=10).contains(attempts.get_ref()) {
                limits.max_attempts = *attempts.get_ref();
            } else {
                self.error(attempts.span(), "`max_attempts` is 1 to 10");
            }
        }
        limits
    }
}

/// Whether `text` is an http(s) URL with a host and without credentials or a query.
pub fn endpoint_ok(text: &str) -> bool {
    reqwest::Url::parse(text).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.query().is_none()
            && url.username().is_empty()
            && url.password().is_none()
    })
}

/// Read a secret from where the configuration says (trimmed of surrounding whitespace).
pub fn read_secret(source: &KeySource) -> Result<Option<String>, String> {
    match source {
        KeySource::None => Ok(None),
        KeySource::Env(name) => match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(Some(value.trim().to_owned())),
            _ => Err(format!("the environment variable {name} is not set")),
        },
        KeySource::File(path) => {
            let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
            if !meta.is_file() || meta.len() > 64 * 1024 {
                return Err(format!(
                    "{}: not a regular file of at most 64 KiB",
                    path.display()
                ));
            }
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            match text.trim() {
                "" => Err(format!("{} is empty", path.display())),
                value => Ok(Some(value.to_owned())),
            }
        }
    }
}
