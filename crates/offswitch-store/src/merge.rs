//! Copying the trials of one run from several databases (the shards of a sharded run) into
//! one, row by row, in a single transaction.
//!
//! [`Store::import_run`] decodes every trial into memory first; a merge of a large run must
//! not (100,000 trials with their transcripts and event streams are gigabytes), so this
//! copies rows as they are read, through the tables' own columns. The columns are read from
//! the schema rather than listed here, so a migration that adds one is copied too; the table
//! list is checked against the schema by a test.

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior, params};

use crate::{Provenance, RunId, RunStatus, SqliteContext, Store, StoreError, insert_provenance};

/// The tables holding a trial's parts, each keyed by `trial_id`.
pub(crate) const TRIAL_CHILDREN: &[&str] = &[
    "transcript_entries",
    "file_changes",
    "labels",
    "event_streams",
];

/// The run a merge creates.
#[derive(Debug, Clone)]
pub struct MergedRun {
    pub id: RunId,
    pub created_at_ms: i64,
    pub label: Option<String>,
    pub config: serde_json::Value,
    pub provenance: Option<Provenance>,
}

impl Store {
    /// Create `run` here and copy into it every trial (replaced attempts included) of the run
    /// of that id in each of `sources`, all in one transaction: either the whole merged run is
    /// here, or nothing. The sources are opened read-only and must be at this schema version
    /// (open each with [`Store::open`] first to migrate it). Trials keep their attempts and
    /// order within a source; their positions (`<run>/<index>`) follow the sources' order.
    /// Refused when `run` is already here. Returns the trials copied.
    pub fn merge_run(&self, run: &MergedRun, sources: &[&Path]) -> Result<u64, StoreError> {
        let id = run.id.as_str();
        let context = || format!("merging run {id}");
        let transaction =
            Transaction::new_unchecked(&self.connection, TransactionBehavior::Immediate)
                .context(context)?;
        let inserted = transaction
            .execute(
                "INSERT OR IGNORE INTO runs (id, created_at_ms, label, status, config)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    run.created_at_ms,
                    run.label,
                    RunStatus::Complete.as_str(),
                    run.config.to_string()
                ],
            )
            .context(context)?;
        if inserted == 0 {
            return Err(StoreError::RunExists(id.to_owned()));
        }
        if let Some(provenance) = &run.provenance {
            insert_provenance(&transaction, id, provenance)?;
        }
        let mut copied = 0;
        for source in sources {
            copied += copy_trials(&transaction, source, id)?;
        }
        transaction.commit().context(context)?;
        Ok(copied)
    }
}

/// Copy the trials of `run` in the database at `source` into `run` here; how many.
fn copy_trials(main: &Connection, source: &Path, run: &str) -> Result<u64, StoreError> {
    let context = || format!("copying run {run} from {}", source.display());
    let from = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .context(context)?;
    let version: u32 = from
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .context(context)?;
    if version != crate::schema::SCHEMA_VERSION {
        return Err(StoreError::Corrupt {
            row: format!("{}", source.display()),
            detail: format!(
                "schema version {version}, this merge writes {}: open it with this offswitch first",
                crate::schema::SCHEMA_VERSION
            ),
        });
    }
    // New rows go after every row here: trial ids above the largest, positions after the
    // run's last.
    let (id_offset, idx_offset): (i64, i64) = main
        .query_row(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM trials),
                    (SELECT COALESCE(MAX(idx), 0) FROM trials WHERE run_id = ?1)",
            [run],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .context(context)?;
    let copied = copy_rows(
        main,
        &from,
        "trials",
        "SELECT {} FROM trials WHERE run_id = ?1 ORDER BY idx",
        run,
        |column, value| match (column, value) {
            ("id", Value::Integer(id)) => Value::Integer(id + id_offset),
            ("idx", Value::Integer(idx)) => Value::Integer(idx + idx_offset),
            (_, value) => value,
        },
    )
    .map_err(|e| e.located(context))?;
    for table in TRIAL_CHILDREN {
        copy_rows(
            main,
            &from,
            table,
            &format!(
                "SELECT {{}} FROM {table} WHERE trial_id IN (SELECT id FROM trials WHERE run_id = ?1)"
            ),
            run,
            |column, value| match (column, value) {
                ("trial_id", Value::Integer(id)) => Value::Integer(id + id_offset),
                (_, value) => value,
            },
        )
        .map_err(|e| e.located(context))?;
    }
    Ok(copied)
}

/// A failed copy, before it says which database it was copying.
struct CopyError(rusqlite::Error);

impl CopyError {
    fn located(self, context: impl FnOnce() -> String) -> StoreError {
        StoreError::Sqlite {
            context: context(),
            source: self.0,
        }
    }
}

impl From<rusqlite::Error> for CopyError {
    fn from(error: rusqlite::Error) -> Self {
        CopyError(error)
    }
}

/// Copy the rows `select` (its `{}` replaced by `table`'s columns, `?1` bound to `run`) from
/// `from` into `table` of `main`, each value passed through `map` with its column's name.
fn copy_rows(
    main: &Connection,
    from: &Connection,
    table: &str,
    select: &str,
    run: &str,
    map: impl Fn(&str, Value) -> Value,
) -> Result<u64, CopyError> {
    let columns = table_columns(main, table)?;
    let list = columns
        .iter()
        .map(|name| format!("\"{}\"", name.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    let placeholders = vec!["?"; columns.len()].join(", ");
    let mut insert = main.prepare(&format!(
        "INSERT INTO {table} ({list}) VALUES ({placeholders})"
    ))?;
    let mut read = from.prepare(&select.replace("{}", &list))?;
    let mut rows = read.query([run])?;
    let mut copied = 0;
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            values.push(map(column, row.get::<_, Value>(i)?));
        }
        insert.execute(rusqlite::params_from_iter(values))?;
        copied += 1;
    }
    Ok(copied)
}

/// The columns of `table` in `connection`, in declared order.
pub(crate) fn table_columns(
    connection: &Connection,
    table: &str,
) -> Result<Vec<String>, rusqlite::Error> {
    let mut statement =
        connection.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
    let columns = statement
        .query_map([table], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table whose rows belong to a trial is copied by a merge.
    #[test]
    fn the_merge_copies_every_table_that_holds_trial_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("a.db")).unwrap();
        let tables: Vec<String> = store
            .connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut children: Vec<String> = tables
            .into_iter()
            .filter(|table| {
                table_columns(&store.connection, table)
                    .unwrap()
                    .iter()
                    .any(|column| column == "trial_id")
            })
            .collect();
        children.sort();
        let mut expected: Vec<&str> = TRIAL_CHILDREN.to_vec();
        expected.sort();
        assert_eq!(children, expected);
    }
}
