//! Pages of a run's trials for the viewer: one row per trial from the `trials` table alone
//! (and `labels` when filtering by one), never a transcript or an event stream, a page at a
//! time, so a list of 100,000 trials costs what one page does.

use rusqlite::params_from_iter;
use rusqlite::types::Value;

use crate::{SqliteContext, Store, StoreError, require_run};

/// The most rows of one page.
pub const MAX_PAGE: u32 = 500;

/// Which trials of a run a page lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrialFilter {
    pub model: Option<String>,
    pub scenario: Option<String>,
    pub variant: Option<String>,
    pub outcome: Option<String>,
    /// Only trials whose label of this name is true and determinate.
    pub label: Option<String>,
    /// Earlier attempts replaced by a retry too.
    pub with_replaced: bool,
}

/// One trial as a list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialRow {
    /// Its position in the run: `<run>/<index>` names it.
    pub index: u32,
    pub model: String,
    pub scenario: String,
    pub variant: String,
    pub epoch: u32,
    pub attempt: u32,
    pub replaced: bool,
    pub outcome: String,
    pub turns: u32,
    pub tokens: u64,
    pub started_at_ms: i64,
    pub wall_ms: u64,
}

impl Store {
    /// Page `page` (0-based, `per_page` rows, at most [`MAX_PAGE`]) of `run`'s trials that
    /// `filter` keeps, in position order, and how many it keeps in all.
    pub fn trial_rows(
        &self,
        run: &str,
        filter: &TrialFilter,
        page: u32,
        per_page: u32,
    ) -> Result<(Vec<TrialRow>, u64), StoreError> {
        let context = || format!("listing the trials of run {run}");
        require_run(&self.connection, run, context)?;
        let mut clauses = vec!["t.run_id = ?".to_owned()];
        let mut values = vec![Value::Text(run.to_owned())];
        for (column, value) in [
            ("t.model", &filter.model),
            ("t.scenario", &filter.scenario),
            ("t.variant", &filter.variant),
            ("t.outcome", &filter.outcome),
        ] {
            if let Some(value) = value {
                clauses.push(format!("{column} = ?"));
                values.push(Value::Text(value.clone()));
            }
        }
        if !filter.with_replaced {
            clauses.push("t.replaced = 0".to_owned());
        }
        if let Some(label) = &filter.label {
            clauses.push(
                "EXISTS (SELECT 1 FROM labels l WHERE l.trial_id = t.id AND l.name = ? \
                 AND l.value = 1 AND l.indeterminate = 0)"
                    .to_owned(),
            );
            values.push(Value::Text(label.clone()));
        }
        let filter_sql = clauses.join(" AND ");
        let total: u64 = self
            .connection
            .query_row(
                &format!("SELECT COUNT(*) FROM trials t WHERE {filter_sql}"),
                params_from_iter(values.iter()),
                |row| row.get(0),
            )
            .context(context)?;
        let per_page = per_page.clamp(1, MAX_PAGE);
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT t.idx, t.model, t.scenario, t.variant, t.epoch, t.attempt, t.replaced,
                        t.outcome, t.turns, t.prompt_tokens + t.completion_tokens,
                        t.started_at_ms, t.wall_ms
                 FROM trials t WHERE {filter_sql} ORDER BY t.idx LIMIT {per_page} OFFSET {}",
                u64::from(page) * u64::from(per_page)
            ))
            .context(context)?;
        let rows = statement
            .query_map(params_from_iter(values.iter()), |row| {
                Ok(TrialRow {
                    index: row.get(0)?,
                    model: row.get(1)?,
                    scenario: row.get(2)?,
                    variant: row.get(3)?,
                    epoch: row.get(4)?,
                    attempt: row.get(5)?,
                    replaced: row.get(6)?,
                    outcome: row.get(7)?,
                    turns: row.get(8)?,
                    tokens: row.get(9)?,
                    started_at_ms: row.get(10)?,
                    wall_ms: row.get(11)?,
                })
            })
            .context(context)?
            .collect::<Result<Vec<_>, _>>()
            .context(context)?;
        Ok((rows, total))
    }
}
