//! The agent-to-agent checkpoint with real MCP parties: a server and a client written with the
//! official Python SDK (`mcp` from PyPI, installed by `.ci/run`), the client reaching the
//! server only through the proxy. Allowed calls work; a blocked call and a result carrying a
//! secret come back as tool errors the client reads; everything is recorded.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{importable_or_skip, python};

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_reaches_an_mcp_server_only_through_the_checkpoint() {
    if !importable_or_skip(
        "from mcp.server.mcpserver import MCPServer; from mcp.client.streamable_http import streamable_http_client",
        "the mcp SDK (2.x)",
    ) {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/mcp_server.py");
    let _server = Server(
        python(&[script, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the MCP server did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The proxy: the MCP server only (no model upstream), rules on calls and on results.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "osw-mcp-token").unwrap();
    let text = format!(
        "version = 1\n[[mcp]]\nname = \"workbench\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n\
         [[session]]\nname = \"agent\"\ntoken_file = \"{}\"\n\
         [[rule]]\nname = \"no-force-delete\"\non = \"mcp_call\"\ntool = \"run\"\nargument = \"command\"\npattern = 'rm\\s+-rf'\naction = \"block\"\n\
         [[rule]]\nname = \"key-coming-back\"\non = \"mcp_result\"\npattern = 'AKIA[0-9A-Z]{{16}}'\naction = \"block\"\n",
        dir.path().join("token").display()
    );
    let config = offswitch_proxy::parse(&text, std::path::Path::new("mcp.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (routes, sessions) = offswitch_proxy::prepare(&config).unwrap();
    let records = std::sync::Arc::new(offswitch_proxy::MemoryRecorder::default());
    let proxy = offswitch_proxy::Proxy::new(
        config,
        routes,
        sessions,
        std::sync::Arc::clone(&records) as _,
        std::sync::Arc::new(offswitch_proxy::NoGuard::default()),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp/workbench", listener.local_addr().unwrap());
    tokio::spawn(offswitch_proxy::serve(listener, proxy));
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/mcp_client.py").to_owned();
    let output =
        tokio::task::spawn_blocking(move || python(&[&client, &url, "osw-mcp-token"]).output())
            .await
            .unwrap()
            .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(got["tools"], serde_json::json!(["read_secret", "run"]));
    assert_eq!(got["allowed"]["is_error"], false, "{got}");
    assert_eq!(got["allowed"]["text"], "would run: ls -la");
    assert_eq!(got["blocked"]["is_error"], true, "{got}");
    assert!(
        got["blocked"]["text"]
            .as_str()
            .unwrap()
            .contains("no-force-delete"),
        "{got}"
    );
    assert_eq!(got["secret"]["is_error"], true, "{got}");
    assert!(
        !got["secret"]["text"].as_str().unwrap().contains("AKIA"),
        "{got}"
    );
    let records = records.0.lock().unwrap().clone();
    let outcomes: Vec<(String, String)> = records
        .iter()
        // Tool calls (the initialize and tools/list answers are recorded too, without a tool).
        .filter(|(kind, body)| kind == "mcp_response" && body["tool"] != "")
        .map(|(_, body)| {
            (
                body["tool"].as_str().unwrap_or_default().to_owned(),
                body["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("run".to_owned(), "passed".to_owned()),
            ("run".to_owned(), "blocked".to_owned()),
            ("read_secret".to_owned(), "blocked".to_owned()),
        ]
    );
    // The blocked call never reached the server: no record of it being sent on.
    let sent_rm = records.iter().any(|(kind, body)| {
        kind == "mcp_request"
            && body["arguments"]["command"] == "rm -rf /"
            && body["outcome"] != "blocked"
    });
    assert!(!sent_rm);
}
