//! A run's counts per cell ([`CellCounts`]) aggregated by SQL, without reading any trial whole:
//! what the viewer builds a 100,000-trial run's report from in bounded memory. The same counts
//! as `offswitch_report::count_cells` over the run's current trials (a test holds the two
//! together). Aggregating every label of a large run takes seconds, so the result is kept in
//! `run_counts` (schema version 6) with the last trial it covers: later calls add only the
//! trials stored since, and recompute when a retry replaced a trial.

use std::collections::BTreeMap;

use offswitch_core::summary::{CellCounts, Confession, LabelCounts};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{SqliteContext, Store, StoreError, require_run};

/// The outcomes that do not count toward rates (`Outcome::is_valid_name`), as SQL.
const INVALID: &str = "('backend_failed', 'harness_error')";

type CellKey = (String, String, String);

impl Store {
    /// The counts of every (model, scenario, variant) cell of `run` over its current trials
    /// (replaced attempts left out), cells ordered by key. Kept in the database: the first
    /// call on a large run aggregates it, later ones add what was stored since.
    pub fn cell_counts(&self, run: &str) -> Result<Vec<CellCounts>, StoreError> {
        let context = || format!("counting the trials of run {run}");
        require_run(&self.connection, run, context)?;
        let (through, replaced): (i64, i64) = self
            .connection
            .query_row(
                "SELECT COALESCE(MAX(id), 0), COALESCE(SUM(replaced), 0) FROM trials
                 WHERE run_id = ?1",
                [run],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .context(context)?;
        let kept: Option<(i64, i64, String)> = self
            .connection
            .query_row(
                "SELECT through_trial_id, replaced, counts FROM run_counts WHERE run_id = ?1",
                [run],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .context(context)?;
        let kept = kept.and_then(|(kept_through, kept_replaced, json)| {
            let cells = serde_json::from_str::<CountsV1>(&json).ok()?.into_domain();
            (kept_replaced == replaced && kept_through <= through).then_some((kept_through, cells))
        });
        let cells = match kept {
            Some((kept_through, cells)) if kept_through == through => return Ok(cells),
            Some((kept_through, cells)) => {
                let mut cells: BTreeMap<CellKey, CellCounts> = cells
                    .into_iter()
                    .map(|c| ((c.model.clone(), c.scenario.clone(), c.variant.clone()), c))
                    .collect();
                for new in aggregate(&self.connection, run, kept_through, through)? {
                    let key = (new.model.clone(), new.scenario.clone(), new.variant.clone());
                    match cells.get_mut(&key) {
                        Some(cell) => cell.add(&new),
                        None => {
                            cells.insert(key, new);
                        }
                    }
                }
                cells.into_values().collect()
            }
            None => aggregate(&self.connection, run, 0, through)?,
        };
        // A cache: a database opened read-only, or busy past the timeout, is still read.
        let json = serde_json::to_string(&CountsV1::from_domain(&cells)).unwrap_or_default();
        let _ = self.connection.execute(
            "INSERT OR REPLACE INTO run_counts (run_id, through_trial_id, replaced, counts)
             VALUES (?1, ?2, ?3, ?4)",
            params![run, through, replaced, json],
        );
        Ok(cells)
    }
}

/// The counts of `run`'s current trials with ids in `(after, through]`.
fn aggregate(
    connection: &rusqlite::Connection,
    run: &str,
    after: i64,
    through: i64,
) -> Result<Vec<CellCounts>, StoreError> {
    let context = || format!("counting the trials of run {run}");
    let mut cells: BTreeMap<CellKey, CellCounts> = BTreeMap::new();
    let mut statement = connection
        .prepare(
            "SELECT model, scenario, variant, outcome, COUNT(*), SUM(turns),
                        SUM(prompt_tokens), SUM(completion_tokens)
                 FROM trials WHERE run_id = ?1 AND replaced = 0 AND id > ?2 AND id <= ?3
                 GROUP BY model, scenario, variant, outcome",
        )
        .context(context)?;
    let mut rows = statement
        .query(params![run, after, through])
        .context(context)?;
    while let Some(row) = rows.next().context(context)? {
        let key = cell_key(row, 0).context(context)?;
        let outcome: String = row.get(3).context(context)?;
        let count: u64 = row.get(4).context(context)?;
        let cell = cells.entry(key.clone()).or_insert_with(|| CellCounts {
            model: key.0.clone(),
            scenario: key.1.clone(),
            variant: key.2.clone(),
            ..CellCounts::default()
        });
        if offswitch_core::Outcome::is_valid_name(&outcome) {
            cell.sum_turns += row.get::<_, u64>(5).context(context)?;
            cell.sum_prompt_tokens += row.get::<_, u64>(6).context(context)?;
            cell.sum_completion_tokens += row.get::<_, u64>(7).context(context)?;
        }
        cell.outcomes.insert(outcome, count);
    }
    drop(rows);
    drop(statement);

    // Labels: the first of a name in each trial is the trial's; a cell's labels are in the
    // order of their first appearance, trials taken in order (as `count_cells` sees them).
    let mut statement = connection
        .prepare(&format!(
            "SELECT t.model, t.scenario, t.variant, l.name, MIN(t.idx * 65536 + l.seq),
                        SUM(v AND l.value = 1 AND l.indeterminate = 0),
                        SUM(v AND l.indeterminate = 0),
                        SUM(v AND l.indeterminate = 1)
                 FROM (SELECT id, idx, model, scenario, variant, outcome NOT IN {INVALID} AS v
                       FROM trials
                       WHERE run_id = ?1 AND replaced = 0 AND id > ?2 AND id <= ?3) t
                 JOIN labels l ON l.trial_id = t.id
                 GROUP BY t.model, t.scenario, t.variant, l.name
                 ORDER BY t.model, t.scenario, t.variant, 5"
        ))
        .context(context)?;
    let mut rows = statement
        .query(params![run, after, through])
        .context(context)?;
    while let Some(row) = rows.next().context(context)? {
        let key = cell_key(row, 0).context(context)?;
        let Some(cell) = cells.get_mut(&key) else {
            continue;
        };
        cell.labels.push((
            row.get(3).context(context)?,
            LabelCounts {
                successes: row.get(5).context(context)?,
                determinate: row.get(6).context(context)?,
                indeterminate: row.get(7).context(context)?,
            },
        ));
    }
    drop(rows);
    drop(statement);

    // Interviews: each valid trial whose interview ran, by its determinate confession
    // labels, one trial at a time.
    let mut statement = connection
        .prepare(&format!(
            "SELECT t.id, t.model, t.scenario, t.variant, l.name, l.value
                 FROM trials t JOIN labels l ON l.trial_id = t.id
                 WHERE t.run_id = ?1 AND t.replaced = 0 AND t.id > ?2 AND t.id <= ?3
                   AND t.outcome NOT IN {INVALID}
                   AND l.indeterminate = 0 AND l.name LIKE 'confessed\\_by\\_turn\\_%' ESCAPE '\\'
                   AND (SELECT value = 1 AND indeterminate = 0 FROM labels i
                        WHERE i.trial_id = t.id AND i.name = 'interviewed'
                        ORDER BY i.seq LIMIT 1)
                 ORDER BY t.id, l.seq"
        ))
        .context(context)?;
    let mut rows = statement
        .query(params![run, after, through])
        .context(context)?;
    let mut current: Option<(i64, CellKey, Confession)> = None;
    let finish = |cells: &mut BTreeMap<CellKey, CellCounts>,
                  done: Option<(i64, CellKey, Confession)>| {
        if let Some((_, key, confession)) = done
            && let Some(cell) = cells.get_mut(&key)
        {
            *cell.interviews.entry(confession).or_insert(0) += 1;
        }
    };
    while let Some(row) = rows.next().context(context)? {
        let id: i64 = row.get(0).context(context)?;
        if current.as_ref().is_none_or(|(c, _, _)| *c != id) {
            finish(&mut cells, current.take());
            let key = cell_key(row, 1).context(context)?;
            current = Some((id, key, Confession::default()));
        }
        let name: String = row.get(4).context(context)?;
        let value: bool = row.get(5).context(context)?;
        if let (Some(turn), Some((_, _, confession))) = (confession_turn(&name), current.as_mut()) {
            confession.add(turn, value);
        }
    }
    finish(&mut cells, current.take());
    drop(rows);
    drop(statement);

    // Trials that replayed model replies from the response cache.
    let mut statement = connection
        .prepare(
            "SELECT t.model, t.scenario, t.variant, COUNT(*) FROM trials t
                 WHERE t.run_id = ?1 AND t.replaced = 0 AND t.id > ?2 AND t.id <= ?3
                   AND EXISTS (SELECT 1 FROM transcript_entries e
                               WHERE e.trial_id = t.id AND e.kind = 'event'
                                 AND json_extract(e.body, '$.kind') = 'cache_hit')
                 GROUP BY t.model, t.scenario, t.variant",
        )
        .context(context)?;
    let mut rows = statement
        .query(params![run, after, through])
        .context(context)?;
    while let Some(row) = rows.next().context(context)? {
        let key = cell_key(row, 0).context(context)?;
        if let Some(cell) = cells.get_mut(&key) {
            cell.cached_trials = row.get(3).context(context)?;
        }
    }
    Ok(cells.into_values().collect())
}

/// The (model, scenario, variant) in columns `first` to `first + 2` of `row`.
fn cell_key(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<CellKey> {
    Ok((row.get(first)?, row.get(first + 1)?, row.get(first + 2)?))
}

/// `k` of `confessed_by_turn_<k>`, k >= 1 (as the report reads it).
fn confession_turn(name: &str) -> Option<u32> {
    name.strip_prefix("confessed_by_turn_")?
        .parse()
        .ok()
        .filter(|&turn| turn >= 1)
}

/// [`CellCounts`] of a run as kept in `run_counts.counts`.
#[derive(Serialize, Deserialize)]
struct CountsV1 {
    cells: Vec<CellV1>,
}

#[derive(Serialize, Deserialize)]
struct CellV1 {
    model: String,
    scenario: String,
    variant: String,
    outcomes: BTreeMap<String, u64>,
    sum_turns: u64,
    sum_prompt_tokens: u64,
    sum_completion_tokens: u64,
    /// (name, successes, determinate, indeterminate)
    labels: Vec<(String, u64, u64, u64)>,
    /// (first confessed turn, turns bit set, trials)
    interviews: Vec<(Option<u32>, u64, u64)>,
    cached_trials: u64,
}

impl CountsV1 {
    fn from_domain(cells: &[CellCounts]) -> CountsV1 {
        CountsV1 {
            cells: cells
                .iter()
                .map(|c| CellV1 {
                    model: c.model.clone(),
                    scenario: c.scenario.clone(),
                    variant: c.variant.clone(),
                    outcomes: c.outcomes.clone(),
                    sum_turns: c.sum_turns,
                    sum_prompt_tokens: c.sum_prompt_tokens,
                    sum_completion_tokens: c.sum_completion_tokens,
                    labels: c
                        .labels
                        .iter()
                        .map(|(n, l)| (n.clone(), l.successes, l.determinate, l.indeterminate))
                        .collect(),
                    interviews: c
                        .interviews
                        .iter()
                        .map(|(i, n)| (i.first_confessed, i.turns, *n))
                        .collect(),
                    cached_trials: c.cached_trials,
                })
                .collect(),
        }
    }

    fn into_domain(self) -> Vec<CellCounts> {
        self.cells
            .into_iter()
            .map(|c| CellCounts {
                model: c.model,
                scenario: c.scenario,
                variant: c.variant,
                outcomes: c.outcomes,
                sum_turns: c.sum_turns,
                sum_prompt_tokens: c.sum_prompt_tokens,
                sum_completion_tokens: c.sum_completion_tokens,
                labels: c
                    .labels
                    .into_iter()
                    .map(|(n, successes, determinate, indeterminate)| {
                        (
                            n,
                            LabelCounts {
                                successes,
                                determinate,
                                indeterminate,
                            },
                        )
                    })
                    .collect(),
                interviews: c
                    .interviews
                    .into_iter()
                    .map(|(first_confessed, turns, n)| {
                        (
                            Confession {
                                first_confessed,
                                turns,
                            },
                            n,
                        )
                    })
                    .collect(),
                cached_trials: c.cached_trials,
            })
            .collect()
    }
}
