//! The runner: a matrix of models x scenarios x variants x epochs, run concurrently, each
//! finished trial written to the store by one dispatcher as it arrives.
//!
//! Only the dispatcher (the future returned by [`execute`]) touches the store and the progress
//! display; trial tasks hand it their records through the join set. A trial is stored in one
//! transaction as soon as it finishes, so a crash, Ctrl-C or SIGTERM loses at most the trials in
//! flight, and `--resume` runs exactly the keys that have no stored record (with
//! `--retry-errors`, also the keys whose trial ended as a harness error).
//!
//! One process per run: [`start_run`] and [`resume_run`] take the run's lock
//! (`Store::lock_run`) before anything else and hold it to the end, so a second process on the
//! same run is refused, and the OS releases the lock of a process that dies. Trial homes are
//! per process too (`workdir.rs`). A resume refuses a run whose scenario files, model files or
//! offswitch build changed since it was created ([`Provenance`]). The plan is a lazy iterator
//! over the matrix, so its size does not depend on `--epochs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use offswitch_core::backend::{Sampling, ToolMode};
use offswitch_core::trial::{Outcome, TrialKey, TrialRecord};
use offswitch_scenario::{Scenario, ScenarioError};
use offswitch_store::{Provenance, RunId, RunLock, RunStatus, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::task::JoinSet;

use crate::agent::{Evaluator, TrialPlace, TrialSpec, run_trial};
use crate::model::ModelClient;
use crate::models::{BuiltModel, ModelBuildError, ModelOptions, build_model};
use crate::scenario::{LimitOverrides, ModelSide, evaluator, resolve_scenario, trial_spec};
use crate::shard::{PlanLayout, Shard, decode};
use crate::workdir::{KEEP_MARKER, Owner, dir_name, remove_dead_owners};

/// The version tag of the stored run configuration.
pub const RUN_CONFIG_SCHEMA: &str = "offswitch.run/1";

/// What a run is, as stored with it: enough to rebuild the exact matrix on `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub schema: String,
    pub models: Vec<String>,
    /// Scenario ids or paths, as given.
    pub scenarios: Vec<String>,
    /// `factor=level` filters; empty means every variant.
    pub variants: Vec<String>,
    pub epochs: u32,
    pub seed: u64,
    pub tool_mode: ToolMode,
    pub max_turns: Option<u32>,
    /// The size limit of every home in MiB, over the scenarios' own (`--disk-mb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    pub temperature: f32,
    pub max_tokens_per_reply: u32,
    pub no_cache: bool,
    /// The judge model (a model spec) for second opinions and interview classification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    /// A guard policy (its TOML text, stored with the run so a resume watches the same way)
    /// whose live monitors run over every trial (`--monitor-policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_policy: Option<String>,
    /// `--set NAME=VALUE`: scenario defaults (`[defaults]`) replaced in every scenario of the
    /// run that declares them (a factor level setting the same variable still wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// `--token-limit`: every trial's total-token limit, over the scenarios' `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_limit: Option<u64>,
    /// `--time-limit`: every trial's wall-clock limit in seconds, over `wall_time_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_secs: Option<u64>,
    /// The command line that made the run, secrets redacted: provenance, never read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<Vec<String>>,
    /// `--shard i/N`: this run holds one slice of its plan (see [`crate::shard`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// The whole plan's order, stored with a shard when it starts so that a merge can tell
    /// which shard owns which trial without the run's scenarios or models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanLayout>,
}

impl RunConfig {
    /// Whether `other` describes the same plan: equal in everything but how it was started
    /// (the command line) and which slice it is. The shards of one run are.
    pub fn same_plan(&self, other: &RunConfig) -> bool {
        let plain = |config: &RunConfig| RunConfig {
            command_line: None,
            shard: None,
            plan: None,
            ..config.clone()
        };
        serde_json::to_value(plain(self)).ok() == serde_json::to_value(plain(other)).ok()
    }
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            schema: RUN_CONFIG_SCHEMA.into(),
            models: vec![offswitch_model::EMBEDDED_MODEL.into()],
            scenarios: vec!["shutdown-resistance".into()],
            variants: Vec::new(),
            epochs: 1,
            seed: 0,
            tool_mode: ToolMode::Native,
            max_turns: None,
            disk_mb: None,
            temperature: 1.0,
            max_tokens_per_reply: 512,
            no_cache: false,
            judge: None,
            monitor_policy: None,
            set: BTreeMap::new(),
            token_limit: None,
            time_limit_secs: None,
            command_line: None,
            shard: None,
            plan: None,
        }
    }
}

/// The offswitch build a run is made with, stored in its [`Provenance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: String,
    /// The git commit the binary was built from; `unknown` without git.
    pub commit: String,
}

impl Default for BuildInfo {
    /// This crate's version and an unknown commit (the binary passes its own).
    fn default() -> BuildInfo {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: "unknown".to_owned(),
        }
    }
}

/// How this process executes a run (not stored: a resume may use other values).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub work_dir: PathBuf,
    pub concurrency: usize,
    pub scenarios_dir: PathBuf,
    pub models: ModelOptions,
    pub progress: ProgressMode,
    /// Keep each trial's home after it is stored (for inspection); otherwise it is removed.
    pub keep_homes: bool,
    /// The judge model, the offswitch binary and the model file some mechanics need.
    pub facilities: crate::agent::Facilities,
    /// On resume, run again the keys whose trial ended as a harness error; each new trial
    /// replaces the failed one, which stays in the store as an earlier attempt.
    pub retry_errors: bool,
    /// The build stored with a new run and compared on resume.
    pub build: BuildInfo,
    /// A new run's label (`offswitch run --label`).
    pub label: Option<String>,
    /// A new run's id (`offswitch run --run-id`); drawn at random without one.
    pub run_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live bar on a terminal, plain lines otherwise.
    Auto,
    Plain,
    Quiet,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Model(#[from] ModelBuildError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {run} has a stored configuration this version cannot read: {message}")]
    Config { run: String, message: String },
    #[error(
        "run {run} cannot be resumed: it would mix trials made with different inputs. Changed since it was created:\n{}\nStart a new run instead",
        .changes.iter().map(|change| format!("  {change}")).collect::<Vec<_>>().join("\n")
    )]
    Changed { run: String, changes: Vec<String> },
    #[error("invalid run: {0}")]
    Invalid(String),
}

/// One trial to run: its spec, the model it talks to and how it is judged.
pub struct PlannedTrial {
    pub spec: TrialSpec,
    pub model: Arc<dyn ModelClient>,
    pub evaluate: Arc<Evaluator>,
    /// The run's judge model and the name sent in its requests.
    pub judge: Option<(Arc<dyn ModelClient>, String)>,
    /// The key's stored trial ended as a harness error and this trial replaces it.
    pub retry: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run: RunId,
    /// Trials in the whole matrix.
    pub total: u64,
    /// Trials of the matrix stored before this invocation and not run again.
    pub already_done: u64,
    /// Trials stored by this invocation (retries included).
    pub stored: u64,
    /// Of `stored`, retries that replaced a harness error.
    pub retried: u64,
    /// Keys this invocation ran that turned out stored by another process meanwhile; their
    /// stored trial was kept. Counted as stored for the run (zero under the run lock, kept as
    /// a safeguard).
    pub already_present: u64,
    /// Keys of the matrix with a stored trial now, read back from the store at the end.
    pub present: u64,
    pub interrupted: bool,
    pub outcomes: BTreeMap<String, usize>,
    pub wall: Duration,
}

/// Create a run from `config` and execute it.
pub async fn start_run(
    store: &Store,
    config: &RunConfig,
    options: &RunOptions,
    cancel: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    // Build everything before creating the run, so a bad scenario or model stores nothing.
    let matrix = matrix(config, options)?;
    let provenance = matrix.provenance(&options.build);
    let mut config = config.clone();
    if config.shard.is_some() {
        config.plan = Some(matrix.layout(config.epochs));
    }
    let plan = Plan::new(&config, matrix, &Skip::default())?;
    let config_json =
        serde_json::to_value(&config).map_err(|e| RunError::Invalid(e.to_string()))?;
    let label = options.label.as_deref();
    let (run, lock) = match &options.run_id {
        Some(id) => store.create_locked_run_with_id(id, &config_json, label, Some(&provenance))?,
        None => store.create_locked_run(&config_json, label, Some(&provenance))?,
    };
    execute(store, &run, &lock, plan, options, Vec::new(), cancel).await
}

/// Run the trials of `run` that have no stored record (and with `options.retry_errors`, the
/// harness errors again), with its stored configuration. Refused while another process runs
/// `run`, and when what it was made with changed.
pub async fn resume_run(
    store: &Store,
    run: &str,
    options: &RunOptions,
    cancel: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    let info = store.run(run)?;
    // Before anything is read for the plan: a second process stops here.
    let lock = store.lock_run(run)?;
    let config = stored_config(run, &info.config)?;
    let matrix = matrix(&config, options)?;
    let mut notes = Vec::new();
    match store.provenance(run)? {
        Some(stored) => {
            let changes = provenance_changes(&stored, &matrix.provenance(&options.build));
            if !changes.is_empty() {
                return Err(RunError::Changed {
                    run: run.to_owned(),
                    changes,
                });
            }
        }
        None => notes.push(format!(
            "note: run {run} was created before offswitch recorded what a run is made with; resuming without checking that its scenario and model files are unchanged"
        )),
    }
    if let Some(stored) = &config.plan
        && *stored != matrix.layout(config.epochs)
    {
        // The provenance check above catches changed files; this, a plan ordered otherwise
        // (by another offswitch version), which would hand this shard other trials.
        return Err(RunError::Changed {
            run: run.to_owned(),
            changes: vec!["the order of the plan its shards are cut from".into()],
        });
    }
    let skip = Skip {
        completed: store.completed_keys(run)?,
        retry: if options.retry_errors {
            store.harness_error_keys(run)?
        } else {
            HashSet::new()
        },
    };
    let plan = Plan::new(&config, matrix, &skip)?;
    store.set_run_status(run, RunStatus::Running)?;
    execute(store, &info.id, &lock, plan, options, notes, cancel).await
}

/// The run configuration stored with `run`.
pub fn stored_config(run: &str, value: &serde_json::Value) -> Result<RunConfig, RunError> {
    let schema = value.get("schema").and_then(|s| s.as_str()).unwrap_or("");
    if schema != RUN_CONFIG_SCHEMA {
        return Err(RunError::Config {
            run: run.to_owned(),
            message: format!("schema {schema:?}, expected {RUN_CONFIG_SCHEMA:?}"),
        });
    }
    serde_json::from_value(value.clone()).map_err(|e| RunError::Config {
        run: run.to_owned(),
        message: e.to_string(),
    })
}

/// The seed of one trial: derived from the run's seed and the trial's key alone, so a resumed
/// or re-run trial gets the same one.
pub fn trial_seed(run_seed: u64, key: &TrialKey) -> u64 {
    let mut hasher = sha2::Sha256::new();
    hasher.update(run_seed.to_le_bytes());
    hasher.update(key.to_string().as_bytes());
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"))
}

/// What changed between a run's stored provenance and the current one, one line each; empty
/// when nothing did.
pub fn provenance_changes(stored: &Provenance, current: &Provenance) -> Vec<String> {
    provenance_differences(stored, current, ("when created", "now"))
}

/// Where provenances `a` and `b` differ, one line each, with the two sides named by
/// `(a_name, b_name)`; empty when they are equal.
pub fn provenance_differences(
    a: &Provenance,
    b: &Provenance,
    (a_name, b_name): (&str, &str),
) -> Vec<String> {
    let mut changes = Vec::new();
    if a.offswitch_version != b.offswitch_version {
        changes.push(format!(
            "offswitch version: {} {a_name}, {} {b_name}",
            a.offswitch_version, b.offswitch_version
        ));
    }
    if a.commit != b.commit {
        changes.push(format!(
            "offswitch commit: {} {a_name}, {} {b_name}",
            a.commit, b.commit
        ));
    }
    for (what, a_files, b_files) in [
        ("scenario", &a.scenario_files, &b.scenario_files),
        ("model", &a.model_files, &b.model_files),
    ] {
        let names: BTreeSet<&String> = a_files.keys().chain(b_files.keys()).collect();
        for name in names {
            match (a_files.get(name), b_files.get(name)) {
                (Some(x), Some(y)) if x != y => changes.push(format!(
                    "{what} {name}: file sha256 {} {a_name}, {} {b_name}",
                    short_sha(x),
                    short_sha(y)
                )),
                (Some(x), None) => changes.push(format!(
                    "{what} {name}: file sha256 {} {a_name}, no file {b_name}",
                    short_sha(x)
                )),
                (None, Some(y)) => changes.push(format!(
                    "{what} {name}: no file recorded {a_name}, sha256 {} {b_name}",
                    short_sha(y)
                )),
                _ => {}
            }
        }
    }
    changes
}

fn short_sha(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

/// The models and the cells of a run's matrix, built once.
pub struct Matrix {
    models: Vec<BuiltModel>,
    judge: Option<BuiltModel>,
    cells: Vec<(Arc<Scenario>, offswitch_scenario::Variant, Arc<Evaluator>)>,
}

impl Matrix {
    /// The order of this matrix's plan over `epochs`.
    pub fn layout(&self, epochs: u32) -> PlanLayout {
        PlanLayout {
            models: self.models.iter().map(|m| m.spec.clone()).collect(),
            cells: self
                .cells
                .iter()
                .map(|(scenario, variant, _)| (scenario.id().to_owned(), variant.name.clone()))
                .collect(),
            epochs,
        }
    }

    /// What trials of this matrix are made with.
    pub fn provenance(&self, build: &BuildInfo) -> Provenance {
        Provenance {
            offswitch_version: build.version.clone(),
            commit: build.commit.clone(),
            scenario_files: self
                .cells
                .iter()
                .map(|(scenario, _, _)| (scenario.id().to_owned(), scenario.sha256().to_owned()))
                .collect(),
            model_files: self
                .models
                .iter()
                .chain(&self.judge)
                .filter_map(|model| Some((model.spec.clone(), model.file_sha256.clone()?)))
                .collect(),
        }
    }
}

/// Resolve the scenarios and build the models of `config`.
pub fn matrix(config: &RunConfig, options: &RunOptions) -> Result<Matrix, RunError> {
    if config.models.is_empty() || config.scenarios.is_empty() {
        return Err(RunError::Invalid(
            "a run needs at least one model and one scenario".into(),
        ));
    }
    let mut cells = Vec::new();
    let mut scenarios = Vec::new();
    for name in &config.scenarios {
        let mut scenario = resolve_scenario(name, &options.scenarios_dir)?;
        for (variable, value) in &config.set {
            if let Some(default) = scenario.defaults.get_mut(variable) {
                value.clone_into(default);
            }
        }
        scenarios.push(Arc::new(scenario));
    }
    if let Some(variable) = config
        .set
        .keys()
        .find(|variable| !scenarios.iter().any(|s| s.defaults.contains_key(*variable)))
    {
        let known: BTreeSet<&str> = scenarios
            .iter()
            .flat_map(|s| s.defaults.keys().map(String::as_str))
            .collect();
        return Err(RunError::Invalid(format!(
            "--set {variable}: no scenario of this run has a default named {variable:?} (they have: {})",
            known.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    // A filter on a factor applies to the scenarios that have it, so one run can mix studies
    // (`--variant nudge=strong` narrows the Apollo scenarios and leaves the others whole);
    // a factor no scenario has is still an error, from the first scenario's check.
    let has_factor = |scenario: &Scenario, factor: &str| {
        scenario.factors.iter().any(|f| f.name == factor.trim())
    };
    let unknown = config
        .variants
        .iter()
        .flat_map(|f| f.split(','))
        .find(|pair| {
            let factor = pair.split_once('=').map_or(*pair, |(f, _)| f);
            !pair.trim().is_empty() && !scenarios.iter().any(|s| has_factor(s, factor))
        });
    for scenario in scenarios {
        let filters: Vec<String> = if unknown.is_some() {
            config.variants.clone()
        } else {
            config
                .variants
                .iter()
                .map(|filter| {
                    filter
                        .split(',')
                        .filter(|pair| {
                            let factor = pair.split_once('=').map_or(*pair, |(f, _)| f);
                            has_factor(&scenario, factor)
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|filter| !filter.is_empty())
                .collect()
        };
        for variant in scenario.select_variants(&filters)? {
            let evaluate: Arc<Evaluator> =
                Arc::from(evaluator(Arc::clone(&scenario), variant.clone()));
            cells.push((Arc::clone(&scenario), variant, evaluate));
        }
    }
    let mut model_options = options.models.clone();
    if config.no_cache {
        model_options.cache_dir = None;
    }
    model_options.tool_mode = config.tool_mode;
    let models = config
        .models
        .iter()
        .map(|spec| build_model(spec, &model_options))
        .collect::<Result<Vec<_>, _>>()?;
    let judge = config
        .judge
        .as_deref()
        .map(|spec| build_model(spec, &model_options))
        .transpose()?;
    Ok(Matrix {
        models,
        judge,
        cells,
    })
}

/// The keys a plan leaves out, and the ones it runs again although stored.
#[derive(Debug, Clone, Default)]
pub struct Skip {
    /// Keys with a stored trial.
    pub completed: HashSet<TrialKey>,
    /// Keys among `completed` to run again (their trial ended as a harness error).
    pub retry: HashSet<TrialKey>,
}

/// The trials of a matrix to run, produced one at a time, epochs outermost so that an
/// interrupted run has a balanced sample of every cell. Nothing in it grows with the number of
/// epochs: `--epochs 100000000` plans in constant memory.
pub struct Plan {
    /// Trials of the run: the whole matrix, or the shard's slice of it.
    pub total: u64,
    /// Trials of the run that are stored and not run again.
    pub already_done: u64,
    matrix: Matrix,
    sides: Vec<ModelSide>,
    judge: Option<(Arc<dyn ModelClient>, String)>,
    seed: u64,
    overrides: LimitOverrides,
    /// The guard policy whose monitors watch every trial, if any.
    monitors: Option<Arc<offswitch_guard::Policy>>,
    skip: Skip,
    /// The next position in the whole matrix's order (see [`crate::shard`]).
    next: u64,
    /// Positions between two trials of this run: the number of shards.
    step: u64,
    /// Trials in the whole matrix.
    end: u64,
}

impl Plan {
    /// The plan of `config` over `matrix`, leaving out what `skip` says.
    pub fn new(config: &RunConfig, matrix: Matrix, skip: &Skip) -> Result<Plan, RunError> {
        // Two trials with one key would share a home and a seed, and the store keeps only one
        // of them. A key repeats exactly when a model spec or a (scenario, variant) cell does,
        // so the check is over the matrix's sides, not over every epoch.
        let mut seen_models = HashSet::new();
        for model in &matrix.models {
            let mut seen_cells = HashSet::new();
            for (scenario, variant, _) in &matrix.cells {
                let repeated_cell = !seen_cells.insert((scenario.id(), variant.name.as_str()));
                if repeated_cell || seen_models.contains(&model.spec) {
                    let key = TrialKey {
                        model: model.spec.clone(),
                        scenario: scenario.id().to_owned(),
                        variant: variant.name.clone(),
                        epoch: 0,
                    };
                    return Err(RunError::Invalid(format!(
                        "trial {key} appears twice in the matrix: give each model and scenario once"
                    )));
                }
            }
            seen_models.insert(model.spec.clone());
        }
        let layout = matrix.layout(config.epochs);
        let end = layout.total();
        let shard = config.shard.unwrap_or(Shard { index: 1, count: 1 });
        let index = layout.index();
        let in_run = |key: &TrialKey| index.position(key).is_some_and(|p| shard.holds(p));
        let already_done = skip
            .completed
            .iter()
            .filter(|key| in_run(key) && !skip.retry.contains(*key))
            .count() as u64;
        let sides = matrix
            .models
            .iter()
            .map(|model| ModelSide {
                key_name: model.spec.clone(),
                request_model: model.request_model.clone(),
                tool_mode: model.tool_mode,
                sampling: Sampling {
                    temperature: config.temperature,
                    max_tokens: config.max_tokens_per_reply,
                    ..Sampling::default()
                },
            })
            .collect();
        let judge = matrix
            .judge
            .as_ref()
            .map(|j| (Arc::clone(&j.client), j.request_model.clone()));
        let monitors = match &config.monitor_policy {
            Some(text) => Some(Arc::new(
                offswitch_guard::policy::parse(text, std::path::Path::new("monitor policy"))
                    .map_err(|e| RunError::Invalid(format!("the monitor policy: {e}")))?,
            )),
            None => None,
        };
        Ok(Plan {
            total: shard.size(end),
            already_done,
            matrix,
            sides,
            judge,
            seed: config.seed,
            overrides: LimitOverrides {
                max_turns: config.max_turns,
                disk_mb: config.disk_mb,
                token_limit: config.token_limit,
                time_limit_secs: config.time_limit_secs,
            },
            monitors,
            skip: Skip {
                completed: skip.completed.clone(),
                retry: skip.retry.clone(),
            },
            next: shard.first(),
            step: u64::from(shard.count),
            end,
        })
    }
}

impl Iterator for Plan {
    type Item = PlannedTrial;

    fn next(&mut self) -> Option<PlannedTrial> {
        loop {
            if self.next >= self.end {
                return None;
            }
            let (epoch, model_index, cell_index) =
                decode(self.next, self.sides.len(), self.matrix.cells.len());
            self.next += self.step;
            let side = &self.sides[model_index];
            let (scenario, variant, evaluate) = &self.matrix.cells[cell_index];
            let key = TrialKey {
                model: side.key_name.clone(),
                scenario: scenario.id().to_owned(),
                variant: variant.name.clone(),
                epoch,
            };
            let retry = self.skip.retry.contains(&key);
            if self.skip.completed.contains(&key) && !retry {
                continue;
            }
            let seed = trial_seed(self.seed, &key);
            let mut spec = trial_spec(scenario, variant, side, epoch, seed, &self.overrides);
            spec.mechanics.monitors = self.monitors.clone();
            return Some(PlannedTrial {
                spec,
                model: Arc::clone(&self.matrix.models[model_index].client),
                evaluate: Arc::clone(evaluate),
                judge: self.judge.clone(),
                retry,
            });
        }
    }
}

/// The plan of `config`: [`matrix`] then [`Plan::new`].
pub fn plan(config: &RunConfig, options: &RunOptions, skip: &Skip) -> Result<Plan, RunError> {
    Plan::new(config, matrix(config, options)?, skip)
}

/// Run `trials` into `run`, which this process holds the lock of: the dispatcher loop.
/// `notes` are shown before the first trial.
pub async fn execute(
    store: &Store,
    run: &RunId,
    _lock: &RunLock,
    trials: Plan,
    options: &RunOptions,
    notes: Vec<String>,
    cancel: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let total = trials.total;
    let already_done = trials.already_done;
    let mut progress = Progress::new(options.progress, total, already_done);
    for note in &notes {
        progress.note(note);
    }
    let run_dir = options.work_dir.join(run.as_str());
    // Homes of processes that died while running this run; this one holds its lock, so no
    // live process adds homes to it except through a directory of its own.
    for removed in remove_dead_owners(&run_dir) {
        progress.note(&format!(
            "removed the trial homes of a process that ended: {}",
            removed.display()
        ));
    }
    let owner = Owner::this_process()
        .map_err(|e| RunError::Invalid(format!("cannot read this process's start time: {e}")))?;
    let homes_dir = run_dir.join(dir_name(&owner));
    if options.keep_homes {
        std::fs::create_dir_all(&homes_dir)
            .and_then(|()| std::fs::write(homes_dir.join(KEEP_MARKER), ""))
            .map_err(|e| {
                RunError::Invalid(format!("cannot create {}: {e}", homes_dir.display()))
            })?;
    }
    let concurrency = options.concurrency.max(1);
    let mut pending = trials;
    let mut in_flight: JoinSet<(bool, TrialRecord)> = JoinSet::new();
    // The home of each trial in flight, for the ones aborted before their own cleanup ran.
    let mut homes: HashMap<tokio::task::Id, Vec<PathBuf>> = HashMap::new();
    let mut cancel = std::pin::pin!(cancel);
    let mut interrupted = false;
    let mut failure: Option<RunError> = None;
    let mut stored = 0;
    let mut retried = 0;
    let mut already_present = 0;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut aborted: Vec<PathBuf> = Vec::new();
    loop {
        while !interrupted && in_flight.len() < concurrency {
            let Some(trial) = pending.next() else { break };
            let home = homes_dir.join(home_name(&trial.spec.key));
            let dirs = trial_dirs(&home, &trial.spec);
            let retry = trial.retry;
            let task = in_flight.spawn(
                run_one(trial, home, options.keep_homes, options.facilities.clone())
                    .map(move |record| (retry, record)),
            );
            homes.insert(task.id(), dirs);
        }
        if in_flight.is_empty() {
            break;
        }
        let joined = tokio::select! {
            joined = in_flight.join_next_with_id() => joined,
            () = &mut cancel, if !interrupted => {
                interrupted = true;
                progress.note("interrupted: killing the trials in flight; finished trials are stored");
                in_flight.abort_all();
                continue;
            }
        };
        match joined {
            Some(Ok((task, (retry, record)))) => {
                homes.remove(&task);
                let result = if retry {
                    store
                        .replace_trial(run, &record)
                        .map(offswitch_store::Inserted::Stored)
                } else {
                    store.insert_trial_once(run, &record)
                };
                match result {
                    Ok(offswitch_store::Inserted::Stored(_)) => {
                        stored += 1;
                        retried += u64::from(retry);
                        *outcomes
                            .entry(record.outcome.name().to_owned())
                            .or_default() += 1;
                        progress.finished(&record, &outcomes);
                    }
                    Ok(offswitch_store::Inserted::AlreadyPresent(_)) => {
                        // Another process stored this key first (not possible while this one
                        // holds the run's lock, but never worth a duplicate): its record
                        // stands, and the key counts as stored.
                        already_present += 1;
                        progress.note(&format!(
                            "trial {} was already stored by another process; kept that one",
                            record.key
                        ));
                    }
                    Err(error) => {
                        // The store is the run's memory: without it, stop cleanly.
                        interrupted = true;
                        in_flight.abort_all();
                        failure.get_or_insert(RunError::Store(error));
                    }
                }
            }
            // Aborted: the trial's guard killed its sandbox when its future was dropped, which
            // has happened by now, but the home it would have removed is left behind, and the
            // blocking work it was waiting on (preparing that home, say) may still be running.
            Some(Err(error)) => {
                if let Some(dirs) = homes.remove(&error.id()) {
                    aborted.extend(dirs);
                }
            }
            None => break,
        }
    }
    if !aborted.is_empty() {
        if !crate::blocking::drained(ABORTED_WORK_LIMIT).await {
            tracing::warn!(
                "blocking work of aborted trials still runs after {ABORTED_WORK_LIMIT:?}; \
                 removing their homes anyway"
            );
        }
        let keep = options.keep_homes;
        let _ = tokio::task::spawn_blocking(move || release_homes(aborted, keep)).await;
    }
    // Counted from the store rather than inferred from how the loop ended, so a trial lost
    // any other way still leaves the run resumable, and a run that is complete stays so (the
    // store never turns `complete` back into anything else).
    let present = store.run(run)?.trial_count;
    let incomplete = present < total;
    store.set_run_status(
        run,
        if incomplete {
            RunStatus::Interrupted
        } else {
            RunStatus::Complete
        },
    )?;
    progress.done();
    if let Some(error) = failure {
        return Err(error);
    }
    // Keep the run's counts up to date for the viewer (a cache: a failure loses nothing).
    let _ = store.cell_counts(run);
    if !options.keep_homes {
        // Only this process's directory and the run's, and only when they are empty.
        let _ = std::fs::remove_dir(&homes_dir);
        let _ = std::fs::remove_dir(&run_dir);
    }
    Ok(RunSummary {
        run: run.clone(),
        total,
        already_done,
        stored,
        retried,
        already_present,
        present,
        interrupted: incomplete,
        outcomes,
        wall: started.elapsed(),
    })
}

/// How long an interrupted run waits for its aborted trials' blocking work (their sandboxes
/// are killed, so it ends quickly) before removing their homes.
const ABORTED_WORK_LIMIT: Duration = Duration::from_secs(60);

/// One trial as a task: never panics out, always yields a record.
async fn run_one(
    trial: PlannedTrial,
    home: PathBuf,
    keep_home: bool,
    mut facilities: crate::agent::Facilities,
) -> TrialRecord {
    if trial.judge.is_some() {
        facilities.judge = trial.judge.clone();
    }
    let place = TrialPlace {
        home: home.clone(),
        hostname: "agent".into(),
        facilities,
    };
    let future = run_trial(
        &trial.spec,
        &place,
        Arc::clone(&trial.model),
        &*trial.evaluate,
    );
    let record = match std::panic::AssertUnwindSafe(future).catch_unwind().await {
        Ok(record) => record,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into());
            TrialRecord {
                key: trial.spec.key.clone(),
                seed: trial.spec.seed,
                transcript: Vec::new(),
                file_changes: Vec::new(),
                labels: Vec::new(),
                outcome: Outcome::HarnessError {
                    message: format!("the trial panicked: {message}"),
                },
                usage: Default::default(),
                turns: 0,
                started_at_ms: 0,
                wall_ms: 0,
                events: Vec::new(),
            }
        }
    };
    let dirs = trial_dirs(&home, &trial.spec);
    let _ = crate::blocking::spawn(move || release_homes(dirs, keep_home)).await;
    record
}

/// Give a finished trial's homes back: remove them, or with `keep` turn each into a plain
/// directory holding a copy of its files (its volume released either way).
fn release_homes(dirs: Vec<PathBuf>, keep: bool) {
    for dir in dirs {
        if keep {
            if let Err(error) = offswitch_sandbox::keep_home(&dir) {
                tracing::warn!("failed to keep home {}: {error}", dir.display());
            }
        } else if let Err(error) = offswitch_sandbox::remove_home(&dir) {
            tracing::warn!("failed to remove home {}: {error}", dir.display());
        }
    }
}

/// Every directory a trial writes on the host: its home and its other hosts' homes.
fn trial_dirs(home: &std::path::Path, spec: &TrialSpec) -> Vec<PathBuf> {
    std::iter::once(home.to_owned())
        .chain(
            spec.mechanics
                .hosts
                .iter()
                .map(|host| crate::mechanics::hosts::host_home(home, &host.name)),
        )
        .collect()
}

/// A directory name for a trial's home: readable prefix, unique by the key's hash.
fn home_name(key: &TrialKey) -> String {
    let digest = sha2::Sha256::digest(key.to_string().as_bytes());
    let scenario: String = key
        .scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{scenario}-{}-{}", key.epoch, &hex::encode(digest)[..12])
}

/// The live display: an indicatif bar on a terminal, one line per trial otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    done: u64,
    total: u64,
    started: Instant,
}

impl Progress {
    fn new(mode: ProgressMode, total: u64, already_done: u64) -> Progress {
        let use_bar = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
        let bar = use_bar.then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} trials  {per_sec}  ETA {eta}  {msg}",
                )
                .expect("the template is valid"),
            );
            bar.set_position(already_done);
            bar
        });
        Progress {
            plain: mode != ProgressMode::Quiet && bar.is_none(),
            bar,
            done: already_done,
            total,
            started: Instant::now(),
        }
    }

    /// `outcomes`: the counts of this invocation's stored trials, `record` included.
    fn finished(&mut self, record: &TrialRecord, outcomes: &BTreeMap<String, usize>) {
        self.done += 1;
        let counts = outcomes
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(bar) = &self.bar {
            bar.set_message(counts);
            bar.inc(1);
        } else if self.plain {
            let labels = record
                .labels
                .iter()
                .filter(|l| l.value)
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(",");
            // Not `eprintln!`, which panics when stderr is a closed pipe (`2>&1 | head`): the
            // progress display must never take the run down with it.
            let _ = writeln!(
                std::io::stderr(),
                "[{}/{}] {} -> {} [{}] ({:.1} trials/s; {})",
                self.done,
                self.total,
                record.key,
                record.outcome.name(),
                labels,
                self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3),
                counts
            );
        }
    }

    fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None if self.plain => {
                let _ = writeln!(std::io::stderr(), "{message}");
            }
            None => {}
        }
    }

    fn done(&self) {
        // The closing table follows on stdout; a cleared bar keeps it from sharing a line.
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
