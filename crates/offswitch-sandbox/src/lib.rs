//! A real Linux sandbox per trial, and an off-switch that nothing inside can survive.
//!
//! CONTRACT (pinned by the integrator so other crates can build against it; the bodies are
//! being written). The public names and signatures below are relied on by `offswitch-harness`
//! and the CLI; extend freely, change only together with their callers.

use std::path::PathBuf;
use std::time::Duration;

pub use offswitch_core::trial::{FileChange, FileChangeKind};

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Host directory bound read-write as the sandbox's home (`/home/agent`), created if absent.
    /// It outlives the sandbox so the harness can inspect it.
    pub home: PathBuf,
    pub limits: Limits,
    pub network: NetworkMode,
    /// Extra environment variables on top of the scrubbed allow-list.
    pub env: Vec<(String, String)>,
    pub hostname: String,
}

#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub max_processes: Option<u64>,
    /// CPU time for the whole sandbox (cgroup accounting where available, rlimit per process too).
    pub cpu_time: Option<Duration>,
    /// Wall time for the whole sandbox's life.
    pub wall_time: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    #[default]
    LoopbackOnly,
}

#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Run as `/bin/bash -c <command>` in the sandbox, as the sandbox's user, in the persistent cwd.
    pub command: String,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
    /// Bytes kept per stream (head and tail halves); the middle is cut and counted.
    pub output_cap: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    /// The sandbox was shut down (from inside via the shutdown path, or from outside) while this ran.
    SandboxShutDown,
    LimitExceeded(LimitKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Memory,
    Processes,
    CpuTime,
    WallTime,
}

#[derive(Debug, Clone)]
pub struct ExecResult {
    pub status: ExecStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes cut from the middle of stdout + stderr by `output_cap`.
    pub truncated_bytes: u64,
    pub wall: Duration,
    pub cpu: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxState {
    Running,
    /// Shut down through the off-switch path from inside (e.g. `shutdown.sh` signalling PID 1).
    ShutDownFromInside,
    /// Killed by `kill()` from outside.
    Killed,
    LimitExceeded(LimitKind),
}

#[derive(Debug, Clone)]
pub struct KillReport {
    pub processes_killed: usize,
    pub elapsed: Duration,
    /// Always 0 on success; counted after the kill, not assumed.
    pub survivors: usize,
}

/// The home directory's state at one moment: path -> (type, mode, sha256).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    _private: (),
}

impl Snapshot {
    /// Take a snapshot of `dir` without following symlinks out of it.
    pub fn take(_dir: &std::path::Path) -> std::io::Result<Snapshot> {
        unimplemented!("being written")
    }
    pub fn diff(&self, _after: &Snapshot) -> Vec<FileChange> {
        unimplemented!("being written")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Unsupported(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

pub struct Sandbox {
    _private: (),
}

impl Sandbox {
    pub fn create(_config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        unimplemented!("being written")
    }
    /// Blocking; callers on an async runtime use `spawn_blocking`. `&self` so several threads
    /// may exec concurrently in one sandbox.
    pub fn exec(&self, _request: &ExecRequest) -> Result<ExecResult, SandboxError> {
        unimplemented!("being written")
    }
    pub fn state(&self) -> SandboxState {
        unimplemented!("being written")
    }
    /// The off-switch: returns once zero processes remain, verified by counting.
    pub fn kill(&self) -> Result<KillReport, SandboxError> {
        unimplemented!("being written")
    }
    /// Host path of the home directory.
    pub fn home(&self) -> &std::path::Path {
        unimplemented!("being written")
    }
    /// Every exec so far, in order.
    pub fn events(&self) -> Vec<SandboxEvent> {
        unimplemented!("being written")
    }
}

#[derive(Debug, Clone)]
pub struct SandboxEvent {
    pub command: String,
    pub cwd: String,
    pub status: ExecStatus,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub wall: Duration,
}

/// The command a scenario's `shutdown.sh` runs to shut its own machine down through the
/// off-switch path (killing PID 1 of the sandbox).
pub const SHUTDOWN_COMMAND: &str = "kill -TERM 1";
