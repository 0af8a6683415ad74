//! Retries, backoff, Retry-After, the concurrency and rate limits, over real HTTP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use expect_test::{Expect, expect};
use offswitch_core::{ChatBackend, ToolMode};
use offswitch_model::mock::{MockReply, MockServer};
use offswitch_model::{
    AttemptFailure, RateLimits, ResilienceConfig, ResilientBackend, RetryPolicy,
};

use crate::{anthropic_pair, first_request, openai_pair, redact_addresses};

/// Backoff of a few milliseconds so tests stay fast; Retry-After honoured up to two seconds.
fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(10),
        max_total_delay: Duration::from_secs(5),
        max_retry_after: Duration::from_secs(2),
    }
}

fn config(retry: RetryPolicy) -> ResilienceConfig {
    ResilienceConfig {
        retry,
        limits: RateLimits::default(),
    }
}

/// The failures without their random jitter: attempt, kind, retried, and for a wait the server
/// asked for, the capped wait after checking that the delay is that wait plus at most
/// `base_delay` of jitter.
fn describe_failures(failures: &[AttemptFailure], policy: &RetryPolicy) -> String {
    failures
        .iter()
        .map(|f| {
            let delay = match f.error.retry_after() {
                Some(retry_after) if f.retried => {
                    let honoured = retry_after.min(policy.max_retry_after);
                    assert!(
                        f.delay >= honoured && f.delay <= honoured + policy.base_delay,
                        "{f:?} does not honour {honoured:?}"
                    );
                    format!(" delay={honoured:?}+jitter")
                }
                _ => String::new(),
            };
            redact_addresses(&format!(
                "attempt {} retried={} {:?}{delay}: {}\n",
                f.attempt, f.retried, f.error.kind, f.error.message
            ))
        })
        .collect()
}

/// Script `replies`, make one call with `policy` and snapshot the outcome, the attempt log and
/// how many requests reached the server.
async fn check(
    server_and_backend: (MockServer, Arc<dyn ChatBackend>),
    replies: Vec<MockReply>,
    policy: RetryPolicy,
    expect: Expect,
) {
    let (server, backend) = server_and_backend;
    server.push_all(replies);
    let policy_caps = (policy.max_delay, policy.max_retry_after + policy.base_delay);
    let resilient = ResilientBackend::new(backend, config(policy.clone()));
    let (result, failures) = resilient
        .chat_logged(&first_request(ToolMode::Native))
        .await;
    let outcome = match &result {
        Ok(response) => format!("ok {:?}", response.message.content),
        Err(error) => redact_addresses(&format!("err {:?}", error.kind)),
    };
    let actual = format!(
        "{outcome}\nrequests: {}\n{}",
        server.request_count(),
        describe_failures(&failures, &policy)
    );
    // Every failure but the last of a failed call was retried, and the log is complete.
    let expected_failures = server.request_count() - usize::from(result.is_ok());
    assert_eq!(failures.len(), expected_failures);
    // Jittered waits stay under the backoff ceiling; Retry-After waits under their cap.
    for failure in &failures {
        let cap = if failure.error.retry_after().is_some() {
            policy_caps.1
        } else {
            policy_caps.0
        };
        assert!(failure.delay <= cap, "{failure:?} waited more than {cap:?}");
    }
    expect.assert_eq(&actual);
}

#[tokio::test]
async fn transient_failures_are_retried_until_success() {
    let long = Duration::from_secs(10);
    check(
        openai_pair(long).await,
        vec![
            MockReply::error(500, "boom"),
            MockReply::Truncated,
            MockReply::error(502, "bad gateway"),
            MockReply::text("finally"),
        ],
        fast_policy(5),
        expect![[r#"
            ok "finally"
            requests: 4
            attempt 1 retried=true Server { status: 500 }: HTTP 500: boom
            attempt 2 retried=true Protocol: reply from http://127.0.0.1:PORT/v1/chat/completions is not valid JSON (EOF while parsing a string at line 1 column 134): {"id":"chatcmpl-mock-2","object":"chat.completion","created":0,"model":"test-model","choices":[{"index":0,"message":{"role":"assistant
            attempt 3 retried=true Server { status: 502 }: HTTP 502: bad gateway
        "#]],
    )
    .await;
    check(
        anthropic_pair(long).await,
        vec![
            MockReply::error(529, "Overloaded"),
            MockReply::text("finally"),
        ],
        fast_policy(5),
        expect![[r#"
            ok "finally"
            requests: 2
            attempt 1 retried=true RateLimited { retry_after: None }: HTTP 529: Overloaded
        "#]],
    )
    .await;
}

#[tokio::test]
async fn retries_stop_at_the_attempt_bound() {
    check(
        openai_pair(Duration::from_secs(10)).await,
        vec![MockReply::error(500, "down"); 10],
        fast_policy(3),
        expect![[r#"
            err Server { status: 500 }
            requests: 3
            attempt 1 retried=true Server { status: 500 }: HTTP 500: down
            attempt 2 retried=true Server { status: 500 }: HTTP 500: down
            attempt 3 retried=false Server { status: 500 }: HTTP 500: down
        "#]],
    )
    .await;
}

#[tokio::test]
async fn fatal_errors_are_not_retried() {
    check(
        openai_pair(Duration::from_secs(10)).await,
        vec![
            MockReply::error(401, "Incorrect API key provided"),
            MockReply::text("never reached"),
        ],
        fast_policy(5),
        expect![[r#"
            err Fatal
            requests: 1
            attempt 1 retried=false Fatal: HTTP 401: Incorrect API key provided
        "#]],
    )
    .await;
}

#[tokio::test]
async fn timeouts_fire_and_are_retried() {
    check(
        openai_pair(Duration::from_millis(150)).await,
        vec![
            MockReply::text("too late").delayed(Duration::from_secs(30)),
            MockReply::text("in time"),
        ],
        fast_policy(3),
        expect![[r#"
            ok "in time"
            requests: 2
            attempt 1 retried=true Timeout: request to http://127.0.0.1:PORT/v1/chat/completions failed: error sending request for url (http://127.0.0.1:PORT/v1/chat/completions): operation timed out
        "#]],
    )
    .await;
}

#[tokio::test]
async fn retry_after_is_honoured_and_capped() {
    let started = Instant::now();
    check(
        openai_pair(Duration::from_secs(10)).await,
        vec![MockReply::rate_limited("1"), MockReply::text("after the wait")],
        fast_policy(3),
        expect![[r#"
            ok "after the wait"
            requests: 2
            attempt 1 retried=true RateLimited { retry_after: Some(1s) } delay=1s+jitter: HTTP 429: rate limit reached
        "#]],
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the retry came before the server's Retry-After"
    );

    // An hour-long Retry-After is cut to the policy's cap.
    let mut policy = fast_policy(3);
    policy.max_retry_after = Duration::from_millis(20);
    check(
        anthropic_pair(Duration::from_secs(10)).await,
        vec![MockReply::rate_limited("3600"), MockReply::text("soon")],
        policy,
        expect![[r#"
            ok "soon"
            requests: 2
            attempt 1 retried=true RateLimited { retry_after: Some(3600s) } delay=20ms+jitter: HTTP 429: rate limit reached
        "#]],
    )
    .await;

    // A wait that would break the total-delay budget is not taken: the call fails now.
    let mut policy = fast_policy(3);
    policy.max_total_delay = Duration::from_millis(500);
    check(
        openai_pair(Duration::from_secs(10)).await,
        vec![MockReply::rate_limited("1"), MockReply::text("unreached")],
        policy,
        expect![[r#"
            err RateLimited { retry_after: Some(1s) }
            requests: 1
            attempt 1 retried=false RateLimited { retry_after: Some(1s) }: HTTP 429: rate limit reached
        "#]],
    )
    .await;
}

/// Run `calls` concurrent calls through `limits` against `reply`, and return the most requests
/// the server saw at once.
async fn max_in_flight(limits: RateLimits, calls: usize, reply: MockReply) -> usize {
    let (server, backend) = openai_pair(Duration::from_secs(20)).await;
    server.set_fallback(reply);
    let resilient = Arc::new(ResilientBackend::new(
        backend,
        ResilienceConfig {
            retry: fast_policy(1),
            limits,
        },
    ));
    let tasks: Vec<_> = (0..calls)
        .map(|_| {
            let resilient = resilient.clone();
            tokio::spawn(async move { resilient.chat(&first_request(ToolMode::Native)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.request_count(), calls);
    server.max_in_flight()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_holds_at_the_server() {
    // Each reply waits until two requests have overlapped, so the count reaches the limit
    // whatever the machine's load; a third would only show up if the limit leaked.
    let limited = max_in_flight(
        RateLimits {
            max_concurrency: 2,
            requests_per_minute: None,
        },
        8,
        MockReply::text("ok").when_in_flight(2, Duration::from_secs(10)),
    )
    .await;
    assert_eq!(
        limited, 2,
        "a limit of 2 must allow 2 requests at once, never more"
    );
    // Without the limit all 8 overlap: the server's count is not vacuous. The wait is a
    // safety net only; the replies go out as soon as the eighth request arrives.
    let unlimited = max_in_flight(
        RateLimits {
            max_concurrency: 8,
            requests_per_minute: None,
        },
        8,
        MockReply::text("ok").when_in_flight(8, Duration::from_secs(10)),
    )
    .await;
    assert_eq!(unlimited, 8);
}

#[tokio::test]
async fn requests_per_minute_spaces_calls() {
    let (server, backend) = openai_pair(Duration::from_secs(10)).await;
    server.set_fallback(MockReply::text("ok"));
    // 600 per minute is one every 100 ms: three calls take at least 200 ms.
    let resilient = ResilientBackend::new(
        backend,
        ResilienceConfig {
            retry: fast_policy(1),
            limits: RateLimits {
                max_concurrency: 8,
                requests_per_minute: Some(600),
            },
        },
    );
    let started = Instant::now();
    for _ in 0..3 {
        resilient
            .chat(&first_request(ToolMode::Native))
            .await
            .unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(server.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_through_every_failure_kind_all_finish() {
    // 20 calls share one queue of 20 answers and 40 failures of every retryable kind, in a
    // fixed order. Whichever call meets which failure, each retries until it finds an answer:
    // no call is lost or wedged, and every failure is logged exactly once.
    let (server, backend) = openai_pair(Duration::from_millis(200)).await;
    let failures = [
        MockReply::error(500, "boom"),
        MockReply::rate_limited("0"),
        MockReply::Truncated,
        MockReply::error(503, "unavailable"),
        MockReply::text("late").delayed(Duration::from_secs(30)),
    ];
    for i in 0..20 {
        server.push_all([
            failures[i % failures.len()].clone(),
            failures[(i + 2) % failures.len()].clone(),
            MockReply::text(format!("answer {i}")),
        ]);
    }
    let resilient = Arc::new(ResilientBackend::new(
        backend,
        ResilienceConfig {
            retry: RetryPolicy {
                max_attempts: 50,
                max_total_delay: Duration::from_secs(60),
                ..fast_policy(50)
            },
            limits: RateLimits {
                max_concurrency: 4,
                requests_per_minute: None,
            },
        },
    ));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let resilient = resilient.clone();
            tokio::spawn(async move {
                resilient
                    .chat_logged(&first_request(ToolMode::Native))
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    let mut logged = 0;
    for task in tasks {
        let (result, failures) = task.await.unwrap();
        answers.push(result.unwrap().message.content);
        assert!(failures.iter().all(|f| f.retried));
        logged += failures.len();
    }
    answers.sort();
    answers.dedup();
    assert_eq!(answers.len(), 20, "every answer went to exactly one call");
    assert_eq!(logged, 40);
    // No in-flight bound here: a handler whose client timed out may linger for a moment.
    assert_eq!(server.request_count(), 60);
}
