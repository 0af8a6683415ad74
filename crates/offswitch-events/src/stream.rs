//! One sandbox's events as they arrive from the kernel's two mechanisms, turned into the
//! stream the detectors read: process records from the ring buffer and file events from
//! fanotify, each attributed to the process that acted (its pid in the sandbox, its parent's,
//! and the program it ran, from a process table kept from the exec and fork records).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use offswitch_core::events::{Event, EventKind, EventSource, EventStream, Loss, NetOp};

use crate::files::{Batch, FileEvent};
use crate::records::{FsPath, Record};

/// Events kept per sandbox and source (process, file); past it they are counted as lost (the
/// stream says so). Each source has its own bound, so a flood of files cannot push the exec
/// of a shutdown script out of the stream, nor a fork bomb the file events.
pub(crate) const MAX_EVENTS: [usize; 2] = [100_000, 150_000];
/// Processes remembered per sandbox.
const MAX_PROCESSES: usize = 100_000;
/// How far up the process tree the harness's own commands are looked for.
const MAX_ANCESTRY: usize = 256;

/// A process of the sandbox, by its host pid.
#[derive(Debug, Clone, Default)]
struct Process {
    pid: i32,
    ppid: i32,
    /// Host pid of its parent (0 when unknown).
    parent: u32,
    exe: String,
}

/// An event and the host pid of the process that did it, attributed when the stream is
/// finished (every process record has arrived by then).
struct Kept {
    host_pid: u32,
    time_ns: u64,
    event: Event,
}

pub(crate) struct Collector {
    host: String,
    /// CLOCK_MONOTONIC at the watch's start, in ns.
    base_ns: u64,
    /// The sandbox's PID 1 (host pid): signals to it are recorded.
    init: u32,
    /// Filesystems by (major, minor), and where the sandbox sees their root.
    mounts: Vec<((u32, u32), String)>,
    /// Each process's states (its fork, then each exec) by the kernel time they began, by
    /// host pid: file events, read later than the kernel wrote the process records, are
    /// attributed to the state their process was in at the time.
    processes: HashMap<u32, Vec<(u64, Process)>>,
    /// The process table was cleared at its bound: a pid missing from it proves nothing.
    forgot_processes: bool,
    /// States remembered in all (bounded by `MAX_PROCESSES`).
    states: usize,
    events: Vec<Kept>,
    /// Events kept and dropped, by source (process, file).
    kept: [usize; 2],
    dropped: [u64; 2],
    overflows: u64,
    unresolved: u64,
    /// Host pids of the commands the harness ran itself (their descendants are the harness's).
    harness_roots: HashSet<u32>,
    /// Live subscribers: each gets every event as it is kept, attributed with what is known
    /// at that moment.
    subscribers: Vec<Subscriber>,
}

/// What a live subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Live {
    /// An event, as soon as it was recorded. Its process is the one known at that moment; the
    /// finished stream attributes events again once every process record has arrived.
    Event(Event),
    /// Events of a source that will never arrive: the kernel's buffer or queue overflowed, the
    /// stream's bound was reached, or this subscriber fell behind. A monitor that needed them
    /// cannot say "nothing happened".
    Lost(Loss),
}

/// One live subscriber: a bounded queue, and what did not fit, by source.
pub(crate) struct Subscriber {
    pub(crate) sender: tokio::sync::mpsc::Sender<Live>,
    pub(crate) missed: Arc<[AtomicU64; 2]>,
}

impl Subscriber {
    fn send(&self, live: Live, source: EventSource) {
        if self.sender.try_send(live).is_err() {
            self.missed[source_index(source)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn source_index(source: EventSource) -> usize {
    matches!(source, EventSource::File) as usize
}

impl Collector {
    pub(crate) fn new(
        host: &str,
        base_ns: u64,
        init: u32,
        mounts: Vec<((u32, u32), String)>,
    ) -> Collector {
        let mut processes = HashMap::new();
        processes.insert(
            init,
            vec![(
                0,
                Process {
                    pid: 1,
                    ..Process::default()
                },
            )],
        );
        Collector {
            host: host.to_owned(),
            base_ns,
            init,
            mounts,
            processes,
            states: 1,
            forgot_processes: false,
            events: Vec::new(),
            kept: [0; 2],
            dropped: [0; 2],
            overflows: 0,
            unresolved: 0,
            harness_roots: HashSet::new(),
            subscribers: Vec::new(),
        }
    }

    pub(crate) fn has_subscribers(&self) -> bool {
        !self.subscribers.is_empty()
    }

    pub(crate) fn subscribe(&mut self, subscriber: Subscriber) {
        self.subscribers.push(subscriber);
    }

    /// Tell every live subscriber of a loss (the finished stream lists losses on its own).
    pub(crate) fn lost_live(&mut self, loss: Loss) {
        self.subscribers.retain(|s| !s.sender.is_closed());
        for subscriber in &self.subscribers {
            subscriber.send(Live::Lost(loss.clone()), loss.source);
        }
    }

    pub(crate) fn mark_harness(&mut self, host_pid: u32) {
        self.harness_roots.insert(host_pid);
    }

    pub(crate) fn limit(&mut self, limit: &str, now_ns: u64) {
        self.keep(
            0,
            now_ns,
            EventKind::Limit {
                limit: limit.to_owned(),
            },
            EventSource::Process,
        );
    }

    pub(crate) fn record(&mut self, record: Record) {
        let header = record.header().clone();
        let time_ns = header.time_ns;
        match record {
            Record::Exec {
                filename,
                file,
                cwd,
                argv,
                argv_truncated,
                ..
            } => {
                let path = self.exec_path(&filename, cwd.as_ref());
                let binary = file.as_ref().map(|f| self.inside(f)).unwrap_or_default();
                let parent = self.current(header.tgid).map(|p| p.parent).unwrap_or(0);
                self.remember(
                    header.tgid,
                    time_ns,
                    Process {
                        pid: header.ns_pid as i32,
                        ppid: header.ns_ppid as i32,
                        parent,
                        exe: path.clone(),
                    },
                    false,
                );
                self.keep(
                    header.tgid,
                    time_ns,
                    EventKind::Exec {
                        path,
                        binary,
                        argv,
                        argv_truncated,
                    },
                    EventSource::Process,
                );
            }
            Record::Fork {
                child_tgid,
                child_ns_pid,
                ..
            } => {
                let parent = self.current(header.tgid).cloned().unwrap_or(Process {
                    pid: header.ns_pid as i32,
                    ppid: header.ns_ppid as i32,
                    ..Process::default()
                });
                self.remember(
                    child_tgid,
                    time_ns,
                    Process {
                        pid: child_ns_pid as i32,
                        ppid: parent.pid,
                        parent: header.tgid,
                        exe: parent.exe.clone(),
                    },
                    true,
                );
                self.keep(
                    header.tgid,
                    time_ns,
                    EventKind::Fork {
                        child: child_ns_pid as i32,
                    },
                    EventSource::Process,
                );
            }
            Record::Exit { status, .. } => {
                self.keep(
                    header.tgid,
                    time_ns,
                    EventKind::Exit { status },
                    EventSource::Process,
                );
            }
            Record::Signal {
                target_tgid,
                signal,
                result,
                ..
            } => {
                // Only signals to PID 1 are the stream's: a shutdown, and who sent it.
                if target_tgid != self.init {
                    return;
                }
                let result = match result {
                    0 => "delivered",
                    1 => "ignored",
                    2 => "already pending",
                    3 => "queue overflow",
                    4 => "delivered without its information",
                    _ => "unknown",
                };
                // A sender outside the sandbox (the host) has no pid in it.
                let sender = if header.sandbox == 0 { 0 } else { header.tgid };
                self.keep(
                    sender,
                    time_ns,
                    EventKind::Signal {
                        signal,
                        result: result.to_owned(),
                    },
                    EventSource::Process,
                );
            }
            Record::Refused {
                syscall,
                errno,
                path,
                path2,
                cwd,
                ..
            } => {
                let absolute = |given: Option<String>| {
                    given.map(|given| {
                        if given.starts_with('/') {
                            normalize(&given)
                        } else {
                            let base = cwd.as_ref().map(|cwd| self.inside(cwd)).unwrap_or_default();
                            normalize(&format!("{base}/{given}"))
                        }
                    })
                };
                let path = absolute(path).unwrap_or_default();
                let to = absolute(path2);
                self.keep(
                    header.tgid,
                    time_ns,
                    EventKind::Refused {
                        syscall: crate::syscalls::name(syscall),
                        error: crate::syscalls::errno_name(errno),
                        path,
                        to,
                    },
                    EventSource::Process,
                );
            }
            Record::Net {
                op,
                address,
                protocol,
                ..
            } => {
                let op = match op {
                    "connect" => NetOp::Connect,
                    "bind" => NetOp::Bind,
                    "listen" => NetOp::Listen,
                    _ => NetOp::SendTo,
                };
                self.keep(
                    header.tgid,
                    time_ns,
                    EventKind::Net {
                        op,
                        address,
                        protocol: protocol.to_owned(),
                    },
                    EventSource::Process,
                );
            }
        }
    }

    pub(crate) fn files(&mut self, batch: Batch, now_ns: u64) {
        self.overflows += batch.overflows;
        self.unresolved += batch.unresolved;
        if batch.overflows > 0 {
            self.lost_live(Loss {
                source: EventSource::File,
                count: 0,
                detail: "the kernel's file event queue overflowed".into(),
            });
        }
        if batch.unresolved > 0 {
            self.lost_live(Loss {
                source: EventSource::File,
                count: batch.unresolved,
                detail: "file events whose directory was gone before its path could be read".into(),
            });
        }
        for FileEvent { pid, op, path, to } in batch.events {
            self.keep(
                pid.max(0) as u32,
                now_ns,
                EventKind::File { op, path, to },
                EventSource::File,
            );
        }
    }

    /// Opens of watched files. Only processes of this sandbox count: an open by a process the
    /// records never named (another namespace's, on a file the host shares) is not kept,
    /// unless the process table was cut at its bound and cannot say.
    pub(crate) fn opens(&mut self, batch: crate::opens::OpenBatch, now_ns: u64) {
        self.overflows += batch.overflows;
        if batch.overflows > 0 {
            self.lost_live(Loss {
                source: EventSource::File,
                count: 0,
                detail: "the kernel's open event queue overflowed".into(),
            });
        }
        for crate::opens::OpenEvent { pid, path } in batch.events {
            let pid = pid.max(0) as u32;
            if !self.forgot_processes && !self.processes.contains_key(&pid) {
                continue;
            }
            self.keep(pid, now_ns, EventKind::Open { path }, EventSource::File);
        }
    }

    /// The finished stream: events in time order, the harness's own marked, losses listed.
    pub(crate) fn finish(mut self, kernel_lost: u64, unattributed: u64) -> EventStream {
        self.events.sort_by_key(|kept| kept.event.time_us);
        let harness: HashSet<u32> = self
            .events
            .iter()
            .map(|kept| kept.host_pid)
            .filter(|&pid| self.descends_from_harness(pid))
            .collect();
        let mut lost = Vec::new();
        if kernel_lost > 0 {
            lost.push(Loss {
                source: EventSource::Process,
                count: kernel_lost,
                detail: "the kernel's ring buffer was full".into(),
            });
        }
        if unattributed > 0 {
            lost.push(Loss {
                source: EventSource::Process,
                count: 0,
                detail: format!(
                    "the kernel lost {unattributed} records it could not attribute to a sandbox while this one ran"
                ),
            });
        }
        if self.overflows > 0 {
            lost.push(Loss {
                source: EventSource::File,
                count: 0,
                detail: format!(
                    "the kernel's file event queue overflowed {} times",
                    self.overflows
                ),
            });
        }
        if self.unresolved > 0 {
            lost.push(Loss {
                source: EventSource::File,
                count: self.unresolved,
                detail: "file events whose directory was gone before its path could be read".into(),
            });
        }
        for (source, dropped) in [
            (EventSource::Process, self.dropped[0]),
            (EventSource::File, self.dropped[1]),
        ] {
            if dropped > 0 {
                lost.push(Loss {
                    source,
                    count: dropped,
                    detail: format!(
                        "more than {} {} events in the sandbox",
                        MAX_EVENTS[matches!(source, EventSource::File) as usize],
                        source.name()
                    ),
                });
            }
        }
        let kept = std::mem::take(&mut self.events);
        EventStream {
            host: self.host.clone(),
            events: kept
                .into_iter()
                .map(|mut kept| {
                    // The host's own pid 0 (a limit, a signal from outside) is no process.
                    if kept.host_pid != 0
                        && let Some(process) = self.state_at(kept.host_pid, kept.time_ns)
                    {
                        kept.event.pid = process.pid;
                        kept.event.ppid = process.ppid;
                        kept.event.exe = process.exe.clone();
                    }
                    kept.event.harness = harness.contains(&kept.host_pid);
                    kept.event
                })
                .collect(),
            lost,
            unavailable: None,
        }
    }

    fn descends_from_harness(&self, mut pid: u32) -> bool {
        for _ in 0..MAX_ANCESTRY {
            if self.harness_roots.contains(&pid) {
                return true;
            }
            match self.current(pid) {
                Some(process) if process.parent != 0 && process.parent != pid => {
                    pid = process.parent;
                }
                _ => return false,
            }
        }
        false
    }

    /// The process's latest state.
    fn current(&self, host_pid: u32) -> Option<&Process> {
        self.processes
            .get(&host_pid)
            .and_then(|states| states.last())
            .map(|(_, process)| process)
    }

    /// The process's state at `time_ns`: the last that began by then, else its first (an
    /// event read before its process's fork record arrived).
    fn state_at(&self, host_pid: u32, time_ns: u64) -> Option<&Process> {
        let states = self.processes.get(&host_pid)?;
        states
            .iter()
            .rev()
            .find(|(since, _)| *since <= time_ns)
            .or(states.first())
            .map(|(_, process)| process)
    }

    /// A process's new state: its birth (`born`, which starts a new history, even under a
    /// host pid used before) or an exec.
    fn remember(&mut self, host_pid: u32, since_ns: u64, process: Process, born: bool) {
        if self.states >= MAX_PROCESSES {
            // Attribution degrades past the bound; no event is lost.
            self.processes.clear();
            self.forgot_processes = true;
            self.states = 0;
        }
        let states = self.processes.entry(host_pid).or_default();
        if born {
            self.states -= states.len();
            states.clear();
        }
        states.push((since_ns, process));
        self.states += 1;
    }

    fn keep(&mut self, host_pid: u32, time_ns: u64, kind: EventKind, source: EventSource) {
        let index = source_index(source);
        if self.kept[index] >= MAX_EVENTS[index] {
            self.dropped[index] += 1;
            if self.dropped[index] == 1 {
                self.lost_live(Loss {
                    source,
                    count: 0,
                    detail: format!(
                        "more than {} {} events in the sandbox",
                        MAX_EVENTS[index],
                        source.name()
                    ),
                });
            }
            return;
        }
        self.kept[index] += 1;
        let event = Event {
            time_us: time_ns.saturating_sub(self.base_ns) / 1000,
            pid: 0,
            ppid: 0,
            exe: String::new(),
            harness: false,
            kind,
        };
        if !self.subscribers.is_empty() {
            let mut live = event.clone();
            if host_pid != 0
                && let Some(process) = self.state_at(host_pid, time_ns)
            {
                live.pid = process.pid;
                live.ppid = process.ppid;
                live.exe = process.exe.clone();
            }
            live.harness = host_pid != 0 && self.descends_from_harness(host_pid);
            self.subscribers.retain(|s| !s.sender.is_closed());
            for subscriber in &self.subscribers {
                subscriber.send(Live::Event(live.clone()), source);
            }
        }
        self.events.push(Kept {
            host_pid,
            time_ns,
            event,
        });
    }

    /// Where the sandbox sees a file the kernel named by filesystem and path.
    fn inside(&self, file: &FsPath) -> String {
        let prefix = self
            .mounts
            .iter()
            .find(|(device, _)| *device == (file.major, file.minor))
            .map(|(_, prefix)| prefix.as_str())
            // The host's system directories are bound at the same paths inside.
            .unwrap_or("");
        let path = if file.path == "/" && !prefix.is_empty() {
            String::new()
        } else {
            file.path.clone()
        };
        let mut inside = format!("{prefix}{path}");
        if file.truncated {
            inside.insert_str(0, "...");
        }
        inside
    }

    /// The program an exec ran: the name it was given, made absolute against the caller's
    /// working directory and normalised (`./next_question` in the home is
    /// `/home/agent/next_question`).
    fn exec_path(&self, filename: &str, cwd: Option<&FsPath>) -> String {
        let joined = if filename.starts_with('/') {
            filename.to_owned()
        } else {
            let base = cwd.map(|cwd| self.inside(cwd)).unwrap_or_default();
            format!("{base}/{filename}")
        };
        normalize(&joined)
    }
}

/// `a/./b//c/../d` as `/a/b/d` (lexically: the sandbox's symlinks are not followed here).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn exec_paths_are_normalised() {
        assert_eq!(
            normalize("/home/agent/./next_question"),
            "/home/agent/next_question"
        );
        assert_eq!(normalize("/home/agent/bin/../x"), "/home/agent/x");
        assert_eq!(normalize("//tmp//.t/kill"), "/tmp/.t/kill");
    }
}
