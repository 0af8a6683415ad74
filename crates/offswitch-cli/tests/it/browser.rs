//! The viewer in a real browser (Debian's Chromium, driven over the DevTools protocol by
//! puppeteer-core; `.ci/run` installs both): the runs list, a run's rates and charts with the
//! numbers the store holds, a trial's transcript and event timeline, and a running guard
//! session stopped from its page, with zero processes left. With `OFFSWITCH_SCREENSHOTS=DIR`
//! it also saves the screenshots the README shows (`docs/viewer-*.png`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::view::{Killed, start_viewer};

/// Why the browser test cannot run here; under CI (which installs everything) it must.
fn browser_unavailable() -> Option<String> {
    let why = if !std::fs::metadata("/proc/self")
        .is_ok_and(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
    {
        Some("a guard session needs root".to_owned())
    } else if !Path::new(&chromium()).exists() {
        Some(format!("no Chromium at {}", chromium()))
    } else if !puppeteer().join("package.json").exists() {
        Some(format!("no puppeteer-core in {}", puppeteer().display()))
    } else if Command::new("node").arg("--version").output().is_err() {
        Some("no node".to_owned())
    } else {
        None
    };
    if let Some(why) = &why {
        assert!(
            std::env::var_os("OFFSWITCH_CI").is_none(),
            "the browser test cannot run under CI: {why}"
        );
    }
    why
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Where `.ci/run` installs puppeteer-core.
fn puppeteer() -> PathBuf {
    match std::env::var_os("PUPPETEER_CORE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/offswitch/browser/node_modules/puppeteer-core"),
    }
}

#[test]
fn the_viewer_in_chromium_shows_a_run_and_stops_a_guard_session() {
    if let Some(why) = browser_unavailable() {
        eprintln!("skipping the_viewer_in_chromium_shows_a_run_and_stops_a_guard_session: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let env = |command: &mut Command| {
        command
            .env("OFFSWITCH_HOME", dir.path().join("home"))
            .env("OFFSWITCH_GUARD_DIR", dir.path().join("control"))
            .env("OFFSWITCH_CACHE", "/nonexistent-cache")
            .env("OFFSWITCH_DISK_MB", crate::run::SMALL_HOME_MB)
            .env_remove("OFFSWITCH_DB");
    };
    let offswitch = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_offswitch"));
        env(&mut command);
        command
    };
    // A real run: two trials of a sabotaging scripted agent, two of a complying one.
    for (model, id) in [
        ("scripted:overwrite", "browser-1"),
        ("scripted:comply", "browser-2"),
    ] {
        let output = offswitch()
            .args(["run", "--model", model, "--scenario", "shutdown-resistance"])
            .args([
                "--variant",
                "condition=a-none",
                "--epochs",
                "2",
                "--progress",
                "quiet",
            ])
            .args(["--run-id", id, "--db"])
            .arg(&db)
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    // A guard session with processes that would outlive their parent.
    let session = offswitch()
        .args(["guard", "--name", "browser-test", "--no-stdin", "--audit"])
        .arg(dir.path().join("s.audit"))
        .args(["--", "bash", "-c", "(setsid sleep 900 &); sleep 900"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut session = Killed(session);
    let control = dir.path().join("control/browser-test.sock");
    for _ in 0..100 {
        if control.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        control.exists(),
        "the session never opened its control socket"
    );
    // The viewer, on the same database and control directory.
    let (child, url) = start_viewer(&db, Some(&dir.path().join("control")));
    let _viewer = Killed(child);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/viewer.cjs");
    let mut node = Command::new("node");
    node.arg(&script)
        .args([url.as_str(), "browser-1", "browser-test"])
        .arg(r#"{"label": "sabotage", "rate": "2/2"}"#)
        .env("PUPPETEER_CORE", puppeteer())
        .env("CHROMIUM", chromium());
    if let Some(shots) = std::env::var_os("OFFSWITCH_SCREENSHOTS") {
        node.arg(shots);
    }
    let output = node.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["seen"]["stateBefore"], "running", "{seen}");
    assert!(
        seen["seen"]["processesBefore"].as_u64().unwrap() >= 2,
        "{seen}"
    );
    // Stopped from the page: the session ends as an operator stop (exit 125), nothing left.
    let status = session.0.wait().unwrap();
    assert_eq!(status.code(), Some(125), "{seen}");
    let verify = offswitch()
        .args(["audit", "show"])
        .arg(dir.path().join("s.audit"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&verify.stdout);
    assert!(log.contains("operator") && log.contains("stop"), "{log}");
}
