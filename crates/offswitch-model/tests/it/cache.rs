//! The response cache: a second identical call reaches no server, errors are not cached,
//! corrupt entries are ignored and overwritten.

use std::time::Duration;

use offswitch_core::ToolMode;
use offswitch_model::mock::MockReply;
use offswitch_model::{
    CacheStatus, CachedBackend, ModelClient, ResilienceConfig, ResponseCache, RetryPolicy,
};

use crate::{first_request, openai_pair};

fn quick_retries() -> ResilienceConfig {
    ResilienceConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            ..RetryPolicy::default()
        },
        ..ResilienceConfig::default()
    }
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (server, backend) = openai_pair(Duration::from_secs(10)).await;
    server.push(MockReply::text("first and only"));
    let client = ModelClient::new(
        backend,
        quick_retries(),
        Some(ResponseCache::new(dir.path())),
    );
    let request = first_request(ToolMode::Native);

    let first = client.call(&request).await;
    assert_eq!(first.cache, CacheStatus::Miss);
    let second = client.call(&request).await;
    assert_eq!(second.cache, CacheStatus::Hit);
    assert_eq!(
        second.result, first.result,
        "a hit reproduces the response exactly"
    );
    assert!(second.failures.is_empty());
    assert_eq!(server.request_count(), 1, "the hit reached the server");

    // Any change to the request is a different key.
    let mut other = request.clone();
    other.sampling.seed = Some(8);
    server.push(MockReply::text("another"));
    let third = client.call(&other).await;
    assert_eq!(third.cache, CacheStatus::Miss);
    assert_eq!(third.result.unwrap().message.content, "another");
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn failures_are_logged_and_never_cached() {
    let dir = tempfile::tempdir().unwrap();
    let (server, backend) = openai_pair(Duration::from_secs(10)).await;
    let client = ModelClient::new(
        backend,
        quick_retries(),
        Some(ResponseCache::new(dir.path())),
    );
    let request = first_request(ToolMode::Native);

    server.push(MockReply::error(401, "bad key"));
    let failed = client.call(&request).await;
    assert!(failed.result.is_err());
    assert_eq!(failed.failures.len(), 1);

    server.push_all([MockReply::error(500, "flaky"), MockReply::text("recovered")]);
    let recovered = client.call(&request).await;
    assert_eq!(recovered.cache, CacheStatus::Miss);
    assert_eq!(recovered.result.unwrap().message.content, "recovered");
    assert_eq!(recovered.failures.len(), 1);
    assert!(recovered.failures[0].retried);
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn corrupt_entries_are_ignored_and_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (server, backend) = openai_pair(Duration::from_secs(10)).await;
    let cache = ResponseCache::new(dir.path());
    let request = first_request(ToolMode::Native);
    let path = cache.path_of(&ResponseCache::key(&backend.id(), &request));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "{\"format\": 1, \"key\": \"trunc").unwrap();

    let cached = CachedBackend::new(backend, cache);
    server.push(MockReply::text("fresh"));
    let (result, status) = cached.chat_cached(&request).await;
    assert_eq!(status, CacheStatus::Miss);
    assert_eq!(result.unwrap().message.content, "fresh");

    let (result, status) = cached.chat_cached(&request).await;
    assert_eq!(status, CacheStatus::Hit);
    assert_eq!(result.unwrap().message.content, "fresh");
    assert_eq!(server.request_count(), 1);
    // Only the entry itself is left: the temporary file was renamed into place.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![path.file_name().unwrap().to_owned()]);
}

#[tokio::test]
async fn keys_depend_on_backend_and_request() {
    let request = first_request(ToolMode::Native);
    let key = ResponseCache::key("openai:m@http://a/v1", &request);
    assert_eq!(key.len(), 64);
    assert_eq!(key, ResponseCache::key("openai:m@http://a/v1", &request));
    assert_ne!(key, ResponseCache::key("openai:m@http://b/v1", &request));
    let tags = first_request(ToolMode::Tags);
    assert_ne!(key, ResponseCache::key("openai:m@http://a/v1", &tags));
}
