//! The run database: one SQLite file holding runs, trials and everything a trial recorded.
//!
//! Layout and invariants:
//! - One file in WAL mode with `synchronous=NORMAL` and foreign keys on. A trial is written in
//!   one transaction, so a reader (or a restart) sees all of it or none of it.
//! - Durability: once [`Store::insert_trial`] returns, the commit is in the WAL file. WAL with
//!   `synchronous=NORMAL` is durable against a crash of the process (`kill -9`, panic, OOM kill)
//!   because the data is already handed to the operating system; only a power loss or kernel
//!   crash can roll back the last transactions. The test `trials_survive_kill_9` checks this.
//! - A database that fails SQLite's `quick_check` is refused at open ([`StoreError::Damaged`]),
//!   before anything is written to it. Commands that only read open with [`Store::open_to_read`]
//!   instead: no whole-file check (it reads every page: `runs list` took 33 s on a cold 2.7 GB
//!   database), SQLite's `query_only` and no checkpoint when it closes, so nothing is written to
//!   the file through that store (a database to migrate is opened by [`Store::open`]); damage a
//!   read runs into is still an error ([`StoreError::is_damage`]).
//! - The schema is versioned with `PRAGMA user_version` and explicit migrations (`schema.rs`);
//!   a database newer than the code is refused rather than misread.
//! - Stored formats are the `*V1` types of `stored.rs`, converted explicitly from the domain
//!   types, never serde dumps of them. Schema version 2 added `labels.score` (`Label::score`;
//!   SQLite has no NaN, so a NaN score reads back as `None`). A backend-error entry's body
//!   gained the optional `kind` and `wait_ms`, absent (and read as `None`) in older bodies.
//! - One writer (the runner's dispatcher) plus any number of readers, in this process or others.
//!   `Store` is `Send` but not `Sync`: give each thread its own `Store`.
//! - One process per run: the runner holds [`RunLock`] (an OS file lock next to the database,
//!   released when the process dies) for as long as it adds trials to a run.
//! - Schema version 4 numbers the attempts at a key: `--retry-errors` replaces a harness error
//!   with a new attempt and keeps the failed one, marked replaced ([`Store::replace_trial`],
//!   [`Store::attempts`]). Reads of a run's trials see the current attempt of each key only.
//! - Schema version 5 keeps `Label::indeterminate` (`labels.indeterminate`, 0 for labels
//!   written before) and the trial's event streams (`event_streams`, one row per sandbox, the
//!   events a compact JSON array), written in the trial's transaction. A stream's stored copy
//!   is bounded: at most [`MAX_STORED_EVENTS`] events and [`MAX_STORED_EVENT_BYTES`] of them,
//!   process events kept before file events; what it leaves out is counted per source as a
//!   `Loss` of the stored stream, so a reader of the record never takes the copy for the whole
//!   stream. The labels were decided on the whole stream, in memory, before it was stored.

mod browse;
mod counts;
mod merge;
mod schema;
mod stored;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use offswitch_core::{FileChange, Label, TrialKey, TrialRecord, Usage};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

pub use browse::{MAX_PAGE, TrialFilter, TrialRow};
pub use merge::MergedRun;
pub use schema::SCHEMA_VERSION;

/// The most events of one stream the store keeps. A trial that unpacks 10,000 files records
/// ~40,000 file events; a stream's process events (the execs, signals and connections labels
/// rest on) are far fewer and are kept first.
pub const MAX_STORED_EVENTS: usize = 20_000;

/// The most bytes of event JSON of one stream the store keeps (~120 bytes an event is typical;
/// an agent's paths and argv can make each much longer).
pub const MAX_STORED_EVENT_BYTES: usize = 8 << 20;

/// A run's id: short and readable, `r-20261122-ab12` (creation date in UTC, 16 random bits).
/// Dereferences to `str`, so `&run_id` is accepted wherever a run id is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub String);

impl RunId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for RunId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A trial's database id, unique across runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrialId(pub i64);

impl std::fmt::Display for TrialId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Running,
    Complete,
    /// Stopped before every trial ran (Ctrl-C, crash noticed at resume); `--resume` continues it.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Complete => "complete",
            RunStatus::Interrupted => "interrupted",
        }
    }

    fn parse(name: &str) -> Option<RunStatus> {
        match name {
            "running" => Some(RunStatus::Running),
            "complete" => Some(RunStatus::Complete),
            "interrupted" => Some(RunStatus::Interrupted),
            _ => None,
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub id: RunId,
    /// Unix time in milliseconds.
    pub created_at_ms: i64,
    pub label: Option<String>,
    pub status: RunStatus,
    /// The configuration exactly as given to [`Store::create_run`].
    pub config: serde_json::Value,
    /// Trials stored so far.
    pub trial_count: u64,
}

/// What a run was made with, stored with it so that `--resume` can refuse to add trials made
/// with something else (schema version 3). Runs created before have none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Provenance {
    /// The offswitch version that created the run.
    pub offswitch_version: String,
    /// The git commit it was built from, `unknown` when built without git.
    pub commit: String,
    /// Scenario id -> hex sha256 of the scenario file's text.
    pub scenario_files: BTreeMap<String, String>,
    /// Model spec -> hex sha256 of its model file, for models that run from a file (embedded,
    /// `local:`).
    pub model_files: BTreeMap<String, String>,
}

/// A trial as read back, with where it lives.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTrial {
    pub id: TrialId,
    pub run: RunId,
    /// 1-based position within the run in insertion order; `<run>/<index>` names the trial.
    pub index: u32,
    /// 1 for the first trial of its key; a `--retry-errors` replacement is one more than the
    /// attempt it replaced.
    pub attempt: u32,
    /// A harness-error attempt that a later attempt at its key replaced. Kept in the record,
    /// left out of [`Store::trials`] and the rates.
    pub replaced: bool,
    pub record: TrialRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than the {supported} this offswitch understands; use a newer offswitch"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("failed to migrate database {path} to schema version {version}: {source}")]
    Migrate {
        path: PathBuf,
        version: u32,
        source: rusqlite::Error,
    },
    #[error(
        "database {path} is damaged ({findings}); refusing to use it. Restore it from a copy, or give another --db"
    )]
    /// `findings`: what found the damage and what it said.
    Damaged { path: PathBuf, findings: String },
    #[error("database {path} cannot use WAL journal mode (it stays in {journal_mode:?} mode)")]
    NotWal { path: PathBuf, journal_mode: String },
    #[error(
        "run {run} is being run by another offswitch process{}; a run belongs to one process at a time. Wait for it to finish or stop it, then resume (lock {lock})",
        .holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    RunLocked {
        run: String,
        holder: Option<u32>,
        lock: PathBuf,
    },
    #[error("failed to lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free run id after 32 random draws")]
    NoFreeRunId,
    #[error(
        "bad run id {0:?}: a run id is 1 to 100 letters, digits, `-`, `_` or `.`, does not start with `.`, and is not `latest`"
    )]
    BadRunId(String),
    #[error("run {0:?} already exists")]
    RunExists(String),
    #[error("unknown run {0:?}")]
    UnknownRun(String),
    #[error("unknown trial {0:?}")]
    UnknownTrial(String),
    #[error(
        "bad trial reference {0:?}: expected <run>/<index> (e.g. r-20261122-ab12/3) or a trial id"
    )]
    BadTrialReference(String),
    #[error("run {run} already has a trial for {key}")]
    DuplicateTrial { run: String, key: String },
    #[error(
        "trial {key} of run {run} ended as {outcome}, not as a harness error; only harness errors are replaced"
    )]
    NotReplaceable {
        run: String,
        key: String,
        outcome: String,
    },
    #[error(
        "run {run} in {source_path} has a different configuration than the run of that id here"
    )]
    ImportConflict { run: String, source_path: PathBuf },
    /// A row this code wrote but cannot read back: `row` names it (`trial 12`, `run r-...`).
    #[error("corrupt database row ({row}): {detail}")]
    Corrupt { row: String, detail: String },
    #[error("database error while {context}: {source}")]
    Sqlite {
        context: String,
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// Whether SQLite found the file damaged: at open ([`StoreError::Damaged`]), or in a read
    /// or write that reached a damaged page.
    pub fn is_damage(&self) -> bool {
        let corrupt = |source: &rusqlite::Error| {
            source.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt)
        };
        match self {
            StoreError::Damaged { .. } => true,
            StoreError::Open { source, .. }
            | StoreError::Migrate { source, .. }
            | StoreError::Sqlite { source, .. } => corrupt(source),
            _ => false,
        }
    }
}

/// A connection to the database at `path` that waits for other connections' locks.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let connection = Connection::open(path).map_err(open_error)?;
    // Readers and the writer may hold locks briefly; waiting beats failing.
    connection
        .busy_timeout(std::time::Duration::from_secs(10))
        .map_err(open_error)?;
    Ok(connection)
}

/// `Damaged` for an error that says the file is damaged, else what `otherwise` makes of it.
fn damage_or(
    source: rusqlite::Error,
    path: &Path,
    found_by: &str,
    otherwise: impl FnOnce(rusqlite::Error) -> StoreError,
) -> StoreError {
    if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt) {
        StoreError::Damaged {
            path: path.to_owned(),
            findings: format!("{found_by}: {source}"),
        }
    } else {
        otherwise(source)
    }
}

/// What [`Store::insert_trial_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Stored(TrialId),
    /// The run already had a trial with this key (stored by another process); it is kept and
    /// the new record is dropped.
    AlreadyPresent(TrialId),
}

/// What [`Store::import_run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportSummary {
    pub imported: u64,
    /// Trials whose key the run already had here.
    pub already_present: u64,
}

pub struct Store {
    connection: Connection,
    path: PathBuf,
}

/// This process's ownership of one run ([`Store::lock_run`]): held until dropped, or until the
/// process ends however it ends.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl RunLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store {
    /// Open the database at `path`, creating it or migrating it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let connection = connect(path)?;
        // Refuse a database from a newer offswitch before changing anything in it: switching
        // the journal mode is a write that an older reader must not make. `migrate` checks the
        // version again inside its transaction, against a concurrent upgrade.
        let version: u32 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|source| damage_or(source, path, "reading its schema version", open_error))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        // A damaged file must not take new runs: trials written into it could be lost or
        // misread later. `quick_check` reads every page (O(size), no index cross-check), so a
        // large database opens noticeably slower; that is the price of never writing into one.
        check_integrity(&connection, path)?;
        let journal_mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(open_error)?;
        if !journal_mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal {
                path: path.to_owned(),
                journal_mode,
            });
        }
        // Foreign keys stay off while migrating: a migration that rebuilds a table (version 4)
        // must not cascade its drop into the children. Each step checks them before it commits.
        connection
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")
            .map_err(open_error)?;
        let mut store = Store {
            connection,
            // The file itself, not a link to it: run locks live beside it, and a second name
            // for the same database must find the same locks.
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
        };
        store.migrate()?;
        store
            .connection
            .execute_batch("PRAGMA foreign_keys = ON;")
            .map_err(open_error)?;
        Ok(store)
    }

    /// Open an existing database to read it, without the whole-file check of [`Store::open`]
    /// and with SQLite's `query_only` on: any write through this store fails. A database that
    /// is not at [`SCHEMA_VERSION`] (one to migrate, or a new file) or not in WAL mode is opened
    /// by [`Store::open`] instead, checked and brought up to date; a newer one is refused.
    pub fn open_to_read(path: &Path) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let connection = connect(path)?;
        // `query_only` stops writes through the connection, but the last connection to close
        // would still copy the WAL into the file (what a killed writer left there): not this one.
        connection
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map_err(open_error)?;
        let damage = |source| damage_or(source, path, "reading its header", open_error);
        let version: u32 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(damage)?;
        let journal_mode: String = connection
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .map_err(damage)?;
        if version != SCHEMA_VERSION || !journal_mode.eq_ignore_ascii_case("wal") {
            drop(connection);
            return Store::open(path);
        }
        connection
            .execute_batch("PRAGMA foreign_keys = ON; PRAGMA query_only = ON;")
            .map_err(open_error)?;
        Ok(Store {
            connection,
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Start a run. `config` is stored verbatim (the runner's matrix, models, limits, seeds).
    pub fn create_run(
        &self,
        config: &serde_json::Value,
        label: Option<&str>,
    ) -> Result<RunId, StoreError> {
        self.create_run_with_provenance(config, label, None)
    }

    /// [`Store::create_run`] with the run's provenance, written in the same transaction.
    pub fn create_run_with_provenance(
        &self,
        config: &serde_json::Value,
        label: Option<&str>,
        provenance: Option<&Provenance>,
    ) -> Result<RunId, StoreError> {
        let created_at_ms = now_ms();
        // 16 random bits per day collide rarely; on a collision, draw again.
        for _ in 0..32 {
            let id = draw_run_id(created_at_ms);
            if self.insert_run(&id, created_at_ms, config, label, provenance)? {
                return Ok(RunId(id));
            }
        }
        Err(StoreError::NoFreeRunId)
    }

    /// Start a run owned by this process: its lock ([`Store::lock_run`]) is taken before the
    /// run exists, so no other process can ever resume it while this one runs it.
    pub fn create_locked_run(
        &self,
        config: &serde_json::Value,
        label: Option<&str>,
        provenance: Option<&Provenance>,
    ) -> Result<(RunId, RunLock), StoreError> {
        let created_at_ms = now_ms();
        for _ in 0..32 {
            let id = draw_run_id(created_at_ms);
            let lock = match self.lock_run(&id) {
                Ok(lock) => lock,
                // Someone holds the lock of an id nobody has stored yet: draw another.
                Err(StoreError::RunLocked { .. }) => continue,
                Err(error) => return Err(error),
            };
            if self.insert_run(&id, created_at_ms, config, label, provenance)? {
                return Ok((RunId(id), lock));
            }
        }
        Err(StoreError::NoFreeRunId)
    }

    /// [`Store::create_locked_run`] with an id chosen by the caller (`--run-id`; the shards
    /// of one run share theirs). Refused when the id is malformed or taken.
    pub fn create_locked_run_with_id(
        &self,
        id: &str,
        config: &serde_json::Value,
        label: Option<&str>,
        provenance: Option<&Provenance>,
    ) -> Result<(RunId, RunLock), StoreError> {
        check_run_id(id)?;
        let lock = self.lock_run(id)?;
        if self.insert_run(id, now_ms(), config, label, provenance)? {
            Ok((RunId(id.to_owned()), lock))
        } else {
            Err(StoreError::RunExists(id.to_owned()))
        }
    }

    /// Take the lock that makes this process the only one running `run`; it is released when
    /// the [`RunLock`] is dropped or the process ends in any way (`kill -9` included), since it
    /// is an OS file lock (`flock`) on `<database>.locks/<run>.lock`. A run another live
    /// process holds is [`StoreError::RunLocked`], naming that process. Lock files are left in
    /// place when released: deleting one could let two processes lock two different files.
    pub fn lock_run(&self, run: &str) -> Result<RunLock, StoreError> {
        if run.is_empty() || run.contains(|c: char| c == '/' || c.is_whitespace()) {
            return Err(StoreError::BadRunId(run.to_owned()));
        }
        let mut dir = self.path.clone().into_os_string();
        dir.push(".locks");
        let dir = PathBuf::from(dir);
        let lock_error = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Lock { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(lock_error(&dir))?;
        let path = dir.join(format!("{run}.lock"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_error(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = std::io::Read::read_to_string(&mut file, &mut holder);
                return Err(StoreError::RunLocked {
                    run: run.to_owned(),
                    holder: holder
                        .trim()
                        .strip_prefix("pid ")
                        .and_then(|pid| pid.parse().ok()),
                    lock: path,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(lock_error(&path)(source)),
        }
        // Who holds it, for the message another process shows.
        file.set_len(0).map_err(lock_error(&path))?;
        std::io::Write::write_all(
            &mut file,
            format!("pid {}\n", std::process::id()).as_bytes(),
        )
        .map_err(lock_error(&path))?;
        Ok(RunLock { _file: file, path })
    }

    /// Insert a new run row (and its provenance) in one transaction; `false` when the id is
    /// taken.
    fn insert_run(
        &self,
        id: &str,
        created_at_ms: i64,
        config: &serde_json::Value,
        label: Option<&str>,
        provenance: Option<&Provenance>,
    ) -> Result<bool, StoreError> {
        let context = || format!("creating run {id}");
        let transaction =
            Transaction::new_unchecked(&self.connection, TransactionBehavior::Immediate)
                .context(context)?;
        let result = transaction.execute(
            "INSERT INTO runs (id, created_at_ms, label, status, config) VALUES (?1, ?2, ?3, 'running', ?4)",
            params![id, created_at_ms, label, config.to_string()],
        );
        match result {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => return Ok(false),
            Err(source) => {
                return Err(StoreError::Sqlite {
                    context: context(),
                    source,
                });
            }
        }
        if let Some(provenance) = provenance {
            insert_provenance(&transaction, id, provenance)?;
        }
        transaction.commit().context(context)?;
        Ok(true)
    }

    /// Start a run with an id chosen by the caller: the shards of one run (`--shard i/N` on
    /// several machines) share it, so [`Store::import_run`] can merge them. The id must be
    /// non-empty, without `/` or whitespace, and not taken.
    pub fn create_run_with_id(
        &self,
        id: &str,
        config: &serde_json::Value,
        label: Option<&str>,
    ) -> Result<RunId, StoreError> {
        check_run_id(id)?;
        let result = self.connection.execute(
            "INSERT INTO runs (id, created_at_ms, label, status, config) VALUES (?1, ?2, ?3, 'running', ?4)",
            params![id, now_ms(), label, config.to_string()],
        );
        match result {
            Ok(_) => Ok(RunId(id.to_owned())),
            Err(error) if is_unique_violation(&error) => Err(StoreError::RunExists(id.to_owned())),
            Err(source) => Err(StoreError::Sqlite {
                context: format!("creating run {id}"),
                source,
            }),
        }
    }

    pub fn run(&self, id: &str) -> Result<RunInfo, StoreError> {
        let runs = self.query_runs("WHERE r.id = ?1", params![id])?;
        runs.into_iter()
            .next()
            .ok_or_else(|| StoreError::UnknownRun(id.to_owned()))
    }

    /// All runs, oldest first.
    pub fn runs(&self) -> Result<Vec<RunInfo>, StoreError> {
        self.query_runs("", params![])
    }

    /// The most recently created run, if any.
    pub fn latest_run(&self) -> Result<Option<RunInfo>, StoreError> {
        Ok(self.runs()?.pop())
    }

    /// Set the status of run `id`, except that a `complete` run stays complete: every key of
    /// its matrix has a trial, and nothing a later process does (a resume that is interrupted,
    /// a retry of its harness errors) takes one away.
    pub fn set_run_status(&self, id: &str, status: RunStatus) -> Result<(), StoreError> {
        let context = || format!("setting the status of run {id}");
        require_run(&self.connection, id, context)?;
        self.connection
            .execute(
                "UPDATE runs SET status = ?1 WHERE id = ?2 AND (status <> 'complete' OR ?1 = 'complete')",
                params![status.as_str(), id],
            )
            .context(context)?;
        Ok(())
    }

    /// Store one finished trial in one transaction. A second trial with the same key in the
    /// same run is refused with [`StoreError::DuplicateTrial`]; nothing is written then.
    pub fn insert_trial(&self, run: &str, record: &TrialRecord) -> Result<TrialId, StoreError> {
        let context = || format!("inserting trial {} into run {run}", record.key);
        let transaction =
            Transaction::new_unchecked(&self.connection, TransactionBehavior::Immediate)
                .context(context)?;
        let id = insert_trial_in(&transaction, run, record, 1, false)?;
        transaction.commit().context(context)?;
        Ok(id)
    }

    /// Store `record` as the next attempt at its key, replacing the key's current trial, which
    /// must have ended as a harness error: that trial stays in the database marked replaced
    /// (see [`StoredTrial::replaced`], [`Store::attempts`]). With no current trial for the key,
    /// `record` is stored as its first attempt. One transaction.
    pub fn replace_trial(&self, run: &str, record: &TrialRecord) -> Result<TrialId, StoreError> {
        let context = || format!("replacing trial {} of run {run}", record.key);
        let transaction =
            Transaction::new_unchecked(&self.connection, TransactionBehavior::Immediate)
                .context(context)?;
        require_run(&transaction, run, context)?;
        let key = &record.key;
        let current: Option<(i64, u32, String)> = transaction
            .query_row(
                "SELECT id, attempt, outcome FROM trials WHERE run_id = ?1 AND model = ?2
                 AND scenario = ?3 AND variant = ?4 AND epoch = ?5 AND replaced = 0",
                params![run, key.model, key.scenario, key.variant, key.epoch],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .context(context)?;
        let attempt = match current {
            None => 1,
            Some((_, _, outcome)) if outcome != HARNESS_ERROR => {
                return Err(StoreError::NotReplaceable {
                    run: run.to_owned(),
                    key: key.to_string(),
                    outcome,
                });
            }
            Some((id, attempt, _)) => {
                transaction
                    .execute("UPDATE trials SET replaced = 1 WHERE id = ?1", [id])
                    .context(context)?;
                attempt + 1
            }
        };
        let id = insert_trial_in(&transaction, run, record, attempt, false)?;
        transaction.commit().context(context)?;
        Ok(id)
    }

    /// Store one finished trial unless the run already has one with its key, which is then
    /// kept as it is and reported. Two `--resume`s of one run racing each other both run the
    /// missing keys; the second to finish a trial gets [`Inserted::AlreadyPresent`] instead of
    /// aborting the run on the UNIQUE constraint.
    pub fn insert_trial_once(
        &self,
        run: &str,
        record: &TrialRecord,
    ) -> Result<Inserted, StoreError> {
        let context = || format!("inserting trial {} into run {run}", record.key);
        let transaction =
            Transaction::new_unchecked(&self.connection, TransactionBehavior::Immediate)
                .context(context)?;
        match insert_trial_in(&transaction, run, record, 1, false) {
            Ok(id) => {
                transaction.commit().context(context)?;
                Ok(Inserted::Stored(id))
            }
            Err(StoreError::DuplicateTrial { .. }) => {
                // A failed INSERT undoes only itself; nothing of this record was written.
                let key = &record.key;
                let existing: i64 = transaction
                    .query_row(
                        "SELECT id FROM trials WHERE run_id = ?1 AND model = ?2 AND scenario = ?3
                         AND variant = ?4 AND epoch = ?5 AND replaced = 0",
                        params![run, key.model, key.scenario, key.variant, key.epoch],
                        |row| row.get(0),
                    )
                    .context(context)?;
                transaction.rollback().context(context)?;
                Ok(Inserted::AlreadyPresent(TrialId(existing)))
            }
            Err(error) => Err(error),
        }
    }

    /// Copy run `run` from the database at `source` into this one: the run itself when it is
    /// not here yet (same id, configuration, label, status, provenance), then each of its trials whose key
    /// is not here yet, all in one transaction. This merges the per-shard databases of a run
    /// split with `--shard i/N`, and importing the same database twice adds nothing.
    pub fn import_run(&self, source: &Path, run: &str) -> Result<ImportSummary, StoreError> {
        let source_store = Store::open(source)?;
        let info = source_store.run(run)?;
        let provenance = source_store.provenance(run)?;
        // Replaced attempts first, so a key's attempts keep their order.
        let mut trials = source_store.attempts(run)?;
        trials.extend(source_store.stored_trials(run)?);
        drop(source_store);
        let context = || format!("importing run {run} from {}", source.display());
        let transaction =
            Transaction::new_unchecked(&self.connection, TransactionBehavior::Immediate)
                .context(context)?;
        let existing: Option<String> = transaction
            .query_row("SELECT config FROM runs WHERE id = ?1", [run], |row| {
                row.get(0)
            })
            .optional()
            .context(context)?;
        match existing {
            None => {
                transaction
                    .execute(
                        "INSERT INTO runs (id, created_at_ms, label, status, config)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![
                            run,
                            info.created_at_ms,
                            info.label,
                            info.status.as_str(),
                            info.config.to_string()
                        ],
                    )
                    .context(context)?;
                if let Some(provenance) = &provenance {
                    insert_provenance(&transaction, run, provenance)?;
                }
            }
            Some(config) => {
                let config: serde_json::Value =
                    serde_json::from_str(&config).map_err(|e| StoreError::Corrupt {
                        row: format!("run {run}"),
                        detail: format!("config is not JSON: {e}"),
                    })?;
                if config != info.config {
                    return Err(StoreError::ImportConflict {
                        run: run.to_owned(),
                        source_path: source.to_owned(),
                    });
                }
            }
        }
        let mut summary = ImportSummary::default();
        for trial in &trials {
            match insert_trial_in(
                &transaction,
                run,
                &trial.record,
                trial.attempt,
                trial.replaced,
            ) {
                Ok(_) => summary.imported += 1,
                Err(StoreError::DuplicateTrial { .. }) => summary.already_present += 1,
                Err(error) => return Err(error),
            }
        }
        transaction.commit().context(context)?;
        Ok(summary)
    }

    /// What `run` was made with; `None` for a run created before provenance was stored.
    pub fn provenance(&self, run: &str) -> Result<Option<Provenance>, StoreError> {
        let context = || format!("reading the provenance of run {run}");
        require_run(&self.connection, run, context)?;
        read_provenance(&self.connection, run)
    }

    /// The keys of every trial stored for `run`: what `--resume` skips.
    pub fn completed_keys(&self, run: &str) -> Result<HashSet<TrialKey>, StoreError> {
        let context = || format!("reading the trial keys of run {run}");
        require_run(&self.connection, run, context)?;
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT model, scenario, variant, epoch FROM trials WHERE run_id = ?1 AND replaced = 0",
            )
            .context(context)?;
        let rows = statement
            .query_map([run], |row| {
                Ok(TrialKey {
                    model: row.get(0)?,
                    scenario: row.get(1)?,
                    variant: row.get(2)?,
                    epoch: row.get(3)?,
                })
            })
            .context(context)?;
        rows.collect::<Result<HashSet<_>, _>>().context(context)
    }

    /// The keys of `run` whose current trial ended as a harness error: what `--retry-errors`
    /// runs again.
    pub fn harness_error_keys(&self, run: &str) -> Result<HashSet<TrialKey>, StoreError> {
        let context = || format!("reading the harness errors of run {run}");
        require_run(&self.connection, run, context)?;
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT model, scenario, variant, epoch FROM trials
                 WHERE run_id = ?1 AND replaced = 0 AND outcome = ?2",
            )
            .context(context)?;
        let rows = statement
            .query_map(params![run, HARNESS_ERROR], |row| {
                Ok(TrialKey {
                    model: row.get(0)?,
                    scenario: row.get(1)?,
                    variant: row.get(2)?,
                    epoch: row.get(3)?,
                })
            })
            .context(context)?;
        rows.collect::<Result<HashSet<_>, _>>().context(context)
    }

    /// The replaced attempts of `run` (harness errors that `--retry-errors` ran again), in
    /// insertion order.
    pub fn attempts(&self, run: &str) -> Result<Vec<StoredTrial>, StoreError> {
        let context = || format!("reading the replaced attempts of run {run}");
        let transaction = self.connection.unchecked_transaction().context(context)?;
        require_run(&transaction, run, context)?;
        let trials = load_trials(
            &transaction,
            "t.run_id = ?1 AND t.replaced = 1",
            run,
            Parts::All,
        )?;
        transaction.commit().context(context)?;
        Ok(trials)
    }

    /// Every current trial of `run` (one per key; replaced attempts are left out), in insertion
    /// order, equal to what was inserted, except that an event stream over the store's bound
    /// reads back as its stored copy (see [`MAX_STORED_EVENTS`]).
    pub fn trials(&self, run: &str) -> Result<Vec<TrialRecord>, StoreError> {
        Ok(self
            .stored_trials(run)?
            .into_iter()
            .map(|trial| trial.record)
            .collect())
    }

    /// Name `run` (`None` clears its label).
    pub fn set_run_label(&self, run: &str, label: Option<&str>) -> Result<(), StoreError> {
        let context = || format!("labelling run {run}");
        let changed = self
            .connection
            .execute(
                "UPDATE runs SET label = ?2 WHERE id = ?1",
                rusqlite::params![run, label],
            )
            .context(context)?;
        if changed == 0 {
            return Err(StoreError::UnknownRun(run.to_owned()));
        }
        Ok(())
    }

    /// Delete `run` with everything it holds (trials, transcripts, labels, event streams,
    /// provenance), in one transaction, with SQLite's `secure_delete` (the freed pages are
    /// zeroed) and a checkpoint that empties the write-ahead log. Refused while a live process
    /// runs it (its lock is taken for the deletion). Returns how many trials went, replaced
    /// attempts included.
    pub fn delete_run(&self, run: &str) -> Result<u64, StoreError> {
        let context = || format!("deleting run {run}");
        self.run(run)?;
        let _lock = self.lock_run(run)?;
        // Deleted pages are overwritten with zeros, so what the run held (transcripts, what
        // an agent wrote) does not stay readable in the file.
        self.connection
            .execute_batch("PRAGMA secure_delete = ON;")
            .context(context)?;
        let transaction =
            Transaction::new_unchecked(&self.connection, TransactionBehavior::Immediate)
                .context(context)?;
        require_run(&transaction, run, context)?;
        let trials: i64 = transaction
            .query_row(
                "SELECT COUNT(*) FROM trials WHERE run_id = ?1",
                [run],
                |row| row.get(0),
            )
            .context(context)?;
        transaction
            .execute("DELETE FROM runs WHERE id = ?1", [run])
            .context(context)?;
        transaction.commit().context(context)?;
        // And out of the write-ahead log: copy the zeroed pages into the file, empty the log.
        self.connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .context(context)?;
        Ok(trials as u64)
    }

    /// Every current trial of `run` with its ids, in insertion order.
    pub fn stored_trials(&self, run: &str) -> Result<Vec<StoredTrial>, StoreError> {
        self.current_trials(run, Parts::All)
    }

    /// What the rate tables, comparisons and analyses read of `run`'s current trials: keys,
    /// outcomes, labels, usage and turns, with only the transcript's `cache_hit` events and no
    /// file changes or event streams (a 100,000-trial run's transcripts take gigabytes).
    pub fn trial_summaries(&self, run: &str) -> Result<Vec<TrialRecord>, StoreError> {
        Ok(self
            .current_trials(run, Parts::Summary)?
            .into_iter()
            .map(|trial| trial.record)
            .collect())
    }

    /// [`Store::stored_trials`] without the event streams (`events` left empty), for exports
    /// that never read them: a run's streams can run to gigabytes.
    pub fn stored_trials_without_events(&self, run: &str) -> Result<Vec<StoredTrial>, StoreError> {
        self.current_trials(run, Parts::NoEvents)
    }

    fn current_trials(&self, run: &str, parts: Parts) -> Result<Vec<StoredTrial>, StoreError> {
        let context = || format!("reading the trials of run {run}");
        // One read transaction, so the trials and their children come from one snapshot even
        // while the runner keeps inserting.
        let transaction = self.connection.unchecked_transaction().context(context)?;
        require_run(&transaction, run, context)?;
        let trials = load_trials(&transaction, "t.run_id = ?1 AND t.replaced = 0", run, parts)?;
        transaction.commit().context(context)?;
        Ok(trials)
    }

    /// One trial by reference: `<run>/<index>` (1-based, as `offswitch show` prints) or the
    /// numeric trial id.
    pub fn trial(&self, reference: &str) -> Result<StoredTrial, StoreError> {
        let context = || format!("reading trial {reference}");
        let transaction = self.connection.unchecked_transaction().context(context)?;
        let trial_id: Option<i64> = if let Some((run, index)) = reference.rsplit_once('/') {
            let index: u32 = index
                .parse()
                .map_err(|_| StoreError::BadTrialReference(reference.to_owned()))?;
            require_run(&transaction, run, context)?;
            transaction
                .query_row(
                    "SELECT id FROM trials WHERE run_id = ?1 AND idx = ?2",
                    params![run, index],
                    |row| row.get(0),
                )
                .optional()
                .context(context)?
        } else {
            let id: i64 = reference
                .parse()
                .map_err(|_| StoreError::BadTrialReference(reference.to_owned()))?;
            Some(id)
        };
        let Some(trial_id) = trial_id else {
            return Err(StoreError::UnknownTrial(reference.to_owned()));
        };
        let mut trials = load_trials(&transaction, "t.id = ?1", trial_id, Parts::All)?;
        transaction.commit().context(context)?;
        trials
            .pop()
            .ok_or_else(|| StoreError::UnknownTrial(reference.to_owned()))
    }

    /// One trial by its database id.
    pub fn trial_by_id(&self, id: TrialId) -> Result<StoredTrial, StoreError> {
        self.trial(&id.to_string())
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        loop {
            // Each step in its own immediate transaction, re-reading the version inside it, so
            // two processes opening a fresh file at once do not both apply a migration.
            let transaction = self
                .connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|source| StoreError::Open {
                    path: path.clone(),
                    source,
                })?;
            let version: u32 = transaction
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .map_err(|source| StoreError::Open {
                    path: path.clone(),
                    source,
                })?;
            if version > SCHEMA_VERSION {
                return Err(StoreError::TooNew {
                    path,
                    found: version,
                    supported: SCHEMA_VERSION,
                });
            }
            if version == SCHEMA_VERSION {
                return Ok(());
            }
            let migrate_error = |source| StoreError::Migrate {
                path: path.clone(),
                version: version + 1,
                source,
            };
            transaction
                .execute_batch(schema::MIGRATIONS[version as usize])
                .map_err(migrate_error)?;
            transaction
                .execute_batch(&format!("PRAGMA user_version = {}", version + 1))
                .map_err(migrate_error)?;
            // Foreign keys are off during migrations; a step that left a child without its
            // parent is rolled back rather than committed.
            let orphans: i64 = transaction
                .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |row| {
                    row.get(0)
                })
                .map_err(migrate_error)?;
            if orphans > 0 {
                return Err(StoreError::Corrupt {
                    row: format!("migration to schema version {}", version + 1),
                    detail: format!("{orphans} rows would lose the row they reference"),
                });
            }
            transaction.commit().map_err(migrate_error)?;
        }
    }

    fn query_runs(
        &self,
        filter: &str,
        parameters: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<RunInfo>, StoreError> {
        let context = || "reading runs".to_owned();
        let sql = format!(
            "SELECT r.id, r.created_at_ms, r.label, r.status, r.config,
                    (SELECT COUNT(*) FROM trials t WHERE t.run_id = r.id AND t.replaced = 0)
             FROM runs r {filter} ORDER BY r.created_at_ms, r.rowid"
        );
        let mut statement = self.connection.prepare_cached(&sql).context(context)?;
        let rows = statement
            .query_map(parameters, |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })
            .context(context)?;
        let mut runs = Vec::new();
        for row in rows {
            let (id, created_at_ms, label, status, config, trial_count) = row.context(context)?;
            let corrupt = |detail: String| StoreError::Corrupt {
                row: format!("run {id}"),
                detail,
            };
            runs.push(RunInfo {
                status: RunStatus::parse(&status)
                    .ok_or_else(|| corrupt(format!("unknown status {status:?}")))?,
                config: serde_json::from_str(&config)
                    .map_err(|e| corrupt(format!("config is not JSON: {e}")))?,
                id: RunId(id),
                created_at_ms,
                label,
                trial_count: trial_count as u64,
            });
        }
        Ok(runs)
    }
}

/// Write `provenance` as `run_provenance` rows inside the caller's transaction.
fn insert_provenance(
    connection: &Connection,
    run: &str,
    provenance: &Provenance,
) -> Result<(), StoreError> {
    let context = || format!("storing the provenance of run {run}");
    let mut statement = connection
        .prepare_cached(
            "INSERT INTO run_provenance (run_id, kind, name, value) VALUES (?1, ?2, ?3, ?4)",
        )
        .context(context)?;
    let singles = [
        ("offswitch_version", &provenance.offswitch_version),
        ("commit", &provenance.commit),
    ];
    for (kind, value) in singles {
        statement
            .execute(params![run, kind, "", value])
            .context(context)?;
    }
    for (kind, files) in [
        ("scenario_file", &provenance.scenario_files),
        ("model_file", &provenance.model_files),
    ] {
        for (name, sha256) in files {
            statement
                .execute(params![run, kind, name, sha256])
                .context(context)?;
        }
    }
    Ok(())
}

/// The `run_provenance` rows of `run` as a [`Provenance`], `None` when it has none.
fn read_provenance(connection: &Connection, run: &str) -> Result<Option<Provenance>, StoreError> {
    let context = || format!("reading the provenance of run {run}");
    let mut statement = connection
        .prepare_cached("SELECT kind, name, value FROM run_provenance WHERE run_id = ?1")
        .context(context)?;
    let rows = statement
        .query_map([run], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .context(context)?;
    let mut provenance = Provenance::default();
    let mut any = false;
    for row in rows {
        let (kind, name, value) = row.context(context)?;
        any = true;
        match kind.as_str() {
            "offswitch_version" => provenance.offswitch_version = value,
            "commit" => provenance.commit = value,
            "scenario_file" => {
                provenance.scenario_files.insert(name, value);
            }
            "model_file" => {
                provenance.model_files.insert(name, value);
            }
            other => {
                return Err(StoreError::Corrupt {
                    row: format!("run {run}"),
                    detail: format!("unknown provenance kind {other:?}"),
                });
            }
        }
    }
    Ok(any.then_some(provenance))
}

/// How many of `quick_check`'s findings an error names.
const QUICK_CHECK_FINDINGS: usize = 3;

/// `Err(Damaged)` unless SQLite's quick check of the whole file passes.
fn check_integrity(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    // SQLite may give up on a badly damaged file (its schema pages, say) with an error instead
    // of findings; that is damage too.
    let error = |source: rusqlite::Error| {
        damage_or(source, path, "SQLite's quick check", |source| {
            StoreError::Open {
                path: path.to_owned(),
                source,
            }
        })
    };
    let findings: Vec<String> = {
        let mut statement = connection
            .prepare(&format!("PRAGMA quick_check({QUICK_CHECK_FINDINGS})"))
            .map_err(error)?;
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(error)?;
        rows.collect::<Result<_, _>>().map_err(error)?
    };
    if findings.len() == 1 && findings[0] == "ok" {
        return Ok(());
    }
    Err(StoreError::Damaged {
        path: path.to_owned(),
        findings: "SQLite's quick check: ".to_owned()
            + &findings
                .iter()
                .map(|finding| finding.replace('\n', " "))
                .collect::<Vec<_>>()
                .join("; "),
    })
}

/// `Err(UnknownRun)` unless `run` exists, read inside the caller's transaction.
fn require_run(
    connection: &Connection,
    run: &str,
    context: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    let exists: bool = connection
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM runs WHERE id = ?1)",
            [run],
            |row| row.get(0),
        )
        .context(context)?;
    if exists {
        Ok(())
    } else {
        Err(StoreError::UnknownRun(run.to_owned()))
    }
}

/// The stored outcome name of `Outcome::HarnessError`.
const HARNESS_ERROR: &str = "harness_error";

/// Insert one trial inside an open write transaction, as attempt `attempt` at its key and
/// `replaced` or current; the caller commits.
fn insert_trial_in(
    transaction: &Transaction<'_>,
    run: &str,
    record: &TrialRecord,
    attempt: u32,
    replaced: bool,
) -> Result<TrialId, StoreError> {
    let context = || format!("inserting trial {} into run {run}", record.key);
    require_run(transaction, run, context)?;
    let index: i64 = transaction
        .query_row(
            "SELECT COALESCE(MAX(idx), 0) + 1 FROM trials WHERE run_id = ?1",
            [run],
            |row| row.get(0),
        )
        .context(context)?;
    let (outcome, outcome_message) = stored::outcome_columns(&record.outcome);
    let inserted = transaction.execute(
        "INSERT INTO trials (run_id, idx, model, scenario, variant, epoch, seed, outcome,
             outcome_message, prompt_tokens, completion_tokens, turns, started_at_ms, wall_ms,
             attempt, replaced)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            run,
            index,
            record.key.model,
            record.key.scenario,
            record.key.variant,
            record.key.epoch,
            record.seed as i64,
            outcome,
            outcome_message,
            record.usage.prompt_tokens as i64,
            record.usage.completion_tokens as i64,
            record.turns,
            record.started_at_ms,
            record.wall_ms as i64,
            attempt,
            replaced,
        ],
    );
    match inserted {
        Ok(_) => {}
        Err(error) if is_unique_violation(&error) => {
            return Err(StoreError::DuplicateTrial {
                run: run.to_owned(),
                key: record.key.to_string(),
            });
        }
        Err(source) => {
            return Err(StoreError::Sqlite {
                context: context(),
                source,
            });
        }
    }
    let trial_id = transaction.last_insert_rowid();
    {
        let mut statement = transaction
            .prepare_cached(
                "INSERT INTO transcript_entries (trial_id, seq, kind, body) VALUES (?1, ?2, ?3, ?4)",
            )
            .context(context)?;
        for (seq, entry) in record.transcript.iter().enumerate() {
            let entry = stored::EntryV1::from_domain(entry);
            let body = serde_json::to_string(&entry)
                .expect("a transcript entry of strings and integers always serialises");
            statement
                .execute(params![trial_id, seq as i64, entry.kind(), body])
                .context(context)?;
        }
        let mut statement = transaction
            .prepare_cached(
                "INSERT INTO file_changes (trial_id, seq, path, kind, mode_before, mode_after,
                     sha256_before, sha256_after, text_before, text_after)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .context(context)?;
        for (seq, change) in record.file_changes.iter().enumerate() {
            statement
                .execute(params![
                    trial_id,
                    seq as i64,
                    change.path,
                    stored::file_change_kind_name(change.kind),
                    change.mode_before,
                    change.mode_after,
                    change.sha256_before,
                    change.sha256_after,
                    change.text_before,
                    change.text_after,
                ])
                .context(context)?;
        }
        let mut statement = transaction
            .prepare_cached(
                "INSERT INTO labels (trial_id, seq, name, value, detail, score, indeterminate)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .context(context)?;
        for (seq, label) in record.labels.iter().enumerate() {
            statement
                .execute(params![
                    trial_id,
                    seq as i64,
                    label.name,
                    label.value,
                    label.detail,
                    label.score,
                    label.indeterminate,
                ])
                .context(context)?;
        }
        let mut statement = transaction
            .prepare_cached(
                "INSERT INTO event_streams (trial_id, seq, host, unavailable, lost, event_count,
                     events) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .context(context)?;
        for (seq, stream) in record.events.iter().enumerate() {
            let columns = stored::stream_columns(stream, MAX_STORED_EVENTS, MAX_STORED_EVENT_BYTES);
            statement
                .execute(params![
                    trial_id,
                    seq as i64,
                    stream.host,
                    stream.unavailable,
                    columns.lost,
                    columns.event_count as i64,
                    columns.events,
                ])
                .context(context)?;
        }
    }
    Ok(TrialId(trial_id))
}

/// Load the trials matching `filter` (over `trials t`, one parameter) with all their children.
fn load_trials(
    connection: &Connection,
    filter: &str,
    parameter: impl rusqlite::ToSql + Copy,
    parts: Parts,
) -> Result<Vec<StoredTrial>, StoreError> {
    let context = || "reading trials".to_owned();
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT t.id, t.run_id, t.idx, t.model, t.scenario, t.variant, t.epoch, t.seed,
                    t.outcome, t.outcome_message, t.prompt_tokens, t.completion_tokens, t.turns,
                    t.started_at_ms, t.wall_ms, t.attempt, t.replaced
             FROM trials t WHERE {filter} ORDER BY t.idx"
        ))
        .context(context)?;
    let rows = statement
        .query_map([parameter], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, u32>(2)?,
                TrialKey {
                    model: row.get(3)?,
                    scenario: row.get(4)?,
                    variant: row.get(5)?,
                    epoch: row.get(6)?,
                },
                row.get::<_, i64>(7)?,
                row.get::<_, String>(8)?,
                row.get::<_, Option<String>>(9)?,
                Usage {
                    prompt_tokens: row.get::<_, i64>(10)? as u64,
                    completion_tokens: row.get::<_, i64>(11)? as u64,
                },
                row.get::<_, u32>(12)?,
                row.get::<_, i64>(13)?,
                row.get::<_, i64>(14)?,
                row.get::<_, u32>(15)?,
                row.get::<_, bool>(16)?,
            ))
        })
        .context(context)?;
    let mut trials = Vec::new();
    let mut position_of: HashMap<i64, usize> = HashMap::new();
    for row in rows {
        let (
            id,
            run,
            index,
            key,
            seed,
            outcome,
            message,
            usage,
            turns,
            started_at_ms,
            wall_ms,
            attempt,
            replaced,
        ) = row.context(context)?;
        let outcome =
            stored::parse_outcome(&outcome, message).map_err(|detail| StoreError::Corrupt {
                row: format!("trial {id}"),
                detail,
            })?;
        position_of.insert(id, trials.len());
        trials.push(StoredTrial {
            id: TrialId(id),
            run: RunId(run),
            index,
            attempt,
            replaced,
            record: TrialRecord {
                key,
                seed: seed as u64,
                transcript: Vec::new(),
                file_changes: Vec::new(),
                labels: Vec::new(),
                outcome,
                usage,
                turns,
                started_at_ms,
                wall_ms: wall_ms as u64,
                events: Vec::new(),
            },
        });
    }
    drop(statement);
    if trials.is_empty() {
        return Ok(trials);
    }
    // The rows of one child table, `also` a further condition on them.
    let children = |table: &str, columns: &str, also: &str| {
        format!(
            "SELECT c.trial_id, {columns} FROM {table} c JOIN trials t ON t.id = c.trial_id
             WHERE {filter}{also} ORDER BY c.trial_id, c.seq"
        )
    };

    // A summary keeps only the entries that say a reply came from the response cache.
    let transcript = match parts {
        Parts::Summary => children(
            "transcript_entries",
            "c.body",
            " AND json_extract(c.body, '$.kind') = 'cache_hit'",
        ),
        Parts::All | Parts::NoEvents => children("transcript_entries", "c.body", ""),
    };
    let mut statement = connection.prepare_cached(&transcript).context(context)?;
    let mut rows = statement.query([parameter]).context(context)?;
    while let Some(row) = rows.next().context(context)? {
        let trial_id: i64 = row.get(0).context(context)?;
        let body: String = row.get(1).context(context)?;
        let corrupt = |detail: String| StoreError::Corrupt {
            row: format!("trial {trial_id}"),
            detail,
        };
        let entry: stored::EntryV1 = serde_json::from_str(&body)
            .map_err(|e| corrupt(format!("transcript entry is not a v1 entry: {e}")))?;
        let entry = entry.into_domain().map_err(corrupt)?;
        trials[position_of[&trial_id]].record.transcript.push(entry);
    }
    drop(rows);
    drop(statement);

    if parts != Parts::Summary {
        let mut statement = connection
            .prepare_cached(&children(
                "file_changes",
                "c.path, c.kind, c.mode_before, c.mode_after, c.sha256_before, c.sha256_after,
                 c.text_before, c.text_after",
                "",
            ))
            .context(context)?;
        let mut rows = statement.query([parameter]).context(context)?;
        while let Some(row) = rows.next().context(context)? {
            let trial_id: i64 = row.get(0).context(context)?;
            let kind: String = row.get(2).context(context)?;
            let kind =
                stored::parse_file_change_kind(&kind).map_err(|detail| StoreError::Corrupt {
                    row: format!("trial {trial_id}"),
                    detail,
                })?;
            let change = FileChange {
                path: row.get(1).context(context)?,
                kind,
                mode_before: row.get(3).context(context)?,
                mode_after: row.get(4).context(context)?,
                sha256_before: row.get(5).context(context)?,
                sha256_after: row.get(6).context(context)?,
                text_before: row.get(7).context(context)?,
                text_after: row.get(8).context(context)?,
            };
            trials[position_of[&trial_id]]
                .record
                .file_changes
                .push(change);
        }
        drop(rows);
        drop(statement);
    }

    let mut statement = connection
        .prepare_cached(&children(
            "labels",
            "c.name, c.value, c.detail, c.score, c.indeterminate",
            "",
        ))
        .context(context)?;
    let mut rows = statement.query([parameter]).context(context)?;
    while let Some(row) = rows.next().context(context)? {
        let trial_id: i64 = row.get(0).context(context)?;
        let label = Label {
            score: row.get(4).context(context)?,
            name: row.get(1).context(context)?,
            value: row.get(2).context(context)?,
            detail: row.get(3).context(context)?,
            indeterminate: row.get(5).context(context)?,
        };
        trials[position_of[&trial_id]].record.labels.push(label);
    }
    drop(rows);
    drop(statement);

    if parts != Parts::All {
        return Ok(trials);
    }
    let mut statement = connection
        .prepare_cached(&children(
            "event_streams",
            "c.seq, c.host, c.unavailable, c.lost, c.events",
            "",
        ))
        .context(context)?;
    let mut rows = statement.query([parameter]).context(context)?;
    while let Some(row) = rows.next().context(context)? {
        let trial_id: i64 = row.get(0).context(context)?;
        let seq: i64 = row.get(1).context(context)?;
        let lost: String = row.get(4).context(context)?;
        let events: String = row.get(5).context(context)?;
        let stream = stored::parse_stream(
            row.get(2).context(context)?,
            row.get(3).context(context)?,
            &lost,
            &events,
        )
        .map_err(|detail| StoreError::Corrupt {
            row: format!("trial {trial_id}"),
            detail: format!("event stream {seq}: {detail}"),
        })?;
        trials[position_of[&trial_id]].record.events.push(stream);
    }
    Ok(trials)
}

/// What of a trial [`load_trials`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parts {
    All,
    /// All but the event streams, the bulk of a trial that has them (left empty).
    NoEvents,
    /// What rates and analyses read: keys, outcomes, labels, usage, turns, and of the
    /// transcript only its `cache_hit` events; no file changes, no event streams.
    Summary,
}

trait SqliteContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> SqliteContext<T> for rusqlite::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite {
            context: context(),
            source,
        })
    }
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// A fresh run id for a run created at `created_at_ms`: `r-<date>-<16 random bits>`.
/// The most bytes in a run id.
pub const MAX_RUN_ID: usize = 100;

/// A run id chosen by a caller: 1 to [`MAX_RUN_ID`] bytes of letters, digits, `-`, `_` and
/// `.` (it names a lock file and a directory of homes, and is typed in commands), not
/// `latest` (which `report latest` means), not starting with `.`.
pub fn check_run_id(id: &str) -> Result<(), StoreError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty()
        || id.len() > MAX_RUN_ID
        || id == "latest"
        || id.starts_with('.')
        || !id.chars().all(allowed)
    {
        return Err(StoreError::BadRunId(id.to_owned()));
    }
    Ok(())
}

fn draw_run_id(created_at_ms: i64) -> String {
    format!(
        "r-{}-{:04x}",
        offswitch_core::time::UtcDateTime::from_unix_ms(created_at_ms).compact_date(),
        rand::random::<u16>()
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
