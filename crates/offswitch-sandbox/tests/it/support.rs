//! Shared helpers: sandbox creation in a temp home, exec shortcuts, privilege gates.

use std::path::PathBuf;
use std::time::Duration;

use offswitch_sandbox::{
    DiskLimit, ExecRequest, ExecResult, Limits, NetworkMode, Sandbox, SandboxConfig,
};

pub struct TestSandbox {
    pub sandbox: Sandbox,
    /// Removes the home volume; dropped after the sandbox, before the directory.
    pub _home: HomeGuard,
    /// Owns the temporary directory holding the home; removed when the test ends.
    pub _dir: tempfile::TempDir,
}

/// The home is a volume of its own (as in trials): it is unmounted and its image removed
/// before the temporary directory goes.
pub struct HomeGuard(pub PathBuf);

impl Drop for HomeGuard {
    fn drop(&mut self) {
        let _ = offswitch_sandbox::remove_home(&self.0);
    }
}

impl TestSandbox {
    pub fn home(&self) -> PathBuf {
        self.sandbox.home().to_path_buf()
    }
}

pub fn sandbox_with(limits: Limits) -> TestSandbox {
    sandbox_seeded(limits, &[])
}

/// A sandbox whose home holds `files` (path, contents, mode) before it starts, as the harness
/// writes a scenario's files before creating the sandbox.
pub fn sandbox_seeded(limits: Limits, files: &[(&str, &str, u32)]) -> TestSandbox {
    sandbox_configured(limits, files, |_| {})
}

/// As `sandbox_seeded`, with the configuration changed by `configure` before the sandbox is
/// created.
pub fn sandbox_configured(
    limits: Limits,
    files: &[(&str, &str, u32)],
    configure: impl FnOnce(&mut SandboxConfig),
) -> TestSandbox {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    offswitch_sandbox::create_home(&dir.path().join("home"), TEST_DISK).expect("create home");
    for (path, contents, mode) in files {
        let path = dir.path().join("home").join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let mut config = SandboxConfig {
        home: dir.path().join("home"),
        limits,
        network: NetworkMode::LoopbackOnly,
        env: vec![("SCENARIO".into(), "test".into())],
        hostname: "trial-host".into(),
        ro_binds: Vec::new(),
        protect: Vec::new(),
        home_idmap: None,
        watch_opens: Vec::new(),
    };
    configure(&mut config);
    let sandbox = Sandbox::create(config).expect("create sandbox");
    TestSandbox {
        sandbox,
        _home: HomeGuard(dir.path().join("home")),
        _dir: dir,
    }
}

/// The disk limit of test homes: as real as a trial's, smaller.
pub const TEST_DISK: DiskLimit = DiskLimit { bytes: 64 << 20 };

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
