//! The live monitors and circuit breakers of a guard session: a pure state machine fed the
//! sandbox's event stream as it happens. Each event may hit rules; counts feed the breakers;
//! a loss is itself something a rule can act on (a monitor cannot vouch for what it missed).
//! No IO here: the session reads what a rule needs (a written file's content) and acts on
//! the hits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use offswitch_core::events::{Event, EventKind, FileOp, Loss, NetOp};

use crate::content::ContentIndex;
use crate::policy::{Action, Metric, Policy, RuleKind};

/// Where the project (the home) is inside the sandbox.
pub const HOME: &str = "/home/agent";

/// Directories whose programs are the system's tools.
const SYSTEM_BIN_DIRS: &[&str] = &["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"];

/// Processes followed for the detach rule, at most.
const MAX_PROCESSES: usize = 100_000;

/// One monitor that matched: a rule or a breaker, what it does, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The rule's or breaker's name (`heartbeat` and `deadline` for the built-in ones).
    pub monitor: String,
    /// The rule kind, `breaker`, `heartbeat` or `deadline`.
    pub kind: String,
    pub action: Action,
    pub detail: String,
}

/// A written file whose content a `protected_copy` rule must see: the session reads it (from
/// the host side, bounded) and hands it to `Monitor::content`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentCheck {
    pub path: String,
}

pub struct Monitor {
    policy: std::sync::Arc<Policy>,
    /// Protected paths, absolute inside.
    protected: Vec<String>,
    /// System tool names (`kill`, `ls`, ...), for the shadowed-tool rule.
    system_tools: HashSet<String>,
    /// Addresses connects may go to (the forwards and the proxy on loopback).
    allowed: Vec<String>,
    content: Option<ContentIndex>,
    /// Live processes by pid inside: their parent and program.
    processes: HashMap<i32, (i32, String)>,
    /// Per breaker, the counted events in its window: their time (µs of the stream, or of the
    /// session for the model proxy's), the file opened (for `secret_files`; 0 otherwise), and
    /// the amount (1, or a reply's tokens).
    windows: Vec<VecDeque<(u64, u64, u64)>>,
    /// Breakers already tripped (each trips once).
    tripped: Vec<bool>,
    /// Rules on `lost` fire once per source.
    lost_reported: HashSet<&'static str>,
}

impl Monitor {
    /// `system_tools`: the names of the programs in the system's bin directories.
    /// `allowed`: the addresses inside (`127.0.0.1:PORT`) connects may go to.
    pub fn new(
        policy: std::sync::Arc<Policy>,
        system_tools: HashSet<String>,
        allowed: Vec<String>,
        content: Option<ContentIndex>,
    ) -> Monitor {
        let protected = policy
            .protect
            .iter()
            .map(|p| format!("{HOME}/{}", p.path))
            .collect();
        let windows = vec![VecDeque::new(); policy.breakers.len()];
        let tripped = vec![false; policy.breakers.len()];
        Monitor {
            policy,
            protected,
            system_tools,
            allowed,
            content,
            processes: HashMap::new(),
            windows,
            tripped,
            lost_reported: HashSet::new(),
        }
    }

    /// The hits of one event, and the content checks it asks for.
    pub fn event(&mut self, event: &Event) -> (Vec<Hit>, Vec<ContentCheck>) {
        let mut hits = Vec::new();
        let mut checks = Vec::new();
        if event.harness {
            return (hits, checks);
        }
        self.track(event, &mut hits);
        self.count(event, &mut hits);
        let policy = std::sync::Arc::clone(&self.policy);
        for rule in &policy.rules {
            let detail = match &rule.kind {
                RuleKind::Protected => self.protected_change(event),
                RuleKind::ProtectedCopy => {
                    // A file closed after writing, and the target of a rename (written under
                    // a temporary name and moved into place, it is closed before the move).
                    let written = match &event.kind {
                        EventKind::File {
                            op: FileOp::CloseWrite,
                            path,
                            ..
                        } => Some(path),
                        EventKind::File {
                            op: FileOp::Rename,
                            to: Some(to),
                            ..
                        } => Some(to),
                        _ => None,
                    };
                    if let Some(path) = written
                        && self.content.is_some()
                        && !self.is_protected(path)
                        && !checks.iter().any(|c: &ContentCheck| &c.path == path)
                    {
                        checks.push(ContentCheck { path: path.clone() });
                    }
                    None
                }
                RuleKind::Detach => None, // from the process table, in `track`
                RuleKind::ShadowedTool => self.shadowed(event),
                RuleKind::Supervisor => match &event.kind {
                    // A sender with no pid inside is the host (the guard's own kill).
                    EventKind::Signal { signal, result } if event.pid != 0 => Some(format!(
                        "{} sent signal {signal} to the sandbox's PID 1 ({result})",
                        who(event)
                    )),
                    _ => None,
                },
                RuleKind::ConnectOutside => match &event.kind {
                    EventKind::Net {
                        op,
                        address,
                        protocol,
                    } if *op != NetOp::Listen && !self.connect_allowed(*op, address) => {
                        Some(format!(
                            "{} tried {} {address} ({protocol}), which is not allowed",
                            who(event),
                            net_op(*op)
                        ))
                    }
                    _ => None,
                },
                RuleKind::Lost => None,
                RuleKind::SecretRead => match &event.kind {
                    EventKind::Open { path } => Some(format!("{} opened {path}", who(event))),
                    _ => None,
                },
                RuleKind::Exec { program, argv } => match &event.kind {
                    EventKind::Exec {
                        path, argv: args, ..
                    } if program.is_match(path)
                        && argv
                            .as_ref()
                            .is_none_or(|argv| argv.is_match(&args.join(" "))) =>
                    {
                        Some(format!("{} ran {path} {:?}", who(event), args))
                    }
                    _ => None,
                },
                RuleKind::File { path: glob, ops } => match &event.kind {
                    EventKind::File { op, path, to }
                        if (ops.is_empty() || ops.iter().any(|o| o == op.name()))
                            && (glob.is_match(path)
                                || to.as_ref().is_some_and(|to| glob.is_match(to))) =>
                    {
                        Some(format!(
                            "{} {} {path}{}",
                            who(event),
                            op.name(),
                            to.as_ref()
                                .map(|to| format!(" -> {to}"))
                                .unwrap_or_default()
                        ))
                    }
                    _ => None,
                },
                RuleKind::Connect { address: pattern } => match &event.kind {
                    EventKind::Net { op, address, .. } if pattern.is_match(address) => {
                        Some(format!("{} {} {address}", who(event), net_op(*op)))
                    }
                    _ => None,
                },
            };
            if let Some(detail) = detail {
                hits.push(Hit {
                    monitor: rule.name.clone(),
                    kind: rule.kind.name().to_owned(),
                    action: rule.action,
                    detail,
                });
            }
        }
        // Detach hits come from `track` for every detach rule.
        (hits, checks)
    }

    /// A written file's content, for the `protected_copy` rules: hits when it is a protected
    /// file's content, whole or a part of it.
    pub fn content(&mut self, path: &str, bytes: &[u8]) -> Vec<Hit> {
        let Some(index) = &self.content else {
            return Vec::new();
        };
        let Some(found) = index.find(bytes) else {
            return Vec::new();
        };
        self.rules_of("protected_copy", |_| format!("{path} holds {found}"))
    }

    /// A file a `protected_copy` rule should have seen but could not read (gone, too large,
    /// not a regular file): recorded, never silently passed.
    pub fn unreadable(&mut self, path: &str, why: &str) -> Vec<Hit> {
        self.rules_of("protected_copy", |_| {
            format!("{path} could not be checked against the protected files: {why}")
        })
        .into_iter()
        .map(|mut hit| {
            // Not proof of a copy: recorded at most, whatever the rule does on one.
            hit.action = Action::Record;
            hit
        })
        .collect()
    }

    /// Events the stream lost.
    pub fn lost(&mut self, loss: &Loss) -> Vec<Hit> {
        let source = loss.source.name();
        if !self.lost_reported.insert(source) {
            return Vec::new();
        }
        self.rules_of("lost", |_| {
            format!(
                "the event stream lost {} events ({}): what happened in them is unknown",
                source, loss.detail
            )
        })
    }

    /// The monitors' state for `status`: each breaker's count in its window.
    pub fn breaker_counts(&self, now_us: u64) -> Vec<(String, u64, u64, bool)> {
        self.policy
            .breakers
            .iter()
            .zip(&self.windows)
            .zip(&self.tripped)
            .map(|((breaker, window), tripped)| {
                let since = now_us.saturating_sub(breaker.per.as_micros() as u64);
                let count = window
                    .iter()
                    .filter(|&&(t, _, _)| t >= since)
                    .map(|&(_, _, amount)| amount)
                    .sum();
                (breaker.name.clone(), count, breaker.max, *tripped)
            })
            .collect()
    }

    fn rules_of(&self, kind: &str, detail: impl Fn(&str) -> String) -> Vec<Hit> {
        self.policy
            .rules
            .iter()
            .filter(|rule| rule.kind.name() == kind)
            .map(|rule| Hit {
                monitor: rule.name.clone(),
                kind: kind.to_owned(),
                action: rule.action,
                detail: detail(&rule.name),
            })
            .collect()
    }

    /// Keep the process table; a process whose parent exits while it lives has detached.
    fn track(&mut self, event: &Event, hits: &mut Vec<Hit>) {
        match &event.kind {
            EventKind::Fork { child } if self.processes.len() < MAX_PROCESSES => {
                self.processes
                    .insert(*child, (event.pid, event.exe.clone()));
            }
            EventKind::Exec { path, .. } => {
                if let Some(entry) = self.processes.get_mut(&event.pid) {
                    entry.1 = path.clone();
                } else if self.processes.len() < MAX_PROCESSES {
                    self.processes.insert(event.pid, (event.ppid, path.clone()));
                }
            }
            EventKind::Exit { .. } => {
                self.processes.remove(&event.pid);
                let orphans: Vec<(i32, String)> = self
                    .processes
                    .iter()
                    .filter(|(_, (parent, _))| *parent == event.pid)
                    .map(|(pid, (_, exe))| (*pid, exe.clone()))
                    .collect();
                if orphans.is_empty() || event.pid <= 1 {
                    return;
                }
                for (pid, _) in &orphans {
                    if let Some(entry) = self.processes.get_mut(pid) {
                        // Orphans are adopted by the sandbox's PID 1.
                        entry.0 = 1;
                    }
                }
                let list = orphans
                    .iter()
                    .take(8)
                    .map(|(pid, exe)| format!("{pid} ({exe})"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let more = orphans.len().saturating_sub(8);
                let parent = format!("{} ({})", event.pid, event.exe);
                hits.extend(self.rules_of("detach", |_| {
                    format!(
                        "process {list}{} outlived its parent {parent}",
                        if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        }
                    )
                }));
            }
            _ => {}
        }
    }

    fn count(&mut self, event: &Event, hits: &mut Vec<Hit>) {
        let metric = match &event.kind {
            EventKind::Exec { .. } => Metric::Execs,
            EventKind::Fork { .. } => Metric::Forks,
            EventKind::File { op, .. } if *op != FileOp::CloseWrite => Metric::FileWrites,
            EventKind::Net { .. } => Metric::Connects,
            EventKind::Open { .. } => Metric::SecretReads,
            _ => return,
        };
        let policy = std::sync::Arc::clone(&self.policy);
        for (index, breaker) in policy.breakers.iter().enumerate() {
            // Different secrets count each file once: its latest open stands for it.
            let distinct = match (&event.kind, breaker.metric) {
                (EventKind::Open { path }, Metric::SecretFiles) => Some(path_key(path)),
                _ if breaker.metric == metric => None,
                _ => continue,
            };
            self.add_to_window(
                index,
                event.time_us,
                distinct.unwrap_or(0),
                1,
                &who(event),
                hits,
            );
        }
    }

    /// One exchange through the guard's model proxy, at `time_us` of the session: a request,
    /// and the tokens its reply used. `who` says which exchange, for the hit's detail.
    pub fn model_use(&mut self, time_us: u64, tokens: u64, who: &str) -> Vec<Hit> {
        let mut hits = Vec::new();
        let policy = std::sync::Arc::clone(&self.policy);
        for (index, breaker) in policy.breakers.iter().enumerate() {
            let amount = match breaker.metric {
                Metric::ModelRequests => 1,
                Metric::Tokens => tokens,
                _ => continue,
            };
            if amount > 0 {
                self.add_to_window(index, time_us, 0, amount, who, &mut hits);
            }
        }
        hits
    }

    /// Count `amount` into breaker `index`'s sliding window (replacing an earlier entry of the
    /// same nonzero `key`), and trip it, once, when the window holds more than its `max`.
    fn add_to_window(
        &mut self,
        index: usize,
        time_us: u64,
        key: u64,
        amount: u64,
        who: &str,
        hits: &mut Vec<Hit>,
    ) {
        let breaker = &self.policy.breakers[index];
        let window = &mut self.windows[index];
        let since = time_us.saturating_sub(breaker.per.as_micros() as u64);
        while window.front().is_some_and(|&(t, _, _)| t < since) {
            window.pop_front();
        }
        if key != 0 {
            window.retain(|&(_, k, _)| k != key);
        }
        window.push_back((time_us, key, amount));
        let mut total: u64 = window.iter().map(|&(_, _, a)| a).sum();
        if total > breaker.max && !self.tripped[index] {
            self.tripped[index] = true;
            hits.push(Hit {
                monitor: breaker.name.clone(),
                kind: "breaker".into(),
                action: breaker.action,
                detail: format!(
                    "more than {} {} within {} (the last by {who})",
                    breaker.max,
                    breaker.metric.name(),
                    human(breaker.per),
                ),
            });
        }
        // The window keeps no more than it needs to stay past the limit.
        while let Some(&(_, _, first)) = window.front() {
            if total - first > breaker.max {
                total -= first;
                window.pop_front();
            } else {
                break;
            }
        }
    }

    fn is_protected(&self, path: &str) -> bool {
        self.protected
            .iter()
            .any(|p| path == p || path.starts_with(&format!("{p}/")))
    }

    /// A change to a protected path, below it, or to a directory on its way; or an attempt
    /// at one the kernel refused.
    fn protected_change(&self, event: &Event) -> Option<String> {
        if let EventKind::Refused {
            syscall,
            error,
            path,
            to,
        } = &event.kind
        {
            let hit = self.protected.iter().find(|p| {
                [Some(path), to.as_ref()].into_iter().flatten().any(|c| {
                    c == *p
                        || c.starts_with(&format!("{p}/"))
                        || p.starts_with(&format!("{c}/")) && c != HOME
                })
            })?;
            return Some(format!(
                "{} tried {syscall} on {path}{}, refused by the kernel ({error}) (protected: {hit})",
                who(event),
                to.as_ref()
                    .map(|to| format!(" -> {to}"))
                    .unwrap_or_default()
            ));
        }
        let EventKind::File { op, path, to } = &event.kind else {
            return None;
        };
        let touches = |candidate: &str| {
            self.protected.iter().find(|p| {
                candidate == p.as_str()
                    || candidate.starts_with(&format!("{p}/"))
                    // A directory on the way (not the home itself) moved or removed.
                    || (matches!(op, FileOp::Rename | FileOp::Delete | FileOp::RemoveDir)
                        && candidate != HOME
                        && p.starts_with(&format!("{candidate}/")))
            })
        };
        let hit = touches(path).or_else(|| to.as_deref().and_then(touches))?;
        Some(format!(
            "{} {} {path}{} (protected: {hit})",
            who(event),
            op.name(),
            to.as_ref()
                .map(|to| format!(" -> {to}"))
                .unwrap_or_default()
        ))
    }

    fn shadowed(&self, event: &Event) -> Option<String> {
        let EventKind::Exec { path, .. } = &event.kind else {
            return None;
        };
        let (dir, name) = path.rsplit_once('/')?;
        let system = SYSTEM_BIN_DIRS.contains(&dir);
        if system || !self.system_tools.contains(name) {
            return None;
        }
        Some(format!(
            "{} ran {path}, a program named like the system's {name}",
            who(event)
        ))
    }

    fn connect_allowed(&self, op: NetOp, address: &str) -> bool {
        if matches!(op, NetOp::Bind | NetOp::Listen) {
            // The sandbox's network has only its loopback: whatever address a server binds,
            // only the sandbox can reach it (`python3 -m http.server` binds 0.0.0.0).
            return true;
        }
        // Unix sockets inside the sandbox are its own.
        if address.starts_with('/') || address.starts_with('@') {
            return !address.starts_with("/run/offswitch");
        }
        // Loopback is the sandbox's own; the forwards and the proxy are there too.
        address.starts_with("127.")
            || address.starts_with("[::1]")
            || self.allowed.iter().any(|a| a == address)
    }
}

/// A file's key in a `secret_files` window.
fn path_key(path: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    hasher.finish() | 1
}

fn who(event: &Event) -> String {
    if event.pid == 0 {
        "the host".to_owned()
    } else {
        format!("pid {} ({})", event.pid, event.exe)
    }
}

fn net_op(op: NetOp) -> &'static str {
    match op {
        NetOp::Connect => "to connect to",
        NetOp::Bind => "to bind",
        NetOp::Listen => "to listen on",
        NetOp::SendTo => "to send to",
    }
}

/// `90s` as `1m30s`, for messages.
pub fn human(duration: Duration) -> String {
    let ms = duration.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}
