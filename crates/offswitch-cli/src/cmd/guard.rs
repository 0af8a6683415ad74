//! `offswitch guard`: run an agent program contained (a sandbox, live monitors, circuit
//! breakers, a tamper-evident audit log), and operate running sessions over their control
//! sockets (`list`, `status`, `pause`, `resume`, `stop`, `heartbeat`), and check policies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use offswitch_guard::control::{self, Op};
use offswitch_guard::{GuardError, GuardOptions};

/// The policy used without `--policy` (also shipped as `policies/default.toml`).
const DEFAULT_POLICY: &str = include_str!("../../../../policies/default.toml");

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    control: Option<Control>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The policy (TOML; docs/policy-format.md). Without it, the built-in default policy.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Where the audit log goes (a new file). Default: `<offswitch home>/guard/<name>.audit`.
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Also append every signed checkpoint of the audit log to this file (somewhere the agent
    /// and the log's attacker cannot write), so a rewritten or cut log cannot match it.
    #[arg(long)]
    witness: Option<PathBuf>,
    /// The project the agent works on: its home, bound read-write (or copied, see --copy).
    /// Without it the agent gets an empty home.
    #[arg(long)]
    project: Option<PathBuf>,
    /// Copy the project into a home of its own instead of binding it (fully watched; the
    /// original stays untouched and the copy is kept for review).
    #[arg(long)]
    copy: bool,
    /// The session's name on the control plane. Default: guard-<pid>.
    #[arg(long)]
    name: Option<String>,
    /// Do not pass this terminal's input to the agent.
    #[arg(long)]
    no_stdin: bool,
    /// Run even where no event stream can be recorded (the monitors are then blind).
    #[arg(long)]
    no_events: bool,
    /// Run the model proxy for the agent with this configuration (docs/proxy.md): inside at
    /// http://127.0.0.1:4000/v1 (OPENAI_BASE_URL, ANTHROPIC_BASE_URL), with a session token as
    /// its key; its exchanges go into this session's audit log, its kill rules and budgets stop
    /// the agent, and the policy's `tokens` and `model_requests` breakers count its traffic.
    #[arg(long)]
    proxy: Option<PathBuf>,
    /// The agent program and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum Control {
    /// Every running session and its state.
    List,
    /// One session's state: monitors, breakers, alerts, heartbeat.
    Status { session: String },
    /// Freeze the session's agent where it stands.
    Pause { session: String },
    /// Let a paused agent go on.
    Resume { session: String },
    /// Stop the agent: returns once zero of its processes are left.
    Stop { session: String },
    /// The operator is there: feeds the session's dead-man's switch.
    Heartbeat { session: String },
    /// Validate a policy file (exit 2 with located errors when it is invalid).
    Check { policy: PathBuf },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.control {
        Some(control) => runtime.block_on(operate(control)),
        None => runtime.block_on(guard(args.run)),
    }
}

async fn operate(command: Control) -> anyhow::Result<ExitCode> {
    let dir = control::control_dir();
    let (session, op) = match command {
        Control::List => {
            let sessions = control::list(&dir).await;
            let mut out = super::stdout();
            use std::io::Write;
            if sessions.is_empty() {
                writeln!(out, "no guard sessions")?;
            }
            for (name, status) in sessions {
                match status {
                    Ok(status) => writeln!(
                        out,
                        "{name}\t{}\t{} process(es)\t{}",
                        status["state"].as_str().unwrap_or("?"),
                        status["processes"],
                        status["command"]
                            .as_array()
                            .map(|words| words
                                .iter()
                                .filter_map(|w| w.as_str())
                                .collect::<Vec<_>>()
                                .join(" "))
                            .unwrap_or_default()
                    )?,
                    Err(why) => writeln!(out, "{name}\tgone\t{why}")?,
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Control::Check { policy: path } => {
            return match offswitch_guard::policy::load(&path) {
                Ok(policy) => {
                    use std::io::Write;
                    writeln!(
                        super::stdout(),
                        "{}: policy {:?} is valid: {} protected path(s), {} rule(s), {} breaker(s)",
                        path.display(),
                        policy.name,
                        policy.protect.len(),
                        policy.rules.len(),
                        policy.breakers.len()
                    )?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => Err(policy_error(error)),
            };
        }
        Control::Status { session } => (session, Op::Status),
        Control::Pause { session } => (session, Op::Pause),
        Control::Resume { session } => (session, Op::Resume),
        Control::Stop { session } => (session, Op::Stop),
        Control::Heartbeat { session } => (session, Op::Heartbeat),
    };
    let answer = control::request(&dir, &session, op)
        .await
        .map_err(super::invalid_input)?;
    use std::io::Write;
    writeln!(
        super::stdout(),
        "{}",
        serde_json::to_string_pretty(&answer)?
    )?;
    if answer.get("error").is_some() || answer.get("ok") == Some(&serde_json::json!(false)) {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn policy_error(error: offswitch_guard::PolicyError) -> anyhow::Error {
    match error {
        offswitch_guard::PolicyError::Invalid { .. }
        | offswitch_guard::PolicyError::TooLarge { .. } => super::invalid_input(error.to_string()),
        offswitch_guard::PolicyError::Read { .. } => super::invalid_input(error.to_string()),
    }
}

async fn guard(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.command.is_empty() {
        return Err(super::invalid_input(
            "no command to guard: offswitch guard [OPTIONS] -- <command...>",
        ));
    }
    // The kernel recorder loads while the policy is read and the audit log opened.
    offswitch_sandbox::prepare_recording();
    let proxy = match &args.proxy {
        Some(path) => {
            Some(offswitch_proxy::load(path).map_err(|e| super::invalid_input(e.to_string()))?)
        }
        None => None,
    };
    let policy = match &args.policy {
        Some(path) => offswitch_guard::policy::load(path).map_err(policy_error)?,
        None => {
            offswitch_guard::policy::parse(DEFAULT_POLICY, Path::new("<built-in default policy>"))
                .map_err(policy_error)?
        }
    };
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("guard-{}", std::process::id()));
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(super::invalid_input(
            "a session name is 1 to 64 letters, digits, `-` or `_`",
        ));
    }
    let home = offswitch_home()?;
    let audit_path = match &args.audit {
        Some(path) => path.clone(),
        None => home.join("guard").join(format!("{name}.audit")),
    };
    if let Some(parent) = audit_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let key = offswitch_audit::AuditKey::load_or_create_default()
        .map_err(|e| super::missing_prerequisite(format!("the audit key: {e}")))?;
    let key_dir = offswitch_audit::default_key_dir()
        .map_err(|e| super::missing_prerequisite(format!("the audit key: {e}")))?;
    let control_dir = control::control_dir();
    // Nothing of the guard may be inside what the agent sees.
    if let Some(project) = &args.project {
        let project = project
            .canonicalize()
            .map_err(|e| super::invalid_input(format!("the project {}: {e}", project.display())))?;
        let mut guarded: Vec<(&str, PathBuf)> = vec![
            ("the audit key", key_dir.clone()),
            ("the audit log", audit_path.clone()),
            ("the control sockets", control_dir.clone()),
            ("the guard's work directory", home.join("guard")),
        ];
        if let Some(policy) = &args.policy {
            guarded.push(("the policy", policy.clone()));
        }
        if let Some(witness) = &args.witness {
            guarded.push(("the witness", witness.clone()));
        }
        if let Some(path) = &args.proxy {
            guarded.push(("the model proxy's configuration", path.clone()));
        }
        for upstream in proxy.iter().flat_map(|p| &p.upstreams) {
            if let offswitch_proxy::config::KeySource::File(key) = &upstream.key {
                guarded.push(("an upstream's key file", key.clone()));
            }
        }
        for (what, path) in guarded {
            let absolute = absolute(&path);
            if absolute.starts_with(&project) {
                return Err(super::invalid_input(format!(
                    "{what} ({}) is inside the project {}: the agent could read or change it; \
                     choose a project that does not hold it",
                    absolute.display(),
                    project.display()
                )));
            }
        }
    }
    let mut options = offswitch_audit::Options {
        metadata: serde_json::json!({"session": name, "policy": policy.name, "command": args.command}),
        ..offswitch_audit::Options::default()
    };
    if let Some(witness) = &args.witness {
        options.witness = Some(offswitch_audit::Witness::File(witness.clone()));
    }
    let writer = offswitch_audit::AuditWriter::create(&audit_path, &key, options)
        .map_err(|e| super::invalid_input(format!("the audit log: {e}")))?;
    eprintln!(
        "offswitch guard: session {name}; audit log {}; `offswitch guard status {name}` to look in, `offswitch guard stop {name}` to stop it",
        audit_path.display()
    );
    let work_dir = home.join("guard").join(format!("{name}.work"));
    let options = GuardOptions {
        policy: Arc::new(policy),
        command: args.command.clone(),
        project: args.project.clone(),
        copy_project: args.copy,
        name: name.clone(),
        work_dir,
        control_dir,
        stdin: !args.no_stdin,
        allow_no_events: args.no_events,
        proxy,
        audit_path: std::fs::canonicalize(&audit_path).ok(),
    };
    // Its own task: the session must go on answering its control socket while an interrupt is
    // handled here.
    let mut session = tokio::spawn(offswitch_guard::run(
        options,
        Box::new(offswitch_guard::audit::Sink::new(writer)),
    ));
    let end = tokio::select! {
        end = &mut session => end.map_err(|e| anyhow::anyhow!("the session failed: {e}"))?,
        // An interrupt of the guard itself stops the agent like `stop` does, and the session
        // still ends through its own path: nothing is left running and the log is sealed.
        _ = interrupted() => {
            eprintln!("offswitch guard: interrupted: stopping the agent");
            let _ = control::request(&control::control_dir(), &name, Op::Stop).await;
            match tokio::time::timeout(Duration::from_secs(60), &mut session).await {
                Ok(end) => end.map_err(|e| anyhow::anyhow!("the session failed: {e}"))?,
                Err(_) => return Err(anyhow::anyhow!("the session did not end within 60 s of the interrupt")),
            }
        }
    };
    match end {
        Ok(end) => {
            eprintln!(
                "offswitch guard: the agent {}{}; {} process(es) it left running killed, {} survivor(s); audit log {}",
                end.status,
                end.stopped
                    .as_ref()
                    .map(|why| format!(" ({why})"))
                    .unwrap_or_default(),
                end.leftovers,
                end.survivors,
                audit_path.display()
            );
            if let Some(copy) = &end.kept_copy
                && args.project.is_some()
            {
                eprintln!(
                    "offswitch guard: the agent worked on a copy of the project, kept at {}",
                    copy.display()
                );
            }
            Ok(ExitCode::from(end.exit_code.clamp(0, 255) as u8))
        }
        Err(GuardError::Prerequisite(message)) => Err(super::missing_prerequisite(message)),
        Err(GuardError::Invalid(message)) => Err(super::invalid_input(message)),
        Err(GuardError::Failed(message)) => Err(anyhow::anyhow!(message)),
    }
}

pub(crate) async fn interrupted() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// `$OFFSWITCH_HOME`, else `~/.local/share/offswitch`.
pub(crate) fn offswitch_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("OFFSWITCH_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| super::missing_prerequisite("neither OFFSWITCH_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".local/share/offswitch"))
}

/// `path` made absolute, with its existing part's links resolved.
fn absolute(path: &Path) -> PathBuf {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut existing = path.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent.to_path_buf();
            }
            _ => return path,
        }
    }
    let mut resolved = existing.canonicalize().unwrap_or(existing);
    for name in rest.into_iter().rev() {
        resolved.push(name);
    }
    resolved
}
