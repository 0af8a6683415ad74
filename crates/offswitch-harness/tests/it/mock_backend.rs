//! The runner against mock OpenAI-compatible and Anthropic servers on loopback: native tool calls, 429 with
//! Retry-After, 500s, a timeout, truncated JSON and a failure streak past the retry bound.
//! Every trial is stored, none wedges, and every failed attempt is in a transcript.

use std::collections::BTreeMap;
use std::time::Duration;

use offswitch_core::trial::TranscriptEntry;
use offswitch_harness::{ModelOptions, ProgressMode, RunConfig, RunOptions, start_run};
use offswitch_model::mock::{Flavor, MockReply, MockServer};
use offswitch_model::{HttpOptions, RateLimits, ResilienceConfig, RetryPolicy};
use offswitch_store::{RunStatus, Store};
use serde_json::json;

use crate::support::sandbox_unavailable;

fn next_question() -> MockReply {
    MockReply::tool_call("bash", json!({"command": "./next_question"}))
}

#[test]
fn flaky_openai_server_loses_no_trial() {
    flaky_server_loses_no_trial(Flavor::OpenAi, "openai");
}

#[test]
fn flaky_anthropic_server_loses_no_trial() {
    flaky_server_loses_no_trial(Flavor::Anthropic, "anthropic");
}

fn flaky_server_loses_no_trial(flavor: Flavor, prefix: &str) {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping the flaky {prefix} server test: {reason}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = MockServer::start(flavor).await.unwrap();
        server.set_fallback(next_question());
        // Transient failures between good replies, then a streak longer than the retry bound.
        let failures = [
            MockReply::rate_limited("1"),
            MockReply::error(500, "internal error"),
            MockReply::Truncated,
            next_question().delayed(Duration::from_secs(3)),
            MockReply::rate_limited("0"),
            MockReply::error(503, "overloaded"),
            MockReply::Truncated,
        ];
        for failure in &failures {
            server.push(failure.clone());
            server.push(next_question());
        }
        let streak = 6;
        for _ in 0..streak {
            server.push(MockReply::error(500, "down"));
        }
        let injected = failures.len() + streak;

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.db")).unwrap();
        let config = RunConfig {
            models: vec![format!("{prefix}:mock-model@{}", server.base_url())],
            epochs: 1,
            ..RunConfig::default()
        };
        let options = options(dir.path());
        let summary = tokio::time::timeout(
            Duration::from_secs(120),
            start_run(&store, &config, &options, std::future::pending()),
        )
        .await
        .expect("the run wedged")
        .unwrap();
        check_flaky_run(&store, &summary, injected);
    });
}

fn options(dir: &std::path::Path) -> RunOptions {
    RunOptions {
        work_dir: dir.join("work"),
        concurrency: 2,
        scenarios_dir: offswitch_scenario::builtin_dir(),
        models: ModelOptions {
            http: HttpOptions {
                api_key: Some("test-key".into()),
                timeout: Duration::from_millis(500),
                ..HttpOptions::default()
            },
            tool_mode: offswitch_core::backend::ToolMode::Native,
            cache_dir: None,
            agents_dir: offswitch_harness::scripted::builtin_dir(),
            allow_pull: false,
            resilience: ResilienceConfig {
                retry: RetryPolicy {
                    max_attempts: 3,
                    base_delay: Duration::from_millis(5),
                    max_delay: Duration::from_millis(20),
                    max_total_delay: Duration::from_secs(10),
                    max_retry_after: Duration::from_millis(50),
                },
                limits: RateLimits::default(),
            },
        },
        progress: ProgressMode::Quiet,
        keep_homes: false,
        facilities: Default::default(),
        retry_errors: false,
        build: Default::default(),
        label: None,
        run_id: None,
    }
}

fn check_flaky_run(store: &Store, summary: &offswitch_harness::RunSummary, injected: usize) {
    let records = store.trials(&summary.run).unwrap();
    assert_eq!(records.len(), 10, "one trial per condition");
    assert_eq!(summary.stored, 10);
    assert_eq!(store.run(&summary.run).unwrap().status, RunStatus::Complete);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for record in &records {
        *outcomes.entry(record.outcome.name()).or_default() += 1;
    }
    // Two trials run at once and each gives up after three consecutive failures, so the
    // six-failure streak ends at least one of them; everything else shuts down as asked.
    assert!(
        outcomes.get("backend_failed").copied().unwrap_or(0) >= 1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.get("shut_down").copied().unwrap_or(0)
            + outcomes.get("backend_failed").copied().unwrap_or(0),
        10,
        "{outcomes:?}"
    );
    // Every failed attempt the server caused is recorded in exactly one transcript.
    let recorded: usize = records
        .iter()
        .flat_map(|r| &r.transcript)
        .filter(|e| matches!(e, TranscriptEntry::BackendError { .. }))
        .count();
    assert_eq!(recorded, injected);
    // Tool calls round-tripped: every shut-down trial ran next_question four times.
    for record in records.iter().filter(|r| r.outcome.name() == "shut_down") {
        let execs = record
            .transcript
            .iter()
            .filter(|e| matches!(e, TranscriptEntry::Exec { .. }))
            .count();
        assert_eq!(execs, 4, "{}", record.key);
    }
}

/// In tag mode over HTTP the reply text carries the calls; malformed ones are corrected and
/// counted, and the trials still reach the shutdown.
#[test]
fn tag_protocol_over_http_counts_malformed_replies() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping tag_protocol_over_http_counts_malformed_replies: {reason}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = MockServer::start(Flavor::OpenAi).await.unwrap();
        let call = offswitch_core::chat::ToolCall {
            id: String::new(),
            name: "bash".into(),
            arguments: json!({"command": "./next_question"}).to_string(),
        };
        let good = MockReply::text(format!(
            "I will get the next question.\n{}",
            offswitch_core::tags::render_call(&call)
        ));
        server.set_fallback(good);
        let malformed = [
            "<tool_call>\n{\"name\": \"bash\"",
            "<tool_call>{\"name\": \"python\", \"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"bash\", \"arguments\": {\"cmd\": \"ls\"}}</tool_call>",
        ];
        for text in malformed {
            server.push(MockReply::text(text));
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.db")).unwrap();
        let config = RunConfig {
            models: vec![format!("openai:mock-model@{}", server.base_url())],
            tool_mode: offswitch_core::backend::ToolMode::Tags,
            ..RunConfig::default()
        };
        let summary = start_run(
            &store,
            &config,
            &options(dir.path()),
            std::future::pending(),
        )
        .await
        .unwrap();
        let records = store.trials(&summary.run).unwrap();
        assert_eq!(records.len(), 10);
        let outcomes: Vec<String> = records.iter().map(|r| format!("{:?}", r.outcome)).collect();
        assert!(
            records.iter().all(|r| r.outcome.name() == "shut_down"),
            "{outcomes:?}"
        );
        let protocol_errors = records
            .iter()
            .flat_map(|r| &r.transcript)
            .filter(|e| matches!(e, TranscriptEntry::ProtocolError { .. }))
            .count();
        assert_eq!(protocol_errors, malformed.len());
        // The server saw no native tools: the calls travel as text.
        assert!(
            server
                .requests()
                .iter()
                .all(|r| r.body.get("tools").is_none())
        );
    });
}

/// A conversation that outgrows the model's context ends the trial as a token limit (a length
/// limit of the trial, counted in the rates), not as a backend failure excluded from them.
#[test]
fn a_context_overflow_is_a_token_limit() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping a_context_overflow_is_a_token_limit: {reason}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = MockServer::start(Flavor::OpenAi).await.unwrap();
        server.push(next_question());
        server.set_fallback(MockReply::error(
            400,
            "This model's maximum context length is 4096 tokens.",
        ));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.db")).unwrap();
        let config = RunConfig {
            models: vec![format!("openai:mock-model@{}", server.base_url())],
            variants: vec!["condition=a-none".into()],
            ..RunConfig::default()
        };
        let summary = start_run(
            &store,
            &config,
            &options(dir.path()),
            std::future::pending(),
        )
        .await
        .unwrap();
        let records = store.trials(&summary.run).unwrap();
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.outcome.name(), "token_limit");
        assert_eq!(record.turns, 2);
        assert!(record.transcript.iter().any(|e| matches!(
            e,
            TranscriptEntry::Event { kind, .. } if kind == "context_overflow"
        )));
        // Not retried: the same conversation cannot fit on a second attempt.
        assert_eq!(server.requests().len(), 2);
    });
}

/// A server that reports 80 tokens for a 200 KB reply does not slip past the 40,000-token
/// budget: the count is implausible (more than 16 bytes per token), so the budget counts
/// bytes / 4 and says so in the transcript. Failed attempts record their kind and wait.
#[test]
fn an_implausible_usage_report_is_counted_locally() {
    if let Some(reason) = sandbox_unavailable() {
        eprintln!("skipping an_implausible_usage_report_is_counted_locally: {reason}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = MockServer::start(Flavor::OpenAi).await.unwrap();
        server.push(MockReply::rate_limited("0"));
        server.push(
            MockReply::Long {
                bytes: 200_000,
                chunked: true,
            }
            .with_usage(offswitch_core::Usage {
                prompt_tokens: 50,
                completion_tokens: 80,
            }),
        );
        server.set_fallback(next_question());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.db")).unwrap();
        let config = RunConfig {
            models: vec![format!("openai:mock-model@{}", server.base_url())],
            variants: vec!["condition=a-none".into()],
            ..RunConfig::default()
        };
        let summary = start_run(
            &store,
            &config,
            &options(dir.path()),
            std::future::pending(),
        )
        .await
        .unwrap();
        let records = store.trials(&summary.run).unwrap();
        let record = &records[0];
        // The shutdown-resistance budget is 40,000 tokens; the one reply used it up.
        assert_eq!(record.outcome.name(), "token_limit");
        assert_eq!((record.turns, record.usage.completion_tokens), (1, 50_000));
        let events: Vec<String> = record
            .transcript
            .iter()
            .filter_map(|entry| match entry {
                TranscriptEntry::Event { kind, detail } if kind == "usage_implausible" => {
                    Some(detail.clone())
                }
                TranscriptEntry::BackendError {
                    kind,
                    wait_ms,
                    retried,
                    ..
                } => Some(format!(
                    "backend error {kind:?}, retried {retried}, waited: {}",
                    wait_ms.is_some()
                )),
                _ => None,
            })
            .collect();
        expect_test::expect![[r#"
            [
                "backend error Some(\"rate_limited\"), retried true, waited: true",
                "the server reported 80 completion tokens for 200000 bytes (more than 16 bytes per token); the token budget counts 50000 (bytes / 4)",
            ]
        "#]].assert_debug_eq(&events);
    });
}
