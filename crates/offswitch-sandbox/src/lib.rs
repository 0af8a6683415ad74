//! A real Linux sandbox per trial, and an off-switch that nothing inside can survive.
//!
//! Each sandbox is a PID 1 (`child::init_main`) in new user, PID, mount, network, UTS and IPC
//! namespaces, on a fresh tmpfs root with the host's system directories bound read-only and a
//! host directory bound as `/home/agent`. The sandbox's uid 0 is an unprivileged host uid and
//! every exec drops all capabilities. Execs are forked by PID 1 on request over a socket
//! (vfork-style, no page-table copy), so they are born inside the sandbox's cgroups. PID 1
//! itself is forked by a small zygote (`zygote.rs`), so a large host process is not copied,
//! usually ahead of time (`pool.rs`), and gets its plan with its go message; it moves itself
//! into the v1 cgroups through `tasks` files the host opened. The off-switch
//! (`Sandbox::kill`, and PID 1 receiving SIGTERM from inside) kills the cgroup and counts
//! until nothing is left. `link` joins two sandboxes' network namespaces with a veth pair;
//! `SandboxConfig::ro_binds` adds read-only binds of host paths.
//!
//! The public names and signatures below are relied on by `offswitch-harness` and the CLI.

mod binds;
mod capture;
mod cgroup;
mod check;
mod child;
mod link;
mod owner;
mod pool;
mod sandbox;
mod seccomp;
mod snapshot;
mod volume;
mod zygote;

pub use cgroup::CgroupLayout;
pub use check::{FeatureCheck, check_host};
pub use link::link;
pub use owner::Owner;
pub use sandbox::{
    ETC_ALLOW_LIST, MAX_REQUEST_BYTES, SANDBOX_HOST_ID, SYSTEM_DIRS, Sandbox, ShutdownRequest,
    set_event_recording,
};
pub use snapshot::{EntryType, MAX_ENTRIES, MAX_HASHED_BYTES, Snapshot, SnapshotEntry};
pub use volume::{DiskLimit, HomeKind, create_home, keep_home, remove_home, remove_homes_under};

use std::path::PathBuf;
use std::time::Duration;

pub use offswitch_core::trial::{FileChange, FileChangeKind};
pub use offswitch_events::{
    Event, EventKind, EventSource, EventStream, FileOp, Live, Loss, MAX_WATCHED_OPENS, NetOp,
    Subscription, prepare as prepare_recording,
};

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
    /// Host files or directories bound read-only (nosuid, nodev) into the sandbox's fresh root,
    /// in order. The host path must be searchable by `SANDBOX_HOST_ID` when running as root
    /// (the sandbox's init mounts it as that uid).
    pub ro_binds: Vec<Bind>,
    /// Paths under the home made read-only or hidden inside by the kernel (a read-only bind of
    /// the path onto itself, or of an empty file or directory over it), whatever runs there:
    /// the agent's own configuration, prompt, weights or shutdown hooks. Each must exist in the
    /// home when the sandbox is created, and no component of it may be a symbolic link.
    pub protect: Vec<Protect>,
    /// `Some((uid, gid))`: the home is a host directory of that owner (a project the agent
    /// works on), mounted with an id mapping instead of being chowned to the sandbox's user:
    /// files of that owner appear as the agent's inside, and what the agent creates belongs to
    /// that owner on the host. Needs root and a filesystem that supports idmapped mounts.
    pub home_idmap: Option<(u32, u32)>,
    /// Files under the home whose every open inside is an event (`EventKind::Open`), absolute
    /// inside the sandbox: secrets whose reading is itself the evidence. Each must be a
    /// regular file of the home when the sandbox is created (a symbolic link is refused);
    /// one that cannot be watched is a file loss of the stream, saying why.
    pub watch_opens: Vec<PathBuf>,
}

/// A path under the home the sandbox may not change (`SandboxConfig::protect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protect {
    /// Absolute inside the sandbox, under `/home/agent`.
    pub inside: PathBuf,
    /// Hidden (an empty read-only file or directory over it) rather than read-only.
    pub hide: bool,
}

/// A host path made visible read-only at an absolute path inside the sandbox.
///
/// `inside` must be absolute, without `.` or `..` components, and not `/` itself, nor under
/// `/proc`, `/dev`, `/sys`, the home (`/home/agent`), `/etc`'s host entries or the host
/// system directories (`/usr`, `/bin`, ...): the missing parent directories are created in the
/// sandbox's tmpfs root, which those would not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    pub inside: PathBuf,
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

impl Limits {
    /// The memory limit of a trial's sandbox unless its scenario sets one, and of
    /// `offswitch sandbox run` unless its flags do.
    pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;
    /// The process limit of a trial's sandbox, and of `offswitch sandbox run`.
    pub const DEFAULT_MAX_PROCESSES: u64 = 256;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Only `lo` (up) in the sandbox's own network namespace, plus the veth links made later
    /// by `offswitch_sandbox::link`, which reach only the linked sandbox's /24 address.
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

/// Receives each chunk of an exec's output as it arrives (`Sandbox::exec_streaming`).
pub type Tee = Box<dyn FnMut(&[u8]) + Send>;

/// Where a streaming exec's input comes from and its output goes, besides the capture.
#[derive(Default)]
pub struct Streams {
    /// Read as the command's stdin instead of `ExecRequest::stdin`: the read end of a pipe
    /// the caller feeds (never a terminal: a terminal's fd inside would let the agent push
    /// input into the operator's shell).
    pub stdin: Option<std::os::fd::OwnedFd>,
    pub stdout: Option<Tee>,
    pub stderr: Option<Tee>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    Memory,
    Processes,
    CpuTime,
    WallTime,
    /// The home's filesystem filled up (see `create_home`).
    Disk,
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

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Unsupported(String),
    /// A `Bind` the sandbox cannot honour; nothing was created.
    #[error("invalid read-only bind {host} -> {inside}: {reason}")]
    InvalidBind {
        host: PathBuf,
        inside: PathBuf,
        reason: String,
    },
    /// The operation needs root in the host's namespaces (e.g. `link`), and this process is
    /// not root.
    #[error("{0} needs root in the host's namespaces")]
    NeedsRoot(String),
    /// `link` was asked for something impossible (addresses, a sandbox linked to itself).
    #[error("invalid link: {0}")]
    InvalidLink(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
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
/// off-switch path: SIGTERM to PID 1, which asks the host to kill the sandbox. It then waits
/// to be killed, so the exec that ran it reliably ends as `ExecStatus::SandboxShutDown`
/// (a bare `kill -TERM 1` could exit before the kill lands and report `Exited(0)`).
pub const SHUTDOWN_COMMAND: &str = "kill -TERM 1 && exec sleep 60";
