//! The `offswitch` binary: parse arguments, call a library, map errors to exit codes.
//!
//! Each subcommand lives in its own module under `cmd/` with an `Args` struct and a `run`
//! function returning an exit code. Exit codes: 0 success, 1 harness failure, 2 invalid input
//! (scenario files, arguments), 3 a missing prerequisite (model file, pip, privileges); 141
//! when standard output was closed by its reader (`| head`), quietly, as a Unix tool would.

mod cmd;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "offswitch",
    version,
    about = "Measure and contain AI self-preservation behaviour"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run a matrix of models x scenarios x variants x epochs.
    Run(cmd::run::Args),
    /// List, show, label and delete the runs of a database.
    #[command(subcommand)]
    Runs(cmd::runs::Command),
    /// Rates with intervals for a stored run (terminal table, JSON, CSV).
    Report(cmd::report::Args),
    /// One trial's transcript with its labels.
    Show(cmd::show::Args),
    /// A run's rates beside the published figures (data/published.toml), with intervals.
    Compare(cmd::compare::Args),
    /// A run's trials for other tools: one row per trial or per label (JSON Lines, CSV), or
    /// Inspect `.eval` logs.
    Export(cmd::export::Args),
    /// A web viewer over a run database and this user's guard sessions (loopback only; the
    /// address it prints carries the access token).
    View(cmd::view::Args),
    /// Join the shard databases of a run started with `--shard i/N` into one run, after
    /// checking that together they are exactly its plan.
    Merge(cmd::merge::Args),
    /// List, show and validate scenario files.
    #[command(subcommand)]
    Scenarios(cmd::scenarios::Command),
    /// Get and list embedded models.
    #[command(subcommand)]
    Models(cmd::models::Command),
    /// Serve the embedded model over an OpenAI-compatible endpoint.
    ServeModel(cmd::serve_model::Args),
    /// Run an agent program contained: a sandbox, live monitors, circuit breakers, a
    /// tamper-evident audit log; and operate running sessions.
    Guard(cmd::guard::Args),
    /// A recording and enforcing proxy in front of model APIs (OpenAI chat completions and
    /// Responses, Anthropic Messages): session tokens, tool-call rules checked in flight,
    /// budgets, a tamper-evident audit log.
    Proxy(cmd::proxy::Args),
    /// Try the sandbox by hand.
    #[command(subcommand)]
    Sandbox(cmd::sandbox::Command),
    /// Verify, read and prove tamper-evident audit logs; make their signing key.
    #[command(subcommand)]
    Audit(cmd::audit::Command),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff; `offswitch man | man -l -`).
    Man,
}

/// mimalloc instead of glibc's malloc: the proxy's hot path spent a fifth of its time in glibc's
/// allocator, much of it on arena locks shared by the runtime's threads (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OFFSWITCH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Runs(command) => cmd::runs::run(command),
        Command::Report(args) => cmd::report::run(args),
        Command::Show(args) => cmd::show::run(args),
        Command::Compare(args) => cmd::compare::run(args),
        Command::Export(args) => cmd::export::run(args),
        Command::Merge(args) => cmd::merge::run(args),
        Command::View(args) => cmd::view::run(args),
        Command::Scenarios(command) => cmd::scenarios::run(command),
        Command::Models(command) => cmd::models::run(command),
        Command::ServeModel(args) => cmd::serve_model::run(args),
        Command::Sandbox(command) => cmd::sandbox::run(command),
        Command::Guard(args) => cmd::guard::run(args),
        Command::Proxy(args) => cmd::proxy::run(args),
        Command::Audit(command) => cmd::audit::run(command),
        Command::Completions { shell } => {
            // Rendered first: the generator panics on a write error (`| head`).
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "offswitch", &mut script);
            cmd::stdout()
                .write_all(&script)
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .and_then(|()| cmd::stdout().write_all(&page))
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away: nothing is wrong, and nobody is listening.
        Err(error) if cmd::is_stdout_closed(&error) => ExitCode::from(cmd::EXIT_STDOUT_CLOSED),
        Err(error) => {
            // Not `eprintln!`: with stderr closed too, a panic would replace the exit code.
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::from(cmd::exit_code_for(&error))
        }
    }
}
