//! Scenarios as data: loading and validating scenario files, expanding their factors into
//! variants, rendering a variant into prompts, files and tools, and labelling a finished trial.
//!
//! This crate is pure: the only IO is reading the scenario files it is asked to load. The
//! harness owns the sandbox; it gives [`Scenario::evaluate`] the evidence it gathered.

mod detect;
mod error;
mod glob;
mod model;
mod parse;
mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use offswitch_core::{Label, ToolSpec};

pub use detect::{Evidence, FinalFile};
pub use error::{Diagnostic, ScenarioError};
pub use model::{
    Detector, DetectorKind, ExecTool, Expr, Factor, FileSpec, Level, Limits, Mechanics, Scenario,
    Source, Stream, Task,
};

/// Environment variable that replaces [`builtin_dir`]'s default.
pub const SCENARIOS_ENV: &str = "OFFSWITCH_SCENARIOS";

/// Load and validate one scenario file.
pub fn load_file(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str(&text, path)
}

/// Validate a scenario given as text; `path` is used in diagnostics only.
pub fn load_str(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
    parse::parse(text, path)
}

/// Every `*.toml` file directly in `dir`, sorted by file name. Files that fail to load and
/// scenarios whose id repeats an earlier file's come back as errors; the rest load.
pub fn load_dir(dir: &Path) -> (Vec<Scenario>, Vec<ScenarioError>) {
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => {
            errors.push(ScenarioError::Read {
                path: dir.to_owned(),
                source,
            });
            return (scenarios, errors);
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
        .collect();
    paths.sort();
    for path in paths {
        match load_file(&path) {
            Ok(scenario) => match scenarios.iter().find(|s| s.id == scenario.id) {
                Some(first) => {
                    let (line, col) = scenario.id_position;
                    errors.push(ScenarioError::Invalid {
                        diagnostics: vec![Diagnostic {
                            path: path.clone(),
                            line,
                            col,
                            message: format!(
                                "duplicate scenario id {:?}, already defined in {}",
                                scenario.id,
                                first.path.display()
                            ),
                        }],
                    });
                }
                None => scenarios.push(scenario),
            },
            Err(error) => errors.push(error),
        }
    }
    (scenarios, errors)
}

/// The scenarios shipped with offswitch: `$OFFSWITCH_SCENARIOS` if set, else the repository's
/// top-level `scenarios/` folder.
pub fn builtin_dir() -> PathBuf {
    match std::env::var_os(SCENARIOS_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        // The crate sits at `<repo>/crates/offswitch-scenario`.
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .unwrap_or(Path::new("."))
            .join("scenarios"),
    }
}

/// One cell of a scenario's factorial design.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Variant {
    /// Canonical name, `factor=level` pairs joined by `,` in declared factor order; this is
    /// `TrialKey::variant`. Empty for a scenario without factors.
    pub name: String,
    /// `(factor, level)` pairs in declared factor order.
    pub levels: Vec<(String, String)>,
}

/// A variant made concrete: everything the harness needs to start a trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub system: String,
    pub user: String,
    pub files: Vec<RenderedFile>,
    pub tools: Vec<ToolSpec>,
    /// Path (relative to home) of the script the harness writes to shut the sandbox down.
    pub shutdown_script: Option<String>,
    /// The tool whose call ends the episode with its argument as the submitted answer.
    pub submit_tool: Option<String>,
    /// The tool whose argument runs as a shell command in the sandbox.
    pub exec_tool: Option<ExecTool>,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl Scenario {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The file this scenario was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The full factorial design, first factor varying slowest, levels in declared order.
    pub fn variants(&self) -> Vec<Variant> {
        let choices: Vec<Vec<&str>> = self
            .factors
            .iter()
            .map(|f| f.levels.iter().map(|l| l.id.as_str()).collect())
            .collect();
        self.product(&choices)
    }

    /// The variants allowed by `filters`. Each filter is `factor=level[|level...]`, or several
    /// such pairs joined by `,` (a whole variant name). Filters on the same factor add levels;
    /// filters on different factors narrow. No filters means every variant.
    pub fn select_variants(&self, filters: &[String]) -> Result<Vec<Variant>, ScenarioError> {
        let mut allowed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for filter in filters {
            for pair in filter.split(',').filter(|p| !p.trim().is_empty()) {
                let bad = |message: String| ScenarioError::BadFilter {
                    scenario: self.id.clone(),
                    filter: filter.clone(),
                    message,
                };
                let (factor_name, levels) = pair
                    .split_once('=')
                    .ok_or_else(|| bad(format!("{pair:?} is not `factor=level`")))?;
                let factor_name = factor_name.trim();
                let factor = self
                    .factors
                    .iter()
                    .find(|f| f.name == factor_name)
                    .ok_or_else(|| {
                        bad(format!(
                            "unknown factor {factor_name:?}; factors: {}",
                            self.factors
                                .iter()
                                .map(|f| f.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                for level in levels.split('|').map(str::trim) {
                    let level = factor
                        .levels
                        .iter()
                        .find(|l| l.id == level)
                        .ok_or_else(|| {
                            bad(format!(
                                "factor {factor_name:?} has no level {level:?}; levels: {}",
                                factor
                                    .levels
                                    .iter()
                                    .map(|l| l.id.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
                        })?;
                    let entry = allowed.entry(factor.name.as_str()).or_default();
                    if !entry.contains(&level.id.as_str()) {
                        entry.push(level.id.as_str());
                    }
                }
            }
        }
        // Keep declared level order whatever order the filters named them in.
        let choices: Vec<Vec<&str>> = self
            .factors
            .iter()
            .map(|f| {
                f.levels
                    .iter()
                    .map(|l| l.id.as_str())
                    .filter(|id| allowed.get(f.name.as_str()).is_none_or(|a| a.contains(id)))
                    .collect()
            })
            .collect();
        Ok(self.product(&choices))
    }

    /// Look a variant up by its canonical name.
    pub fn variant(&self, name: &str) -> Option<Variant> {
        self.variants().into_iter().find(|v| v.name == name)
    }

    /// The prompts, files and tools of one variant. Levels of unknown factors are ignored;
    /// variants come from [`Scenario::variants`] so they always match.
    pub fn render(&self, variant: &Variant) -> Rendered {
        let variables = self.variables(variant);
        Rendered {
            system: self.system.render(&variables),
            user: self.user.render(&variables),
            files: self
                .files
                .iter()
                .map(|f| RenderedFile {
                    path: f.path.clone(),
                    contents: f.contents.clone().into_bytes(),
                    mode: f.mode,
                })
                .collect(),
            tools: self.tools.clone(),
            shutdown_script: self.mechanics.shutdown_script.clone(),
            submit_tool: self.mechanics.submit_tool.clone(),
            exec_tool: self.mechanics.exec_tool.clone(),
            limits: self.limits,
        }
    }

    /// Label a finished trial: one label per detector, in file order. Detectors are the same
    /// for every variant today; the variant is part of the signature so that a detector can
    /// depend on it (e.g. a control condition) without changing every caller.
    pub fn evaluate(&self, _variant: &Variant, evidence: &Evidence<'_>) -> Vec<Label> {
        detect::evaluate(&self.detectors, self.task.as_ref(), evidence)
    }

    /// The levels a variant picks, in factor order, e.g. to show each level's `note` (which
    /// study condition it reproduces) next to its rate.
    pub fn levels_of(&self, variant: &Variant) -> Vec<&Level> {
        variant
            .levels
            .iter()
            .filter_map(|(factor_name, level_id)| {
                self.factors
                    .iter()
                    .find(|f| &f.name == factor_name)
                    .and_then(|f| f.levels.iter().find(|l| &l.id == level_id))
            })
            .collect()
    }

    /// The template variables of a variant: defaults overridden by each chosen level in
    /// factor order.
    pub fn variables(&self, variant: &Variant) -> BTreeMap<String, String> {
        let mut variables = self.defaults.clone();
        for level in self.levels_of(variant) {
            variables.extend(level.set.clone());
        }
        variables
    }

    fn product(&self, choices: &[Vec<&str>]) -> Vec<Variant> {
        let mut combinations: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for (factor, levels) in self.factors.iter().zip(choices) {
            combinations = combinations
                .into_iter()
                .flat_map(|prefix| {
                    levels.iter().map(move |level| {
                        let mut next = prefix.clone();
                        next.push((factor.name.clone(), (*level).to_owned()));
                        next
                    })
                })
                .collect();
        }
        combinations
            .into_iter()
            .map(|levels| Variant {
                name: levels
                    .iter()
                    .map(|(f, l)| format!("{f}={l}"))
                    .collect::<Vec<_>>()
                    .join(","),
                levels,
            })
            .collect()
    }
}
