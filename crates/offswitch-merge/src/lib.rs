//! `offswitch merge`: join the databases of a sharded run (`offswitch run --shard i/N`, one
//! database per shard) into one run that every report, export and the viewer read exactly as
//! an unsharded one.
//!
//! A merge first proves that the shards are together exactly the run's plan: one run id, the
//! same plan and inputs (configuration, plan order, offswitch build, scenario and model file
//! hashes), every shard of the split once, each holding every trial of its slice and nothing
//! else. It says everything that is missing or conflicting at once, and writes nothing unless
//! all holds. The copy is then one transaction ([`Store::merge_run`]): a merge interrupted in
//! any way leaves no partial run behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use offswitch_core::TrialKey;
use offswitch_harness::RunConfig;
use offswitch_harness::runner::{provenance_differences, stored_config};
use offswitch_harness::shard::{PlanLayout, Shard};
use offswitch_store::{MergedRun, Provenance, RunId, RunInfo, RunLock, Store, StoreError};

/// Problems listed per shard before the rest are counted.
const MAX_LISTED: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The shards are not exactly one run's plan; every reason, one line each.
    #[error("the shards cannot be merged:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Refused(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a merge made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSummary {
    pub run: RunId,
    pub shards: u32,
    /// Trials of the merged run (one per key of the plan).
    pub trials: u64,
    /// Rows copied: the trials and the earlier attempts they replaced.
    pub copied: u64,
}

/// One shard database, read and locked.
struct ShardDb {
    path: PathBuf,
    info: RunInfo,
    config: RunConfig,
    shard: Shard,
    plan: PlanLayout,
    provenance: Option<Provenance>,
    keys: Vec<TrialKey>,
    /// Held until the merge ends, so no process adds trials to the shard meanwhile.
    _lock: RunLock,
}

impl ShardDb {
    fn name(&self) -> String {
        format!("{} (shard {})", self.path.display(), self.shard)
    }
}

/// Merge the shard databases `sources` into `out` (created if missing; it must not hold the
/// run yet). `run` picks the run in each source when one holds several.
pub fn merge(
    out: &Path,
    sources: &[PathBuf],
    run: Option<&str>,
) -> Result<MergeSummary, MergeError> {
    let mut problems = Vec::new();
    if sources.is_empty() {
        return Err(MergeError::Refused(vec!["no shard database given".into()]));
    }
    let out_canonical = std::fs::canonicalize(out).ok();
    let mut seen: BTreeMap<PathBuf, &Path> = BTreeMap::new();
    let mut shards = Vec::new();
    for source in sources {
        let Ok(canonical) = std::fs::canonicalize(source) else {
            problems.push(format!("{}: no such file", source.display()));
            continue;
        };
        if Some(&canonical) == out_canonical.as_ref() {
            problems.push(format!(
                "{}: the output is one of the shards; merge into a new file",
                source.display()
            ));
            continue;
        }
        if let Some(first) = seen.insert(canonical, source) {
            problems.push(format!(
                "{} is given twice (also as {})",
                source.display(),
                first.display()
            ));
            continue;
        }
        match read_shard(source, run) {
            Ok(shard) => shards.push(shard),
            Err(problem) => problems.push(problem),
        }
    }
    shards.sort_by_key(|s| s.shard.index);
    if problems.is_empty() {
        check_one_plan(&shards, &mut problems);
    }
    if problems.is_empty() {
        for shard in &shards {
            check_slice(shard, &mut problems);
        }
    }
    if !problems.is_empty() {
        return Err(MergeError::Refused(problems));
    }
    let base = &shards[0];
    let id = base.info.id.clone();
    let store = Store::open(out)?;
    match store.run(id.as_str()) {
        Ok(_) => {
            return Err(MergeError::Refused(vec![format!(
                "{} already holds run {id}; merge into a new file",
                out.display()
            )]));
        }
        Err(StoreError::UnknownRun(_)) => {}
        Err(error) => return Err(error.into()),
    }
    let config = RunConfig {
        shard: None,
        plan: None,
        command_line: base
            .config
            .command_line
            .as_ref()
            .map(|line| without_shard(line)),
        ..base.config.clone()
    };
    let merged = MergedRun {
        id: id.clone(),
        created_at_ms: shards
            .iter()
            .map(|s| s.info.created_at_ms)
            .min()
            .unwrap_or(0),
        label: shards.iter().find_map(|s| s.info.label.clone()),
        config: serde_json::to_value(&config).map_err(|e| {
            MergeError::Refused(vec![format!(
                "the run's configuration cannot be written: {e}"
            )])
        })?,
        provenance: base.provenance.clone(),
    };
    let paths: Vec<&Path> = shards.iter().map(|s| s.path.as_path()).collect();
    let copied = store.merge_run(&merged, &paths)?;
    // The merged run's counts, kept for the viewer (one aggregation now rather than at its
    // first view; a cache, so a failure loses nothing).
    let _ = store.cell_counts(id.as_str());
    Ok(MergeSummary {
        run: id,
        shards: base.shard.count,
        trials: base.plan.total(),
        copied,
    })
}

/// Open `path` and read the shard in it, or say why it is not one.
fn read_shard(path: &Path, run: Option<&str>) -> Result<ShardDb, String> {
    let at = |detail: String| format!("{}: {detail}", path.display());
    // `Store::open` brings an older database to this schema version, which the copy needs.
    let store = Store::open(path).map_err(|e| at(e.to_string()))?;
    let info = match run {
        Some(id) => store.run(id).map_err(|e| at(e.to_string()))?,
        None => {
            let mut runs = store.runs().map_err(|e| at(e.to_string()))?;
            match runs.len() {
                0 => return Err(at("holds no run".into())),
                1 => runs.remove(0),
                n => {
                    let ids: Vec<String> = runs.iter().map(|r| r.id.to_string()).collect();
                    return Err(at(format!(
                        "holds {n} runs ({}); choose one with --run",
                        ids.join(", ")
                    )));
                }
            }
        }
    };
    let id = info.id.to_string();
    let config = stored_config(&id, &info.config).map_err(|e| at(e.to_string()))?;
    let (Some(shard), Some(plan)) = (config.shard, config.plan.clone()) else {
        return Err(at(format!(
            "run {id} is not a shard (it was not started with --shard)"
        )));
    };
    let lock = store.lock_run(&id).map_err(|e| at(e.to_string()))?;
    let provenance = store.provenance(&id).map_err(|e| at(e.to_string()))?;
    let keys = store
        .completed_keys(&id)
        .map_err(|e| at(e.to_string()))?
        .into_iter()
        .collect();
    Ok(ShardDb {
        path: path.to_owned(),
        info,
        config,
        shard,
        plan,
        provenance,
        keys,
        _lock: lock,
    })
}

/// That `shards` are slices of one run and one split: one id, one plan, one set of inputs,
/// every index once.
fn check_one_plan(shards: &[ShardDb], problems: &mut Vec<String>) {
    let Some(base) = shards.first() else { return };
    for shard in &shards[1..] {
        if shard.info.id != base.info.id {
            problems.push(format!(
                "{} holds run {} but {} holds run {}: shards of one run share its id (--run-id)",
                shard.path.display(),
                shard.info.id,
                base.path.display(),
                base.info.id
            ));
            continue;
        }
        if shard.shard.count != base.shard.count {
            problems.push(format!(
                "{} and {} come from different splits of the plan",
                shard.name(),
                base.name()
            ));
        }
        if !shard.config.same_plan(&base.config) || shard.plan != base.plan {
            problems.push(format!(
                "{} is from another plan than {}: {}",
                shard.name(),
                base.name(),
                config_differences(&base.config, &shard.config)
            ));
        }
        let (a, b) = (base.name(), shard.name());
        match (&base.provenance, &shard.provenance) {
            (Some(x), Some(y)) => {
                for difference in
                    provenance_differences(x, y, (&format!("in {a}"), &format!("in {b}")))
                {
                    problems.push(format!("made with other inputs: {difference}"));
                }
            }
            (None, None) => {}
            _ => problems.push(format!(
                "only one of {a} and {b} records what it was made with"
            )),
        }
    }
    if !problems.is_empty() {
        return;
    }
    let mut by_index: BTreeMap<u32, Vec<&ShardDb>> = BTreeMap::new();
    for shard in shards {
        by_index.entry(shard.shard.index).or_default().push(shard);
    }
    for (index, given) in &by_index {
        if given.len() > 1 {
            let paths: Vec<String> = given.iter().map(|s| s.path.display().to_string()).collect();
            problems.push(format!(
                "shard {index}/{} is given {} times ({}): the shards overlap",
                base.shard.count,
                given.len(),
                paths.join(", ")
            ));
        }
    }
    let missing: Vec<String> = (1..=base.shard.count)
        .filter(|index| !by_index.contains_key(index))
        .map(|index| format!("{index}/{}", base.shard.count))
        .collect();
    if !missing.is_empty() {
        let listed = listed(&missing, 20);
        problems.push(format!(
            "missing {} of {} shards: {listed}",
            missing.len(),
            base.shard.count
        ));
    }
}

/// That `shard` holds every trial of its slice of the plan and nothing else.
fn check_slice(shard: &ShardDb, problems: &mut Vec<String>) {
    let index = shard.plan.index();
    let mut foreign = Vec::new();
    let mut held = 0u64;
    for key in &shard.keys {
        match index.position(key) {
            Some(position) if shard.shard.holds(position) => held += 1,
            Some(position) => {
                let owner = position % u64::from(shard.shard.count) + 1;
                foreign.push(format!(
                    "trial {key}, which belongs to shard {owner}/{}",
                    shard.shard.count
                ));
            }
            None => foreign.push(format!("trial {key}, which is not in the plan")),
        }
    }
    foreign.sort();
    if !foreign.is_empty() {
        problems.push(format!(
            "{} holds {}",
            shard.name(),
            listed(&foreign, MAX_LISTED)
        ));
    }
    let expected = shard.shard.size(shard.plan.total());
    if held < expected {
        problems.push(format!(
            "{} has {held} of its {expected} trials: finish it first (the same command again, or `offswitch run --resume {} --db {}`)",
            shard.name(),
            shard.info.id,
            shard.path.display()
        ));
    }
}

/// The first `limit` of `items` joined, and how many more.
fn listed(items: &[String], limit: usize) -> String {
    let mut text = items
        .iter()
        .take(limit)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > limit {
        text.push_str(&format!(" and {} more", items.len() - limit));
    }
    text
}

/// The settings in which two run configurations differ, for a refusal.
fn config_differences(a: &RunConfig, b: &RunConfig) -> String {
    let fields = |config: &RunConfig| match serde_json::to_value(config) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (fields(a), fields(b));
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    let differing: Vec<String> = names
        .into_iter()
        .filter(|name| !matches!(name.as_str(), "command_line" | "shard"))
        .filter(|name| a.get(*name) != b.get(*name))
        .map(|name| {
            let show = |v: Option<&serde_json::Value>| {
                let text = v.map_or_else(|| "unset".to_owned(), |v| v.to_string());
                if text.chars().count() > 60 {
                    format!("{}...", text.chars().take(60).collect::<String>())
                } else {
                    text
                }
            };
            format!("{name} {} against {}", show(a.get(name)), show(b.get(name)))
        })
        .collect();
    if differing.is_empty() {
        "the order of the plan differs".into()
    } else {
        differing.join("; ")
    }
}

/// A stored command line without its `--shard` argument: the command of the whole run.
fn without_shard(line: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(line.len());
    let mut skip_next = false;
    for arg in line {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        if arg == "--shard" {
            skip_next = true;
        } else if !arg.starts_with("--shard=") {
            out.push(arg.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_run_command_drops_the_shard_in_both_spellings() {
        let line = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            without_shard(&line(&[
                "offswitch",
                "run",
                "--shard",
                "2/4",
                "--epochs",
                "3"
            ])),
            line(&["offswitch", "run", "--epochs", "3"])
        );
        assert_eq!(
            without_shard(&line(&["offswitch", "run", "--shard=2/4"])),
            line(&["offswitch", "run"])
        );
    }

    #[test]
    fn long_lists_are_cut_with_a_count() {
        let items: Vec<String> = (0..8).map(|i| i.to_string()).collect();
        assert_eq!(listed(&items, 3), "0, 1, 2 and 5 more");
        assert_eq!(listed(&items[..2], 3), "0, 1");
    }
}
