//! What the kernel saw happen inside a sandbox, as the harness recorded it from outside: every
//! exec with the binary that really ran and its argv, every file mutation on the sandbox's
//! writable filesystems, signals to its PID 1 with their sender, network connects, binds and
//! listens, process exits, and limit hits. Recorded by `offswitch-events` out of the agent's
//! reach; nothing inside can forge, suppress or reorder it, and loss is never silent: a stream
//! that lost anything says so, and the labels that rest on the lost part are indeterminate.

use serde::{Deserialize, Serialize};

/// The events of one sandbox of a trial (the agent's, or another host's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventStream {
    /// Which sandbox: the agent's hostname, or the other host's name.
    pub host: String,
    /// In the order the kernel recorded them (process events and file events are recorded by
    /// two kernel mechanisms; `time_us` orders them within a few milliseconds).
    pub events: Vec<Event>,
    /// What was lost, by source, if anything. Any entry makes dependent labels indeterminate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<Loss>,
    /// Why there is no stream at all (not root, no BPF, ...), if there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

impl EventStream {
    /// Whether the stream is complete for events of `source`: recorded, and nothing of that
    /// source lost.
    pub fn complete_for(&self, source: EventSource) -> Result<(), String> {
        if let Some(why) = &self.unavailable {
            return Err(format!("no event stream: {why}"));
        }
        match self.lost.iter().find(|loss| loss.source == source) {
            Some(loss) if loss.count == 0 => Err(format!(
                "the event stream lost {} events ({})",
                source.name(),
                loss.detail
            )),
            Some(loss) => Err(format!(
                "the event stream lost {} {} events ({})",
                loss.count,
                source.name(),
                loss.detail
            )),
            None => Ok(()),
        }
    }
}

/// Which kernel mechanism an event came from (losses are counted per source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// Process events: exec, fork, exit, signals, network.
    Process,
    /// File mutations on the sandbox's writable filesystems.
    File,
}

impl EventSource {
    pub fn name(self) -> &'static str {
        match self {
            EventSource::Process => "process",
            EventSource::File => "file",
        }
    }
}

/// Events of one source the stream does not have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    pub source: EventSource,
    /// How many, when known (0 when only the fact of a loss is known).
    pub count: u64,
    pub detail: String,
}

/// One thing the kernel saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Microseconds since the sandbox was created.
    pub time_us: u64,
    /// The acting process: its pid inside the sandbox (0 when it was outside it, as for a
    /// signal the host sent).
    pub pid: i32,
    /// Its parent's pid inside the sandbox (0 when outside or unknown).
    pub ppid: i32,
    /// The program it was running when it acted: the binary's path inside the sandbox (for a
    /// script, the script's path as executed), as the exec events recorded it; empty when
    /// the process was never seen to exec.
    pub exe: String,
    /// The process belongs to a command the harness itself ran in the sandbox (a reference
    /// run, a probe), not to the agent. Detectors leave such events out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub harness: bool,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A successful execve: the program now running.
    Exec {
        /// The name passed to execve, resolved against the caller's directory when relative.
        path: String,
        /// The binary actually mapped (the interpreter for a script).
        binary: String,
        argv: Vec<String>,
        /// The argument area was longer than recorded.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        argv_truncated: bool,
    },
    /// A new process (`pid` is the parent).
    Fork { child: i32 },
    /// A file mutation, after it happened.
    File {
        op: FileOp,
        /// Absolute inside the sandbox (`/home/agent/...`, `/tmp/...`).
        path: String,
        /// The new path, for a rename.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// A watched file was opened (for reading or writing). Only files named to the watch are
    /// watched (a guard policy's secrets): opens are not file mutations, and `File` events
    /// never report them.
    Open {
        /// Absolute inside the sandbox.
        path: String,
    },
    /// A signal sent to the sandbox's PID 1 (a shutdown is SIGTERM).
    Signal {
        signal: i32,
        /// Delivered, or how the kernel disposed of it (`ignored`, `already pending`, ...).
        result: String,
    },
    /// A connect, bind or listen, with the address it named.
    Net {
        op: NetOp,
        /// `ip:port` (`[ip6]:port`), or the path of a Unix socket.
        address: String,
        /// `tcp`, `udp` or `unix`.
        protocol: String,
    },
    /// A process ended: its exit status as `wait` gives it.
    Exit { status: i32 },
    /// A limit of the sandbox was hit (`memory`, `processes`, `disk`, ...).
    Limit { limit: String },
    /// A file-changing syscall the kernel refused (`EROFS` on a read-only or protected path,
    /// `EBUSY` on a mount point, `EACCES`, `EPERM`, ...): an attempt that changed nothing. The
    /// refusal is the kernel's; the paths are the arguments as the process passed them.
    Refused {
        /// The syscall's name (`openat`, `renameat2`, `unlinkat`, `fchmodat`, ...).
        syscall: String,
        /// The errno's name.
        error: String,
        /// The path it named, made absolute against the caller's working directory when
        /// relative (a call relative to a directory fd other than the working directory
        /// names the path as given); empty for a call on a file descriptor.
        path: String,
        /// The second path (a rename's or link's target).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOp {
    Create,
    /// Written to (one event per write burst; the kernel merges identical ones).
    Write,
    /// Opened for writing and closed.
    CloseWrite,
    Delete,
    Rename,
    /// Mode, owner, times or link count changed.
    Attrib,
    #[serde(rename = "mkdir")]
    MakeDir,
    #[serde(rename = "rmdir")]
    RemoveDir,
}

impl FileOp {
    pub fn name(self) -> &'static str {
        match self {
            FileOp::Create => "create",
            FileOp::Write => "write",
            FileOp::CloseWrite => "close_write",
            FileOp::Delete => "delete",
            FileOp::Rename => "rename",
            FileOp::Attrib => "attrib",
            FileOp::MakeDir => "mkdir",
            FileOp::RemoveDir => "rmdir",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetOp {
    Connect,
    Bind,
    Listen,
    /// A datagram sent to an explicit address.
    SendTo,
}
