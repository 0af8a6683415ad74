//! Limits end trials with an outcome, never a hang: turns, tokens, wall time (the sandbox is
//! killed mid-exec), and replies without tool calls.

use std::sync::Arc;
use std::time::Duration;

use expect_test::{Expect, expect};
use offswitch_core::backend::{Sampling, ToolMode};
use offswitch_core::trial::TranscriptEntry;
use offswitch_harness::scenario::{LimitOverrides, ModelSide, evaluator, trial_spec};
use offswitch_harness::scripted::{Script, ScriptedBackend};
use offswitch_harness::{SingleAttempt, TrialLimits, TrialPlace, run_trial};

use crate::support::{sandbox_unavailable, shutdown_scenario};

/// Run `script` (TOML text) under `limits` and describe how the trial ended.
fn check(script: &str, limits: impl FnOnce(&mut TrialLimits), expect: Expect) {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping a limits test: {reason}");
        return;
    }
    let script = Script::parse(script, "test").unwrap();
    let scenario = Arc::new(shutdown_scenario());
    let variant = scenario.variant("condition=a-none").unwrap();
    let side = ModelSide {
        key_name: "scripted:test".into(),
        request_model: "test".into(),
        tool_mode: ToolMode::Native,
        sampling: Sampling::default(),
    };
    let mut spec = trial_spec(&scenario, &variant, &side, 0, 1, &LimitOverrides::default());
    limits(&mut spec.limits);
    let dir = crate::support::WorkDir::new();
    let place = TrialPlace {
        home: dir.path().join("home"),
        hostname: "agent".into(),
        facilities: Default::default(),
    };
    let model = Arc::new(SingleAttempt(Arc::new(ScriptedBackend::new(script))));
    let evaluate = evaluator(Arc::clone(&scenario), variant);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let record = runtime.block_on(run_trial(&spec, &place, model, &*evaluate));
    let mut out = format!("{} after {} turns\n", record.outcome.name(), record.turns);
    for entry in &record.transcript {
        match entry {
            TranscriptEntry::Exec {
                command, status, ..
            } => out.push_str(&format!("exec {command:?}: {status}\n")),
            TranscriptEntry::Event { kind, detail } if kind == "time_limit" => {
                out.push_str(&format!("event {kind}: {detail}\n"))
            }
            TranscriptEntry::Event { kind, .. } => out.push_str(&format!("event {kind}\n")),
            _ => {}
        }
    }
    expect.assert_eq(&out);
}

#[test]
fn turn_limit() {
    check(
        "name = \"loop\"\n[[step]]\nbash = \"echo hi\"\ntimes = 100\n",
        |limits| limits.max_turns = 3,
        expect![[r#"
            turn_limit after 3 turns
            event question_service
            exec "echo hi": exited 0
            exec "echo hi": exited 0
            exec "echo hi": exited 0
            event question_service
        "#]],
    );
}

#[test]
fn token_limit() {
    check(
        "name = \"loop\"\n[[step]]\nbash = \"echo hi\"\ntimes = 100\n",
        |limits| limits.max_total_tokens = 400,
        expect![[r#"
            token_limit after 4 turns
            event question_service
            exec "echo hi": exited 0
            exec "echo hi": exited 0
            exec "echo hi": exited 0
            exec "echo hi": exited 0
            event question_service
        "#]],
    );
}

#[test]
fn wall_time_kills_a_hanging_exec() {
    check(
        "name = \"hang\"\n[[step]]\nbash = \"sleep 600\"\n",
        |limits| {
            limits.wall_time = Duration::from_secs(2);
            limits.exec_timeout = Duration::from_secs(600);
        },
        expect![[r#"
            time_limit after 1 turns
            event question_service
            event time_limit: wall time of 2s reached while "sleep 600" ran; sandbox killed
            event question_service
        "#]],
    );
}

#[test]
fn exec_timeout_is_reported_to_the_agent() {
    check(
        "name = \"slow\"\n[[step]]\nbash = \"sleep 600\"\n[[step]]\ntool = \"submit\"\nargs = { answer = \"x\" }\n",
        |limits| limits.exec_timeout = Duration::from_secs(1),
        expect![[r#"
            finished after 2 turns
            event question_service
            exec "sleep 600": timed out
            event submitted
            event question_service
        "#]],
    );
}

#[test]
fn replies_without_tool_calls_are_nudged_then_finish() {
    check(
        "name = \"quiet\"\n[[step]]\ntext = \"I would rather not.\"\ntimes = 100\n",
        |limits| limits.max_idle_replies = 3,
        expect![[r#"
            finished after 3 turns
            event question_service
            event question_service
        "#]],
    );
}

#[test]
fn filling_the_home_ends_the_trial_as_a_disk_limit() {
    if !crate::support::is_root() {
        eprintln!("skipping the disk limit test: homes get a size limit only as root");
        return;
    }
    check(
        "name = \"fill\"\n[[step]]\nbash = \"head -c 100M /dev/zero > junk\"\n[[step]]\ntool = \"submit\"\nargs = { answer = \"x\" }\n",
        |limits| limits.sandbox_disk = offswitch_sandbox::DiskLimit { bytes: 32 << 20 },
        expect![[r#"
            sandbox_limit after 1 turns
            event question_service
            exec "head -c 100M /dev/zero > junk": disk limit exceeded
            event sandbox_limit_exceeded
            event question_service
        "#]],
    );
}

#[test]
fn a_memory_hog_ends_the_trial_as_a_sandbox_limit() {
    check(
        "name = \"hog\"\n[[step]]\nbash = \"python3 -c 'x = bytearray(400 << 20); print(len(x))'\"\n[[step]]\ntool = \"submit\"\nargs = { answer = \"x\" }\n",
        |limits| limits.sandbox_memory_bytes = Some(64 << 20),
        expect![[r#"
            sandbox_limit after 1 turns
            event question_service
            exec "python3 -c 'x = bytearray(400 << 20); print(len(x))'": memory limit exceeded
            event sandbox_limit_exceeded
            event question_service
        "#]],
    );
}

#[test]
fn a_process_flood_ends_the_trial_as_a_sandbox_limit() {
    check(
        "name = \"flood\"\n[[step]]\nbash = \"python3 -c 'import os, time; [os.fork() or time.sleep(30) for _ in range(64)]'\"\n[[step]]\ntool = \"submit\"\nargs = { answer = \"x\" }\n",
        |limits| limits.sandbox_max_processes = Some(16),
        expect![[r#"
            sandbox_limit after 1 turns
            event question_service
            exec "python3 -c 'import os, time; [os.fork() or time.sleep(30) for _ in range(64)]'": processes limit exceeded
            event sandbox_limit_exceeded
            event question_service
        "#]],
    );
}
