//! The database schema as an ordered list of migrations, tracked with `PRAGMA user_version`.
//!
//! Migration `i` takes a database from version `i` to version `i + 1`. A released migration is
//! never edited: changing the schema (or the JSON stored in its columns, see `stored.rs`) means
//! appending a migration, so every existing database can be brought forward.

/// The schema version this code reads and writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

pub const MIGRATIONS: &[&str] = &[
    // Version 1: runs, trials and the trial's children, one row per item, in order.
    r#"
    CREATE TABLE runs (
        id            TEXT PRIMARY KEY,
        created_at_ms INTEGER NOT NULL,
        label         TEXT,
        status        TEXT NOT NULL CHECK (status IN ('running', 'complete', 'interrupted')),
        -- The run configuration as the runner gave it (JSON object).
        config        TEXT NOT NULL CHECK (json_valid(config))
    ) STRICT;

    CREATE TABLE trials (
        id                INTEGER PRIMARY KEY,
        run_id            TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        -- 1-based position within the run, in insertion order: `show <run>/<idx>`.
        idx               INTEGER NOT NULL,
        model             TEXT NOT NULL,
        scenario          TEXT NOT NULL,
        variant           TEXT NOT NULL,
        epoch             INTEGER NOT NULL,
        -- u64 stored bit-for-bit in SQLite's signed 64-bit integer.
        seed              INTEGER NOT NULL,
        outcome           TEXT NOT NULL,
        outcome_message   TEXT,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        turns             INTEGER NOT NULL,
        started_at_ms     INTEGER NOT NULL,
        wall_ms           INTEGER NOT NULL,
        UNIQUE (run_id, model, scenario, variant, epoch),
        UNIQUE (run_id, idx)
    ) STRICT;

    CREATE TABLE transcript_entries (
        trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
        seq      INTEGER NOT NULL,
        -- The entry's type (`message`, `exec`, ...), duplicated from the body for queries.
        kind     TEXT NOT NULL,
        -- The entry as `stored::EntryV1` JSON.
        body     TEXT NOT NULL CHECK (json_valid(body)),
        PRIMARY KEY (trial_id, seq)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE file_changes (
        trial_id      INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
        seq           INTEGER NOT NULL,
        path          TEXT NOT NULL,
        kind          TEXT NOT NULL,
        mode_before   INTEGER,
        mode_after    INTEGER,
        sha256_before TEXT,
        sha256_after  TEXT,
        PRIMARY KEY (trial_id, seq)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE labels (
        trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
        seq      INTEGER NOT NULL,
        name     TEXT NOT NULL,
        value    INTEGER NOT NULL CHECK (value IN (0, 1)),
        detail   TEXT NOT NULL,
        PRIMARY KEY (trial_id, seq)
    ) STRICT, WITHOUT ROWID;

    CREATE INDEX labels_by_name ON labels (name, value);
    CREATE INDEX trials_by_cell ON trials (run_id, model, scenario, variant);
    "#,
    // Version 2: a label may carry a number besides its verdict (`Label::score`, e.g. the
    // fraction of answers correct for sandbagging). NULL for every label written before.
    r#"
    ALTER TABLE labels ADD COLUMN score REAL;
    "#,
    // Version 3: what a run was made with (`Provenance`), so `--resume` can refuse to mix trials
    // of a changed scenario or model into one run. One row per item; runs created before have
    // none.
    r#"
    CREATE TABLE run_provenance (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        -- `offswitch_version`, `commit` (name ''), `scenario_file` (name: the scenario id) or
        -- `model_file` (name: the model spec).
        kind   TEXT NOT NULL CHECK (kind IN ('offswitch_version', 'commit', 'scenario_file', 'model_file')),
        name   TEXT NOT NULL,
        -- The version, the commit, or the file's hex sha256.
        value  TEXT NOT NULL,
        PRIMARY KEY (run_id, kind, name)
    ) STRICT, WITHOUT ROWID;
    "#,
    // Version 4: attempts. `--retry-errors` replaces a trial that ended as a harness error, and
    // the failed attempt stays in the record: `attempt` numbers the trials of one key (1 for
    // the first), `replaced` marks every one but the key's current trial. A key is unique only
    // among current trials (a partial index), so the table is rebuilt to drop the old UNIQUE
    // constraint, the way SQLite documents it; `Store::migrate` runs this step with foreign keys
    // off and checks them before committing, so the children keep pointing at their trials.
    r#"
    CREATE TABLE trials_v4 (
        id                INTEGER PRIMARY KEY,
        run_id            TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        idx               INTEGER NOT NULL,
        model             TEXT NOT NULL,
        scenario          TEXT NOT NULL,
        variant           TEXT NOT NULL,
        epoch             INTEGER NOT NULL,
        seed              INTEGER NOT NULL,
        outcome           TEXT NOT NULL,
        outcome_message   TEXT,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        turns             INTEGER NOT NULL,
        started_at_ms     INTEGER NOT NULL,
        wall_ms           INTEGER NOT NULL,
        attempt           INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
        replaced          INTEGER NOT NULL DEFAULT 0 CHECK (replaced IN (0, 1)),
        UNIQUE (run_id, model, scenario, variant, epoch, attempt),
        UNIQUE (run_id, idx)
    ) STRICT;

    INSERT INTO trials_v4 (id, run_id, idx, model, scenario, variant, epoch, seed, outcome,
        outcome_message, prompt_tokens, completion_tokens, turns, started_at_ms, wall_ms)
    SELECT id, run_id, idx, model, scenario, variant, epoch, seed, outcome,
        outcome_message, prompt_tokens, completion_tokens, turns, started_at_ms, wall_ms
    FROM trials;

    DROP TABLE trials;
    ALTER TABLE trials_v4 RENAME TO trials;

    CREATE INDEX trials_by_cell ON trials (run_id, model, scenario, variant);
    CREATE UNIQUE INDEX trials_current_key ON trials (run_id, model, scenario, variant, epoch)
        WHERE replaced = 0;
    "#,
    // Version 5: what the kernel saw (`TrialRecord::events`) and labels that are neither true
    // nor false (`Label::indeterminate`: the evidence they rest on is incomplete). Labels
    // written before are determinate.
    //
    // One row per stream (a sandbox of the trial), its events one compact JSON array of
    // `stored::EventV1`, not one row per event. Both were measured (release build, 2 cores,
    // a flood of 20,000 stored file events): the array inserted in ~22 ms a trial, a row per
    // event (common fields as columns) in ~30 ms, and took 2.5 against 2.0 MB; the whole
    // trial through `insert_trial` takes ~38 ms and reads back in ~27 ms
    // (`examples/store_bench.rs --events 40000`). Either is fast enough; the array is simpler:
    // the bound is applied and carried in one place, a stream is always read whole (`show`,
    // detectors), and its stored form is one versioned type, like a transcript entry's body.
    // SQL can still look inside with `json_each`. A plain rowid table: rows run to megabytes,
    // which SQLite advises against in a WITHOUT ROWID table. The stored copy is bounded
    // (`MAX_STORED_EVENTS`, `MAX_STORED_EVENT_BYTES`); what it leaves out is counted in `lost`.
    r#"
    ALTER TABLE labels ADD COLUMN indeterminate INTEGER NOT NULL DEFAULT 0
        CHECK (indeterminate IN (0, 1));

    CREATE TABLE event_streams (
        trial_id    INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
        -- Position in `TrialRecord::events`: 0 is the agent's sandbox, then other hosts'.
        seq         INTEGER NOT NULL,
        host        TEXT NOT NULL,
        -- Why the stream was not recorded at all; NULL when it was.
        unavailable TEXT,
        -- JSON array of `stored::LossV1`: the recorder's losses, and the events the stored
        -- copy leaves out, each counted per source.
        lost        TEXT NOT NULL CHECK (json_valid(lost)),
        -- Events stored in `events`, for queries that need no parsing.
        event_count INTEGER NOT NULL,
        -- JSON array of `stored::EventV1`, in recorded order.
        events      TEXT NOT NULL CHECK (json_valid(events)),
        PRIMARY KEY (trial_id, seq)
    ) STRICT;
    "#,
    // Version 6: a run's counts per cell (`Store::cell_counts`), kept so that the viewer opens a
    // large run without aggregating every label again: aggregating 100,000 trials' labels takes
    // seconds, reading this row milliseconds. Valid for the run's trials up to
    // `through_trial_id` with `replaced` trials replaced; newer trials are added to it, and a
    // change in `replaced` (a retry) recomputes it. A cache: deleting the row loses nothing.
    r#"
    CREATE TABLE run_counts (
        run_id           TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
        through_trial_id INTEGER NOT NULL,
        replaced         INTEGER NOT NULL,
        -- JSON `stored::CountsV1`.
        counts           TEXT NOT NULL CHECK (json_valid(counts))
    ) STRICT;
    "#,
    // Version 7: the text of a changed file before and after the trial, for the viewer's diffs
    // (`FileChange::text_before`, `text_after`): small UTF-8 files only, those the detectors
    // name first, within a budget per trial. NULL for every change stored before.
    r#"
    ALTER TABLE file_changes ADD COLUMN text_before TEXT;
    ALTER TABLE file_changes ADD COLUMN text_after TEXT;
    "#,
];
