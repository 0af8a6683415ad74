//! `offswitch sandbox run|check`: try the sandbox and its off-switch by hand.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use offswitch_sandbox::{
    Bind, DiskLimit, ExecRequest, ExecStatus, Limits, NetworkMode, Sandbox, SandboxConfig,
    SandboxError, check_host,
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Run one command in a fresh sandbox, print its output and how it ended, then kill the
    /// sandbox and report the off-switch (processes killed, survivors).
    Run(RunArgs),
    /// Say which sandbox features work on this host, which degrade, and why.
    Check,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Memory limit for the whole sandbox, in bytes (suffixes K, M, G allowed) [default: 512M,
    /// as for a trial].
    #[arg(long, value_parser = parse_bytes)]
    memory: Option<u64>,
    /// Maximum number of processes in the sandbox [default: 256, as for a trial].
    #[arg(long)]
    pids: Option<u64>,
    /// Size limit of the home, in bytes (suffixes K, M, G allowed; at least 16M) [default: 1G,
    /// as for a trial]. Not applied to an existing `--home`.
    #[arg(long, value_parser = parse_bytes)]
    disk: Option<u64>,
    /// CPU time for the whole sandbox, in seconds.
    #[arg(long)]
    cpu_secs: Option<f64>,
    /// Wall time for the whole sandbox, in seconds.
    #[arg(long)]
    wall_secs: Option<f64>,
    /// Host directory to use as the home (kept afterwards, a plain directory); a temporary
    /// one otherwise. A directory that does not exist yet gets the disk limit too.
    #[arg(long)]
    home: Option<PathBuf>,
    /// Bind a host file or directory read-only into the sandbox: `HOST:INSIDE`, INSIDE
    /// absolute (e.g. `--ro-bind target/debug/offswitch:/opt/offswitch/bin/offswitch`).
    #[arg(long = "ro-bind", value_name = "HOST:INSIDE", value_parser = parse_bind)]
    ro_bind: Vec<Bind>,
    /// Timeout of the command itself, in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout_secs: f64,
    /// The command and its arguments (run through bash, each argument quoted).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run_command(args),
        Command::Check => check(),
    }
}

fn parse_bind(value: &str) -> Result<Bind, String> {
    match value.split_once(':') {
        Some((host, inside)) if !host.is_empty() && !inside.is_empty() => Ok(Bind {
            host: PathBuf::from(host),
            inside: PathBuf::from(inside),
        }),
        _ => Err(format!("expected HOST:INSIDE, got {value:?}")),
    }
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        super::invalid_input(format!(
            "{flag} must be a non-negative number of seconds, got {value}"
        ))
    })
}

fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    let limits = Limits {
        memory_bytes: Some(args.memory.unwrap_or(Limits::DEFAULT_MEMORY_BYTES)),
        max_processes: Some(args.pids.unwrap_or(Limits::DEFAULT_MAX_PROCESSES)),
        cpu_time: args
            .cpu_secs
            .map(|s| seconds(s, "--cpu-secs"))
            .transpose()?,
        wall_time: args
            .wall_secs
            .map(|s| seconds(s, "--wall-secs"))
            .transpose()?,
    };
    let timeout = seconds(args.timeout_secs, "--timeout-secs")?;
    let disk = DiskLimit {
        bytes: args.disk.unwrap_or(DiskLimit::DEFAULT.bytes),
    };
    if disk.bytes < DiskLimit::MIN_BYTES {
        return Err(super::invalid_input(format!(
            "--disk must be at least {} MiB",
            DiskLimit::MIN_BYTES >> 20
        )));
    }
    let temporary = args.home.is_none();
    let home = args.home.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("offswitch-sandbox-home-{}", std::process::id()))
    });
    if temporary || !home.exists() {
        offswitch_sandbox::create_home(&home, disk).map_err(|error| {
            super::missing_prerequisite(format!(
                "failed to create the home {}: {error}",
                home.display()
            ))
        })?;
    } else if args.disk.is_some() {
        eprintln!(
            "warning: --disk does not apply to the existing home {}",
            home.display()
        );
    }
    // `/proc/self` belongs to the effective uid: root's sandboxes map to another uid.
    let root = std::fs::metadata("/proc/self")
        .is_ok_and(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0);
    if !temporary && root {
        // Every sandbox home is given to the sandbox's unprivileged uid so that its root can
        // write there; a directory the user named deserves to be told.
        eprintln!(
            "warning: --home {}: its contents will belong to uid {} (the sandbox's root) afterwards",
            home.display(),
            offswitch_sandbox::SANDBOX_HOST_ID
        );
    }
    let sandbox = Sandbox::create(SandboxConfig {
        home: home.clone(),
        limits,
        network: NetworkMode::LoopbackOnly,
        env: Vec::new(),
        hostname: "sandbox".into(),
        ro_binds: args.ro_bind,
        protect: Vec::new(),
        home_idmap: None,
        watch_opens: Vec::new(),
    })
    .map_err(|error| {
        if temporary {
            let _ = offswitch_sandbox::remove_home(&home);
        }
        let message = format!("failed to create a sandbox at {}: {error}", home.display());
        match error {
            // A bad `--ro-bind` is the user's mistake, not a missing prerequisite.
            SandboxError::InvalidBind { .. } => super::invalid_input(message),
            _ => super::missing_prerequisite(message),
        }
    })?;
    let command_line = args
        .command
        .iter()
        .map(|word| shell_quote(word))
        .collect::<Vec<_>>()
        .join(" ");
    let result = sandbox.exec(&ExecRequest {
        command: command_line,
        stdin: Vec::new(),
        timeout,
        output_cap: 1 << 20,
    })?;
    // Written before the kill report, so a closed stdout still lets the sandbox be killed
    // below: the error is returned only after that.
    let written = super::stdout().write_all(&result.stdout);
    std::io::stderr().write_all(&result.stderr)?;
    let report = sandbox.kill()?;
    eprintln!(
        "status: {}; wall {:.1} ms, cpu {:.1} ms{}",
        describe(&result.status),
        result.wall.as_secs_f64() * 1e3,
        result.cpu.as_secs_f64() * 1e3,
        if result.truncated_bytes > 0 {
            format!(", {} bytes of output cut", result.truncated_bytes)
        } else {
            String::new()
        }
    );
    eprintln!(
        "off-switch: {} processes killed in {:.1} ms, {} survivors; sandbox state {:?}",
        report.processes_killed,
        report.elapsed.as_secs_f64() * 1e3,
        report.survivors,
        sandbox.state()
    );
    drop(sandbox);
    if temporary {
        let _ = offswitch_sandbox::remove_home(&home);
    } else {
        offswitch_sandbox::keep_home(&home)?;
        eprintln!("home kept at {}", home.display());
    }
    written?;
    Ok(match result.status {
        ExecStatus::Exited(code) => ExitCode::from(code.clamp(0, 255) as u8),
        _ => ExitCode::from(1),
    })
}

fn check() -> anyhow::Result<ExitCode> {
    let scratch =
        std::env::temp_dir().join(format!("offswitch-sandbox-check-{}", std::process::id()));
    let checks = check_host(&scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = super::stdout();
    for check in &checks {
        let verdict = if check.works { "ok      " } else { "degraded" };
        writeln!(out, "{:width$}  {verdict}  {}", check.name, check.detail)?;
    }
    let namespaces = checks.iter().any(|c| c.name == "namespaces" && c.works);
    if namespaces {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(super::missing_prerequisite(
            "this host cannot create sandboxes (see the namespaces line above)",
        ))
    }
}

/// How an exec ended, in words.
pub fn describe(status: &ExecStatus) -> String {
    match status {
        ExecStatus::Exited(code) => format!("exited {code}"),
        ExecStatus::Signaled(signal) => format!("killed by signal {signal}"),
        ExecStatus::TimedOut => "timed out".into(),
        ExecStatus::SandboxShutDown => "sandbox shut down".into(),
        ExecStatus::LimitExceeded(kind) => format!("{kind:?} limit exceeded").to_lowercase(),
    }
}

fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    offswitch_guard::policy::parse_bytes(text).ok_or_else(|| {
        format!(
            "expected a number of bytes like 67108864 or 64M, got {:?}",
            text.trim()
        )
    })
}
