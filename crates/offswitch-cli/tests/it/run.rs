//! `offswitch run` end to end: the real binary, real sandboxes, a real database. A run killed
//! with SIGKILL midway and then resumed has every trial exactly once; user mistakes exit 2.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use offswitch_sandbox::{ExecRequest, ExecStatus, Limits, NetworkMode, Sandbox, SandboxConfig};
use offswitch_store::Store;

/// The home size of the tests' trials, in MiB (`--disk-mb` through its variable).
pub(crate) const SMALL_HOME_MB: &str = "64";

pub(crate) fn offswitch() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_offswitch"));
    // The response cache is irrelevant for scripted agents; keep the tests off the user's.
    // Homes of 64 MiB, not the default 1 GiB: each is reserved on the disk in full while its
    // trial runs, and tests running trials side by side ran a CI machine's disk short.
    command
        .env_remove("OFFSWITCH_DB")
        .env("OFFSWITCH_CACHE", "/nonexistent-cache")
        .env("OFFSWITCH_DISK_MB", SMALL_HOME_MB);
    command
}

/// Why real sandboxes cannot be used here, or `None` when one starts and runs a command.
pub(crate) fn sandbox_unavailable() -> Option<String> {
    let home = tempfile::tempdir().ok()?;
    let sandbox = match Sandbox::create(SandboxConfig {
        home: home.path().to_owned(),
        limits: Limits::default(),
        network: NetworkMode::LoopbackOnly,
        env: Vec::new(),
        hostname: "probe".into(),
        ro_binds: Vec::new(),
        protect: Vec::new(),
        home_idmap: None,
        watch_opens: Vec::new(),
    }) {
        Ok(sandbox) => sandbox,
        Err(error) => return Some(format!("cannot create a sandbox: {error}")),
    };
    let result = sandbox.exec(&ExecRequest {
        command: "true".into(),
        stdin: Vec::new(),
        timeout: std::time::Duration::from_secs(10),
        output_cap: 1024,
    });
    let _ = sandbox.kill();
    match result {
        Ok(result) if result.status == ExecStatus::Exited(0) => None,
        Ok(result) => Some(format!(
            "a sandbox exec of `true` ended {:?}",
            result.status
        )),
        Err(error) => Some(format!("cannot exec in a sandbox: {error}")),
    }
}

fn run_args(db: &Path, work: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--model".into(),
        "scripted:overwrite".into(),
        "--epochs".into(),
        "6".into(),
        "--concurrency".into(),
        "2".into(),
        "--progress".into(),
        "plain".into(),
        "--db".into(),
        db.display().to_string(),
        "--work-dir".into(),
        work.display().to_string(),
    ]
}

#[test]
fn resume_after_kill_9_runs_exactly_the_missing_trials() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping resume_after_kill_9_runs_exactly_the_missing_trials: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let work = dir.path().join("work");
    // 10 variants x 6 epochs = 60 trials.
    let mut child = offswitch()
        .args(run_args(&db, &work))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = 0;
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.starts_with('[') {
            seen += 1;
        }
        if seen == 20 {
            break;
        }
    }
    assert_eq!(seen, 20, "the run ended before 20 trials were reported");
    // SIGKILL: no chance to clean up, mark the run or finish the trials in flight.
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::open(&db).unwrap();
    let run = store.latest_run().unwrap().expect("the run was created");
    let before = store.trials(&run.id).unwrap();
    assert!(before.len() >= 20, "{} trials stored", before.len());
    assert!(before.len() < 60, "the run finished before the kill");

    let output = offswitch()
        .args(run_args(&db, &work))
        .args(["--resume", run.id.as_str()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!(
            "run {}: 60 of 60 trials stored ({} this time",
            run.id,
            60 - before.len()
        )),
        "{stdout}"
    );

    let after = store.trials(&run.id).unwrap();
    assert_eq!(after.len(), 60);
    let keys: HashSet<_> = after.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys.len(), 60, "a trial was stored twice");
    // The trials stored before the kill are untouched by the resume.
    for record in &before {
        assert!(after.contains(record), "{} changed", record.key);
    }
    // Every trial is a real, judged one: the overwrite agent always sabotages.
    for record in &after {
        assert_eq!(
            record.label("sabotage").map(|l| l.value),
            Some(true),
            "{}: {:?}",
            record.key,
            record.outcome
        );
    }
    assert_eq!(
        store.run(&run.id).unwrap().status,
        offswitch_store::RunStatus::Complete
    );
}

#[test]
fn ctrl_c_marks_the_run_interrupted_and_resume_finishes_it() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping ctrl_c_marks_the_run_interrupted_and_resume_finishes_it: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let work = dir.path().join("work");
    let mut child = offswitch()
        .args(run_args(&db, &work))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = 0;
    while seen < 10 {
        let line = stderr.next().expect("the run ended early").unwrap();
        if line.starts_with('[') {
            seen += 1;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = stderr.map(|l| l.unwrap()).collect();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.starts_with("interrupted: killing the trials in flight")),
        "{rest:?}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("continue with `offswitch run --resume"),
        "{stdout}"
    );

    let store = Store::open(&db).unwrap();
    let run = store.latest_run().unwrap().unwrap();
    assert_eq!(run.status, offswitch_store::RunStatus::Interrupted);
    let stored = store.trials(&run.id).unwrap().len();
    assert!((10..60).contains(&stored), "{stored} trials stored");

    let output = offswitch()
        .args(run_args(&db, &work))
        .args(["--resume", run.id.as_str()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let after = store.trials(&run.id).unwrap();
    let keys: HashSet<_> = after.iter().map(|r| r.key.clone()).collect();
    assert_eq!((after.len(), keys.len()), (60, 60));
}

#[test]
fn user_mistakes_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = \"x\"\ntitle = 3\n").unwrap();
    let db = dir.path().join("runs.db");
    let cases: [&[&str]; 7] = [
        &["--retry-errors"],
        &["--scenario", bad.to_str().unwrap()],
        &["--model", "nonsense"],
        &["--model", "scripted:no-such-agent"],
        &["--model", "scripted:comply", "--model", "scripted:comply"],
        &["--model", "scripted:comply", "--temperature", "NaN"],
        &["--model", "scripted:comply", "--temperature=-1"],
    ];
    for args in cases {
        let output = offswitch()
            .args(["run", "--db", db.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    // The home size from the environment is checked as the flag is.
    let output = offswitch()
        .args([
            "run",
            "--model",
            "scripted:comply",
            "--db",
            db.to_str().unwrap(),
        ])
        .env("OFFSWITCH_DISK_MB", "8")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--disk-mb") && stderr.contains("16"),
        "{stderr}"
    );
}

#[test]
fn a_damaged_database_takes_no_new_run_and_exits_2() {
    let (_dir, db, store, run) = database_with_a_run();
    drop(store);
    // The last page is overwritten, as a bad copy might leave it; SQLite still opens the file.
    let bytes = overwrite_page(&db, 3, |pages| pages - 1);

    for args in [
        vec!["run", "--model", "scripted:comply"],
        vec!["run", "--resume", run.as_str()],
        vec!["runs", "label", run.as_str(), "checked"],
    ] {
        let output = offswitch()
            .args(&args)
            .args(["--db", db.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("is damaged (SQLite's quick check"),
            "{stderr}"
        );
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "the database was written to"
    );
}

/// Commands that only read skip the whole-file check (33 s on a cold 2.7 GB database): a
/// read that reaches a damaged page exits 2 and says the database is damaged; one that does not
/// reach it reads what is intact; none writes.
#[test]
fn a_damaged_database_fails_the_reads_that_reach_the_damage_with_exit_2() {
    let (_dir, db, store, run) = database_with_a_run();
    for epoch in 0..60 {
        store
            .insert_trial(&run, &super::view::record(epoch, epoch % 2 == 0, 20))
            .unwrap();
    }
    drop(store);
    // A page in the middle of the trials' rows is overwritten.
    let bytes = overwrite_page(&db, 20, |pages| pages / 2);
    let offswitch_on = |args: &[&str]| {
        offswitch()
            .args(args)
            .args(["--db", db.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let output = offswitch_on(&["export", "--format", "jsonl", run.as_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the database is damaged") && stderr.contains("malformed"),
        "{stderr}"
    );
    let output = offswitch_on(&["runs", "list"]);
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains(run.as_str()),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "the database was written to"
    );
}

/// A new run database in a temporary directory, with one run of `scripted:comply` started.
fn database_with_a_run() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Store,
    offswitch_store::RunId,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let store = Store::open(&db).unwrap();
    let run = store
        .create_run(&serde_json::json!({"models": ["scripted:comply"]}), None)
        .unwrap();
    (dir, db, store, run)
}

/// Overwrite page `pick(pages)` of the database at `db` (which has at least `at_least` pages)
/// with a filler byte; the file's new bytes.
fn overwrite_page(db: &Path, at_least: usize, pick: impl Fn(usize) -> usize) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    let page_size = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    let pages = bytes.len() / page_size;
    assert!(pages >= at_least, "{pages} pages");
    let start = pick(pages) * page_size;
    bytes[start..start + page_size].fill(0xa5);
    std::fs::write(db, &bytes).unwrap();
    bytes
}

/// Start `offswitch run` with `args` and return it once it has reported `trials` finished
/// trials on stderr (plain progress), with the rest of its stderr.
fn run_until(
    args: Vec<String>,
    trials: usize,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut child = offswitch()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = 0;
    while seen < trials {
        let line = stderr.next().expect("the run ended early").unwrap();
        if line.starts_with('[') {
            seen += 1;
        }
    }
    (child, stderr)
}

fn send(signal: &str, child: &std::process::Child) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A second process on a live run (a `--resume` while the original runs) is refused, and the
/// lock dies with its holder: after `kill -9` of the original, the resume runs the rest.
#[test]
fn a_second_process_on_a_live_run_is_refused_until_the_first_dies() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!(
            "skipping a_second_process_on_a_live_run_is_refused_until_the_first_dies: {reason}"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let work = dir.path().join("work");
    let (mut first, _stderr) = run_until(run_args(&db, &work), 5);
    let store = Store::open(&db).unwrap();
    let run = store.latest_run().unwrap().unwrap().id;

    let refused = offswitch()
        .args(run_args(&db, &work))
        .args(["--resume", run.as_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "run {run} is being run by another offswitch process (pid {})",
            first.id()
        )),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty());

    // SIGKILL: no destructor, no unlock; the OS releases the lock with the process.
    first.kill().unwrap();
    first.wait().unwrap();
    let before = store.trials(&run).unwrap();
    assert!(before.len() < 60, "the run finished before the kill");
    let output = offswitch()
        .args(run_args(&db, &work))
        .args(["--resume", run.as_str()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("run {run}: 60 of 60 trials stored")),
        "{stdout}"
    );
    let after = store.trials(&run).unwrap();
    let keys: HashSet<_> = after.iter().map(|r| r.key.clone()).collect();
    assert_eq!((after.len(), keys.len()), (60, 60));
    // Every trial is a real, judged one from a whole sandbox: no harness errors.
    for record in &after {
        assert_eq!(
            record.label("sabotage").map(|l| l.value),
            Some(true),
            "{}: {:?}",
            record.key,
            record.outcome
        );
    }
    // The killed process's homes were removed by the resume; nothing is left.
    assert!(!work.join(run.as_str()).exists());
}

/// SIGTERM stops a run like Ctrl-C: trials in flight killed, their homes removed, the run
/// marked interrupted, exit 143 (128 + SIGTERM); `--resume` finishes it.
#[test]
fn sigterm_marks_the_run_interrupted_and_resume_finishes_it() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping sigterm_marks_the_run_interrupted_and_resume_finishes_it: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let work = dir.path().join("work");
    let mut args = run_args(&db, &work);
    args[2] = "scripted:comply".into();
    let (child, stderr) = run_until(args.clone(), 10);
    send("-TERM", &child);
    let rest: Vec<String> = stderr.map(|l| l.unwrap()).collect();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(143), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.starts_with("interrupted: killing the trials in flight")),
        "{rest:?}"
    );
    let store = Store::open(&db).unwrap();
    let run = store.latest_run().unwrap().unwrap();
    assert_eq!(run.status, offswitch_store::RunStatus::Interrupted);
    let stored = store.trials(&run.id).unwrap().len();
    assert!((10..60).contains(&stored), "{stored} trials stored");
    assert!(
        !work.join(run.id.as_str()).exists(),
        "homes left behind: {:?}",
        std::fs::read_dir(work.join(run.id.as_str())).map(|d| d.flatten().count())
    );

    let output = offswitch()
        .args(args)
        .args(["--resume", run.id.as_str()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let after = store.trials(&run.id).unwrap();
    let keys: HashSet<_> = after.iter().map(|r| r.key.clone()).collect();
    assert_eq!((after.len(), keys.len()), (60, 60));
    assert_eq!(
        store.run(&run.id).unwrap().status,
        offswitch_store::RunStatus::Complete
    );
}

/// `--epochs 100000000` plans lazily: the run starts at once instead of aborting on an
/// allocation, and stops cleanly.
#[test]
fn a_huge_number_of_epochs_starts_and_stops_cleanly() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping a_huge_number_of_epochs_starts_and_stops_cleanly: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let mut args = run_args(&db, &dir.path().join("work"));
    args[2] = "scripted:comply".into();
    args[4] = "100000000".into();
    let (child, stderr) = run_until(args, 1);
    send("-TERM", &child);
    drop(stderr);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(143));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(" of 1000000000 trials stored ("),
        "{stdout}"
    );
}
