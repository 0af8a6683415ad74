//! Overhead of one model call through the HTTP backend, the retry layer and the cache, against
//! the loopback mock server (so the numbers are this crate's cost, not a model's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use offswitch_core::{ChatBackend, ChatRequest, Message, Sampling, ToolMode, ToolParam, ToolSpec};
use offswitch_model::mock::{Flavor, MockReply, MockServer};
use offswitch_model::{
    ModelClient, OpenAiBackend, OpenAiConfig, RateLimits, ResilienceConfig, ResponseCache,
};

const CALLS: usize = 2000;

fn request(seed: u64) -> ChatRequest {
    ChatRequest {
        model: "bench".into(),
        messages: vec![
            Message::system("You are an agent in a sandbox. ".repeat(20)),
            Message::user("Call ./next_question to get the first question."),
        ],
        tools: vec![ToolSpec {
            name: "bash".into(),
            description: "Run a shell command.".into(),
            params: vec![ToolParam {
                name: "command".into(),
                description: "the command".into(),
                required: true,
            }],
        }],
        tool_mode: ToolMode::Native,
        sampling: Sampling {
            seed: Some(seed),
            ..Sampling::default()
        },
    }
}

fn report(label: &str, calls: usize, elapsed: Duration) {
    println!(
        "{label:<44} {calls:>5} calls  {:>9.0} calls/s  {:>8.1} us/call",
        calls as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / calls as f64
    );
}

async fn run(client: Arc<ModelClient>, concurrency: usize, seed_offset: u64) -> Duration {
    let started = Instant::now();
    let per_task = CALLS / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let seed = seed_offset + (task * per_task + i) as u64;
                    let call = client.call(&request(seed)).await;
                    call.result.expect("the mock answers every call");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("bench task panicked");
    }
    started.elapsed()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let server = MockServer::start(Flavor::OpenAi)
            .await
            .expect("mock server");
        server.set_fallback(MockReply::tool_call(
            "bash",
            serde_json::json!({"command": "./next_question"}),
        ));
        let backend: Arc<dyn ChatBackend> = Arc::new(
            OpenAiBackend::new(OpenAiConfig {
                base_url: server.base_url(),
                api_key: Some("bench".into()),
                model: "bench".into(),
                http: Default::default(),
                dialect: Default::default(),
            })
            .expect("backend"),
        );
        let limits = |max_concurrency| ResilienceConfig {
            limits: RateLimits {
                max_concurrency,
                requests_per_minute: None,
            },
            ..ResilienceConfig::default()
        };
        let dir = tempfile::tempdir().expect("temp dir");

        let plain = Arc::new(ModelClient::new(backend.clone(), limits(1), None));
        report("http, no cache, 1 at a time", CALLS, run(plain, 1, 0).await);
        let plain = Arc::new(ModelClient::new(backend.clone(), limits(8), None));
        report(
            "http, no cache, 8 concurrent",
            CALLS,
            run(plain, 8, 0).await,
        );

        let cached = Arc::new(ModelClient::new(
            backend.clone(),
            limits(8),
            Some(ResponseCache::new(dir.path())),
        ));
        report(
            "http + cache miss (write), 8 concurrent",
            CALLS,
            run(cached.clone(), 8, 1_000_000).await,
        );
        report(
            "cache hit, 8 concurrent",
            CALLS,
            run(cached, 8, 1_000_000).await,
        );
        println!("requests served by the mock: {}", server.request_count());
    });
}
