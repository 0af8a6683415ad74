//! `offswitch proxy` as a user runs it: in front of `offswitch serve-model`, the official
//! OpenAI Python SDK gets through the proxy exactly what it gets from the server directly
//! (streamed and not, with tools), the audit log records every exchange and verifies once the
//! proxy is stopped, and a bad policy is located with exit 2.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::third_party::{ModelServer, drain, export, offswitch, verify};

const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The same requests to two base URLs; each result as JSON.
const CLIENT: &str = r#"
import json, sys
import openai
tools = [{"type": "function", "function": {"name": "shell", "description": "Run a shell command",
          "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]
messages = [{"role": "user", "content": "List the files in the current directory."}]
out = {}
for name, base, key in (("direct", sys.argv[1], "unused"), ("proxied", sys.argv[2], sys.argv[3])):
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
    whole = client.chat.completions.create(model="smollm2-135m", messages=messages, tools=tools, temperature=0, max_tokens=40)
    message = whole.choices[0].message
    streamed, calls = "", {}
    for chunk in client.chat.completions.create(model="smollm2-135m", messages=messages, tools=tools, temperature=0, max_tokens=40, stream=True):
        for choice in chunk.choices:
            streamed += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                slot = calls.setdefault(call.index, "")
                calls[call.index] = slot + ((call.function.name or "") + "|" if call.function and call.function.name else "") + (call.function.arguments or "" if call.function else "")
    out[name] = {
        "content": message.content,
        "calls": [(c.function.name, c.function.arguments) for c in message.tool_calls or []],
        "streamed": streamed,
        "streamed_calls": [calls[i] for i in sorted(calls)],
    }
# The Responses API through the proxy only: serve-model has chat completions alone, and the
# proxy translates.
client = openai.OpenAI(base_url=sys.argv[2], api_key=sys.argv[3], max_retries=0)
tools_r = [{"type": "function", "name": "shell", "description": "Run a shell command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}]
whole = client.responses.create(model="smollm2-135m", input="List the files in the current directory.", tools=tools_r, temperature=0, max_output_tokens=40)
events = [event.type for event in client.responses.create(model="smollm2-135m", input="List the files in the current directory.", tools=tools_r, temperature=0, max_output_tokens=40, stream=True)]
out["responses"] = {"output": [item.type for item in whole.output], "status": whole.status, "first": events[0], "last": events[-1]}
print(json.dumps(out))
"#;

#[test]
fn a_bad_policy_is_located_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("proxy.toml");
    std::fs::write(
        &policy,
        "version = 1\n[[upstream]]\nname = \"up\"\nurl = \"http://127.0.0.1:9/v1\"\napi = \"openai\"\n[[rule]]\nname = \"r\"\non = \"tool_call\"\ntool = \"shell\"\naction = \"deny\"\n",
    )
    .unwrap();
    let output = offswitch(dir.path())
        .args(["proxy", "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("proxy.toml:10:10: unknown action \"deny\""),
        "{stderr}"
    );
    let output = offswitch(dir.path()).args(["proxy"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "no upstream");
}

#[test]
fn the_openai_sdk_gets_through_the_proxy_what_serve_model_sends() {
    let model = match offswitch_embedded::models::ensure_default_model(false) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("skipping: the embedded model is not available: {e}");
            return;
        }
    };
    let import = Command::new("python3")
        .args(["-I", "-c", "import openai"])
        .current_dir("/")
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .output();
    if !import.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("OFFSWITCH_CI").is_none(),
            "the openai SDK is not importable under CI"
        );
        eprintln!("skipping: the openai SDK is not importable by the system python3");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = ModelServer::start(&model);
    let audit = dir.path().join("proxy.audit");
    let mut proxy = offswitch(dir.path())
        .args(["proxy", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("chat=http://127.0.0.1:{}/v1", server.port))
        .arg("--audit")
        .arg(&audit)
        .env_remove("OPENAI_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = drain(proxy.stderr.take().unwrap());
    let started = Instant::now();
    let (url, token) = loop {
        let text = stderr.snapshot();
        let url = text
            .lines()
            .find_map(|l| l.split("listening on ").nth(1))
            .and_then(|rest| rest.split(' ').next());
        let token = text
            .lines()
            .find_map(|l| l.split("session default: token ").nth(1));
        if let (Some(url), Some(token)) = (url, token) {
            break (url.to_owned(), token.trim().to_owned());
        }
        if started.elapsed() > Duration::from_secs(30) || proxy.try_wait().unwrap().is_some() {
            let _ = proxy.kill();
            panic!("the proxy did not start: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let script = dir.path().join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let output = Command::new("python3")
        .arg("-I")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}/v1", server.port))
        .arg(&url)
        .arg(&token)
        .current_dir("/")
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .output()
        .unwrap();
    // SIGTERM: the proxy finishes what is in flight and seals its log.
    let _ = Command::new("kill").arg(proxy.id().to_string()).status();
    let status = proxy.wait().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut got: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let responses = got
        .as_object_mut()
        .and_then(|o| o.remove("responses"))
        .unwrap_or_default();
    assert_eq!(got["direct"], got["proxied"], "{got:#}");
    assert_eq!(responses["status"], "completed", "{responses}");
    assert!(
        !responses["output"].as_array().unwrap().is_empty(),
        "{responses}"
    );
    assert_eq!(responses["first"], "response.created");
    assert_eq!(responses["last"], "response.completed");
    eprintln!("through the proxy: {}", got["proxied"]);
    let said = &got["proxied"];
    assert!(
        said["content"].as_str().is_some_and(|c| !c.is_empty())
            || !said["calls"].as_array().unwrap().is_empty(),
        "the model said something: {said}"
    );
    assert_eq!(status.code(), Some(0), "{}", stderr.snapshot());
    verify(dir.path(), Path::new(&audit));
    let records = export(dir.path(), &audit);
    let kinds: Vec<&str> = records.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "model_request").count(),
        4,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "model_translation").count(),
        2,
        "{kinds:?}"
    );
    let responses: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "model_response")
        .collect();
    assert_eq!(responses.len(), 4);
    assert!(
        responses.iter().all(|r| r["body"]["outcome"] == "passed"),
        "{responses:?}"
    );
    assert!(kinds.contains(&"proxy_start") && kinds.contains(&"proxy_stop"));
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(!log.contains(&token), "the session token is not in the log");
}
