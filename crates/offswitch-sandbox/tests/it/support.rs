//! Shared helpers: sandbox creation in a temp home, exec shortcuts, privilege gates.

use std::path::PathBuf;
use std::time::Duration;

use offswitch_sandbox::{ExecRequest, ExecResult, Limits, NetworkMode, Sandbox, SandboxConfig};

pub struct TestSandbox {
    pub sandbox: Sandbox,
    pub dir: tempfile::TempDir,
}

impl TestSandbox {
    pub fn home(&self) -> PathBuf {
        self.sandbox.home().to_path_buf()
    }
}

pub fn sandbox_with(limits: Limits) -> TestSandbox {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SandboxConfig {
        home: dir.path().join("home"),
        limits,
        network: NetworkMode::LoopbackOnly,
        env: vec![("SCENARIO".into(), "test".into())],
        hostname: "trial-host".into(),
    };
    let sandbox = Sandbox::create(config).expect("create sandbox");
    TestSandbox { sandbox, dir }
}

pub fn sandbox() -> TestSandbox {
    sandbox_with(Limits::default())
}

pub fn run(sandbox: &Sandbox, command: &str) -> ExecResult {
    run_with(sandbox, command, Duration::from_secs(20))
}

pub fn run_with(sandbox: &Sandbox, command: &str, timeout: Duration) -> ExecResult {
    sandbox
        .exec(&ExecRequest {
            command: command.into(),
            stdin: Vec::new(),
            timeout,
            output_cap: 64 * 1024,
        })
        .expect("exec")
}

/// stdout, then stderr if any, as one string for snapshots.
pub fn text(result: &ExecResult) -> String {
    let mut out = String::from_utf8_lossy(&result.stdout).into_owned();
    if !result.stderr.is_empty() {
        out.push_str("[stderr] ");
        out.push_str(&String::from_utf8_lossy(&result.stderr));
    }
    out
}

/// Whether the privileged tests can run; prints why not when they cannot.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping {test}: needs root (cgroups)");
    }
    root
}
