//! `offswitch proxy`: the transparency checkpoint in front of model APIs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use offswitch_guard::control::{self, Op};
use offswitch_proxy::config::{Api, Config, KeySource, Limits, Upstream};

#[derive(clap::Args)]
pub struct Args {
    /// The proxy's configuration (upstreams, sessions, rules, budgets, limits): a TOML file,
    /// `docs/proxy.md`.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Where to listen (overrides the file's `listen`; default 127.0.0.1:4000).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// An upstream: `URL` or `openai=URL` (OpenAI-compatible, its key from OPENAI_API_KEY when
    /// set), `chat=URL` (the same, with chat completions only: Responses API requests are
    /// translated), `anthropic=URL` (its key from ANTHROPIC_API_KEY when set). Repeatable; tried
    /// after the file's.
    #[arg(long)]
    upstream: Vec<String>,
    /// Where the audit log goes (a new file). Default: `<offswitch home>/proxy/<time>.audit`.
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Also append every signed checkpoint of the audit log to this file.
    #[arg(long)]
    witness: Option<PathBuf>,
    /// Export a span per exchange over OTLP/HTTP to this collector (`http://127.0.0.1:4318`);
    /// overrides the file's `[telemetry] endpoint`.
    #[arg(long)]
    otlp: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = match &args.policy {
        Some(path) => offswitch_proxy::load(path).map_err(|e| match e {
            offswitch_proxy::ConfigError::Invalid { .. } => super::invalid_input(e.to_string()),
            e => super::invalid_input(e.to_string()),
        })?,
        None => Config {
            digest: String::new(),
            listen: None,
            upstreams: Vec::new(),
            mcp: Vec::new(),
            sessions: Vec::new(),
            rules: Vec::new(),
            budgets: Vec::new(),
            prices: Vec::new(),
            limits: Limits::default(),
            allow_server_tools: false,
            telemetry: None,
        },
    };
    for (index, text) in args.upstream.iter().enumerate() {
        config.upstreams.push(upstream_arg(index, text)?);
    }
    if let Some(endpoint) = &args.otlp {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        if !offswitch_proxy::config::endpoint_ok(&endpoint) {
            return Err(super::invalid_input(format!(
                "--otlp {endpoint:?}: an http(s) base URL (`http://127.0.0.1:4318`)"
            )));
        }
        match &mut config.telemetry {
            Some(telemetry) => telemetry.endpoint = endpoint,
            None => {
                config.telemetry = Some(offswitch_proxy::telemetry::TelemetryConfig {
                    endpoint,
                    service_name: "offswitch-proxy".into(),
                    capture_content: false,
                })
            }
        }
    }
    if config.upstreams.is_empty() {
        return Err(super::invalid_input(
            "no upstream: give `--upstream URL` or `[[upstream]]` in the --policy file",
        ));
    }
    let listen = args
        .listen
        .or(config.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4000)));
    let (routes, sessions) =
        offswitch_proxy::prepare(&config).map_err(super::missing_prerequisite)?;
    let home = super::guard::offswitch_home()?;
    let audit_path = match &args.audit {
        Some(path) => path.clone(),
        None => home.join("proxy").join(format!(
            "{}-{}.audit",
            offswitch_proxy::server::unix_ms(),
            std::process::id()
        )),
    };
    if let Some(parent) = audit_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let key = offswitch_audit::AuditKey::load_or_create_default()
        .map_err(|e| super::missing_prerequisite(format!("the audit key: {e}")))?;
    let mut options = offswitch_audit::Options {
        metadata: serde_json::json!({"proxy": listen.to_string()}),
        ..offswitch_audit::Options::default()
    };
    if let Some(witness) = &args.witness {
        options.witness = Some(offswitch_audit::Witness::File(witness.clone()));
    }
    let writer = offswitch_audit::AuditWriter::create(&audit_path, &key, options)
        .map_err(|e| super::invalid_input(format!("the audit log: {e}")))?;
    let recorder = Arc::new(offswitch_proxy::AuditRecorder::new(writer));
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| super::invalid_input(format!("failed to listen on {listen}: {e}")))?;
        let address = listener.local_addr()?;
        use offswitch_proxy::Recorder;
        recorder.record(
            "proxy_start",
            serde_json::json!({
                "listen": address.to_string(),
                "policy": args.policy.as_ref().map(|p| p.display().to_string()),
                "policy_sha256": config.digest,
                "upstreams": config.upstreams.iter().map(|u| serde_json::json!({"name": u.name, "url": u.url, "api": u.api.name(), "responses": u.responses, "keyed": !matches!(u.key, KeySource::None)})).collect::<Vec<_>>(),
                "sessions": sessions.iter().map(|s| serde_json::json!({"name": s.name, "guard": s.guard})).collect::<Vec<_>>(),
                "rules": config.rules.iter().map(|r| serde_json::json!({"name": r.name, "action": r.action.name()})).collect::<Vec<_>>(),
                "budgets": config.budgets.iter().map(|b| serde_json::json!({"name": b.name, "metric": b.metric.name(), "max": b.max, "per_ms": b.per.map(|p| p.as_millis() as u64), "action": b.action.name()})).collect::<Vec<_>>(),
            }),
        );
        eprintln!(
            "offswitch proxy: listening on http://{address}/v1 (chat completions, responses, messages); audit log {}",
            audit_path.display()
        );
        for session in &sessions {
            eprintln!(
                "offswitch proxy: session {}: token {}{}",
                session.name,
                session.token,
                session
                    .guard
                    .as_ref()
                    .map(|g| format!(" (a kill stops guard session {g})"))
                    .unwrap_or_default()
            );
        }
        let proxy = offswitch_proxy::Proxy::new(
            config,
            routes,
            sessions,
            Arc::clone(&recorder) as _,
            Arc::new(GuardTripper),
        )
        .map_err(super::missing_prerequisite)?;
        axum_serve(listener, Arc::clone(&proxy)).await?;
        if let Err(e) = tokio::task::spawn_blocking(move || proxy.shutdown_telemetry()).await? {
            eprintln!("offswitch proxy: {e}");
        }
        anyhow::Ok(())
    });
    recorder.record_stop();
    let finished = recorder.finish();
    result?;
    if let Some(failed) = recorder.failed() {
        return Err(anyhow::anyhow!("the audit log failed: {failed}"));
    }
    finished.map_err(|e| anyhow::anyhow!("sealing the audit log: {e}"))?;
    eprintln!(
        "offswitch proxy: stopped; audit log {}",
        audit_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn axum_serve(
    listener: tokio::net::TcpListener,
    proxy: Arc<offswitch_proxy::Proxy>,
) -> anyhow::Result<()> {
    offswitch_proxy::serve_until(listener, proxy, super::guard::interrupted()).await?;
    Ok(())
}

/// `--upstream [openai=|anthropic=]URL`.
fn upstream_arg(index: usize, text: &str) -> anyhow::Result<Upstream> {
    let (api, url, responses) = match text.split_once('=') {
        Some(("openai", url)) => (Api::OpenAi, url, true),
        Some(("chat", url)) => (Api::OpenAi, url, false),
        Some(("anthropic", url)) => (Api::Anthropic, url, true),
        _ => (Api::OpenAi, text, true),
    };
    let mut file = format!(
        "version = 1\n[[upstream]]\nname = \"arg{}\"\nurl = {:?}\napi = \"{}\"\n",
        index + 1,
        url,
        api.name()
    );
    if !responses {
        file.push_str("responses = false\n");
    }
    let key = match api {
        Api::OpenAi => "OPENAI_API_KEY",
        Api::Anthropic => "ANTHROPIC_API_KEY",
    };
    if std::env::var_os(key).is_some_and(|v| !v.is_empty()) {
        file.push_str(&format!("key_env = \"{key}\"\n"));
    }
    let config = offswitch_proxy::parse(&file, std::path::Path::new("--upstream"))
        .map_err(|_| super::invalid_input(format!("--upstream {text:?}: an http(s) base URL, optionally after `openai=`, `chat=` or `anthropic=`")))?;
    Ok(config.upstreams.into_iter().next().expect("one upstream"))
}

/// A `kill` stops the proxy session's guard session through its control socket.
struct GuardTripper;

impl offswitch_proxy::Tripper for GuardTripper {
    fn trip(&self, session: &str, guard: Option<&str>, why: &str) {
        let Some(guard) = guard.map(str::to_owned) else {
            eprintln!(
                "offswitch proxy: session {session}: a kill rule fired ({why}), but no guard session is named to stop"
            );
            return;
        };
        eprintln!("offswitch proxy: session {session}: stopping guard session {guard}: {why}");
        tokio::spawn(async move {
            if let Err(e) = control::request(&control::control_dir(), &guard, Op::Stop).await {
                eprintln!("offswitch proxy: stopping guard session {guard} failed: {e}");
            }
        });
    }
}
