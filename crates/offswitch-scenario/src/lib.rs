//! Scenarios as data: loading and validating scenario files, expanding their factors into
//! variants, rendering a variant into prompts, files and tools, and labelling a finished trial.
//!
//! This crate is pure: the only IO is reading the scenario files it is asked to load. The
//! harness owns the sandbox; it gives [`Scenario::evaluate`] the evidence it gathered.

mod answers;
mod detect;
mod email_rules;
mod error;
mod glob;
mod located;
mod model;
mod observed;
mod parse;
mod render;
mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use offswitch_core::{Label, ToolSpec};

pub use detect::{Evidence, Fact, FinalFile, HostEvidence, Received, SentEmail, Truth};
pub use email_rules::{EmailRule, EmailRuleKind};
pub use error::{Diagnostic, ScenarioError, line_col};
pub use glob::compile as compile_glob;
pub use located::Located;
pub use model::{
    Alert, Analysis, Detector, DetectorKind, Email, ExecTool, Expr, Factor, FileContents, FileSpec,
    HostSpec, Interview, InterviewQuestion, Judge, Level, Limits, Mailbox, Mechanics, ModelServer,
    Questions, Reference, Scenario, Source, Stream, Task,
};
pub use observed::{PathPattern, SANDBOX_HOME};

/// Environment variable that replaces [`builtin_dir`]'s default.
pub const SCENARIOS_ENV: &str = "OFFSWITCH_SCENARIOS";

/// The largest scenario file read, in bytes. The shipped ones are under 20 KB; anything past
/// this is refused after reading at most this much, so a file that never ends (a symlink to
/// `/dev/zero`) cannot grow memory without bound.
pub const MAX_SCENARIO_BYTES: u64 = 1 << 20;

/// The most `*.toml` files [`load_dir`] reads from one directory.
pub const MAX_SCENARIO_FILES: usize = 1_000;

/// Load and validate one scenario file. Only a regular file (or a symlink to one) is read, at
/// most [`MAX_SCENARIO_BYTES`] of it; text that is not UTF-8 is a located diagnostic.
pub fn load_file(path: &Path) -> Result<Scenario, ScenarioError> {
    let bytes = read_bounded(path)?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => load_str(text, path),
        Err(error) => Err(invalid_utf8(path, &bytes, &error)),
    }
}

/// Validate a scenario given as text; `path` is used in diagnostics only.
pub fn load_str(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
    parse::parse(text, path)
}

/// Every `*.toml` entry directly in `dir`, sorted by file name, at most
/// [`MAX_SCENARIO_FILES`]. Files that fail to load (including `*.toml` entries that are not
/// regular files) and scenarios whose id repeats an earlier file's come back as errors; the rest
/// load. A directory without any `*.toml` file is an error too: it is almost always a wrong
/// path, and "0 valid" would hide that.
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
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(source) => {
                errors.push(ScenarioError::Read {
                    path: dir.to_owned(),
                    source,
                });
                return (scenarios, errors);
            }
        };
        if path.extension().is_some_and(|ext| ext == "toml") {
            if paths.len() == MAX_SCENARIO_FILES {
                errors.push(ScenarioError::TooManyFiles {
                    path: dir.to_owned(),
                    limit: MAX_SCENARIO_FILES,
                });
                return (scenarios, errors);
            }
            paths.push(path);
        }
    }
    if paths.is_empty() {
        errors.push(ScenarioError::EmptyDir {
            path: dir.to_owned(),
        });
        return (scenarios, errors);
    }
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

/// The bytes of the regular file at `path` (symlinks followed), refusing anything else before
/// reading: a FIFO would block the read forever and a device may never end. The open does not
/// block (`O_NONBLOCK`), and the type is checked on the opened descriptor, so the file cannot
/// be swapped between the check and the read.
fn read_bounded(path: &Path) -> Result<Vec<u8>, ScenarioError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let read_error = |source| ScenarioError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    let file_type = metadata.file_type();
    if !file_type.is_file() {
        let kind = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_char_device() {
            "a character device"
        } else if file_type.is_block_device() {
            "a block device"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(ScenarioError::NotRegular {
            path: path.to_owned(),
            kind,
        });
    }
    let too_large = || ScenarioError::TooLarge {
        path: path.to_owned(),
        limit: MAX_SCENARIO_BYTES,
    };
    if metadata.len() > MAX_SCENARIO_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // One byte past the limit tells a file at the limit from a longer one (a file can grow
    // after the size check, and some files report no size at all).
    file.take(MAX_SCENARIO_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_SCENARIO_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The diagnostic for a file that is not UTF-8, at the first bad byte.
fn invalid_utf8(path: &Path, bytes: &[u8], error: &std::str::Utf8Error) -> ScenarioError {
    let valid_up_to = error.valid_up_to();
    let prefix = std::str::from_utf8(&bytes[..valid_up_to]).expect("valid up to here");
    let (line, col) = error::LineIndex::new(prefix).line_col(prefix, valid_up_to);
    ScenarioError::Invalid {
        diagnostics: vec![Diagnostic {
            path: path.to_owned(),
            line,
            col,
            message: format!(
                "invalid UTF-8 (byte 0x{:02x}); scenario files are UTF-8 text",
                bytes[valid_up_to]
            ),
        }],
    }
}

/// The scenarios shipped with offswitch: `$OFFSWITCH_SCENARIOS` if set, else the copy of the
/// repository's `scenarios/` folder embedded in the binary (written to a cache directory on
/// first use, `offswitch-assets`).
pub fn builtin_dir() -> PathBuf {
    match std::env::var_os(SCENARIOS_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        // Embedded in the binary (`offswitch-assets`), not found through the source tree.
        _ => offswitch_assets::scenarios_dir(),
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
    /// Other hosts with their files rendered.
    pub hosts: Vec<RenderedHost>,
    pub references: Vec<Reference>,
    pub mailbox: Option<Mailbox>,
    /// The starting inbox, rendered.
    pub emails: Vec<Email>,
    /// The alert mechanic with its code rendered.
    pub alert: Option<Alert>,
    pub model_server: Option<ModelServer>,
    pub questions: Option<Questions>,
    pub interview: Option<Interview>,
    pub judges: Vec<Judge>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedHost {
    pub name: String,
    pub address: std::net::Ipv4Addr,
    pub files: Vec<RenderedFile>,
    pub start: Vec<String>,
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

    /// Hex sha256 of the exact text this scenario was parsed from.
    pub fn sha256(&self) -> &str {
        &self.sha256
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

    /// Everything the harness needs for one variant: prompts, files (text rendered as
    /// templates, `random_bytes` generated), tools, hosts, the inbox and the mechanics. Levels
    /// of unknown factors are ignored; variants come from [`Scenario::variants`] so they always
    /// match.
    pub fn render(&self, variant: &Variant) -> Rendered {
        let variables = self.render_variables(variant);
        let emails = self.rendered_emails(&variables);
        let alert = self.mechanics.alert.as_ref().map(|alert| Alert {
            code: template::Template::parse(&alert.code).0.render(&variables),
            ..alert.clone()
        });
        Rendered {
            system: self.system.render(&variables),
            user: self.user.render(&variables),
            files: self
                .files
                .iter()
                .map(|f| self.render_file(None, f, &variables))
                .collect(),
            tools: self.tools.clone(),
            shutdown_script: self.mechanics.shutdown_script.clone(),
            submit_tool: self.mechanics.submit_tool.clone(),
            exec_tool: self.mechanics.exec_tool.clone(),
            limits: self.limits,
            hosts: self
                .hosts
                .iter()
                .map(|host| RenderedHost {
                    name: host.name.clone(),
                    address: host.address,
                    files: host
                        .files
                        .iter()
                        .map(|f| self.render_file(Some(&host.name), f, &variables))
                        .collect(),
                    start: host.start.clone(),
                })
                .collect(),
            references: self.references.clone(),
            mailbox: self.mechanics.mailbox.clone(),
            emails,
            alert,
            model_server: self.mechanics.model_server.clone(),
            questions: self.mechanics.questions.clone(),
            interview: self.interview.clone(),
            judges: self.judges.clone(),
        }
    }

    /// What the harness must look for on other hosts for the `file_received` detectors: each
    /// (host, starting file of the agent's), once.
    pub fn received_checks(&self) -> Vec<(String, String)> {
        let mut checks: Vec<(String, String)> = self
            .detectors
            .iter()
            .filter_map(|detector| match &detector.kind {
                DetectorKind::FileReceived { from, host } => Some((host.clone(), from.clone())),
                _ => None,
            })
            .collect();
        checks.sort();
        checks.dedup();
        checks
    }

    /// Label a finished trial: one label per detector, in file order. The variant decides the
    /// starting contents of files, which `file_copied` compares against.
    pub fn evaluate(&self, variant: &Variant, evidence: &Evidence<'_>) -> Vec<Label> {
        let mut starting_sha256 = BTreeMap::new();
        for detector in &self.detectors {
            if let DetectorKind::FileCopied { from, .. } = &detector.kind
                && !starting_sha256.contains_key(from)
                && let Some(spec) = self.files.iter().find(|f| &f.path == from)
            {
                let variables = self.render_variables(variant);
                let file = self.render_file(None, spec, &variables);
                starting_sha256.insert(from.clone(), render::sha256_hex(&file.contents));
            }
        }
        // The inbox as this variant rendered it, for `email_classified` (which traces the
        // content of particular inbox emails in what was sent).
        let inbox = self.rendered_emails(&self.variables(variant));
        detect::evaluate(
            &self.detectors,
            self.task.as_ref(),
            &self.tools,
            &starting_sha256,
            &inbox,
            evidence,
        )
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

    /// The variables templates see at render time: [`Scenario::variables`] plus the inbox.
    fn render_variables(&self, variant: &Variant) -> BTreeMap<String, String> {
        let mut variables = self.variables(variant);
        // The inbox is built from the other variables, then becomes one itself. Email fields
        // cannot use `{{emails}}` (validation), so rendering them first sees no stale value.
        if !self.emails.is_empty() {
            let inbox = render::inbox_text(&self.rendered_emails(&variables));
            variables.insert(parse::EMAILS_VARIABLE.to_owned(), inbox);
        }
        variables
    }

    fn rendered_emails(&self, variables: &BTreeMap<String, String>) -> Vec<Email> {
        self.emails
            .iter()
            .map(|email| Email {
                id: email.id.clone(),
                from: email.from.render(variables),
                to: email.to.render(variables),
                subject: email.subject.render(variables),
                body: email.body.render(variables),
            })
            .collect()
    }

    /// One starting file: text rendered as a template, random bytes seeded by the scenario
    /// id and the path (and the host's name for a host's file, so that a host's file never
    /// equals an agent file of the same path by construction).
    fn render_file(
        &self,
        host: Option<&str>,
        spec: &FileSpec,
        variables: &BTreeMap<String, String>,
    ) -> RenderedFile {
        let contents = match &spec.contents {
            FileContents::Text(text) => template::Template::parse(text)
                .0
                .render(variables)
                .into_bytes(),
            FileContents::RandomBytes { bytes } => match host {
                None => render::random_bytes(&[&self.id, &spec.path], *bytes),
                Some(host) => render::random_bytes(&[&self.id, host, &spec.path], *bytes),
            },
        };
        RenderedFile {
            path: spec.path.clone(),
            contents,
            mode: spec.mode,
        }
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
