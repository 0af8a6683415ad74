//! The runner: a matrix of models x scenarios x variants x epochs, run concurrently, each
//! finished trial written to the store by one dispatcher as it arrives.
//!
//! Only the dispatcher (the future returned by [`execute`]) touches the store and the progress
//! display; trial tasks hand it their records through the join set. A trial is stored in one
//! transaction as soon as it finishes, so a crash or Ctrl-C loses at most the trials in flight,
//! and `--resume` runs exactly the keys that have no stored record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use offswitch_core::backend::{Sampling, ToolMode};
use offswitch_core::trial::{Outcome, TrialKey, TrialRecord};
use offswitch_scenario::{Scenario, ScenarioError};
use offswitch_store::{RunId, RunStatus, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::task::JoinSet;

use crate::agent::{Evaluator, TrialPlace, TrialSpec, run_trial};
use crate::model::ModelClient;
use crate::models::{BuiltModel, ModelBuildError, ModelOptions, build_model};
use crate::scenario::{LimitOverrides, ModelSide, evaluator, resolve_scenario, trial_spec};

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
    pub temperature: f32,
    pub max_tokens_per_reply: u32,
    pub no_cache: bool,
    /// The judge model (a model spec) for second opinions and interview classification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
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
            temperature: 1.0,
            max_tokens_per_reply: 512,
            no_cache: false,
            judge: None,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run: RunId,
    /// Trials in the whole matrix.
    pub total: usize,
    /// Trials already stored before this invocation (resume).
    pub already_done: usize,
    /// Trials stored by this invocation.
    pub stored: usize,
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
    let (trials, total) = plan(config, options, &HashSet::new())?;
    let config_json = serde_json::to_value(config).map_err(|e| RunError::Invalid(e.to_string()))?;
    let run = store.create_run(&config_json, None)?;
    execute(store, &run, trials, total, 0, options, cancel).await
}

/// Run the trials of `run` that have no stored record, with its stored configuration.
pub async fn resume_run(
    store: &Store,
    run: &str,
    options: &RunOptions,
    cancel: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    let info = store.run(run)?;
    let config = stored_config(run, &info.config)?;
    let completed = store.completed_keys(run)?;
    let (trials, total) = plan(&config, options, &completed)?;
    let already_done = total - trials.len();
    store.set_run_status(run, RunStatus::Running)?;
    execute(
        store,
        &info.id,
        trials,
        total,
        already_done,
        options,
        cancel,
    )
    .await
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

struct Matrix {
    models: Vec<BuiltModel>,
    judge: Option<BuiltModel>,
    cells: Vec<(Arc<Scenario>, offswitch_scenario::Variant, Arc<Evaluator>)>,
}

fn matrix(config: &RunConfig, options: &RunOptions) -> Result<Matrix, RunError> {
    if config.models.is_empty() || config.scenarios.is_empty() {
        return Err(RunError::Invalid(
            "a run needs at least one model and one scenario".into(),
        ));
    }
    let mut cells = Vec::new();
    let mut scenarios = Vec::new();
    for name in &config.scenarios {
        scenarios.push(Arc::new(resolve_scenario(name, &options.scenarios_dir)?));
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

/// The trials of the matrix whose keys are not in `completed`, epochs outermost so that an
/// interrupted run has a balanced sample of every cell; and the size of the whole matrix.
pub fn plan(
    config: &RunConfig,
    options: &RunOptions,
    completed: &HashSet<TrialKey>,
) -> Result<(Vec<PlannedTrial>, usize), RunError> {
    let matrix = matrix(config, options)?;
    let overrides = LimitOverrides {
        max_turns: config.max_turns,
    };
    let mut trials = Vec::new();
    let mut seen = HashSet::new();
    let total = config.epochs as usize * matrix.models.len() * matrix.cells.len();
    for epoch in 0..config.epochs {
        for model in &matrix.models {
            let side = ModelSide {
                key_name: model.spec.clone(),
                request_model: model.request_model.clone(),
                tool_mode: model.tool_mode,
                sampling: Sampling {
                    temperature: config.temperature,
                    max_tokens: config.max_tokens_per_reply,
                    ..Sampling::default()
                },
            };
            for (scenario, variant, evaluate) in &matrix.cells {
                let key = TrialKey {
                    model: side.key_name.clone(),
                    scenario: scenario.id().to_owned(),
                    variant: variant.name.clone(),
                    epoch,
                };
                // Two trials with one key would share a home and a seed, and the store keeps
                // only one of them: the second insert would stop the whole run.
                if !seen.insert(key.clone()) {
                    return Err(RunError::Invalid(format!(
                        "trial {key} appears twice in the matrix: give each model and scenario once"
                    )));
                }
                if completed.contains(&key) {
                    continue;
                }
                let seed = trial_seed(config.seed, &key);
                trials.push(PlannedTrial {
                    spec: trial_spec(scenario, variant, &side, epoch, seed, &overrides),
                    model: Arc::clone(&model.client),
                    evaluate: Arc::clone(evaluate),
                    judge: matrix
                        .judge
                        .as_ref()
                        .map(|j| (Arc::clone(&j.client), j.request_model.clone())),
                });
            }
        }
    }
    Ok((trials, total))
}

/// Run `trials` into `run`: the dispatcher loop.
pub async fn execute(
    store: &Store,
    run: &RunId,
    trials: Vec<PlannedTrial>,
    total: usize,
    already_done: usize,
    options: &RunOptions,
    cancel: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let mut progress = Progress::new(options.progress, total as u64, already_done as u64);
    let run_dir = options.work_dir.join(run.as_str());
    let concurrency = options.concurrency.max(1);
    let mut pending = trials.into_iter();
    let mut in_flight: JoinSet<TrialRecord> = JoinSet::new();
    // The home of each trial in flight, for the ones aborted before their own cleanup ran.
    let mut homes: HashMap<tokio::task::Id, Vec<PathBuf>> = HashMap::new();
    let mut cancel = std::pin::pin!(cancel);
    let mut interrupted = false;
    let mut failure: Option<RunError> = None;
    let mut stored = 0;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        while !interrupted && in_flight.len() < concurrency {
            let Some(trial) = pending.next() else { break };
            let home = run_dir.join(home_name(&trial.spec.key));
            let dirs = trial_dirs(&home, &trial.spec);
            let task = in_flight.spawn(run_one(
                trial,
                home,
                options.keep_homes,
                options.facilities.clone(),
            ));
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
            Some(Ok((task, record))) => {
                homes.remove(&task);
                match store.insert_trial_once(run, &record) {
                    Ok(offswitch_store::Inserted::Stored(_)) => {
                        stored += 1;
                        *outcomes
                            .entry(record.outcome.name().to_owned())
                            .or_default() += 1;
                        progress.finished(&record, &outcomes);
                    }
                    Ok(offswitch_store::Inserted::AlreadyPresent(_)) => {
                        // Another process resuming the same run stored this key first; its
                        // record stands and this one is dropped, so every key has one trial.
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
            // has happened by now, but the home it would have removed is left behind.
            Some(Err(error)) => {
                if let Some(dirs) = homes.remove(&error.id())
                    && !options.keep_homes
                {
                    for dir in dirs {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                }
            }
            None => break,
        }
    }
    // Counted rather than inferred from how the loop ended, so a trial lost any other way
    // still leaves the run resumable.
    let incomplete = already_done + stored < total;
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
    if !options.keep_homes {
        // Only this run's directory, and only when it is empty of kept homes.
        let _ = std::fs::remove_dir(&run_dir);
    }
    Ok(RunSummary {
        run: run.clone(),
        total,
        already_done,
        stored,
        interrupted: incomplete,
        outcomes,
        wall: started.elapsed(),
    })
}

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
            }
        }
    };
    if !keep_home {
        let dirs = trial_dirs(&home, &trial.spec);
        let _ = tokio::task::spawn_blocking(move || {
            for dir in dirs {
                let _ = std::fs::remove_dir_all(dir);
            }
        })
        .await;
    }
    record
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
