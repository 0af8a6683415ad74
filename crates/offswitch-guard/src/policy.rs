//! Guard policies: TOML files that say what a guarded agent may not touch, what the live
//! monitors watch for and what they do, which circuit breakers stop it, and where it may
//! connect. Validated with every problem located (`file:line:col`), like scenarios.

use std::path::{Path, PathBuf};
use std::time::Duration;

use offswitch_scenario::Diagnostic;
use serde::Deserialize;
use toml::Spanned;

/// The largest policy file read.
pub const MAX_POLICY_BYTES: u64 = 256 * 1024;
/// Rules, breakers, protected paths and network entries per policy, at most.
const MAX_ENTRIES: usize = 256;

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// sha256 of the file's bytes, recorded in the audit log.
    pub digest: String,
    pub session: SessionLimits,
    pub protect: Vec<ProtectedPath>,
    /// Files whose every open inside is recorded (`secret_read`, the `secret_*` breakers).
    pub secrets: Vec<Secret>,
    pub network: Network,
    pub rules: Vec<Rule>,
    pub breakers: Vec<Breaker>,
    pub heartbeat: Option<Heartbeat>,
    /// How many events of one kind per second the audit log records one by one; the rest
    /// are counted in a summary record each second (a flood cannot flood the log).
    pub log_events_per_second: u32,
}

#[derive(Debug, Clone, Default)]
pub struct SessionLimits {
    /// Wall-clock deadline of the session.
    pub deadline: Option<Duration>,
    pub memory_bytes: Option<u64>,
    pub max_processes: Option<u64>,
    /// Size of the home volume when the project is copied.
    pub disk_bytes: Option<u64>,
    pub project: ProjectMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProjectMode {
    /// The project directory bound read-write with an id mapping (edits land in it).
    #[default]
    Bind,
    /// The project copied into a home volume of its own (fully watched; the original is
    /// untouched and the copy kept for review).
    Copy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedPath {
    /// Relative to the project (the home, `/home/agent`).
    pub path: String,
    pub hidden: bool,
}

/// Files of the project whose opens are watched: globs relative to the project, expanded
/// when the session starts.
#[derive(Debug, Clone)]
pub struct Secret {
    /// As written.
    pub glob: String,
    /// Matches a path relative to the project.
    pub pattern: regex::Regex,
}

#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Loopback ports inside forwarded to a host address outside: `(inside port, outside
    /// host:port)`.
    pub forward: Vec<(u16, String)>,
    /// `host:port` destinations reachable through the guard's HTTP CONNECT proxy.
    pub allow: Vec<String>,
}

/// What a rule watches for.
#[derive(Debug, Clone)]
pub enum RuleKind {
    /// Any change to a protected path, under it, or to a directory on its way (moving a
    /// parent carries the protection away).
    Protected,
    /// A file written anywhere whose content is a protected file's, whole or in part.
    ProtectedCopy,
    /// A process that outlives its parent (double fork, daemonising, `setsid` and exit).
    Detach,
    /// A program run from outside the system directories under the name of a system tool
    /// (`/tmp/kill`, `~/bin/ls`).
    ShadowedTool,
    /// Attempts on the supervisor: signals to the sandbox's PID 1.
    Supervisor,
    /// A connection, bind or send to an address that is not allowed.
    ConnectOutside,
    /// Events the stream lost (a flood): the monitors cannot vouch for what they missed.
    Lost,
    /// A process opened one of the policy's secrets.
    SecretRead,
    /// A program run, by path glob and optional argv regex.
    Exec {
        program: regex::Regex,
        argv: Option<regex::Regex>,
    },
    /// File operations on a path glob.
    File {
        path: regex::Regex,
        ops: Vec<String>,
    },
    /// Network operations on an address regex.
    Connect { address: regex::Regex },
}

impl RuleKind {
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Protected => "protected",
            RuleKind::ProtectedCopy => "protected_copy",
            RuleKind::Detach => "detach",
            RuleKind::ShadowedTool => "shadowed_tool",
            RuleKind::Supervisor => "supervisor",
            RuleKind::ConnectOutside => "connect_outside",
            RuleKind::Lost => "lost",
            RuleKind::SecretRead => "secret_read",
            RuleKind::Exec { .. } => "exec",
            RuleKind::File { .. } => "file",
            RuleKind::Connect { .. } => "connect",
        }
    }
}

/// What a monitor does when its rule matches or its breaker trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Into the audit log only.
    Record,
    /// Into the audit log, onto the guard's stderr, and into `status`.
    Alert,
    /// Freeze the sandbox until an operator resumes or stops it.
    Pause,
    /// The off-switch: freeze, record, kill, count to zero.
    Kill,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Record => "record",
            Action::Alert => "alert",
            Action::Pause => "pause",
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

/// What a breaker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Programs run.
    Execs,
    /// Processes started.
    Forks,
    /// File mutations (create, write, delete, rename, attribute changes).
    FileWrites,
    /// Connects, binds, listens and sends.
    Connects,
    /// Opens of the policy's secrets.
    SecretReads,
    /// Different secrets opened (a secret opened again within the window counts once).
    SecretFiles,
    /// Model requests through the guard's model proxy (`--proxy`).
    ModelRequests,
    /// Tokens (input and output) through the guard's model proxy, as the upstream reported
    /// them (estimated from bytes when it did not).
    Tokens,
}

impl Metric {
    /// Whether the guard's model proxy counts it (it needs `--proxy`).
    pub fn needs_proxy(self) -> bool {
        matches!(self, Metric::ModelRequests | Metric::Tokens)
    }
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Execs => "execs",
            Metric::Forks => "forks",
            Metric::FileWrites => "file_writes",
            Metric::Connects => "connects",
            Metric::SecretReads => "secret_reads",
            Metric::SecretFiles => "secret_files",
            Metric::ModelRequests => "model_requests",
            Metric::Tokens => "tokens",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    pub name: String,
    pub metric: Metric,
    pub max: u64,
    pub per: Duration,
    pub action: Action,
}

/// The dead-man's switch: without an operator heartbeat for `timeout`, `action`.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub timeout: Duration,
    pub action: Action,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("failed to read policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refused policy {path}: larger than the limit of {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    /// Every problem found, sorted by position; never empty.
    #[error("{}", .diagnostics.iter().map(Diagnostic::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid { diagnostics: Vec<Diagnostic> },
}

/// Read and validate the policy at `path`.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    use std::io::Read;
    let read = |source| PolicyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            path: path.to_owned(),
            limit: MAX_POLICY_BYTES,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8: {e}"),
        ))
    })?;
    parse(&text, path)
}

/// Validate the policy `text`, naming `path` in its diagnostics.
pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    let mut ctx = Ctx(offswitch_scenario::Located::new(text, path));
    let file: PolicyFile = match toml::from_str(text) {
        Ok(file) => file,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            ctx.error(span, error.message().trim().to_owned());
            return Err(PolicyError::Invalid {
                diagnostics: ctx.take_sorted(),
            });
        }
    };
    let policy = ctx.validate(file);
    if ctx.diagnostics.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyError::Invalid {
            diagnostics: ctx.take_sorted(),
        })
    }
}

// The file as written. Every field that can be wrong after parsing keeps its span.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: Spanned<u32>,
    name: Spanned<String>,
    #[serde(default)]
    session: Option<SessionFile>,
    #[serde(default)]
    protect: Vec<Spanned<ProtectFile>>,
    #[serde(default)]
    secret: Vec<Spanned<SecretFile>>,
    #[serde(default)]
    network: Option<NetworkFile>,
    #[serde(default)]
    rule: Vec<Spanned<RuleFile>>,
    #[serde(default)]
    breaker: Vec<Spanned<BreakerFile>>,
    #[serde(default)]
    heartbeat: Option<Spanned<HeartbeatFile>>,
    #[serde(default)]
    audit: Option<AuditFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFile {
    deadline: Option<Spanned<String>>,
    memory: Option<Spanned<String>>,
    processes: Option<Spanned<u64>>,
    disk: Option<Spanned<String>>,
    project: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectFile {
    path: Spanned<String>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    path: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    #[serde(default)]
    forward: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Spanned<String>,
    on: Spanned<String>,
    action: Spanned<String>,
    program: Option<Spanned<String>>,
    argv: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    ops: Option<Vec<Spanned<String>>>,
    address: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerFile {
    name: Spanned<String>,
    metric: Spanned<String>,
    max: Spanned<u64>,
    per: Spanned<String>,
    #[serde(default)]
    action: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatFile {
    timeout: Spanned<String>,
    #[serde(default)]
    action: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditFile {
    events_per_second: Option<Spanned<u32>>,
}

/// The file operations a `file` rule may name (the event stream's names).
const FILE_OPS: &[&str] = &[
    "create",
    "write",
    "close_write",
    "delete",
    "rename",
    "attrib",
    "mkdir",
    "rmdir",
];

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
    fn validate(&mut self, file: PolicyFile) -> Policy {
        self.version(&file.version, "policy");
        let name = file.name.get_ref().trim().to_owned();
        if name.is_empty() || name.len() > 128 {
            self.error(file.name.span(), "the name must be 1 to 128 characters");
        }
        self.at_most(
            MAX_ENTRIES,
            &[
                (
                    file.protect.len(),
                    "protected paths",
                    file.protect.first().map(Spanned::span),
                ),
                (
                    file.secret.len(),
                    "secrets",
                    file.secret.first().map(Spanned::span),
                ),
                (
                    file.rule.len(),
                    "rules",
                    file.rule.first().map(Spanned::span),
                ),
                (
                    file.breaker.len(),
                    "breakers",
                    file.breaker.first().map(Spanned::span),
                ),
            ],
        );
        let session = self.session(file.session);
        let protect = file
            .protect
            .iter()
            .filter_map(|entry| self.protected(entry))
            .collect();
        let secrets: Vec<Secret> = file
            .secret
            .iter()
            .filter_map(|entry| self.secret(entry))
            .collect();
        let network = self.network(file.network);
        let mut rules: Vec<Rule> = Vec::new();
        for entry in &file.rule {
            if let Some(rule) = self.rule(entry, &network) {
                if matches!(rule.kind, RuleKind::SecretRead) && file.secret.is_empty() {
                    self.error(
                        entry.get_ref().on.span(),
                        "a rule on \"secret_read\" needs the files it watches: add `[[secret]]` entries",
                    );
                }
                rules.push(rule);
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (rule, file_rule) in rules.iter().zip(&file.rule) {
            if !names.insert(rule.name.clone()) {
                self.error(
                    file_rule.get_ref().name.span(),
                    format!("a second rule or breaker named {:?}", rule.name),
                );
            }
        }
        let mut breakers = Vec::new();
        for breaker in &file.breaker {
            if let Some(parsed) = self.breaker(breaker) {
                if matches!(parsed.metric, Metric::SecretReads | Metric::SecretFiles)
                    && file.secret.is_empty()
                {
                    self.error(
                        breaker.get_ref().metric.span(),
                        format!(
                            "{:?} counts opens of the policy's secrets: add `[[secret]]` entries",
                            parsed.metric.name()
                        ),
                    );
                }
                if !names.insert(parsed.name.clone()) {
                    self.error(
                        breaker.get_ref().name.span(),
                        format!("a second rule or breaker named {:?}", parsed.name),
                    );
                }
                breakers.push(parsed);
            }
        }
        let heartbeat = file.heartbeat.as_ref().and_then(|heartbeat| {
            let file = heartbeat.get_ref();
            let timeout = self.duration(&file.timeout)?;
            let action = match &file.action {
                Some(action) => self.action(action)?,
                None => Action::Kill,
            };
            Some(Heartbeat { timeout, action })
        });
        let log_events_per_second =
            file.audit
                .and_then(|audit| audit.events_per_second)
                .map_or(200, |rate| {
                    if *rate.get_ref() == 0 {
                        self.error(rate.span(), "events_per_second must be at least 1");
                    }
                    *rate.get_ref()
                });
        use sha2::Digest;
        Policy {
            name,
            digest: hex::encode(sha2::Sha256::digest(self.text.as_bytes())),
            session,
            protect,
            secrets,
            network,
            rules,
            breakers,
            heartbeat,
            log_events_per_second,
        }
    }

    fn session(&mut self, file: Option<SessionFile>) -> SessionLimits {
        let Some(file) = file else {
            return SessionLimits::default();
        };
        let project = match &file.project {
            None => ProjectMode::Bind,
            Some(mode) => match mode.get_ref().as_str() {
                "bind" => ProjectMode::Bind,
                "copy" => ProjectMode::Copy,
                other => {
                    self.error(
                        mode.span(),
                        format!("unknown project mode {other:?}: `bind` or `copy`"),
                    );
                    ProjectMode::Bind
                }
            },
        };
        SessionLimits {
            deadline: file.deadline.as_ref().and_then(|d| self.duration(d)),
            memory_bytes: file.memory.as_ref().and_then(|m| self.bytes(m)),
            max_processes: file.processes.as_ref().map(|p| *p.get_ref()),
            disk_bytes: file.disk.as_ref().and_then(|d| self.bytes(d)),
            project,
        }
    }

    fn protected(&mut self, entry: &Spanned<ProtectFile>) -> Option<ProtectedPath> {
        let file = entry.get_ref();
        let path = file.path.get_ref().trim_start_matches("./").to_owned();
        let bad = path.is_empty()
            || path.starts_with('/')
            || path.contains('\0')
            || path
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..");
        if bad {
            self.error(
                file.path.span(),
                "a protected path is relative to the project, without `.`, `..` or empty parts",
            );
            return None;
        }
        let hidden = match file.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("read-only", _)) => false,
            Some(("hidden", _)) => true,
            Some((other, span)) => {
                self.error(
                    span,
                    format!("unknown mode {other:?}: `read-only` or `hidden`"),
                );
                return None;
            }
        };
        Some(ProtectedPath { path, hidden })
    }

    fn secret(&mut self, entry: &Spanned<SecretFile>) -> Option<Secret> {
        let glob = entry.get_ref().path.get_ref().trim_start_matches("./");
        if glob.is_empty()
            || glob.starts_with('/')
            || glob.contains('\0')
            || glob
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
        {
            self.error(
                entry.get_ref().path.span(),
                "a secret is a glob relative to the project, without `.`, `..` or empty parts",
            );
            return None;
        }
        let pattern = self.glob(&entry.get_ref().path)?;
        Some(Secret {
            glob: glob.to_owned(),
            pattern,
        })
    }

    fn network(&mut self, file: Option<NetworkFile>) -> Network {
        let Some(file) = file else {
            return Network::default();
        };
        let mut network = Network::default();
        for entry in &file.forward {
            // `PORT=HOST:PORT` or `HOST:PORT` (the same port inside).
            let text = entry.get_ref();
            let (inside, outside) = match text.split_once('=') {
                Some((port, outside)) => (port.parse::<u16>().ok(), outside.to_owned()),
                None => (
                    text.rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok()),
                    text.clone(),
                ),
            };
            match (inside, host_port(&outside)) {
                (Some(port), true) if port > 0 => network.forward.push((port, outside)),
                _ => self.error(
                    entry.span(),
                    "a forward is `HOST:PORT` or `PORT=HOST:PORT` (a loopback port inside to an \
                     address outside)",
                ),
            }
        }
        for entry in &file.allow {
            if host_port(entry.get_ref()) {
                network.allow.push(entry.get_ref().to_lowercase());
            } else {
                self.error(entry.span(), "an allowed destination is `HOST:PORT`");
            }
        }
        let mut ports: Vec<u16> = network.forward.iter().map(|(p, _)| *p).collect();
        ports.sort_unstable();
        if ports.windows(2).any(|w| w[0] == w[1])
            && let Some(first) = file.forward.first()
        {
            self.error(first.span(), "two forwards use the same port inside");
        }
        network
    }

    fn rule(&mut self, rule: &Spanned<RuleFile>, network: &Network) -> Option<Rule> {
        let file = rule.get_ref();
        let name = self.identifier(&file.name)?;
        let action = self.action(&file.action);
        let on = file.on.get_ref().as_str();
        let uses = |key: &str| match key {
            "program" | "argv" => on == "exec",
            "path" | "ops" => on == "file",
            "address" => on == "connect",
            _ => false,
        };
        for (key, present, span) in [
            (
                "program",
                file.program.is_some(),
                file.program.as_ref().map(Spanned::span),
            ),
            (
                "argv",
                file.argv.is_some(),
                file.argv.as_ref().map(Spanned::span),
            ),
            (
                "path",
                file.path.is_some(),
                file.path.as_ref().map(Spanned::span),
            ),
            (
                "ops",
                file.ops.is_some(),
                file.ops.as_ref().and_then(|o| o.first().map(Spanned::span)),
            ),
            (
                "address",
                file.address.is_some(),
                file.address.as_ref().map(Spanned::span),
            ),
        ] {
            if present && !uses(key) {
                self.error(
                    span.unwrap_or(rule.span()),
                    format!("`{key}` does not apply to a rule on {on:?}"),
                );
            }
        }
        let kind = match on {
            "protected" => Some(RuleKind::Protected),
            "protected_copy" => Some(RuleKind::ProtectedCopy),
            "detach" => Some(RuleKind::Detach),
            "shadowed_tool" => Some(RuleKind::ShadowedTool),
            "supervisor" => Some(RuleKind::Supervisor),
            "connect_outside" => {
                let _ = network;
                Some(RuleKind::ConnectOutside)
            }
            "lost" => Some(RuleKind::Lost),
            "secret_read" => Some(RuleKind::SecretRead),
            "exec" => {
                let program = match &file.program {
                    Some(glob) => self.glob(glob),
                    None => {
                        self.error(
                            rule.span(),
                            "a rule on \"exec\" needs `program` (a path glob)",
                        );
                        None
                    }
                };
                let argv = file.argv.as_ref().map(|argv| self.regex(argv));
                match (program, argv) {
                    (Some(program), None) => Some(RuleKind::Exec {
                        program,
                        argv: None,
                    }),
                    (Some(program), Some(Some(argv))) => Some(RuleKind::Exec {
                        program,
                        argv: Some(argv),
                    }),
                    _ => None,
                }
            }
            "file" => {
                let path = match &file.path {
                    Some(glob) => self.glob(glob),
                    None => {
                        self.error(rule.span(), "a rule on \"file\" needs `path` (a glob)");
                        None
                    }
                };
                let mut ops = Vec::new();
                for op in file.ops.iter().flatten() {
                    if FILE_OPS.contains(&op.get_ref().as_str()) {
                        ops.push(op.get_ref().clone());
                    } else {
                        self.error(
                            op.span(),
                            format!(
                                "unknown file operation {:?}: one of {}",
                                op.get_ref(),
                                FILE_OPS.join(", ")
                            ),
                        );
                    }
                }
                path.map(|path| RuleKind::File { path, ops })
            }
            "connect" => match &file.address {
                Some(address) => self
                    .regex(address)
                    .map(|address| RuleKind::Connect { address }),
                None => {
                    self.error(
                        rule.span(),
                        "a rule on \"connect\" needs `address` (a regex)",
                    );
                    None
                }
            },
            other => {
                self.error(
                    file.on.span(),
                    format!(
                        "unknown rule kind {other:?}: one of protected, protected_copy, detach, \
                         shadowed_tool, supervisor, connect_outside, lost, secret_read, exec, \
                         file, connect"
                    ),
                );
                None
            }
        };
        Some(Rule {
            name,
            kind: kind?,
            action: action?,
        })
    }

    fn breaker(&mut self, breaker: &Spanned<BreakerFile>) -> Option<Breaker> {
        let file = breaker.get_ref();
        let name = self.identifier(&file.name);
        let metric = match file.metric.get_ref().as_str() {
            "execs" => Some(Metric::Execs),
            "forks" => Some(Metric::Forks),
            "file_writes" => Some(Metric::FileWrites),
            "connects" => Some(Metric::Connects),
            "secret_reads" => Some(Metric::SecretReads),
            "secret_files" => Some(Metric::SecretFiles),
            "model_requests" => Some(Metric::ModelRequests),
            "tokens" => Some(Metric::Tokens),
            "bytes_sent" => {
                self.error(
                    file.metric.span(),
                    "bytes sent are not counted: the event stream records connections, not \
                     their bytes (a model's traffic is counted by `tokens` and `model_requests`)",
                );
                None
            }
            other => {
                self.error(
                    file.metric.span(),
                    format!(
                        "unknown metric {other:?}: one of execs, forks, file_writes, connects, \
                         secret_reads, secret_files, model_requests, tokens"
                    ),
                );
                None
            }
        };
        if *file.max.get_ref() == 0 {
            self.error(file.max.span(), "`max` must be at least 1");
        }
        let per = self.duration(&file.per);
        let action = match &file.action {
            Some(action) => self.action(action),
            None => Some(Action::Kill),
        };
        Some(Breaker {
            name: name?,
            metric: metric?,
            max: *file.max.get_ref(),
            per: per?,
            action: action?,
        })
    }

    fn identifier(&mut self, name: &Spanned<String>) -> Option<String> {
        let text = name.get_ref();
        let valid = !text.is_empty()
            && text.len() <= 64
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            self.error(name.span(), "a name is 1 to 64 letters, digits, `-` or `_`");
            return None;
        }
        Some(text.clone())
    }

    fn action(&mut self, action: &Spanned<String>) -> Option<Action> {
        match action.get_ref().as_str() {
            "record" => Some(Action::Record),
            "alert" => Some(Action::Alert),
            "pause" => Some(Action::Pause),
            "kill" => Some(Action::Kill),
            "deny" => {
                self.error(
                    action.span(),
                    "`deny` is done by the kernel where it can be (protected paths are read-only \
                     or hidden, and nothing is routed outside the allowed destinations); a rule \
                     acts after the fact: record, alert, pause or kill",
                );
                None
            }
            other => {
                self.error(
                    action.span(),
                    format!("unknown action {other:?}: record, alert, pause or kill"),
                );
                None
            }
        }
    }
}

pub use offswitch_core::units::{parse_bytes, parse_duration};

/// Whether `text` is `host:port` with a plausible host and a port.
fn host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}
