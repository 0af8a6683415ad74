//! One guarded run of an agent program: the sandbox under the policy, the command with its
//! input and output passed through, the live monitors acting on the kernel's event stream,
//! the circuit breakers, the dead-man's switch and deadline, the control plane, the audit log,
//! and the end: when the command exits, whatever it left running is killed and counted to
//! zero before the session returns.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use offswitch_sandbox::{
    DiskLimit, ExecRequest, ExecStatus, Limits, Live, NetworkMode, Protect, Sandbox, SandboxConfig,
    Streams,
};
use serde_json::json;

use crate::content::ContentIndex;
use crate::control::{self, Op};
use crate::monitor::{ContentCheck, HOME, Hit, Monitor};
use crate::policy::{Action, Policy, ProjectMode};

/// Memory of a guarded sandbox unless the policy says otherwise.
const DEFAULT_MEMORY: u64 = 4 << 30;
/// Processes of a guarded sandbox unless the policy says otherwise.
const DEFAULT_PROCESSES: u64 = 1024;
/// Disk of a copied project's home unless the policy says otherwise: a trial's (the image is
/// preallocated, so a larger default would take that much of the host's disk per session).
const DEFAULT_DISK: u64 = offswitch_sandbox::DiskLimit::DEFAULT.bytes;
/// Live events waiting for the monitors, at most (past it: a stated loss).
const LIVE_CAPACITY: usize = 1 << 16;
/// Bytes of a written file read for the content rules, at most.
const MAX_CHECKED_BYTES: usize = 64 << 20;
/// Bytes of protected files read for the content index, at most in all.
const MAX_INDEXED_TOTAL: u64 = 1 << 30;
/// Entries copied from a project, at most.
const MAX_COPIED_ENTRIES: usize = 1_000_000;
/// Alerts kept for `status`.
const MAX_ALERTS_KEPT: usize = 32;

/// Where the guard writes its audit log: an append-only record of everything it sees and
/// decides. The CLI provides the tamper-evident log of `offswitch-audit`.
pub trait AuditSink: Send {
    fn append(&mut self, kind: &str, body: &serde_json::Value) -> Result<(), String>;
    /// Seal and close the log.
    fn finish(self: Box<Self>) -> Result<(), String>;
}

/// One session's settings.
pub struct GuardOptions {
    pub policy: Arc<Policy>,
    /// The agent program and its arguments.
    pub command: Vec<String>,
    /// The project the agent works on (its home); an empty home when `None`.
    pub project: Option<PathBuf>,
    /// Copy the project even if the policy binds it.
    pub copy_project: bool,
    /// The session's name on the control plane.
    pub name: String,
    /// Where the session keeps its own files (a copied project's home).
    pub work_dir: PathBuf,
    /// Where the control sockets are (`control::control_dir()`).
    pub control_dir: PathBuf,
    /// Pass the guard's stdin through to the agent.
    pub stdin: bool,
    /// Run without an event stream (monitors blind) rather than refuse.
    pub allow_no_events: bool,
    /// Run the model proxy (`offswitch proxy`) for the agent with this configuration: inside,
    /// at `127.0.0.1:4000` (`MODEL_PROXY_PORT`), with a session token in place of any key.
    pub proxy: Option<offswitch_proxy::Config>,
    /// The audit log's path, named in the session's status so that an operator's tools (the
    /// viewer) can read its records; the log itself is written through the sink.
    pub audit_path: Option<PathBuf>,
}

/// The loopback port inside where the guard's model proxy answers.
pub const MODEL_PROXY_PORT: u16 = 4000;

/// What the model proxy tells its session.
enum FromProxy {
    Record(String, serde_json::Value),
    Trip(String),
}

struct ProxyRecorder(tokio::sync::mpsc::UnboundedSender<FromProxy>);

impl offswitch_proxy::Recorder for ProxyRecorder {
    fn record(&self, kind: &str, body: serde_json::Value) {
        let _ = self.0.send(FromProxy::Record(kind.to_owned(), body));
    }
}

impl offswitch_proxy::Tripper for ProxyRecorder {
    fn trip(&self, _session: &str, _guard: Option<&str>, why: &str) {
        let _ = self.0.send(FromProxy::Trip(why.to_owned()));
    }
}

/// The guard's model proxy: serving on the host's loopback, forwarded inside.
struct ModelProxy {
    /// Where it listens on the host.
    address: std::net::SocketAddr,
    token: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ModelProxy {
    /// A session that fails to start (or ends) takes its proxy with it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start the model proxy for a session (before its sandbox, whose environment names it).
async fn start_proxy(
    options: &GuardOptions,
    records: tokio::sync::mpsc::UnboundedSender<FromProxy>,
) -> Result<Option<ModelProxy>, GuardError> {
    let needs = options
        .policy
        .breakers
        .iter()
        .find(|b| b.metric.needs_proxy());
    let Some(config) = &options.proxy else {
        return match needs {
            Some(breaker) => Err(GuardError::Invalid(format!(
                "the breaker {:?} counts {}, which the guard's model proxy counts: run the guard with --proxy",
                breaker.name,
                breaker.metric.name()
            ))),
            None => Ok(None),
        };
    };
    if options
        .policy
        .network
        .forward
        .iter()
        .any(|(port, _)| *port == MODEL_PROXY_PORT)
    {
        return Err(GuardError::Invalid(format!(
            "the policy forwards port {MODEL_PROXY_PORT}, where the model proxy answers inside"
        )));
    }
    let (routes, _) = offswitch_proxy::prepare(config).map_err(GuardError::Prerequisite)?;
    let token = offswitch_proxy::fresh_token();
    let sessions = vec![offswitch_proxy::Session {
        name: options.name.clone(),
        token: token.clone(),
        guard: None,
    }];
    let recorder = Arc::new(ProxyRecorder(records));
    let proxy = offswitch_proxy::Proxy::new(
        config.clone(),
        routes,
        sessions,
        Arc::clone(&recorder) as _,
        recorder as _,
    )
    .map_err(GuardError::Failed)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| GuardError::Failed(format!("the model proxy's socket: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| GuardError::Failed(format!("the model proxy's socket: {e}")))?;
    let task = tokio::spawn(async move {
        let _ = offswitch_proxy::serve(listener, proxy).await;
    });
    Ok(Some(ModelProxy {
        address,
        token,
        task,
    }))
}

/// How a session ended.
#[derive(Debug)]
pub struct SessionEnd {
    /// The guard's exit code: the command's status, 128 + signal, or `EXIT_STOPPED`.
    pub exit_code: i32,
    /// How the command ended, in words.
    pub status: String,
    /// Why the guard stopped the agent, when it did.
    pub stopped: Option<String>,
    /// Processes the command left running (besides the sandbox's init), killed at the end.
    pub leftovers: usize,
    /// Processes counted after the last kill: always 0 on success.
    pub survivors: usize,
    pub alerts: Vec<String>,
    /// The copied project's home, kept for review, when the project was copied.
    pub kept_copy: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Something this host lacks (root, the event stream).
    #[error("{0}")]
    Prerequisite(String),
    /// Bad input: a project that is not a directory, a protected path that does not exist.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

/// Run one guarded session to its end.
pub async fn run(
    options: GuardOptions,
    audit: Box<dyn AuditSink>,
) -> Result<SessionEnd, GuardError> {
    let mut audit = Some(audit);
    let mut session = match Session::start(options, &mut audit).await {
        Ok(session) => session,
        Err(error) => {
            // The log says why the session never started, and is sealed.
            if let Some(mut audit) = audit {
                let _ = audit.append("session_refused", &json!({"why": error.to_string()}));
                let _ = audit.finish();
            }
            return Err(error);
        }
    };
    let end = session.drive().await;
    session.finish(end).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Paused,
    Stopped,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
        }
    }
}

struct Session {
    options: GuardOptions,
    policy: Arc<Policy>,
    sandbox: Arc<Sandbox>,
    audit: Box<dyn AuditSink>,
    audit_failed: Option<String>,
    monitor: Monitor,
    live: Option<offswitch_sandbox::Subscription>,
    control: tokio::sync::mpsc::Receiver<control::Request>,
    /// Answers handed to the control socket and not yet written to their operator.
    answering: Vec<tokio::sync::oneshot::Receiver<()>>,
    socket: PathBuf,
    net: tokio::sync::mpsc::UnboundedReceiver<crate::net::NetRecord>,
    net_tasks: Vec<tokio::task::JoinHandle<()>>,
    exec: Option<tokio::task::JoinHandle<Result<offswitch_sandbox::ExecResult, String>>>,
    state: State,
    stopped: Option<String>,
    started: Instant,
    last_heartbeat: Instant,
    alerts: Vec<String>,
    hits: u64,
    limiter: Limiter,
    kept_copy: Option<PathBuf>,
    home: PathBuf,
    secrets: Secrets,
    proxy: Option<ModelProxy>,
    proxy_records: tokio::sync::mpsc::UnboundedReceiver<FromProxy>,
}

impl Session {
    /// Make the session; `audit` is taken only once nothing can fail any more.
    async fn start(
        options: GuardOptions,
        audit: &mut Option<Box<dyn AuditSink>>,
    ) -> Result<Session, GuardError> {
        let policy = Arc::clone(&options.policy);
        let mode = if options.copy_project {
            ProjectMode::Copy
        } else {
            policy.session.project
        };
        let (proxy_sender, proxy_records) = tokio::sync::mpsc::unbounded_channel();
        let model_proxy = start_proxy(&options, proxy_sender).await?;
        let (home, home_idmap, kept_copy) = prepare_home(&options, mode)?;
        let secrets = find_secrets(&home, &policy.secrets);
        for glob in &secrets.unmatched {
            eprintln!(
                "offswitch guard: warning: the secret {glob:?} matches no file of the project"
            );
        }
        let mut env = vec![("TERM".to_owned(), "dumb".to_owned())];
        if !policy.network.allow.is_empty() {
            let proxy = format!("http://127.0.0.1:{}", crate::net::PROXY_PORT);
            for key in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
                env.push((key.to_owned(), proxy.clone()));
            }
            env.push(("NO_PROXY".to_owned(), "127.0.0.1,localhost,::1".to_owned()));
        }
        if let Some(proxy) = &model_proxy {
            // The agent's SDKs find the proxy, and its token where a key goes.
            let base = format!("http://127.0.0.1:{MODEL_PROXY_PORT}");
            for (key, value) in [
                ("OPENAI_BASE_URL", format!("{base}/v1")),
                ("OPENAI_API_KEY", proxy.token.clone()),
                ("ANTHROPIC_BASE_URL", base.clone()),
                ("ANTHROPIC_API_KEY", proxy.token.clone()),
                ("OFFSWITCH_PROXY", format!("{base}/v1")),
            ] {
                env.push((key.to_owned(), value));
            }
        }
        let config = SandboxConfig {
            home: home.clone(),
            limits: Limits {
                memory_bytes: Some(policy.session.memory_bytes.unwrap_or(DEFAULT_MEMORY)),
                max_processes: Some(policy.session.max_processes.unwrap_or(DEFAULT_PROCESSES)),
                cpu_time: None,
                // The kernel-side backstop of the deadline (the guard trips first).
                wall_time: policy.session.deadline.map(|d| d + Duration::from_secs(5)),
            },
            network: NetworkMode::LoopbackOnly,
            env,
            hostname: "guarded".into(),
            ro_binds: Vec::new(),
            protect: policy
                .protect
                .iter()
                .map(|p| Protect {
                    inside: format!("{HOME}/{}", p.path).into(),
                    hide: p.hidden,
                })
                .collect(),
            home_idmap,
            watch_opens: secrets
                .files
                .iter()
                .map(|rel| PathBuf::from(format!("{HOME}/{rel}")))
                .collect(),
        };
        let created = tokio::task::spawn_blocking(move || Sandbox::create(config)).await;
        if !matches!(created, Ok(Ok(_)))
            && let Some(copy) = &kept_copy
        {
            let _ = offswitch_sandbox::remove_home(copy);
        }
        let sandbox = created
            .map_err(|e| GuardError::Failed(format!("creating the sandbox: {e}")))?
            .map_err(|e| match e {
                offswitch_sandbox::SandboxError::NeedsRoot(_)
                | offswitch_sandbox::SandboxError::Unsupported(_) => {
                    GuardError::Invalid(format!("the sandbox: {e}"))
                }
                e => GuardError::Failed(format!("creating the sandbox: {e}")),
            })?;
        let sandbox = Arc::new(sandbox);
        let live = match sandbox.subscribe_events(LIVE_CAPACITY) {
            Ok(live) => Some(live),
            Err(why) if options.allow_no_events => {
                eprintln!(
                    "offswitch guard: warning: no event stream ({why}); the monitors are blind"
                );
                None
            }
            Err(why) => {
                let _ = sandbox.kill();
                return Err(GuardError::Prerequisite(format!(
                    "no event stream on this host ({why}): the monitors would be blind (run as \
                     root on a kernel with BPF, or pass --no-events to run without them)"
                )));
            }
        };
        let wants_content = policy
            .rules
            .iter()
            .any(|r| matches!(r.kind, crate::policy::RuleKind::ProtectedCopy));
        let content = if wants_content {
            Some(index_protected(&policy, &home, MAX_INDEXED_TOTAL))
        } else {
            None
        };
        let monitor = Monitor::new(Arc::clone(&policy), system_tools(), Vec::new(), content);
        let (socket, control) = control::serve(&options.control_dir, &options.name)
            .await
            .map_err(|e| {
                let _ = sandbox.kill();
                GuardError::Invalid(e)
            })?;
        let (net_sender, net) = tokio::sync::mpsc::unbounded_channel();
        let mut forwards = policy.network.forward.clone();
        if let Some(proxy) = &model_proxy {
            forwards.push((MODEL_PROXY_PORT, proxy.address.to_string()));
        }
        let net_tasks = crate::net::start(&sandbox, &forwards, &policy.network.allow, net_sender)
            .map_err(|e| {
            let _ = sandbox.kill();
            let _ = std::fs::remove_file(&socket);
            GuardError::Failed(e)
        })?;
        let limiter = Limiter::new(policy.log_events_per_second);
        let Some(audit) = audit.take() else {
            let _ = sandbox.kill();
            return Err(GuardError::Failed("no audit log".into()));
        };
        let mut session = Session {
            policy: Arc::clone(&policy),
            sandbox,
            audit,
            audit_failed: None,
            monitor,
            live,
            control,
            answering: Vec::new(),
            socket,
            net,
            net_tasks,
            exec: None,
            state: State::Running,
            stopped: None,
            started: Instant::now(),
            last_heartbeat: Instant::now(),
            alerts: Vec::new(),
            hits: 0,
            limiter,
            kept_copy,
            home,
            secrets,
            proxy: model_proxy,
            proxy_records,
            options,
        };
        session.record(
            "session_start",
            json!({
                "session": session.options.name,
                "policy": { "name": policy.name, "sha256": policy.digest },
                "command": session.options.command,
                "project": session.options.project.as_ref().map(|p| p.display().to_string()),
                "project_mode": match mode { ProjectMode::Bind => "bind", ProjectMode::Copy => "copy" },
                "protected": policy.protect.iter().map(|p| json!({"path": p.path, "hidden": p.hidden})).collect::<Vec<_>>(),
                "secrets": {
                    "globs": policy.secrets.iter().map(|s| s.glob.as_str()).collect::<Vec<_>>(),
                    "files": session.secrets.files,
                    "unmatched": session.secrets.unmatched,
                    "truncated": session.secrets.truncated,
                },
                "rules": policy.rules.iter().map(|r| json!({"name": r.name, "on": r.kind.name(), "action": r.action.name()})).collect::<Vec<_>>(),
                "breakers": policy.breakers.iter().map(|b| json!({"name": b.name, "metric": b.metric.name(), "max": b.max, "per_ms": b.per.as_millis() as u64, "action": b.action.name()})).collect::<Vec<_>>(),
                "network": { "forward": policy.network.forward.iter().map(|(p, o)| format!("{p}={o}")).collect::<Vec<_>>(), "allow": policy.network.allow },
                "heartbeat_ms": policy.heartbeat.as_ref().map(|h| h.timeout.as_millis() as u64),
                "deadline_ms": policy.session.deadline.map(|d| d.as_millis() as u64),
                "events": session.live.is_some(),
                "model_proxy": session.proxy.as_ref().map(|p| json!({"inside": format!("127.0.0.1:{MODEL_PROXY_PORT}"), "host": p.address.to_string(), "policy_sha256": session.options.proxy.as_ref().map(|c| c.digest.clone())})),
            }),
        );
        session.start_command();
        Ok(session)
    }

    fn start_command(&mut self) {
        let command = shell_join(&self.options.command);
        let deadline = self
            .policy
            .session
            .deadline
            .map_or(Duration::from_secs(100 * 365 * 24 * 3600), |d| {
                d + Duration::from_secs(10)
            });
        let request = ExecRequest {
            command,
            stdin: Vec::new(),
            timeout: deadline,
            output_cap: 64 * 1024,
        };
        let stdin = match std::io::pipe() {
            Ok((read, write)) => {
                if self.options.stdin {
                    std::thread::Builder::new()
                        .name("offswitch-guard-stdin".into())
                        .spawn(move || {
                            let mut write = write;
                            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut write);
                        })
                        .ok();
                }
                Some(read.into())
            }
            Err(_) => None,
        };
        let streams = Streams {
            stdin,
            stdout: Some(Box::new(|chunk| {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(chunk);
                let _ = out.flush();
            })),
            stderr: Some(Box::new(|chunk| {
                let mut out = std::io::stderr().lock();
                let _ = out.write_all(chunk);
                let _ = out.flush();
            })),
        };
        let sandbox = Arc::clone(&self.sandbox);
        self.exec = Some(tokio::task::spawn_blocking(move || {
            sandbox
                .exec_streaming(&request, streams)
                .map_err(|e| e.to_string())
        }));
    }

    /// The session's loop, until the command ends: its result.
    async fn drive(&mut self) -> Result<offswitch_sandbox::ExecResult, String> {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut exec = self.exec.take().expect("started");
        loop {
            tokio::select! {
                result = &mut exec => {
                    return result.unwrap_or_else(|e| Err(format!("the command's task failed: {e}")));
                }
                live = next_live(&mut self.live) => match live {
                    Some(Live::Event(event)) => self.on_event(event).await,
                    Some(Live::Lost(loss)) => {
                        self.record_loss(&loss);
                        let hits = self.monitor.lost(&loss);
                        self.act(hits).await;
                    }
                    None => self.live = None,
                },
                Some(request) = self.control.recv() => self.on_request(request).await,
                Some(record) = self.net.recv() => {
                    self.record_network(&record);
                }
                Some(message) = self.proxy_records.recv() => self.on_proxy(message).await,
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    async fn on_event(&mut self, event: offswitch_sandbox::Event) {
        self.record_event(&event);
        let (hits, checks) = self.monitor.event(&event);
        self.act(hits).await;
        for ContentCheck { path } in checks {
            let sandbox = Arc::clone(&self.sandbox);
            let read_path = path.clone();
            let bytes = tokio::task::spawn_blocking(move || {
                sandbox.read_inside(&read_path, MAX_CHECKED_BYTES)
            })
            .await;
            let hits = match bytes {
                Ok(Ok(bytes)) => self.monitor.content(&path, &bytes),
                // A directory (a renamed one: its files were checked when written) holds no
                // content of its own.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidInput => Vec::new(),
                // Gone before it could be read: a rename is checked at its target, and a file
                // deleted at once holds nothing any more; recorded, not silently passed.
                Ok(Err(e)) => self.monitor.unreadable(&path, &e.to_string()),
                Err(e) => self.monitor.unreadable(&path, &e.to_string()),
            };
            self.act(hits).await;
        }
    }

    /// A record or a trip of the model proxy: into the log, and the model traffic's breakers.
    async fn on_proxy(&mut self, message: FromProxy) {
        match message {
            FromProxy::Record(kind, body) => {
                let counted = kind == "model_response" && body["outcome"] != "refused";
                let tokens = body["usage"]["input_tokens"].as_u64().unwrap_or(0)
                    + body["usage"]["output_tokens"].as_u64().unwrap_or(0);
                let who = format!(
                    "model exchange {} ({})",
                    body["id"],
                    body["model"].as_str().unwrap_or_default()
                );
                self.record(&kind, body);
                if counted {
                    let now_us = self.started.elapsed().as_micros() as u64;
                    let hits = self.monitor.model_use(now_us, tokens, &who);
                    self.act(hits).await;
                }
            }
            FromProxy::Trip(why) => {
                self.act(vec![Hit {
                    monitor: "model-proxy".into(),
                    kind: "proxy".into(),
                    action: Action::Kill,
                    detail: why,
                }])
                .await;
            }
        }
    }

    async fn on_tick(&mut self) {
        if let Some((second, counts)) = self.limiter.flush() {
            self.record(
                "events_suppressed",
                json!({"second": second, "counts": counts, "why": "more events of a kind in one second than the policy logs one by one"}),
            );
        }
        if self.state == State::Stopped {
            return;
        }
        if let Some(why) = self.audit_failed.clone() {
            // Nothing the agent does can be recorded any more: it does nothing more.
            self.stop(format!("the audit log failed: {why}")).await;
            return;
        }
        if let Some(deadline) = self.policy.session.deadline
            && self.started.elapsed() >= deadline
        {
            let hit = Hit {
                monitor: "deadline".into(),
                kind: "deadline".into(),
                action: Action::Kill,
                detail: format!(
                    "the session's deadline of {} passed",
                    crate::monitor::human(deadline)
                ),
            };
            self.act(vec![hit]).await;
        }
        if let Some(heartbeat) = self.policy.heartbeat.clone()
            && self.last_heartbeat.elapsed() >= heartbeat.timeout
        {
            // Once per missed period.
            self.last_heartbeat = Instant::now();
            let hit = Hit {
                monitor: "heartbeat".into(),
                kind: "heartbeat".into(),
                action: heartbeat.action,
                detail: format!(
                    "no operator heartbeat for {}: the dead-man's switch tripped",
                    crate::monitor::human(heartbeat.timeout)
                ),
            };
            self.act(vec![hit]).await;
        }
    }

    async fn on_request(&mut self, request: control::Request) {
        let answer = match request.op {
            Op::Status => self.status(),
            Op::Heartbeat => {
                self.last_heartbeat = Instant::now();
                if self.limiter.admit("heartbeat") {
                    self.record("operator", json!({"op": "heartbeat", "uid": request.uid}));
                }
                json!({"ok": true})
            }
            Op::Pause => {
                self.record("operator", json!({"op": "pause", "uid": request.uid}));
                match self.state {
                    State::Running => match self.pause().await {
                        Ok(()) => json!({"ok": true, "state": "paused"}),
                        Err(e) => json!({"error": e}),
                    },
                    state => json!({"ok": true, "state": state.name()}),
                }
            }
            Op::Resume => {
                self.record("operator", json!({"op": "resume", "uid": request.uid}));
                match self.state {
                    State::Paused => {
                        let sandbox = Arc::clone(&self.sandbox);
                        match tokio::task::spawn_blocking(move || sandbox.resume()).await {
                            Ok(Ok(())) => {
                                self.state = State::Running;
                                self.record("resumed", json!({}));
                                json!({"ok": true, "state": "running"})
                            }
                            Ok(Err(e)) => json!({"error": e.to_string()}),
                            Err(e) => json!({"error": e.to_string()}),
                        }
                    }
                    state => json!({"ok": true, "state": state.name()}),
                }
            }
            Op::Stop => {
                self.record("operator", json!({"op": "stop", "uid": request.uid}));
                let report = self
                    .stop(format!("stopped by the operator (uid {})", request.uid))
                    .await;
                match report {
                    Some((killed, survivors)) => {
                        json!({"ok": survivors == 0, "state": "stopped", "killed": killed, "survivors": survivors})
                    }
                    None => {
                        json!({"ok": true, "state": "stopped", "survivors": self.sandbox.host_pids().len()})
                    }
                }
            }
        };
        let _ = request.reply.send(answer);
        self.answering.retain_mut(|written| {
            matches!(
                written.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            )
        });
        self.answering.push(request.written);
    }

    fn status(&self) -> serde_json::Value {
        let now_us = self.started.elapsed().as_micros() as u64;
        json!({
            "session": self.options.name,
            "state": self.state.name(),
            "stopped": self.stopped,
            "policy": self.policy.name,
            "command": self.options.command,
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "processes": self.sandbox.host_pids().len(),
            "hits": self.hits,
            "alerts": self.alerts,
            "breakers": self.monitor.breaker_counts(now_us).into_iter().map(|(name, count, max, tripped)| json!({"name": name, "count": count, "max": max, "tripped": tripped})).collect::<Vec<_>>(),
            "heartbeat": self.policy.heartbeat.as_ref().map(|h| json!({"timeout_ms": h.timeout.as_millis() as u64, "since_last_ms": self.last_heartbeat.elapsed().as_millis() as u64})),
            "events": self.live.is_some(),
            "audit": self.options.audit_path,
            "audit_failed": self.audit_failed,
        })
    }

    /// Carry out what the monitors decided, the strongest action last.
    async fn act(&mut self, hits: Vec<Hit>) {
        for hit in hits {
            self.hits += 1;
            if self.state == State::Stopped {
                // The agent is being killed: what its dying processes do (parents exiting
                // before their children) is recorded, not acted on.
                if self.limiter.admit(&format!("hit:{}", hit.monitor)) {
                    self.record("monitor_hit", json!({"monitor": hit.monitor, "kind": hit.kind, "action": "record", "detail": hit.detail, "after_stop": true}));
                }
                continue;
            }
            let body = json!({"monitor": hit.monitor, "kind": hit.kind, "action": hit.action.name(), "detail": hit.detail});
            let always = hit.action >= Action::Alert;
            if always || self.limiter.admit(&format!("hit:{}", hit.monitor)) {
                self.record("monitor_hit", body);
            }
            if hit.action >= Action::Alert {
                let line = format!("{}: {}", hit.monitor, hit.detail);
                eprintln!("offswitch guard: {}: {line}", hit.action.name());
                if self.alerts.len() < MAX_ALERTS_KEPT {
                    self.alerts.push(line);
                }
            }
            match hit.action {
                Action::Record | Action::Alert => {}
                Action::Pause => {
                    if self.state == State::Running {
                        let _ = self.pause().await;
                    }
                }
                Action::Kill => {
                    self.stop(format!("{} ({}): {}", hit.monitor, hit.kind, hit.detail))
                        .await;
                }
            }
        }
    }

    async fn pause(&mut self) -> Result<(), String> {
        let sandbox = Arc::clone(&self.sandbox);
        let paused = tokio::task::spawn_blocking(move || sandbox.pause())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string());
        match &paused {
            Ok(()) => {
                self.state = State::Paused;
                self.record("paused", json!({}));
            }
            Err(e) => self.record("pause_failed", json!({"error": e})),
        }
        paused
    }

    /// The off-switch: freeze, record why, kill, count. `(processes killed, survivors)`, or
    /// `None` when already stopped.
    async fn stop(&mut self, why: String) -> Option<(usize, usize)> {
        if self.state == State::Stopped {
            return None;
        }
        // Frozen at once (the kill that follows does not wait for the freeze to settle).
        let frozen = self.sandbox.begin_pause();
        self.state = State::Stopped;
        self.stopped = Some(why.clone());
        self.record("stop", json!({"why": why, "frozen": frozen.is_ok()}));
        let sandbox = Arc::clone(&self.sandbox);
        let report = tokio::task::spawn_blocking(move || sandbox.kill()).await;
        let (killed, survivors) = match report {
            Ok(Ok(report)) => (report.processes_killed, report.survivors),
            Ok(Err(e)) => {
                self.record("kill_failed", json!({"error": e.to_string()}));
                (0, self.sandbox.host_pids().len())
            }
            Err(e) => {
                self.record("kill_failed", json!({"error": e.to_string()}));
                (0, self.sandbox.host_pids().len())
            }
        };
        self.record(
            "killed",
            json!({"processes": killed, "survivors": survivors}),
        );
        Some((killed, survivors))
    }

    async fn finish(
        mut self,
        result: Result<offswitch_sandbox::ExecResult, String>,
    ) -> Result<SessionEnd, GuardError> {
        let (mut exit_code, mut status) = match &result {
            Ok(result) => match &result.status {
                ExecStatus::Exited(code) => (*code, format!("exited with status {code}")),
                ExecStatus::Signaled(signal) => {
                    (128 + signal, format!("killed by signal {signal}"))
                }
                ExecStatus::TimedOut => (crate::EXIT_STOPPED, "ran past the deadline".to_owned()),
                ExecStatus::SandboxShutDown => {
                    (crate::EXIT_STOPPED, "ended with its sandbox".to_owned())
                }
                ExecStatus::LimitExceeded(kind) => (
                    crate::EXIT_STOPPED,
                    format!("hit the sandbox's {kind:?} limit"),
                ),
            },
            Err(e) => (1, format!("could not be run: {e}")),
        };
        if self.stopped.is_none()
            && let Ok(result) = &result
            && let ExecStatus::LimitExceeded(kind) = &result.status
        {
            self.stopped = Some(format!("the sandbox's {kind:?} limit"));
        }
        if self.stopped.is_some() {
            exit_code = crate::EXIT_STOPPED;
            status = format!("stopped by the guard; the command {status}");
        }
        self.record("command_end", json!({"status": status}));
        // Whatever the command left running: killed and counted.
        let sandbox = Arc::clone(&self.sandbox);
        let was_stopped = self.state == State::Stopped;
        let report = tokio::task::spawn_blocking(move || {
            let report = sandbox.kill();
            let stream = sandbox.event_stream();
            (report, stream)
        })
        .await
        .map_err(|e| GuardError::Failed(format!("the final kill: {e}")))?;
        let (leftovers, survivors) = match report.0 {
            // Init is counted among the processes; it is no leftover of the command.
            Ok(report) if !was_stopped => {
                (report.processes_killed.saturating_sub(1), report.survivors)
            }
            Ok(report) => (0, report.survivors),
            Err(e) => {
                self.record("kill_failed", json!({"error": e.to_string()}));
                (0, self.sandbox.host_pids().len())
            }
        };
        // What the monitors have not seen yet (the last poll of file events) is read now;
        // the agent is gone, so rules are only recorded.
        while let Some(live) = next_live_now(&mut self.live) {
            match live {
                Live::Event(event) => {
                    self.record_event(&event);
                    let (hits, _) = self.monitor.event(&event);
                    for hit in hits {
                        self.hits += 1;
                        if hit.action >= Action::Alert && !was_stopped {
                            let line = format!(
                                "{}: {} (seen after the command ended)",
                                hit.monitor, hit.detail
                            );
                            eprintln!("offswitch guard: alert: {line}");
                            if self.alerts.len() < MAX_ALERTS_KEPT {
                                self.alerts.push(line);
                            }
                        }
                        self.record("monitor_hit", json!({"monitor": hit.monitor, "kind": hit.kind, "action": "record", "detail": hit.detail, "after_end": true}));
                    }
                }
                Live::Lost(loss) => {
                    self.record_loss(&loss);
                }
            }
        }
        // Connections through the forwards and the proxy that ended with the command.
        while let Ok(record) = self.net.try_recv() {
            self.record_network(&record);
        }
        if let Some((second, counts)) = self.limiter.flush_all() {
            self.record(
                "events_suppressed",
                json!({"second": second, "counts": counts}),
            );
        }
        for task in &self.net_tasks {
            task.abort();
        }
        if let Some(proxy) = &self.proxy {
            proxy.task.abort();
        }
        // What the model proxy said last (an exchange the kill cut short) is in the log too.
        while let Ok(message) = self.proxy_records.try_recv() {
            if let FromProxy::Record(kind, body) = message {
                self.record(&kind, body);
            }
        }
        self.record(
            "session_end",
            json!({
                "exit_code": exit_code,
                "status": status,
                "stopped": self.stopped,
                "leftovers_killed": leftovers,
                "survivors": survivors,
                "hits": self.hits,
                "uptime_ms": self.started.elapsed().as_millis() as u64,
            }),
        );
        let _ = std::fs::remove_file(&self.socket);
        // An operator's stop is answered before the session ends (bounded: a peer that does
        // not read its answer does not hold the session).
        let answered = Instant::now() + Duration::from_secs(2);
        for written in std::mem::take(&mut self.answering) {
            let _ = tokio::time::timeout_at(answered.into(), written).await;
        }
        if let Err(e) = self.audit.finish() {
            return Err(GuardError::Failed(format!("sealing the audit log: {e}")));
        }
        if let Some(e) = self.audit_failed {
            return Err(GuardError::Failed(format!("the audit log failed: {e}")));
        }
        if let Some(copy) = self.kept_copy.take() {
            if self.options.project.is_some() {
                // The agent's work on the copy, kept for review as a plain directory.
                let _ = offswitch_sandbox::keep_home(&copy);
                self.kept_copy = Some(copy);
            } else {
                // An empty home made for the session: nothing to keep.
                let _ = offswitch_sandbox::remove_home(&copy);
            }
        }
        let _ = &self.home;
        Ok(SessionEnd {
            exit_code,
            status,
            stopped: self.stopped,
            leftovers,
            survivors,
            alerts: self.alerts,
            kept_copy: self.kept_copy,
        })
    }

    /// A kernel event, unless the policy's rate for its kind is spent this second.
    fn record_event(&mut self, event: &offswitch_sandbox::Event) {
        if self.limiter.admit(kind_name(&event.kind)) {
            self.record("event", serde_json::to_value(event).unwrap_or_default());
        }
    }

    fn record_loss(&mut self, loss: &offswitch_sandbox::Loss) {
        self.record(
            "events_lost",
            json!({"source": loss.source.name(), "count": loss.count, "detail": loss.detail}),
        );
    }

    fn record_network(&mut self, record: &crate::net::NetRecord) {
        self.record(
            "network",
            json!({"via": record.via, "destination": record.destination, "allowed": record.allowed, "detail": record.detail}),
        );
    }

    fn record(&mut self, kind: &str, body: serde_json::Value) {
        if self.audit_failed.is_some() {
            return;
        }
        if let Err(e) = self.audit.append(kind, &body) {
            eprintln!("offswitch guard: the audit log failed: {e}; stopping the agent");
            self.audit_failed = Some(e);
        }
    }
}

async fn next_live(live: &mut Option<offswitch_sandbox::Subscription>) -> Option<Live> {
    match live {
        Some(live) => live.next().await,
        None => std::future::pending().await,
    }
}

fn next_live_now(live: &mut Option<offswitch_sandbox::Subscription>) -> Option<Live> {
    live.as_mut()?.try_next().ok().flatten()
}

fn kind_name(kind: &offswitch_sandbox::EventKind) -> &'static str {
    use offswitch_sandbox::EventKind;
    match kind {
        EventKind::Exec { .. } => "exec",
        EventKind::Fork { .. } => "fork",
        EventKind::File { .. } => "file",
        EventKind::Open { .. } => "open",
        EventKind::Signal { .. } => "signal",
        EventKind::Net { .. } => "net",
        EventKind::Exit { .. } => "exit",
        EventKind::Limit { .. } => "limit",
        EventKind::Refused { .. } => "refused",
    }
}

/// How many records of each kind the audit log takes one by one per second; the rest are
/// counted in one summary record per second.
struct Limiter {
    per_second: u32,
    second: u64,
    counts: BTreeMap<String, u32>,
    suppressed: BTreeMap<String, u64>,
    epoch: Instant,
}

impl Limiter {
    fn new(per_second: u32) -> Limiter {
        Limiter {
            per_second,
            second: 0,
            counts: BTreeMap::new(),
            suppressed: BTreeMap::new(),
            epoch: Instant::now(),
        }
    }

    fn admit(&mut self, kind: &str) -> bool {
        let second = self.epoch.elapsed().as_secs();
        if second != self.second {
            self.second = second;
            self.counts.clear();
        }
        let count = self.counts.entry(kind.to_owned()).or_default();
        if *count < self.per_second {
            *count += 1;
            true
        } else {
            *self.suppressed.entry(kind.to_owned()).or_default() += 1;
            false
        }
    }

    /// The suppressed counts of past seconds, once the second is over.
    fn flush(&mut self) -> Option<(u64, BTreeMap<String, u64>)> {
        if self.suppressed.is_empty() || self.epoch.elapsed().as_secs() == self.second {
            return None;
        }
        Some((self.second, std::mem::take(&mut self.suppressed)))
    }

    fn flush_all(&mut self) -> Option<(u64, BTreeMap<String, u64>)> {
        if self.suppressed.is_empty() {
            return None;
        }
        Some((self.second, std::mem::take(&mut self.suppressed)))
    }
}

/// The home's host path, the project owner's ids when it is bound with an id mapping, and the
/// copy to keep when it is one.
type PreparedHome = (PathBuf, Option<(u32, u32)>, Option<PathBuf>);

/// The home of the session: the project bound with an id mapping, or a fresh volume holding
/// a copy of it (or nothing).
fn prepare_home(options: &GuardOptions, mode: ProjectMode) -> Result<PreparedHome, GuardError> {
    if let Some(project) = &options.project {
        let meta = std::fs::metadata(project)
            .map_err(|e| GuardError::Invalid(format!("the project {}: {e}", project.display())))?;
        if !meta.is_dir() {
            return Err(GuardError::Invalid(format!(
                "the project {} is not a directory",
                project.display()
            )));
        }
        if mode == ProjectMode::Bind {
            let project = project.canonicalize().map_err(|e| {
                GuardError::Invalid(format!("the project {}: {e}", project.display()))
            })?;
            return Ok((project, Some((meta.uid(), meta.gid())), None));
        }
    }
    let home = options.work_dir.join("home");
    std::fs::create_dir_all(&options.work_dir)
        .map_err(|e| GuardError::Failed(format!("{}: {e}", options.work_dir.display())))?;
    let disk = options.policy.session.disk_bytes.unwrap_or(DEFAULT_DISK);
    offswitch_sandbox::create_home(&home, DiskLimit { bytes: disk })
        .map_err(|e| GuardError::Failed(format!("creating the session's home: {e}")))?;
    if let Some(project) = &options.project {
        let mut entries = 0;
        copy_tree(project, &home, &mut entries).map_err(|e| {
            GuardError::Failed(format!(
                "copying the project {} into the session's home: {e}",
                project.display()
            ))
        })?;
    }
    Ok((home.clone(), None, Some(home)))
}

/// The project's files that match the policy's secrets, found when the session starts.
#[derive(Debug, Default)]
pub struct Secrets {
    /// Relative to the project, sorted.
    pub files: Vec<String>,
    /// Globs that matched nothing.
    pub unmatched: Vec<String>,
    /// The walk stopped at its bound (entries, or the most files one watch takes).
    pub truncated: bool,
}

/// The most entries of the project walked to find its secrets.
const MAX_SECRET_WALK: usize = 200_000;

/// Walk the project (without following symbolic links, bounded) for the files the policy's
/// secrets name. A symbolic link is never a secret: its target may be anywhere.
pub fn find_secrets(home: &Path, secrets: &[crate::policy::Secret]) -> Secrets {
    let mut found = Secrets::default();
    if secrets.is_empty() {
        return found;
    }
    let mut matched = vec![false; secrets.len()];
    let mut pending = vec![(home.to_path_buf(), String::new(), 0usize)];
    let mut walked = 0usize;
    'walk: while let Some((dir, rel, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            walked += 1;
            if walked > MAX_SECRET_WALK || found.files.len() >= offswitch_sandbox::MAX_WATCHED_OPENS
            {
                found.truncated = true;
                break 'walk;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if kind.is_dir() && depth < 64 {
                pending.push((entry.path(), path, depth + 1));
            } else if kind.is_file() {
                let mut any = false;
                for (index, secret) in secrets.iter().enumerate() {
                    if secret.pattern.is_match(&path) {
                        matched[index] = true;
                        any = true;
                    }
                }
                if any {
                    found.files.push(path);
                }
            }
        }
    }
    found.files.sort();
    found.unmatched = secrets
        .iter()
        .zip(matched)
        .filter(|(_, matched)| !matched)
        .map(|(secret, _)| secret.glob.clone())
        .collect();
    found
}

/// Copy `from` into `to`: directories, regular files and symbolic links (as links), modes
/// kept; anything else (devices, sockets) skipped.
fn copy_tree(from: &Path, to: &Path, entries: &mut usize) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        *entries += 1;
        if *entries > MAX_COPIED_ENTRIES {
            return Err(std::io::Error::other(format!(
                "more than {MAX_COPIED_ENTRIES} entries"
            )));
        }
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target, entries)?;
            let mode = entry.metadata()?.permissions().mode();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        }
    }
    Ok(())
}

/// The protected files' contents (files below a protected directory too), for the content
/// rules, read from the host side of the home, at most `budget` bytes in all.
pub fn index_protected(policy: &Policy, home: &Path, budget: u64) -> ContentIndex {
    let mut files = Vec::new();
    let mut budget = budget;
    for protected in &policy.protect {
        let mut stack = vec![protected.path.clone()];
        while let Some(relative) = stack.pop() {
            let path = home.join(&relative);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    stack.push(format!(
                        "{relative}/{}",
                        entry.file_name().to_string_lossy()
                    ));
                }
            } else if meta.is_file() && meta.len() > 0 && budget > 0 {
                use std::io::Read;
                let take = meta
                    .len()
                    .min(budget)
                    .min(crate::content::MAX_INDEXED_BYTES as u64);
                let mut bytes = Vec::new();
                if std::fs::File::open(&path)
                    .and_then(|f| f.take(take).read_to_end(&mut bytes))
                    .is_ok()
                {
                    budget -= bytes.len() as u64;
                    files.push((format!("{HOME}/{relative}"), bytes));
                }
            }
        }
    }
    ContentIndex::new(files)
}

/// The names of the programs in the system's bin directories (bound into every sandbox).
pub fn system_tools() -> HashSet<String> {
    let mut names = HashSet::new();
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Some(name) = entry.file_name().to_str() {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The command as one shell line, each word quoted.
fn shell_join(words: &[String]) -> String {
    words
        .iter()
        .map(|word| {
            if !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
