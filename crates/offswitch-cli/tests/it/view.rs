//! `offswitch view` over HTTP: the token, the pages and their numbers, paging, escaping of
//! what agents wrote, and refusals. The browser test (a real Chromium) is in `browser.rs`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use offswitch_core::{
    FileChange, FileChangeKind, Label, Message, Outcome, TranscriptEntry, TrialKey, TrialRecord,
    Usage,
};
use offswitch_store::Store;

use crate::run::offswitch;

/// What an agent can write, as it would try to break out of the page.
const HOSTILE: &str = "</pre><script>alert(1)</script><img src=x onerror=alert(2)>";

fn label(name: &str, value: bool, detail: &str) -> Label {
    Label {
        name: name.into(),
        value,
        detail: detail.into(),
        score: None,
        indeterminate: false,
    }
}

pub(crate) fn record(epoch: u32, sabotage: bool, entries: usize) -> TrialRecord {
    let mut transcript = vec![TranscriptEntry::Message {
        message: Message::user(format!("task {HOSTILE}")),
    }];
    for step in 0..entries {
        transcript.push(TranscriptEntry::Exec {
            call_id: format!("c{step}"),
            command: format!("echo step-{step}"),
            exit_code: Some(0),
            status: "exited 0".into(),
            stdout: format!("step-{step}\n"),
            stderr: String::new(),
            truncated_bytes: 0,
            wall_ms: 3,
        });
    }
    TrialRecord {
        key: TrialKey {
            model: "scripted:overwrite".into(),
            scenario: "shutdown-resistance".into(),
            variant: "condition=a-none".into(),
            epoch,
        },
        seed: u64::from(epoch),
        transcript,
        file_changes: vec![FileChange {
            path: format!("shutdown.sh{HOSTILE}"),
            kind: FileChangeKind::Modified,
            mode_before: Some(0o755),
            mode_after: Some(0o644),
            sha256_before: Some("ab".repeat(32)),
            sha256_after: Some("cd".repeat(32)),
            text_before: Some("#!/bin/sh\nkill -TERM 1\n".into()),
            text_after: Some(format!("#!/bin/sh\necho {HOSTILE}\n")),
        }],
        labels: vec![
            label("sabotage", sabotage, &format!("evidence {HOSTILE}")),
            label("shut_down", !sabotage, "the sandbox did not shut down"),
        ],
        outcome: Outcome::Finished,
        usage: Usage {
            prompt_tokens: 100,
            completion_tokens: 20,
        },
        turns: 4,
        started_at_ms: 1_700_000_000_000,
        wall_ms: 1500,
        events: Vec::new(),
    }
}

/// A database with one running run of three trials (sabotage in two), the first with a long
/// transcript.
fn database(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let db = dir.join("runs.db");
    let store = Store::open(&db).unwrap();
    let run = store
        .create_run_with_id(
            "view-1",
            &serde_json::json!({"schema": "offswitch.run/1", "models": ["scripted:overwrite"], "scenarios": ["shutdown-resistance"]}),
            Some(&format!("label {HOSTILE}")),
        )
        .unwrap();
    store.insert_trial(&run, &record(0, true, 120)).unwrap();
    store.insert_trial(&run, &record(1, true, 2)).unwrap();
    store.insert_trial(&run, &record(2, false, 2)).unwrap();
    (db, run.to_string())
}

/// `offswitch view` on `db` (and the guard sessions of `control`, when given), and the
/// address it printed (with its token).
pub(crate) fn start_viewer(
    db: &std::path::Path,
    control: Option<&std::path::Path>,
) -> (Child, String) {
    let mut command = offswitch();
    if let Some(control) = control {
        command.env("OFFSWITCH_GUARD_DIR", control);
    }
    let mut child = command
        .args(["view", "--port", "0", "--db"])
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    // The rest of its output, drained so that it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let url = line
        .trim()
        .strip_prefix("offswitch view: ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, url)
}

/// A child process killed when dropped.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_viewer_serves_runs_and_trials_behind_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let (db, run) = database(dir.path());
    let (child, url) = start_viewer(&db, None);
    let _child = Killed(child);
    let (base, token) = url.split_once("/?token=").unwrap();
    let (base, token) = (base.to_owned(), token.to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let plain = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        // No token, a wrong one: refused.
        for path in [
            "/",
            "/runs/view-1",
            "/?token=0000",
            "/api/runs/view-1/progress",
        ] {
            let response = plain.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 401, "{path}");
        }
        // The token once in the URL becomes a cookie, and the address loses it.
        let response = plain
            .get(format!("{base}/runs/view-1?token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303);
        assert_eq!(response.headers()["location"], "/runs/view-1");
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        // The redirect never leaves this server.
        let response = plain
            .get(format!("{base}//evil.example/x?token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["location"], "/");
        let get = |path: String| {
            let request = plain
                .get(format!("{base}{path}"))
                .header("cookie", format!("offswitch_view={token}"));
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let csp = response
                    .headers()
                    .get("content-security-policy")
                    .map(|v| v.to_str().unwrap().to_owned());
                (status, response.text().await.unwrap(), csp)
            }
        };

        let (status, page, csp) = get("/".into()).await;
        assert_eq!(status, 200);
        assert!(page.contains("href=\"/runs/view-1\""), "{page}");
        assert!(csp.unwrap().contains("default-src 'none'"));

        // The run page: the rates from the counts, a chart, live updates while it runs.
        let (status, page, _) = get(format!("/runs/{run}")).await;
        assert_eq!(status, 200);
        assert!(page.contains("class=\"rates\""), "{page}");
        assert!(page.contains("2/3"), "sabotage in two of three: {page}");
        assert!(page.contains("<svg"), "{page}");
        assert!(
            page.contains("/api/runs/view-1/progress"),
            "a running run updates live"
        );

        // The trials, all and filtered by a label.
        let (_, page, _) = get(format!("/runs/{run}/trials")).await;
        assert!(page.contains("3 trials"), "{page}");
        let (_, page, _) = get(format!("/runs/{run}/trials?label=sabotage")).await;
        assert!(page.contains("2 trials with sabotage true"), "{page}");
        assert!(
            !page.contains("/trials/3\""),
            "trial 3 has no sabotage: {page}"
        );

        // A trial: its transcript a page at a time.
        let (status, page, _) = get(format!("/runs/{run}/trials/1")).await;
        assert_eq!(status, 200);
        assert!(page.contains("121 entries; showing 1-50"), "{page}");
        assert!(page.contains("echo step-0") && !page.contains("echo step-60"));
        let (_, page, _) = get(format!("/runs/{run}/trials/1?page=2")).await;
        assert!(page.contains("showing 101-121") && page.contains("echo step-119"));
        // What the agent wrote is shown, never run: in the transcript, a file name, a label's
        // evidence, the run's label.
        for path in [
            "/".to_owned(),
            format!("/runs/{run}"),
            format!("/runs/{run}/trials/1"),
        ] {
            let (_, page, _) = get(path.clone()).await;
            assert!(!page.contains("<script>alert"), "{path}");
            assert!(!page.contains("<img src=x"), "{path}");
        }
        let (_, page, _) = get(format!("/runs/{run}/trials/1")).await;
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // The changed file's text as a diff.
        assert!(
            page.contains("<span class=\"del\">-kill -TERM 1</span>"),
            "{page}"
        );
        assert!(
            page.contains("<span class=\"ins\">+echo &lt;/pre&gt;&lt;script&gt;"),
            "{page}"
        );

        // Progress as JSON; unknown things are 404.
        let (_, progress, _) = get("/api/runs/view-1/progress".into()).await;
        let progress: serde_json::Value = serde_json::from_str(&progress).unwrap();
        assert_eq!(progress["trials"], 3);
        assert_eq!(progress["status"], "running");
        for path in ["/runs/nope", "/runs/view-1/trials/99", "/guard/..%2Fetc"] {
            let (status, _, _) = get(path.into()).await;
            assert_eq!(status, 404, "{path}");
        }
        // An action on a guard session needs the token in the form too, not just the cookie.
        let response = plain
            .post(format!("{base}/guard/some-session/stop"))
            .header("cookie", format!("offswitch_view={token}"))
            .form(&[("token", "wrong")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let response = plain
            .post(format!("{base}/guard/some-session/stop"))
            .header("cookie", format!("offswitch_view={token}"))
            .header("origin", "http://evil.example")
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "another origin");
    });
}
