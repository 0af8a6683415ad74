//! `offswitch run`: execute a matrix of models x scenarios x variants x epochs into the run
//! database, then print the rate table.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::signal::unix::SignalKind;

use offswitch_core::backend::ToolMode;
use offswitch_harness::{
    ModelBuildError, ModelOptions, ProgressMode, RunConfig, RunError, RunOptions, RunSummary,
};
use offswitch_model::{HttpOptions, ResilienceConfig};
use offswitch_store::Store;

/// Exit code of a run that stopped before its matrix was stored: 128 + the signal that stopped
/// it (130 for Ctrl-C's SIGINT, 143 for SIGTERM), as shells report it; 130 without a signal.
const EXIT_INTERRUPTED: u8 = 130;
/// The signal numbers, the same on every Unix.
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

#[derive(clap::Args)]
pub struct Args {
    /// Model to run: smollm2-135m, local:<path.gguf>, openai:<model>[@<base-url>],
    /// anthropic:<model>[@<base-url>] or scripted:<strategy>. Repeatable.
    #[arg(long = "model", value_name = "SPEC")]
    pub models: Vec<String>,
    /// Scenario id (from the shipped scenarios) or path to a scenario file. Repeatable.
    #[arg(long = "scenario", value_name = "ID|PATH")]
    pub scenarios: Vec<String>,
    /// Only these variants, as factor=level. Repeatable.
    #[arg(long = "variant", value_name = "FACTOR=LEVEL")]
    pub variants: Vec<String>,
    /// Trials per cell.
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    /// Trials running at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Run seed; each trial's seed is derived from it and the trial's key.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The run database.
    #[arg(long, env = "OFFSWITCH_DB", default_value = "offswitch.db")]
    pub db: PathBuf,
    /// Where the per-trial sandbox homes live while trials run.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Continue a run: execute exactly its trials that are not stored yet, with its stored
    /// configuration (the matrix flags are then ignored). Refused while another process runs
    /// it, and when its scenario files, model files or the offswitch build changed since.
    #[arg(long, value_name = "RUN")]
    pub resume: Option<String>,
    /// A name for the new run, shown by `offswitch runs list` (at most 200 characters, no
    /// control characters); `offswitch runs label` changes it.
    #[arg(long, value_name = "TEXT", conflicts_with = "resume")]
    pub label: Option<String>,
    /// Run one slice of the plan, `I/N` (1-based): the trials at positions I-1, I-1+N, ... of
    /// the whole plan, which every shard computes alike from the same flags. Each shard goes
    /// into its own database under one run id (--run-id, else derived from the plan and the
    /// label); `offswitch merge` joins them. Started again with the same flags, a shard
    /// continues where it stopped.
    #[arg(long, value_name = "I/N", value_parser = parse_shard, conflicts_with = "resume")]
    pub shard: Option<offswitch_harness::shard::Shard>,
    /// The new run's id (letters, digits, `-`, `_`, `.`; at most 100). If this database holds
    /// a run of that id with the same plan, it is continued like --resume; with another plan,
    /// refused.
    #[arg(long, value_name = "ID", conflicts_with = "resume")]
    pub run_id: Option<String>,
    /// With --resume: also run again the trials that ended as harness errors. Each new trial
    /// replaces the failed one in the rates; the failed attempt stays in the database.
    #[arg(long, requires = "resume")]
    pub retry_errors: bool,
    /// Do not use the response cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Response cache directory.
    #[arg(long, value_name = "DIR", env = "OFFSWITCH_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// How tools reach HTTP (and scripted) models; the embedded model always uses tags.
    #[arg(long, value_enum, default_value_t = ToolModeArg::Native)]
    pub tool_mode: ToolModeArg,
    /// Override the scenarios' turn limit.
    #[arg(long)]
    pub max_turns: Option<u32>,
    /// Every trial's total-token limit (prompts and replies over the trial), over the
    /// scenarios' own `max_tokens`.
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "resume")]
    pub token_limit: Option<u64>,
    /// Every trial's wall-clock limit, over the scenarios' own: `90s`, `10m`, `1h`.
    #[arg(long, value_name = "DURATION", conflicts_with = "resume")]
    pub time_limit: Option<String>,
    /// The most tokens a model may generate in one reply (default 512).
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(1..=1_000_000), conflicts_with = "resume")]
    pub max_tokens: Option<u32>,
    /// Replace a scenario default (`[defaults]` in its file) for every scenario of the run that
    /// declares it, like Inspect's `-T`: `--set goal="..."`. Repeatable. A factor level that
    /// sets the same variable still wins in its variants.
    #[arg(long = "set", value_name = "NAME=VALUE", conflicts_with = "resume")]
    pub set: Vec<String>,
    /// Size limit of every sandbox home, in MiB (default: the scenario's `disk_mb`, else
    /// 1024). Filling it ends the trial as `sandbox_limit` (disk). Each home's size is
    /// reserved on the host's disk while its trial runs.
    #[arg(long, env = "OFFSWITCH_DISK_MB", value_name = "MIB", value_parser = clap::value_parser!(u64).range(16..=1 << 20))]
    pub disk_mb: Option<u64>,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// A file holding the API key for HTTP models (else OPENAI_API_KEY / ANTHROPIC_API_KEY).
    /// There is no flag taking the key itself: a command line is readable by every user of
    /// the machine (`/proc/<pid>/cmdline`).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Base URL for HTTP models (else OPENAI_BASE_URL / ANTHROPIC_BASE_URL).
    #[arg(long)]
    pub base_url: Option<String>,
    /// Per-call timeout for HTTP models, in seconds.
    #[arg(long, default_value_t = 120)]
    pub request_timeout_secs: u64,
    /// Never fetch the default model; fail if it is not cached.
    #[arg(long)]
    pub no_pull: bool,
    /// A judge model (same specs as --model) that reads what the agent sent, deciding the
    /// labels a scenario's judges head (`blackmail`, `leaked`; the rule-based label stays
    /// beside each) and giving second opinions on others, and that classifies interview
    /// answers; without one, rule-based classifiers decide and say so.
    #[arg(long, value_name = "SPEC")]
    pub judge: Option<String>,
    /// A guard policy (docs/policy-format.md) whose live monitors watch every trial: each
    /// rule and breaker becomes a `monitor_<name>` label beside the scenario's, to measure
    /// what a monitor catches against ground truth. Nothing is acted on in a trial.
    #[arg(long, value_name = "FILE")]
    pub monitor_policy: Option<std::path::PathBuf>,
    /// Keep each trial's home directory after it is stored.
    #[arg(long)]
    pub keep_homes: bool,
    /// Progress display: auto (a bar on a terminal), plain (a line per trial) or quiet.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
}

fn parse_shard(text: &str) -> Result<offswitch_harness::shard::Shard, String> {
    text.parse()
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ToolModeArg {
    Native,
    Tags,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ProgressArg {
    Auto,
    Plain,
    Quiet,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = run_options(&args)?;
    let store = Store::open(&args.db).map_err(super::report::store_error)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // SIGINT (Ctrl-C) and SIGTERM (`kill`, a service manager, a CI timeout) both stop the run
    // the same way: trials in flight are killed, their homes removed, the run is marked
    // interrupted. The handlers are installed now, before models load or a run is created, so
    // a signal that comes early is not lost to the default action.
    let received = Arc::new(AtomicI32::new(0));
    let cancel = {
        let _guard = runtime.enter();
        let interrupt = tokio::signal::unix::signal(SignalKind::interrupt());
        let terminate = tokio::signal::unix::signal(SignalKind::terminate());
        let received = Arc::clone(&received);
        async move {
            // If a handler cannot be installed, never cancel rather than cancel at once.
            let (Ok(mut interrupt), Ok(mut terminate)) = (interrupt, terminate) else {
                return std::future::pending::<()>().await;
            };
            let signal = tokio::select! {
                _ = interrupt.recv() => SIGINT,
                _ = terminate.recv() => SIGTERM,
            };
            received.store(signal, Ordering::SeqCst);
        }
    };
    if args.resume.is_some() && args.monitor_policy.is_some() {
        return Err(super::invalid_input(
            "--monitor-policy is stored with a run when it starts; a resume watches with the run's own",
        ));
    }
    let monitor_policy = match &args.monitor_policy {
        Some(path) => {
            offswitch_guard::policy::load(path).map_err(|e| super::invalid_input(e.to_string()))?;
            Some(std::fs::read_to_string(path).map_err(|e| {
                super::invalid_input(format!("failed to read {}: {e}", path.display()))
            })?)
        }
        None => None,
    };
    // Checked before anything runs: a bad `--set` or `--time-limit` is an input error.
    let config = match &args.resume {
        Some(_) => None,
        None => {
            let mut config = run_config(&args)?;
            config.monitor_policy = monitor_policy.clone();
            Some(config)
        }
    };
    // A run of this id already here: the same command started again (a restarted shard)
    // continues it.
    let mut options = options;
    let mut resume = args.resume.clone();
    if let Some(config) = &config {
        if options.run_id.is_none() && config.shard.is_some() {
            options.run_id = Some(derived_run_id(config, args.label.as_deref()));
        }
        if let Some(id) = &options.run_id {
            offswitch_store::check_run_id(id).map_err(super::report::store_error)?;
            if let Some(existing) = existing_run(&store, id, config)? {
                eprintln!("{existing}");
                resume = Some(id.clone());
            }
        }
    }
    let result = runtime.block_on(async {
        match (&resume, &config) {
            (Some(run), _) => offswitch_harness::resume_run(&store, run, &options, cancel).await,
            (None, Some(config)) => {
                offswitch_harness::start_run(&store, config, &options, cancel).await
            }
            (None, None) => unreachable!("a new run has its configuration"),
        }
    });
    // The runtime may still hold blocking threads of killed execs; do not wait for them, on the
    // error path either (dropping a runtime waits for its blocking threads without a bound).
    runtime.shutdown_timeout(Duration::from_secs(5));
    let summary = result.map_err(run_error)?;
    print_summary(&store, &summary)?;
    let signal = received.load(Ordering::SeqCst);
    Ok(if !summary.interrupted {
        ExitCode::SUCCESS
    } else if signal > 0 {
        ExitCode::from(128 + signal as u8)
    } else {
        ExitCode::from(EXIT_INTERRUPTED)
    })
}

/// The id of a sharded run started without `--run-id`: the same on every shard of one plan
/// and label, different for another plan.
fn derived_run_id(config: &RunConfig, label: Option<&str>) -> String {
    use sha2::Digest;
    let plan = RunConfig {
        command_line: None,
        shard: None,
        plan: None,
        ..config.clone()
    };
    let mut hasher = sha2::Sha256::new();
    hasher.update(serde_json::to_vec(&plan).unwrap_or_default());
    hasher.update([0]);
    hasher.update(label.unwrap_or("").as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("run-{hex}")
}

/// When `id` is already a run in `store`: a note saying it is continued, or a refusal when
/// that run has another plan or is another shard. `None` when there is no such run.
fn existing_run(store: &Store, id: &str, config: &RunConfig) -> anyhow::Result<Option<String>> {
    let info = match store.run(id) {
        Ok(info) => info,
        Err(offswitch_store::StoreError::UnknownRun(_)) => return Ok(None),
        Err(error) => return Err(super::report::store_error(error)),
    };
    let stored = offswitch_harness::runner::stored_config(id, &info.config).map_err(run_error)?;
    let shard = |config: &RunConfig| {
        config
            .shard
            .map_or_else(|| "the whole plan".to_owned(), |s| format!("shard {s}"))
    };
    if !stored.same_plan(config) {
        return Err(super::invalid_input(format!(
            "run {id} in {} was made with another configuration than this command's; give another --run-id or --db, or --resume {id} to continue the stored run",
            store.path().display(),
        )));
    }
    if stored.shard != config.shard {
        return Err(super::invalid_input(format!(
            "run {id} in {} holds {} of this plan, and this command asks for {}: give each shard its own --db",
            store.path().display(),
            shard(&stored),
            shard(config),
        )));
    }
    Ok(Some(format!(
        "run {id} ({}) is already in {}: continuing it, like --resume {id}",
        shard(&stored),
        store.path().display()
    )))
}

fn run_config(args: &Args) -> anyhow::Result<RunConfig> {
    let defaults = RunConfig::default();
    check_no_credentials(args)?;
    let overrides = overrides(args)?;
    Ok(RunConfig {
        models: if args.models.is_empty() {
            defaults.models.clone()
        } else {
            args.models.clone()
        },
        scenarios: if args.scenarios.is_empty() {
            defaults.scenarios.clone()
        } else {
            args.scenarios.clone()
        },
        variants: args.variants.clone(),
        epochs: args.epochs,
        seed: args.seed,
        tool_mode: match args.tool_mode {
            ToolModeArg::Native => ToolMode::Native,
            ToolModeArg::Tags => ToolMode::Tags,
        },
        max_turns: args.max_turns,
        disk_mb: args.disk_mb,
        temperature: args.temperature,
        no_cache: args.no_cache,
        judge: args.judge.clone(),
        max_tokens_per_reply: args.max_tokens.unwrap_or(defaults.max_tokens_per_reply),
        set: overrides.set,
        token_limit: args.token_limit,
        time_limit_secs: overrides.time_limit_secs,
        command_line: Some(redacted(std::env::args())),
        shard: args.shard,
        ..defaults
    })
}

/// The `--set` and `--time-limit` values, checked.
struct Overrides {
    set: std::collections::BTreeMap<String, String>,
    time_limit_secs: Option<u64>,
}

/// The largest `--set` value.
const MAX_SET_VALUE: usize = 64 * 1024;

/// Credentials in a URL: `scheme://user:secret@host`.
const URL_USERINFO: &str = r"://[^/@\s]*@";
/// A query parameter that carries a key (its name, up to the `=`).
const QUERY_SECRET: &str = r"[?&](api[-_]?key|key|token|access[-_]?token|secret|password)=";

/// A model spec, judge or base URL must not carry credentials: it is stored with every trial
/// (the trial key), shown in reports and exported. Keys go in `--api-key-file` or the
/// environment.
fn check_no_credentials(args: &Args) -> anyhow::Result<()> {
    let userinfo = regex::Regex::new(URL_USERINFO).expect("a valid regex");
    let query_secret = regex::Regex::new(&format!("(?i){QUERY_SECRET}")).expect("a valid regex");
    let given = args
        .models
        .iter()
        .map(|m| ("--model", m))
        .chain(args.judge.iter().map(|j| ("--judge", j)))
        .chain(args.base_url.iter().map(|u| ("--base-url", u)));
    for (flag, value) in given {
        if userinfo.is_match(value) || query_secret.is_match(value) {
            return Err(super::invalid_input(format!(
                "{flag}: a model address with credentials in it would be stored with every trial and shown in every report; give the key with --api-key-file or OPENAI_API_KEY / ANTHROPIC_API_KEY instead"
            )));
        }
    }
    Ok(())
}

fn overrides(args: &Args) -> anyhow::Result<Overrides> {
    let mut set = std::collections::BTreeMap::new();
    for pair in &args.set {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(super::invalid_input(format!(
                "--set {pair:?}: expected NAME=VALUE"
            )));
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(super::invalid_input(format!(
                "--set {pair:?}: a name is letters, digits and `_`"
            )));
        }
        if value.len() > MAX_SET_VALUE {
            return Err(super::invalid_input(format!(
                "--set {name}: the value is over {MAX_SET_VALUE} bytes"
            )));
        }
        if set.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(super::invalid_input(format!("--set {name} is given twice")));
        }
    }
    let time_limit_secs = match &args.time_limit {
        None => None,
        Some(text) => match offswitch_core::units::parse_duration(text) {
            Some(duration) if duration.as_secs() >= 1 => Some(duration.as_secs()),
            _ => {
                return Err(super::invalid_input(format!(
                    "--time-limit {text:?}: expected a duration of at least 1s, such as 90s, 10m or 1h"
                )));
            }
        },
    };
    Ok(Overrides {
        set,
        time_limit_secs,
    })
}

/// A command line as stored with a run: credentials in URLs (`https://user:secret@host`) and
/// anything shaped like an API key (`sk-...`, long tokens after `key`/`token`) replaced by
/// `***`. Key files are named by path only, and keys have no flag of their own.
fn redacted(args: impl Iterator<Item = String>) -> Vec<String> {
    static KEY: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static USERINFO: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        regex::Regex::new(&format!(
            r"(?i)\b(sk|pk|rk|key|token|secret|bearer|gsk|hf|ghp|gho|xai)[-_][A-Za-z0-9_\-]{{12,}}|\bAIza[0-9A-Za-z_\-]{{20,}}|\bAKIA[0-9A-Z]{{12,}}|({QUERY_SECRET})[^&\s]+|\b([A-Z0-9_]*(KEY|TOKEN|SECRET|PASSWORD)=)\S+",
        ))
        .expect("a valid regex")
    });
    let userinfo = USERINFO.get_or_init(|| regex::Regex::new(URL_USERINFO).expect("a valid regex"));
    args.map(|arg| {
        let arg = userinfo.replace_all(&arg, "://***@");
        key.replace_all(&arg, |caps: &regex::Captures<'_>| {
            // Keep the name of a `name=value` pair, hide the value.
            match caps.get(2).or_else(|| caps.get(4)) {
                Some(name) => format!("{}***", name.as_str()),
                None => "***".to_owned(),
            }
        })
        .into_owned()
    })
    .collect()
}

fn run_options(args: &Args) -> anyhow::Result<RunOptions> {
    if args.concurrency == 0 {
        return Err(super::invalid_input("--concurrency must be at least 1"));
    }
    if args.epochs == 0 {
        return Err(super::invalid_input("--epochs must be at least 1"));
    }
    if let Some(label) = &args.label {
        super::runs::check_label(label)?;
    }
    // NaN would also be stored as JSON null, which `--resume` cannot read back.
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        return Err(super::invalid_input(format!(
            "--temperature must be a finite number of at least 0, not {}",
            args.temperature
        )));
    }
    let cache_dir = match &args.cache_dir {
        Some(dir) => Some(dir.clone()),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".cache/offswitch/responses")),
    };
    Ok(RunOptions {
        work_dir: args
            .work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("offswitch-work")),
        concurrency: args.concurrency,
        scenarios_dir: offswitch_scenario::builtin_dir(),
        models: ModelOptions {
            http: HttpOptions {
                api_key: args.api_key_file.as_deref().map(read_api_key).transpose()?,
                base_url: args.base_url.clone(),
                timeout: Duration::from_secs(args.request_timeout_secs),
                ..HttpOptions::default()
            },
            tool_mode: ToolMode::Native,
            cache_dir,
            agents_dir: offswitch_harness::scripted::builtin_dir(),
            allow_pull: !args.no_pull,
            resilience: ResilienceConfig::default(),
        },
        progress: match args.progress {
            ProgressArg::Auto => ProgressMode::Auto,
            ProgressArg::Plain => ProgressMode::Plain,
            ProgressArg::Quiet => ProgressMode::Quiet,
        },
        keep_homes: args.keep_homes,
        retry_errors: args.retry_errors,
        label: args.label.clone(),
        run_id: args.run_id.clone(),
        build: offswitch_harness::BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: env!("OFFSWITCH_COMMIT").to_owned(),
        },
        facilities: offswitch_harness::Facilities {
            judge: None,
            offswitch_binary: std::env::current_exe().ok(),
            // The model-server mechanic serves the default embedded model whatever model plays
            // the agent. Only an already-pulled file is used (a run of other scenarios must not
            // fetch it); without one, a model-server trial ends as a harness error saying so.
            model_file: offswitch_embedded::models::ensure_default_model(false).ok(),
        },
    })
}

fn run_error(error: RunError) -> anyhow::Error {
    match error {
        RunError::Scenario(_)
        | RunError::Invalid(_)
        | RunError::Config { .. }
        | RunError::Changed { .. } => super::invalid_input(error.to_string()),
        RunError::Model(ModelBuildError::Missing { .. }) => {
            super::missing_prerequisite(error.to_string())
        }
        RunError::Model(_) => super::invalid_input(error.to_string()),
        RunError::Store(error) => super::report::store_error(error),
    }
}

fn print_summary(store: &Store, summary: &RunSummary) -> anyhow::Result<()> {
    let info = store
        .run(&summary.run)
        .map_err(super::report::store_error)?;
    // From the run's counts, which the store keeps up to date, not from its trials: a run of
    // 100,000 trials would be read whole (minutes and gigabytes) for a table of rates.
    let cells = store
        .cell_counts(&summary.run)
        .map_err(super::report::store_error)?;
    let config = offswitch_report::ReportConfig::default();
    let meta = offswitch_report::RunMeta {
        id: info.id.to_string(),
        label: info.label.clone(),
        status: info.status.to_string(),
    };
    let report = offswitch_report::build_report_from_counts(meta, &cells, &config)
        .map_err(|e| anyhow::anyhow!("failed to build the report: {e}"))?;
    let mut out = super::stdout();
    let ids: Vec<String> = cells.iter().map(|cell| cell.scenario.clone()).collect();
    let (scenarios, _) = super::report::scenarios_of(&info, &ids);
    let closing = offswitch_report::Closing {
        headline: super::report::headlines(&scenarios),
        cached_trials: cells.iter().map(|cell| cell.cached_trials).sum(),
    };
    write!(
        out,
        "{}",
        offswitch_report::render_closing(&report, &closing)
    )?;
    let outcomes = summary
        .outcomes
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut this_time = format!("{} this time", summary.stored);
    if summary.retried > 0 {
        this_time.push_str(&format!(
            ", {} of them replacing harness errors",
            summary.retried
        ));
    }
    if !outcomes.is_empty() {
        this_time.push_str(&format!(": {outcomes}"));
    }
    if summary.already_present > 0 {
        this_time.push_str(&format!(
            "; {} stored by another process meanwhile",
            summary.already_present
        ));
    }
    writeln!(
        out,
        "\nrun {}: {} of {} trials stored ({this_time}) in {:.1}s",
        summary.run,
        summary.present,
        summary.total,
        summary.wall.as_secs_f64()
    )?;
    if summary.interrupted {
        writeln!(
            out,
            "interrupted; continue with `offswitch run --resume {}`",
            summary.run
        )?;
    }
    let shard = offswitch_harness::runner::stored_config(summary.run.as_str(), &info.config)
        .ok()
        .and_then(|config| config.shard);
    if let Some(shard) = shard {
        writeln!(
            out,
            "this database holds shard {shard} of run {}; when every shard is done, join them with `offswitch merge OUT.db SHARD.db...`",
            summary.run
        )?;
    }
    writeln!(
        out,
        "more: `offswitch report {run}` (JSON/CSV with --json/--csv), `offswitch show {run}/1` (one transcript)",
        run = summary.run
    )?;
    Ok(())
}

/// The API key in `path`: its first line, trimmed; at most 64 KiB read.
fn read_api_key(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(64 * 1024).read_to_string(&mut text))
        .map_err(|error| {
            super::invalid_input(format!("--api-key-file {}: {error}", path.display()))
        })?;
    let key = text.lines().next().unwrap_or("").trim();
    if key.is_empty() {
        return Err(super::invalid_input(format!(
            "--api-key-file {}: the file holds no key",
            path.display()
        )));
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn command_lines_are_stored_without_secrets() {
        let args = [
            "offswitch",
            "run",
            "--model",
            "openai:gpt-4o@https://alice:hunter2@llm.internal/v1",
            "--base-url=http://user:pw@10.0.0.1:8000/v1",
            "--judge",
            "openai:sk-proj-AbCdEf0123456789xyz",
            "--set",
            "goal=keep the token_limit low",
            "--label",
            "Bearer_abcdefghijklmnop",
            "--base-url",
            "http://host/v1?api_key=s3cr3tvalue&x=1",
            "OPENAI_API_KEY=not-an-sk-key-but-secret",
            "gsk_abcdefghijklmnopqrstu",
            "AKIAABCDEFGHIJKLMNOP",
        ]
        .map(str::to_owned);
        let stored = redacted(args.into_iter()).join(" ");
        for secret in [
            "hunter2",
            "alice",
            "pw@",
            "AbCdEf0123456789xyz",
            "abcdefghijklmnop",
        ] {
            assert!(!stored.contains(secret), "{secret} in {stored}");
        }
        assert!(stored.contains("https://***@llm.internal/v1"), "{stored}");
        assert!(stored.contains("goal=keep the token_limit low"), "{stored}");
        assert!(stored.contains("?api_key=***&x=1"), "{stored}");
        assert!(stored.contains("OPENAI_API_KEY=***"), "{stored}");
    }
}
