//! `offswitch export`: a run's trials for other tools: one row per trial (JSON Lines or CSV),
//! one row per trial and label (`--long`), or Inspect `.eval` logs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use offswitch_export::{RunMeta, Shape, Trial};

use super::report::{open_existing_store, resolve_run, store_error};

#[derive(clap::Args)]
pub struct Args {
    /// The run id (as `offswitch run` printed it), or `latest`.
    #[arg(default_value = "latest")]
    pub run: String,
    /// The run database.
    #[arg(long, env = "OFFSWITCH_DB", default_value = "offswitch.db")]
    pub db: PathBuf,
    /// `jsonl` and `csv`: one row per trial (key, factors, outcome, every label, tokens,
    /// timings); `inspect`: one Inspect `.eval` log per model and scenario.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    /// One row per trial and label instead of per trial (`jsonl` and `csv`).
    #[arg(long)]
    pub long: bool,
    /// Where to write: a file (`-` or none: standard output) for `jsonl` and `csv`, a
    /// directory (default `.`) for `inspect`.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Shorthand for `--format jsonl --out PATH`.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["csv", "out", "format"])]
    pub json: Option<PathBuf>,
    /// Shorthand for `--format csv --out PATH`.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["json", "out", "format"])]
    pub csv: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
    Inspect,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    export(&args, &mut super::stdout())?;
    Ok(ExitCode::SUCCESS)
}

/// The command with its standard output going to `out`, so tests can read it.
pub fn export(args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let (format, path) = match (&args.json, &args.csv) {
        (Some(path), _) => (Format::Jsonl, Some(path.clone())),
        (_, Some(path)) => (Format::Csv, Some(path.clone())),
        _ => (args.format, args.out.clone()),
    };
    if format == Format::Inspect && args.long {
        return Err(super::invalid_input(
            "--long is for the jsonl and csv formats; an Inspect log holds every label already",
        ));
    }
    let store = open_existing_store(&args.db)?;
    let run = resolve_run(&store, &args.run)?;
    let provenance = store.provenance(&run.id).map_err(store_error)?;
    let stored = store
        .stored_trials_without_events(&run.id)
        .map_err(store_error)?;
    let meta = RunMeta {
        id: run.id.to_string(),
        label: run.label.clone(),
        status: run.status.to_string(),
        created_at_ms: run.created_at_ms,
        offswitch_version: provenance.as_ref().map(|p| p.offswitch_version.clone()),
        commit: provenance.as_ref().map(|p| p.commit.clone()),
    };
    let trials: Vec<Trial<'_>> = stored
        .iter()
        .map(|t| Trial {
            index: t.index,
            attempt: t.attempt,
            record: &t.record,
        })
        .collect();
    let shape = if args.long { Shape::Long } else { Shape::Wide };
    if format == Format::Inspect {
        let dir = path.unwrap_or_else(|| PathBuf::from("."));
        let logs = offswitch_export::write_inspect(&meta, &trials, &dir)?;
        for log in &logs {
            writeln!(
                out,
                "{} ({} / {}: {} trials)",
                log.path.display(),
                log.model,
                log.scenario,
                log.samples
            )?;
        }
        if logs.is_empty() {
            writeln!(out, "run {} has no trials: no log written", meta.id)?;
        }
        return Ok(());
    }
    let write = |sink: &mut dyn Write| match format {
        Format::Jsonl => offswitch_export::write_jsonl(&meta, &trials, shape, sink),
        _ => offswitch_export::write_csv(&meta, &trials, shape, sink),
    };
    match path.filter(|p| p.as_os_str() != "-") {
        None => write(out)?,
        Some(path) => {
            super::not_a_database(&path, &args.db)?;
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut sink = std::io::BufWriter::new(file);
            write(&mut sink)?;
            sink.flush()
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
