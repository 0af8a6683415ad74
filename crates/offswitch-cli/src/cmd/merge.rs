//! `offswitch merge`: join the shard databases of a run started with `--shard i/N` into one.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use offswitch_merge::MergeError;

#[derive(clap::Args)]
pub struct Args {
    /// The database to merge into (created if missing; it must not hold the run yet).
    #[arg(value_name = "OUT.db")]
    pub out: PathBuf,
    /// The shard databases: every shard of the run, once each.
    #[arg(value_name = "SHARD.db", required = true)]
    pub shards: Vec<PathBuf>,
    /// The run to merge, when a shard database holds several.
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let summary =
        offswitch_merge::merge(&args.out, &args.shards, args.run.as_deref()).map_err(|error| {
            match error {
                MergeError::Refused(_) => super::invalid_input(error.to_string()),
                MergeError::Store(error) => super::report::store_error(error),
            }
        })?;
    let attempts = summary.copied - summary.trials;
    let mut out = super::stdout();
    writeln!(
        out,
        "merged run {} from {} shards into {}: {} trials{} in {:.1}s",
        summary.run,
        summary.shards,
        args.out.display(),
        summary.trials,
        if attempts > 0 {
            format!(" (and {attempts} earlier attempts they replaced)")
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64()
    )?;
    writeln!(
        out,
        "more: `offswitch report {} --db {}`",
        summary.run,
        args.out.display()
    )?;
    Ok(ExitCode::SUCCESS)
}
