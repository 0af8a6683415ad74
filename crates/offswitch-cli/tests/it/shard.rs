//! Sharded runs end to end, as the Kubernetes Indexed Job runs them: workers with
//! `--shard i/N` at once on this machine, one killed with SIGKILL and continued, then
//! `offswitch merge`. The merged run is exactly the plan and reads exactly like an unsharded
//! run of the same seed; a merge of shards that are not one plan is refused with exit 2.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use offswitch_store::Store;

use crate::run::{offswitch, sandbox_unavailable};

/// The run every test shards: 2 variants x 12 epochs of a scripted agent, 24 trials.
const EPOCHS: &str = "12";
const TRIALS: usize = 24;

fn plan_args(db: &Path, work: &Path) -> Vec<String> {
    [
        "run",
        "--model",
        "scripted:overwrite",
        "--scenario",
        "shutdown-resistance",
        "--variant",
        "condition=a-none",
        "--variant",
        "condition=b-user",
        "--epochs",
        EPOCHS,
        "--seed",
        "7",
        "--concurrency",
        "1",
        "--progress",
        "plain",
        "--db",
    ]
    .into_iter()
    .map(String::from)
    .chain([db.display().to_string(), "--work-dir".into()])
    .chain([work.display().to_string()])
    .collect()
}

fn shard_args(dir: &Path, index: u32, count: u32) -> Vec<String> {
    let mut args = plan_args(&shard_db(dir, index), &dir.join("work"));
    args.extend([
        "--shard".into(),
        format!("{index}/{count}"),
        "--run-id".into(),
        "study-1".into(),
    ]);
    args
}

fn shard_db(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("shard-{index}.db"))
}

fn spawn(args: &[String]) -> Child {
    offswitch()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn stored(db: &Path, run: &str) -> usize {
    Store::open(db)
        .and_then(|store| store.trials(run))
        .map_or(0, |trials| trials.len())
}

fn merge(dir: &Path, out: &str, shards: &[PathBuf]) -> Output {
    offswitch()
        .arg("merge")
        .arg(dir.join(out))
        .args(shards)
        .output()
        .unwrap()
}

/// `command` of a run in `db`, its run id replaced by `RUN`.
fn read(db: &Path, run: &str, command: &[&str]) -> String {
    let output = offswitch()
        .args(command)
        .arg(run)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    assert!(output.status.success(), "{command:?}: {output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .replace(run, "RUN")
}

/// Export rows without what differs between two runs of the same plan by nature: ids,
/// positions, start times and durations, and the labels' evidence text, which quotes event
/// times and counts the kernel's merged file events (`write` twice or once, by timing).
/// Sorted by key, since positions follow completion.
fn export_rows(db: &Path, run: &str) -> Vec<String> {
    let text = read(db, run, &["export"]);
    let mut rows: Vec<String> = text
        .lines()
        .map(|line| {
            let mut row: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).unwrap();
            for field in [
                "run",
                "trial",
                "index",
                "started_at",
                "wall_ms",
                "label_details",
            ] {
                assert!(row.remove(field).is_some(), "no {field} in {line}");
            }
            serde_json::to_string(&row).unwrap()
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn an_indexed_job_simulated_merges_into_exactly_the_unsharded_run() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!(
            "skipping an_indexed_job_simulated_merges_into_exactly_the_unsharded_run: {reason}"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let workers: Vec<Vec<String>> = (1..=3).map(|i| shard_args(dir, i, 3)).collect();
    let mut running: Vec<Child> = workers.iter().map(|args| spawn(args)).collect();
    // Workers 2 and 3 die like pods whose node went away: SIGKILL once each stored a trial.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut killed = Vec::new();
    for index in [2, 3] {
        while stored(&shard_db(dir, index), "study-1") < 1 {
            let worker = &mut running[index as usize - 1];
            if let Some(status) = worker.try_wait().unwrap() {
                panic!("worker {index} ended before it was killed: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "worker {index} stored nothing"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        running[index as usize - 1].kill().unwrap();
        running[index as usize - 1].wait().unwrap();
        let before = stored(&shard_db(dir, index), "study-1");
        assert!(
            before < TRIALS / 3,
            "shard {index} finished before it was killed"
        );
        killed.push(before);
    }
    assert!(running[0].wait().unwrap().success(), "worker 1");
    // Merging now is refused: shards 2 and 3 are not done.
    let early = merge(dir, "early.db", &[1, 2, 3].map(|i| shard_db(dir, i)));
    assert_eq!(early.status.code(), Some(2), "{early:?}");
    let message = String::from_utf8_lossy(&early.stderr);
    for (index, before) in [2, 3].into_iter().zip(&killed) {
        assert!(
            message.contains(&format!(
                "shard-{index}.db (shard {index}/3) has {before} of its 8 trials"
            )),
            "{message}"
        );
    }
    assert!(
        !dir.join("early.db").exists(),
        "a refused merge wrote its output"
    );

    // The replacement pod of shard 2 runs the same command: it continues the shard, it does
    // not repeat it. Shard 3 is continued by hand with --resume.
    let again = offswitch().args(&workers[1]).output().unwrap();
    assert!(again.status.success(), "{again:?}");
    let note = String::from_utf8_lossy(&again.stderr);
    assert!(note.contains("continuing it"), "{note}");
    let resumed = offswitch()
        .args(["run", "--resume", "study-1", "--progress", "quiet", "--db"])
        .arg(shard_db(dir, 3))
        .arg("--work-dir")
        .arg(dir.join("work"))
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{resumed:?}");
    for (index, before) in [2, 3].into_iter().zip(&killed) {
        let shard = Store::open(&shard_db(dir, index)).unwrap();
        assert_eq!(shard.trials("study-1").unwrap().len(), TRIALS / 3);
        assert!(shard.attempts("study-1").unwrap().is_empty());
        assert!(*before >= 1);
    }

    let merged = merge(dir, "merged.db", &[3, 1, 2].map(|i| shard_db(dir, i)));
    assert!(merged.status.success(), "{merged:?}");
    let merged_db = dir.join("merged.db");
    let store = Store::open(&merged_db).unwrap();
    let trials = store.trials("study-1").unwrap();
    let keys: HashSet<_> = trials.iter().map(|r| r.key.clone()).collect();
    assert_eq!((trials.len(), keys.len()), (TRIALS, TRIALS));
    let info = store.run("study-1").unwrap();
    assert_eq!(info.status, offswitch_store::RunStatus::Complete);
    drop(store);

    // The same plan unsharded, with the same seed.
    let whole_db = dir.join("whole.db");
    let whole = offswitch()
        .args(plan_args(&whole_db, &dir.join("work")))
        .args(["--run-id", "whole-1"])
        .output()
        .unwrap();
    assert!(whole.status.success(), "{whole:?}");
    for command in [
        &["report"][..],
        &["report", "--format", "json"],
        &["report", "--format", "csv"],
        &["report", "--format", "markdown"],
        &["compare"],
    ] {
        assert_eq!(
            read(&merged_db, "study-1", command),
            read(&whole_db, "whole-1", command),
            "{command:?}"
        );
    }
    assert_eq!(
        export_rows(&merged_db, "study-1"),
        export_rows(&whole_db, "whole-1")
    );
    // And the viewer's run page shows the same rates, charts and outcomes.
    assert_eq!(
        viewer_sections(&merged_db, "study-1"),
        viewer_sections(&whole_db, "whole-1")
    );
}

/// The rates tables, charts and outcome tables of `run`'s page in `offswitch view`, its id
/// replaced by `RUN`.
fn viewer_sections(db: &Path, run: &str) -> String {
    let (child, url) = crate::view::start_viewer(db, None);
    let _viewer = crate::view::Killed(child);
    let (base, token) = url.split_once("/?token=").unwrap();
    let page = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            reqwest::Client::new()
                .get(format!("{base}/runs/{run}"))
                .header("cookie", format!("offswitch_view={token}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
    let start = page.find("<h2>").expect("the run page has sections");
    let end = page.find("<h2>made with</h2>").unwrap_or(page.len());
    assert!(page[start..end].contains("class=\"rates\""), "{page}");
    page[start..end].replace(run, "RUN")
}

#[test]
fn a_merge_refuses_shards_that_are_not_one_plan_and_says_why() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping a_merge_refuses_shards_that_are_not_one_plan_and_says_why: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let run_ok = |args: &[String]| {
        let output = offswitch().args(args).output().unwrap();
        assert!(output.status.success(), "{output:?}");
    };
    for index in 1..=2 {
        run_ok(&shard_args(dir, index, 2));
    }
    let refusal = |shards: &[PathBuf]| {
        let output = merge(dir, "out.db", shards);
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        String::from_utf8(output.stderr)
            .unwrap()
            .replace(&dir.display().to_string(), "[dir]")
    };

    // Overlapping: the same shard twice under two names.
    std::fs::copy(shard_db(dir, 2), dir.join("copy-of-2.db")).unwrap();
    let overlap = refusal(&[shard_db(dir, 1), shard_db(dir, 2), dir.join("copy-of-2.db")]);
    assert!(
        overlap.contains(
            "shard 2/2 is given 2 times ([dir]/shard-2.db, [dir]/copy-of-2.db): the shards overlap"
        ),
        "{overlap}"
    );
    // Missing one.
    let missing = refusal(&[shard_db(dir, 1)]);
    assert!(missing.contains("missing 1 of 2 shards: 2/2"), "{missing}");

    // Another plan under the same id: one more epoch.
    let other = dir.join("other");
    std::fs::create_dir(&other).unwrap();
    let mut args = shard_args(&other, 2, 2);
    let epochs = args.iter().position(|a| a == "--epochs").unwrap();
    args[epochs + 1] = "13".into();
    run_ok(&args);
    let plan = refusal(&[shard_db(dir, 1), shard_db(&other, 2)]);
    assert!(
        plan.contains(
            "is from another plan than [dir]/shard-1.db (shard 1/2): epochs 12 against 13"
        ),
        "{plan}"
    );

    // The same plan made from a scenario file that changed between two shards.
    let edited = dir.join("edited");
    std::fs::create_dir(&edited).unwrap();
    let scenario = edited.join("shutdown-resistance.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/shutdown-resistance.toml"),
    )
    .unwrap();
    for (index, text) in [
        (1, text.clone()),
        (2, format!("{text}\n# edited between two shards\n")),
    ] {
        std::fs::write(&scenario, text).unwrap();
        let mut args = shard_args(&edited, index, 2);
        let at = args
            .iter()
            .position(|a| a == "shutdown-resistance")
            .unwrap();
        args[at] = scenario.display().to_string();
        run_ok(&args);
    }
    let hashes = refusal(&[shard_db(&edited, 1), shard_db(&edited, 2)]);
    assert!(
        hashes.contains("made with other inputs: scenario shutdown-resistance: file sha256"),
        "{hashes}"
    );
    // Nothing was written by any refusal.
    assert!(!dir.join("out.db").exists());

    // A shard database is never a merge's output, and a run is merged once.
    let into_shard = merge(dir, "shard-1.db", &[shard_db(dir, 1), shard_db(dir, 2)]);
    assert_eq!(into_shard.status.code(), Some(2), "{into_shard:?}");
    let once = merge(dir, "out.db", &[shard_db(dir, 1), shard_db(dir, 2)]);
    assert!(once.status.success(), "{once:?}");
    let twice = refusal(&[shard_db(dir, 1), shard_db(dir, 2)]);
    assert!(
        twice.contains("[dir]/out.db already holds run study-1"),
        "{twice}"
    );
}

#[test]
fn shard_flags_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, expected) in [
        ("--shard", "0/4", "1-based"),
        ("--shard", "5/4", "1-based"),
        ("--shard", "2", "expected i/N"),
        ("--run-id", "../escape", "bad run id"),
        ("--run-id", "latest", "bad run id"),
    ] {
        let output = offswitch()
            .args(plan_args(
                &dir.path().join("x.db"),
                &dir.path().join("work"),
            ))
            .args([flag, value])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{flag} {value}: {stderr}");
    }
    // A shard and a resume of another run do not mix.
    let output = offswitch()
        .args(["run", "--shard", "1/2", "--resume", "r-1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

/// The shard id derived from the plan is the same on every worker and differs for another
/// plan or label, so workers need no shared `--run-id`.
#[test]
fn workers_without_a_run_id_agree_on_one() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping workers_without_a_run_id_agree_on_one: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let id_of = |index: u32, label: &str| {
        let db = dir.join(format!("{label}-{index}.db"));
        let mut args = plan_args(&db, &dir.join("work"));
        let epochs = args.iter().position(|a| a == "--epochs").unwrap();
        args[epochs + 1] = "1".into();
        args.extend(["--shard".into(), format!("{index}/2")]);
        if !label.is_empty() {
            args.extend(["--label".into(), label.into()]);
        }
        let output = offswitch().args(&args).output().unwrap();
        assert!(output.status.success(), "{output:?}");
        Store::open(&db).unwrap().latest_run().unwrap().unwrap().id
    };
    let (a, b, c) = (id_of(1, ""), id_of(2, ""), id_of(1, "other"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.as_str().starts_with("run-"), "{a}");
}
