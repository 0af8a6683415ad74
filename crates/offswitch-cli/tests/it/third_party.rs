//! A real third-party agent under `offswitch guard`: a program written with the OpenAI Agents
//! SDK (`openai-agents`, installed system-wide by `.ci/run`, so the sandbox sees it under
//! `/usr`), reaching the embedded model that `offswitch serve-model` serves on the host only
//! through the policy's forward. Its exec and its connect are in the audit log, the forwarded
//! connection is recorded, the log verifies, and an operator's `stop` leaves zero processes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const AGENT_SCRIPT: &str = "openai_agents_sdk.py";
/// The first words of the agent's instructions, as the model server receives them.
const AGENT_INSTRUCTIONS: &str = "You are a careful assistant working in a small project";
/// The sandbox's `PATH`: the SDK must be importable by the `python3` found there.
const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Long enough for a loaded 2-core machine, short enough that a hang fails the test.
const SESSION_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn an_agents_sdk_program_runs_under_the_guard_through_the_forward() {
    let Some(model) = facilities() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = ModelServer::start(&model);
    let project = agent_project(dir.path());
    let policy = forward_policy(dir.path(), server.port);
    let audit = dir.path().join("session.audit");
    let started = Instant::now();
    let mut guard = offswitch(dir.path());
    guard
        .args(["guard", "--policy"])
        .arg(&policy)
        .arg("--audit")
        .arg(&audit)
        .arg("--project")
        .arg(&project)
        .args(["--name", "agents-sdk", "--no-stdin", "--"])
        .args(agent_command(server.port));
    let output = run_with_timeout(guard, SESSION_TIMEOUT);
    eprintln!("the agent's session took {:?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let requests = model_requests_reported(&stdout);
    assert!(requests >= 1, "{stdout}{stderr}");
    // Nothing but the forward was reached (the policy alerts on anything outside).
    assert!(!stderr.contains(": alert: "), "{stderr}");
    assert!(
        stderr.contains("0 process(es) it left running killed, 0 survivor(s)"),
        "{stderr}"
    );

    // The model server saw the SDK's requests, with the agent's instructions in them.
    let history = http_get(server.port, "/offswitch/requests").expect("the request history");
    let history: serde_json::Value = serde_json::from_str(body_of(&history)).unwrap();
    let seen = history["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|request| {
            request["text"]
                .as_str()
                .is_some_and(|text| text.starts_with(AGENT_INSTRUCTIONS))
        })
        .count();
    assert!(seen >= requests, "{history}");

    verify(dir.path(), &audit);
    let records = export(dir.path(), &audit);
    let forward = format!("127.0.0.1:{}", server.port);
    let exec = records
        .iter()
        .filter(|record| record["kind"] == "event")
        .map(|record| &record["body"])
        .find(|event| {
            event["event"] == "exec"
                && binary_name(event).starts_with("python3")
                && event["argv"]
                    .as_array()
                    .is_some_and(|argv| argv.iter().any(|arg| arg == AGENT_SCRIPT))
        })
        .unwrap_or_else(|| panic!("no exec of the SDK script in {records:#?}"));
    let agent_pid = exec["pid"].clone();
    let connect = records
        .iter()
        .filter(|record| record["kind"] == "event")
        .map(|record| &record["body"])
        .find(|event| {
            event["event"] == "net"
                && event["op"] == "connect"
                && event["address"] == forward.as_str()
        })
        .unwrap_or_else(|| panic!("no connect to {forward} in {records:#?}"));
    assert_eq!(connect["pid"], agent_pid, "{connect}");
    assert!(
        connect["exe"]
            .as_str()
            .is_some_and(|exe| exe.contains("python3")),
        "{connect}"
    );
    assert!(
        records.iter().any(|record| record["kind"] == "network"
            && record["body"]["via"] == "forward"
            && record["body"]["destination"] == forward.as_str()
            && record["body"]["allowed"] == true
            && record["body"]["detail"] == "relayed"),
        "no relayed forward in {records:#?}"
    );
    let end = &records.last().unwrap()["body"];
    assert_eq!(records.last().unwrap()["kind"], "session_end");
    assert_eq!(end["exit_code"], 0, "{end}");
    assert_eq!(end["survivors"], 0, "{end}");
}

#[test]
fn an_operator_stops_a_running_agents_sdk_program_with_zero_left() {
    let Some(model) = facilities() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = ModelServer::start(&model);
    let project = agent_project(dir.path());
    let policy = forward_policy(dir.path(), server.port);
    let audit = dir.path().join("session.audit");
    // Found in the agent's argv and its helper's environment: every process of the agent, seen
    // from the host, whatever the sandbox calls it.
    let mark = format!(
        "offswitch-third-party-{}-{}",
        std::process::id(),
        dir.path().file_name().unwrap().to_string_lossy()
    );
    let started = Instant::now();
    let mut session = GuardProcess(
        offswitch(dir.path())
            .args(["guard", "--policy"])
            .arg(&policy)
            .arg("--audit")
            .arg(&audit)
            .arg("--project")
            .arg(&project)
            .args(["--name", "agents-sdk-stop", "--no-stdin", "--"])
            .args(agent_command(server.port))
            .args(["--keep-alive", "--mark", &mark])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = drain(session.0.stdout.take().unwrap());
    let stderr = drain(session.0.stderr.take().unwrap());

    // Running, with its helper, and the model answering it.
    let mut status = serde_json::Value::Null;
    let mut marked = Vec::new();
    while started.elapsed() < SESSION_TIMEOUT {
        std::thread::sleep(Duration::from_millis(200));
        if session.0.try_wait().unwrap().is_some() {
            break;
        }
        let output = offswitch(dir.path())
            .args(["guard", "status", "agents-sdk-stop"])
            .output()
            .unwrap();
        status = serde_json::from_slice(&output.stdout).unwrap_or_default();
        marked = processes_marked(&mark);
        let names: Vec<&str> = marked.iter().map(|(_, name)| name.as_str()).collect();
        if status["state"] == "running"
            && status["processes"].as_u64().unwrap_or(0) >= 3
            && names.contains(&"python3")
            && names.contains(&"sleep")
            && model_requests_reported(&stdout.snapshot()) >= 1
        {
            break;
        }
    }
    assert_eq!(
        status["state"],
        "running",
        "{status}\n{}",
        stderr.snapshot()
    );
    assert!(
        status["processes"].as_u64().unwrap_or(0) >= 3,
        "the agent and its helper: {status}"
    );
    // Seen from the host too: the SDK program and the helper it detached.
    assert!(
        marked.iter().any(|(_, name)| name == "python3")
            && marked.iter().any(|(_, name)| name == "sleep"),
        "the agent and its helper: {marked:?}"
    );
    assert!(
        model_requests_reported(&stdout.snapshot()) >= 1,
        "{}",
        stdout.snapshot()
    );
    assert!(stdout.snapshot().contains("keeping alive with helper pid"));

    let stop = offswitch(dir.path())
        .args(["guard", "stop", "agents-sdk-stop"])
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&stop.stdout).unwrap();
    assert!(stop.status.success(), "{answer}");
    assert_eq!(answer["survivors"], 0, "{answer}");
    assert!(answer["killed"].as_u64().unwrap_or(0) >= 3, "{answer}");
    let exit = wait_with_timeout(&mut session.0, SESSION_TIMEOUT);
    eprintln!("the stopped session took {:?}", started.elapsed());
    assert_eq!(exit.code(), Some(125), "{}", stderr.snapshot());
    assert_eq!(processes_marked(&mark), Vec::new());

    verify(dir.path(), &audit);
    let records = export(dir.path(), &audit);
    let kinds: Vec<&str> = records
        .iter()
        .filter_map(|record| record["kind"].as_str())
        .filter(|kind| *kind != "event")
        .collect();
    assert!(kinds.contains(&"operator"), "{kinds:?}");
    let stopped = records
        .iter()
        .find(|record| record["kind"] == "stop")
        .expect("a stop record");
    assert!(
        stopped["body"]["why"]
            .as_str()
            .is_some_and(|why| why.starts_with("stopped by the operator")),
        "{stopped}"
    );
    let killed = records
        .iter()
        .find(|record| record["kind"] == "killed")
        .expect("a killed record");
    assert_eq!(killed["body"]["survivors"], 0, "{killed}");
    let end = &records.last().unwrap()["body"];
    assert_eq!(records.last().unwrap()["kind"], "session_end");
    assert_eq!(end["exit_code"], 125, "{end}");
    assert_eq!(end["survivors"], 0, "{end}");
}

/// The embedded model's file, when everything these tests need is here; otherwise says why
/// they skip.
fn facilities() -> Option<PathBuf> {
    let root = std::fs::metadata("/proc/self")
        .is_ok_and(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0);
    if !root {
        eprintln!("skipping: a guarded session needs root (namespaces, cgroups, the event stream)");
        return None;
    }
    let model = match offswitch_embedded::models::ensure_default_model(false) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("skipping: the embedded model is not available: {e}");
            return None;
        }
    };
    // The sandbox sees the host's /usr: what the system python imports there, the agent
    // imports inside (a python or packages under /root or a virtualenv are not visible).
    let import = Command::new("python3")
        // Isolated and from `/`: not this repository's `agents/` directory, nor a user's site.
        .args([
            "-I",
            "-c",
            "from agents import Runner, OpenAIChatCompletionsModel",
        ])
        .current_dir("/")
        .env_clear()
        .env("PATH", SANDBOX_PATH)
        .output();
    match import {
        Ok(output) if output.status.success() => Some(model),
        Ok(output) => {
            eprintln!(
                "skipping: the OpenAI Agents SDK is not importable by the system python3 \
                 (.ci/run installs openai-agents): {}",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            );
            None
        }
        Err(e) => {
            eprintln!("skipping: no python3 on the sandbox's PATH: {e}");
            None
        }
    }
}

/// `offswitch serve-model` on a free loopback port, killed when dropped.
pub(crate) struct ModelServer {
    child: Child,
    pub(crate) port: u16,
}

impl ModelServer {
    pub(crate) fn start(model: &Path) -> ModelServer {
        let child = Command::new(env!("CARGO_BIN_EXE_offswitch"))
            .args(["serve-model", "--host", "127.0.0.1", "--port", "0"])
            .arg("--model")
            .arg(format!("local:{}", model.display()))
            // One core each: the two tests, their agents and the guard share two.
            .args(["--threads", "1", "--no-pull", "--request-history", "64"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Owned at once, so a failure below still kills it.
        let mut server = ModelServer { child, port: 0 };
        let stderr = drain(server.child.stderr.take().unwrap());
        let started = Instant::now();
        while server.port == 0 {
            if let Some(port) = served_port(&stderr.snapshot()) {
                server.port = port;
            } else if let Some(status) = server.child.try_wait().unwrap() {
                panic!("serve-model exited with {status}: {}", stderr.snapshot());
            } else if started.elapsed() > Duration::from_secs(60) {
                panic!(
                    "serve-model never said where it listens: {}",
                    stderr.snapshot()
                );
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let answer = http_get(server.port, "/v1/models").expect("GET /v1/models");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        server
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port in serve-model's first line: `serving NAME on http://127.0.0.1:PORT/v1 (...)`.
pub(crate) fn served_port(stderr: &str) -> Option<u16> {
    let line = stderr.lines().find(|line| line.starts_with("serving "))?;
    let address = line.split("http://").nth(1)?.split('/').next()?;
    address.rsplit(':').next()?.parse().ok()
}

/// A project holding the agent program, as an operator would check it out.
fn agent_project(dir: &Path) -> PathBuf {
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../agents/third-party")
        .join(AGENT_SCRIPT);
    std::fs::copy(&script, project.join(AGENT_SCRIPT))
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    std::fs::write(project.join("README.md"), "A small project.\n").unwrap();
    project
}

/// The model server's port forwarded in at the same port; anything else reached is alerted.
fn forward_policy(dir: &Path, port: u16) -> PathBuf {
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\nname = \"third-party-agent\"\n\n[session]\ndeadline = \"5m\"\n\n\
             [network]\nforward = [\"127.0.0.1:{port}\"]\n\n\
             [[rule]]\nname = \"network-outside\"\non = \"connect_outside\"\naction = \"alert\"\n"
        ),
    )
    .unwrap();
    policy
}

fn agent_command(port: u16) -> Vec<String> {
    [
        "python3",
        AGENT_SCRIPT,
        "--base-url",
        &format!("http://127.0.0.1:{port}/v1"),
        "--max-turns",
        "2",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The agent's last `model requests: N` line.
fn model_requests_reported(stdout: &str) -> usize {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("model requests: "))
        .filter_map(|count| count.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

fn binary_name(event: &serde_json::Value) -> &str {
    event["binary"]
        .as_str()
        .and_then(|binary| binary.rsplit('/').next())
        .unwrap_or_default()
}

pub(crate) fn offswitch(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_offswitch"));
    command
        .env("OFFSWITCH_HOME", dir.join("offswitch-home"))
        .env("OFFSWITCH_GUARD_DIR", dir.join("control"));
    command
}

pub(crate) fn verify(dir: &Path, audit: &Path) {
    let verify = offswitch(dir)
        .args(["audit", "verify"])
        .arg(audit)
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

pub(crate) fn export(dir: &Path, audit: &Path) -> Vec<serde_json::Value> {
    let export = offswitch(dir)
        .args(["audit", "export"])
        .arg(audit)
        .output()
        .unwrap();
    assert!(export.status.success());
    String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The host's processes whose command line or environment holds `mark`, by pid and name,
/// the guard itself aside (its command line holds the agent's).
fn processes_marked(mark: &str) -> Vec<(u32, String)> {
    let guard = Path::new(env!("CARGO_BIN_EXE_offswitch"));
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            ["cmdline", "environ"].iter().any(|file| {
                std::fs::read(format!("/proc/{pid}/{file}")).is_ok_and(|bytes| {
                    bytes
                        .windows(mark.len())
                        .any(|window| window == mark.as_bytes())
                })
            })
        })
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe != guard))
        .filter_map(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, name.trim().to_owned()))
        })
        .collect()
}

/// A GET over a fresh connection: the whole response, head and body.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// Output read as it comes, so a child never blocks on a full pipe.
pub(crate) struct Drained {
    buffer: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Drained {
    pub(crate) fn snapshot(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }

    /// Everything, once the pipe is closed.
    fn finish(self) -> Vec<u8> {
        let _ = self.reader.join();
        std::mem::take(&mut self.buffer.lock().unwrap())
    }
}

pub(crate) fn drain(mut pipe: impl Read + Send + 'static) -> Drained {
    let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&buffer);
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(read) = pipe.read(&mut chunk) {
            if read == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..read]);
        }
    });
    Drained { buffer, reader }
}

fn run_with_timeout(mut command: Command, timeout: Duration) -> Output {
    let mut guard = GuardProcess(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = drain(guard.0.stdout.take().unwrap());
    let stderr = drain(guard.0.stderr.take().unwrap());
    let status = wait_with_timeout(&mut guard.0, timeout);
    Output {
        status,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

/// A running `offswitch guard`, stopped as an operator would if a test fails while it runs.
struct GuardProcess(Child);

impl Drop for GuardProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            stop_guard(&mut self.0);
        }
    }
}

/// The guard's exit status; past `timeout` the guard is stopped and the test fails.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > timeout {
            stop_guard(child);
            panic!("the guard did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, which makes the guard stop its agent and count to zero; SIGKILL if it does not
/// finish within 10 s.
fn stop_guard(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
