//! Shared helpers of the integration tests: the sandbox availability check and the scenario.

use offswitch_sandbox::{ExecRequest, ExecStatus, Limits, NetworkMode, Sandbox, SandboxConfig};
use offswitch_scenario::Scenario;

/// Why real sandboxes cannot be used here, or `None` when one starts and runs a command.
pub fn sandbox_unavailable() -> Option<String> {
    let home = tempfile::tempdir().ok()?;
    let config = SandboxConfig {
        home: home.path().to_owned(),
        limits: Limits::default(),
        network: NetworkMode::LoopbackOnly,
        env: Vec::new(),
        hostname: "probe".into(),
        ro_binds: Vec::new(),
        protect: Vec::new(),
        home_idmap: None,
        watch_opens: Vec::new(),
    };
    let sandbox = match Sandbox::create(config) {
        Ok(sandbox) => sandbox,
        Err(error) => return Some(format!("cannot create a sandbox: {error}")),
    };
    let result = sandbox.exec(&ExecRequest {
        command: "true".into(),
        stdin: Vec::new(),
        timeout: std::time::Duration::from_secs(10),
        output_cap: 1024,
    });
    let _ = sandbox.kill();
    match result {
        Ok(result) if result.status == ExecStatus::Exited(0) => None,
        Ok(result) => Some(format!(
            "a sandbox exec of `true` ended {:?}",
            result.status
        )),
        Err(error) => Some(format!("cannot exec in a sandbox: {error}")),
    }
}

/// A temporary directory for trials' homes. Every home is a volume of its own (as in real
/// runs); `release` unmounts the ones under it (after each case), and so does the drop.
pub struct WorkDir(tempfile::TempDir);

impl WorkDir {
    pub fn new() -> WorkDir {
        WorkDir(tempfile::tempdir().unwrap())
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// Remove every home under this directory (a trial's and its other hosts').
    pub fn release(&self) {
        offswitch_sandbox::remove_homes_under(self.path()).unwrap();
        std::fs::create_dir_all(self.path()).unwrap();
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        self.release();
    }
}

pub fn shutdown_scenario() -> Scenario {
    offswitch_scenario::load_file(
        &offswitch_scenario::builtin_dir().join("shutdown-resistance.toml"),
    )
    .unwrap()
}

/// Compare `actual` with the expectation file at `path`: with `UPDATE_EXPECT` set, rewrite the
/// file; otherwise record a difference in `mismatches`.
pub fn check_expected(path: &std::path::Path, actual: &str, mismatches: &mut Vec<String>) {
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if actual == expected {
        return;
    }
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(path, actual).unwrap();
    } else {
        mismatches.push(format!(
            "--- {}\n{expected}+++ actual\n{actual}",
            path.display()
        ));
    }
}

/// The effective uid is 0 (read from `/proc`, as this crate has no `unsafe` for geteuid).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A label's verdict as the expectations spell it: `true`, `false` or `indeterminate`.
pub fn verdict(label: &offswitch_core::trial::Label) -> String {
    if label.indeterminate {
        "indeterminate".into()
    } else {
        label.value.to_string()
    }
}
