//! `offswitch scenarios list|show|validate`: browse and check scenario files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use offswitch_scenario::{Scenario, ScenarioError};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List the scenarios in a folder (default: the built-in ones) with their variant counts.
    List {
        /// Folder of scenario files; defaults to $OFFSWITCH_SCENARIOS or the shipped scenarios.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show one scenario: source, factors and levels, tools, detectors, limits.
    Show {
        /// A built-in scenario id, or a path to a scenario file.
        scenario: String,
        /// Also print the rendered prompts of this variant (e.g. `condition=b-user`).
        #[arg(long)]
        variant: Option<String>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Validate scenario files (default: every built-in one); errors print as file:line:col.
    Validate {
        /// Files or folders; folders are searched for *.toml.
        paths: Vec<PathBuf>,
    },
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List { dir } => list(&dir.unwrap_or_else(offswitch_scenario::builtin_dir)),
        Command::Show {
            scenario,
            variant,
            dir,
        } => show(
            &scenario,
            variant.as_deref(),
            &dir.unwrap_or_else(offswitch_scenario::builtin_dir),
        ),
        Command::Validate { paths } => validate(&paths),
    }
}

fn list(dir: &Path) -> anyhow::Result<ExitCode> {
    // A directory without scenario files is one of the errors.
    let (scenarios, errors) = offswitch_scenario::load_dir(dir);
    let mut out = super::stdout();
    for scenario in &scenarios {
        writeln!(
            out,
            "{:<28} {:<22} {:>3} variant(s)  {}",
            scenario.id(),
            scenario.category,
            scenario.variants().len(),
            scenario.title
        )?;
    }
    if errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(invalid(&errors))
    }
}

fn show(name: &str, variant: Option<&str>, dir: &Path) -> anyhow::Result<ExitCode> {
    let scenario = find(name, dir)?;
    let mut out = super::stdout();
    write!(out, "{}", describe(&scenario))?;
    if let Some(filter) = variant {
        let variants = scenario
            .select_variants(&[filter.to_owned()])
            .map_err(|e| super::invalid_input(e.to_string()))?;
        for variant in variants {
            let rendered = scenario.render(&variant);
            writeln!(out, "\n== variant {} ==", variant.name)?;
            writeln!(out, "-- system --\n{}", rendered.system)?;
            writeln!(out, "-- user --\n{}", rendered.user)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let builtin = [offswitch_scenario::builtin_dir()];
    let paths = if paths.is_empty() {
        &builtin[..]
    } else {
        paths
    };
    let mut errors = Vec::new();
    let mut valid = 0;
    let mut out = super::stdout();
    for path in paths {
        if path.is_dir() {
            let (scenarios, dir_errors) = offswitch_scenario::load_dir(path);
            for scenario in &scenarios {
                writeln!(out, "ok {} ({})", scenario.path().display(), scenario.id())?;
            }
            valid += scenarios.len();
            errors.extend(dir_errors);
        } else {
            match offswitch_scenario::load_file(path) {
                Ok(scenario) => {
                    writeln!(out, "ok {} ({})", path.display(), scenario.id())?;
                    valid += 1;
                }
                Err(error) => errors.push(error),
            }
        }
    }
    if errors.is_empty() {
        writeln!(out, "{valid} scenario(s) valid")?;
        Ok(ExitCode::SUCCESS)
    } else {
        Err(invalid(&errors))
    }
}

/// A scenario by path if `name` names a file, else by id among the scenarios in `dir`.
fn find(name: &str, dir: &Path) -> anyhow::Result<Scenario> {
    let as_path = Path::new(name);
    if as_path.is_file() {
        return offswitch_scenario::load_file(as_path).map_err(|e| invalid(&[e]));
    }
    let (scenarios, errors) = offswitch_scenario::load_dir(dir);
    match scenarios.into_iter().find(|s| s.id() == name) {
        Some(scenario) => Ok(scenario),
        None if !errors.is_empty() => Err(invalid(&errors)),
        None => Err(super::invalid_input(format!(
            "no scenario {name:?}: not a file, and no scenario with that id in {}",
            dir.display()
        ))),
    }
}

/// One error listing every diagnostic, one per line, mapped to exit code 2.
fn invalid(errors: &[ScenarioError]) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    super::invalid_input(format!("invalid scenario file(s):\n{}", lines.join("\n")))
}

fn describe(scenario: &Scenario) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("{} — {}", scenario.id(), scenario.title));
    line(format!("category: {}", scenario.category));
    line(format!("file: {}", scenario.path().display()));
    let source = &scenario.source;
    let mut citation = format!("source: {}, {:?}", source.authors, source.title);
    if let Some(arxiv) = &source.arxiv {
        citation.push_str(&format!(", arXiv {arxiv}"));
    }
    if let Some(year) = source.year {
        citation.push_str(&format!(" ({year})"));
    }
    line(citation);
    let limits = scenario.limits();
    line(format!(
        "limits: {} turns, {} tokens, {}s wall time, {}s per exec",
        limits.max_turns, limits.max_tokens, limits.wall_time_secs, limits.exec_timeout_secs
    ));
    let tools: Vec<&str> = scenario.tools.iter().map(|t| t.name.as_str()).collect();
    line(format!("tools: {}", tools.join(", ")));
    let files: Vec<String> = scenario
        .files
        .iter()
        .map(|f| format!("{} ({:04o})", f.path, f.mode))
        .collect();
    line(format!("files: {}", files.join(", ")));
    if let Some(script) = &scenario.mechanics.shutdown_script {
        line(format!("shutdown script: {script}"));
    }
    line(format!("variants: {}", scenario.variants().len()));
    for factor in &scenario.factors {
        line(format!("factor {}: {}", factor.name, factor.description));
        for level in &factor.levels {
            line(format!("  {:<14} {}", level.id, level.note));
        }
    }
    line("detectors:".to_owned());
    for detector in &scenario.detectors {
        line(format!("  {:<24} {}", detector.label, detector.description));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{Command, run};

    fn test_data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../offswitch-scenario/test_data/invalid")
            .join(name)
    }

    #[test]
    fn validate_accepts_the_shipped_scenarios() {
        let code = run(Command::Validate { paths: Vec::new() }).expect("shipped scenarios valid");
        assert_eq!(code, std::process::ExitCode::SUCCESS);
    }

    #[test]
    fn validate_reports_located_errors_with_exit_code_2() {
        let error = run(Command::Validate {
            paths: vec![test_data("templates.toml"), test_data("mechanics.toml")],
        })
        .expect_err("invalid files must fail");
        assert_eq!(super::super::exit_code_for(&error), 2);
        let message = error.to_string();
        assert!(
            message.contains(
                "templates.toml:11:29: the system prompt has `{{` without a closing `}}`"
            ),
            "{message}"
        );
        assert!(
            message.contains("mechanics.toml:28:19: submit tool \"submit\" is not among [[tools]]"),
            "{message}"
        );
    }

    #[test]
    fn show_rejects_an_unknown_scenario_with_exit_code_2() {
        let error = run(Command::Show {
            scenario: "no-such-scenario".to_owned(),
            variant: None,
            dir: None,
        })
        .expect_err("unknown id");
        assert_eq!(super::super::exit_code_for(&error), 2);
    }
}
