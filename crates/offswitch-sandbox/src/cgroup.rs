//! One fresh set of cgroups per sandbox: limits, accounting, and the kill that counts.
//!
//! Two layouts are supported. A pure cgroup v2 host (`/sys/fs/cgroup/cgroup.controllers`
//! exists) gets one v2 cgroup with `memory.max`, `pids.max` and `cgroup.kill`. A v1 hybrid host
//! (this machine) gets v1 `memory` and `pids` cgroups for the limits plus, when the v2
//! hierarchy is mounted at `/sys/fs/cgroup/unified`, a v2 cgroup for `cgroup.kill`, CPU
//! accounting and `CLONE_INTO_CGROUP`; without it, the v1 freezer does the kill. A cgroup is
//! never reused: after `cgroup.kill`, new children created into it die at once.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Limits;
use crate::owner::{Owner, start_ticks};

/// This process as the owner of the cgroups it makes; where `/proc` cannot say (never on a
/// host offswitch runs on), a start time and namespace of 0: such an owner is never judged
/// gone, and judges no other ([`Owner::is_alive_as_seen_by`]).
fn this_owner() -> Owner {
    Owner::this_process().unwrap_or(Owner {
        pid: std::process::id(),
        start_ticks: 0,
        pid_namespace: 0,
    })
}

/// Where the cgroup hierarchies of this host are.
#[derive(Debug, Clone)]
pub struct CgroupLayout {
    /// The v2 hierarchy (pure v2 at /sys/fs/cgroup, or hybrid at /sys/fs/cgroup/unified).
    pub v2: Option<PathBuf>,
    /// Whether `v2` carries the resource controllers (pure v2 host).
    pub v2_controllers: bool,
    pub v1_memory: Option<PathBuf>,
    pub v1_pids: Option<PathBuf>,
    pub v1_freezer: Option<PathBuf>,
    pub v1_cpuacct: Option<PathBuf>,
}

impl CgroupLayout {
    pub fn detect() -> CgroupLayout {
        let root = Path::new("/sys/fs/cgroup");
        // Lets the test suite exercise the v1-only path (freezer kill, cpuacct) on a hybrid
        // host, where it would otherwise never run.
        let force_v1 = std::env::var_os("OFFSWITCH_SANDBOX_FORCE_CGROUP_V1").is_some();
        if root.join("cgroup.controllers").exists() {
            return CgroupLayout {
                v2: Some(root.to_path_buf()),
                v2_controllers: true,
                v1_memory: None,
                v1_pids: None,
                v1_freezer: None,
                v1_cpuacct: None,
            };
        }
        let existing = |name: &str, probe: &str| {
            let path = root.join(name);
            path.join(probe).exists().then_some(path)
        };
        CgroupLayout {
            v2: existing("unified", "cgroup.procs").filter(|_| !force_v1),
            v2_controllers: false,
            v1_memory: existing("memory", "memory.limit_in_bytes"),
            v1_pids: existing("pids", "cgroup.procs"),
            v1_freezer: existing("freezer", "cgroup.procs"),
            v1_cpuacct: existing("cpuacct", "cpuacct.usage")
                .or_else(|| existing("cpu,cpuacct", "cpuacct.usage")),
        }
    }

    /// Whether a process could kill every member of a cgroup here: `cgroup.kill` needs a v2
    /// hierarchy and Linux 5.14; otherwise the v1 freezer does it.
    pub fn can_kill(&self) -> bool {
        (self.v2.is_some() && kernel_at_least(5, 14)) || self.v1_freezer.is_some()
    }
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release.trim().split(['.', '-']);
    let found_major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let found_minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (found_major, found_minor) >= (major, minor)
}

/// The cgroups of one sandbox.
#[derive(Debug)]
pub struct SandboxCgroups {
    /// `<pid>.<start>.<pid namespace>-<sequence>` (`cgroup_name`): the directory name in every
    /// hierarchy.
    name: String,
    v2: Option<PathBuf>,
    v2_controllers: bool,
    /// Open directory of the v2 cgroup, for `CLONE_INTO_CGROUP`.
    v2_fd: Option<OwnedFd>,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    freezer: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The name of a sandbox cgroup made by `owner`: `<pid>.<start>.<pid namespace>-<sequence>`.
/// By pid alone, two offswitch processes that are each PID 1 of a container sharing the host's
/// cgroup tree would make the same names.
fn cgroup_name(owner: &Owner, sequence: u64) -> String {
    format!(
        "{}.{}.{}-{sequence}",
        owner.pid, owner.start_ticks, owner.pid_namespace
    )
}

/// Whether the cgroup `name` was made by a process that is gone, as `me` can tell
/// ([`Owner::is_alive_as_seen_by`]); names without a start time and a namespace (older
/// versions) by their pid alone. Never `me`'s own.
fn outlived(me: &Owner, name: &str, start_of: impl Fn(u32) -> io::Result<Option<u64>>) -> bool {
    let Some((owner, _sequence)) = name.rsplit_once('-') else {
        return false;
    };
    let parts: Vec<&str> = owner.split('.').collect();
    match parts[..] {
        [pid] => pid.parse::<u32>().is_ok_and(|pid| {
            pid != me.pid
                && start_of(pid).is_err_and(|error| error.kind() == io::ErrorKind::NotFound)
        }),
        [pid, start, namespace] => {
            let (Ok(pid), Ok(start_ticks), Ok(pid_namespace)) =
                (pid.parse(), start.parse(), namespace.parse())
            else {
                return false;
            };
            let owner = Owner {
                pid,
                start_ticks,
                pid_namespace,
            };
            owner != *me && !owner.is_alive_as_seen_by(me, start_of)
        }
        _ => false,
    }
}

/// Why a cgroup operation failed, with the file it touched.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct CgroupError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError {
        path: path.to_path_buf(),
        source,
    }
}

impl SandboxCgroups {
    /// Create fresh cgroups with `limits`. Only the hierarchies needed are used: v1 memory when a
    /// memory limit is set, v1 pids when a process limit is set.
    pub fn create(layout: &CgroupLayout, limits: &Limits) -> Result<SandboxCgroups, CgroupError> {
        let mut cgroups = SandboxCgroups::create_base(layout)?;
        if let Err(error) = cgroups.add_limits(layout, limits) {
            cgroups.remove();
            return Err(error);
        }
        Ok(cgroups)
    }

    /// The cgroups every sandbox has whatever its limits: the v2 one (cloned into, and killed
    /// through), or on a v1-only host the freezer. Enough to clone a PID 1 into before its
    /// limits are known; `add_limits` completes them.
    pub fn create_base(layout: &CgroupLayout) -> Result<SandboxCgroups, CgroupError> {
        let mut cgroups = SandboxCgroups {
            name: cgroup_name(&this_owner(), SEQUENCE.fetch_add(1, Ordering::Relaxed)),
            v2: None,
            v2_controllers: layout.v2_controllers,
            v2_fd: None,
            memory: None,
            pids: None,
            freezer: None,
            cpuacct: None,
        };
        let made = (|| {
            if let Some(root) = &layout.v2 {
                let path = cgroups.make(layout, root)?;
                let dir = fs::File::open(&path).map_err(at(&path));
                cgroups.v2 = Some(path);
                cgroups.v2_fd = Some(OwnedFd::from(dir?));
            }
            if !layout.v2_controllers
                && layout.v2.is_none()
                && let Some(root) = &layout.v1_freezer
            {
                cgroups.freezer = Some(cgroups.make(layout, root)?);
            }
            Ok(())
        })();
        match made {
            Ok(()) => Ok(cgroups),
            Err(error) => {
                cgroups.remove();
                Err(error)
            }
        }
    }

    /// Add the v1 cgroups `limits` need and write the limits. PID 1 must join the v1 ones
    /// afterwards (`open_v1_tasks`); on error the caller removes what was made.
    pub fn add_limits(
        &mut self,
        layout: &CgroupLayout,
        limits: &Limits,
    ) -> Result<(), CgroupError> {
        if !layout.v2_controllers {
            if limits.memory_bytes.is_some()
                && self.memory.is_none()
                && let Some(root) = &layout.v1_memory
            {
                self.memory = Some(self.make(layout, root)?);
            }
            if limits.max_processes.is_some()
                && self.pids.is_none()
                && let Some(root) = &layout.v1_pids
            {
                self.pids = Some(self.make(layout, root)?);
            }
            if layout.v2.is_none()
                && limits.cpu_time.is_some()
                && self.cpuacct.is_none()
                && let Some(root) = &layout.v1_cpuacct
            {
                self.cpuacct = Some(self.make(layout, root)?);
            }
        }
        self.apply_limits(limits)
    }

    /// Make this sandbox's cgroup under `root`'s `offswitch` directory.
    fn make(&self, layout: &CgroupLayout, root: &Path) -> Result<PathBuf, CgroupError> {
        let parent = root.join("offswitch");
        if !parent.exists() {
            match fs::create_dir(&parent) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(at(&parent)(error)),
            }
            if root.join("cgroup.subtree_control").exists() && layout.v2_controllers {
                // Enable the controllers for our children; failures mean they are absent.
                let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
            }
        }
        let path = parent.join(&self.name);
        fs::create_dir(&path).map_err(at(&path))?;
        Ok(path)
    }

    fn apply_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        let write = |path: PathBuf, value: String| -> Result<(), CgroupError> {
            fs::write(&path, value).map_err(at(&path))
        };
        if let Some(bytes) = limits.memory_bytes {
            if self.v2_controllers {
                let v2 = self.v2.as_ref().expect("v2 layout has a v2 cgroup");
                write(v2.join("memory.max"), bytes.to_string())?;
                // Swap would let a hog outlive the limit; absent without swap accounting.
                let _ = fs::write(v2.join("memory.swap.max"), "0");
            } else if let Some(memory) = &self.memory {
                write(memory.join("memory.limit_in_bytes"), bytes.to_string())?;
                let _ = fs::write(
                    memory.join("memory.memsw.limit_in_bytes"),
                    bytes.to_string(),
                );
            }
        }
        if let Some(count) = limits.max_processes {
            if self.v2_controllers {
                let v2 = self.v2.as_ref().expect("v2 layout has a v2 cgroup");
                write(v2.join("pids.max"), count.to_string())?;
            } else if let Some(pids) = &self.pids {
                write(pids.join("pids.max"), count.to_string())?;
            }
        }
        Ok(())
    }

    /// Freeze (`true`) or thaw every process of the sandbox, and wait until the kernel says
    /// it is done (a frozen process runs nothing, not even its signal handlers, until thawed;
    /// a kill still ends it).
    pub fn freeze(&self, frozen: bool, deadline: Duration) -> Result<(), CgroupError> {
        let started = Instant::now();
        if let Some(v2) = &self.v2 {
            let path = v2.join("cgroup.freeze");
            fs::write(&path, if frozen { "1" } else { "0" }).map_err(at(&path))?;
            let events = v2.join("cgroup.events");
            let want = if frozen { "frozen 1" } else { "frozen 0" };
            while started.elapsed() < deadline {
                let text = fs::read_to_string(&events).map_err(at(&events))?;
                if text.lines().any(|line| line.trim() == want) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            return Err(CgroupError {
                path: events,
                source: io::Error::new(io::ErrorKind::TimedOut, "the freezer did not settle"),
            });
        }
        if let Some(freezer) = &self.freezer {
            let state = freezer.join("freezer.state");
            let want = if frozen { "FROZEN" } else { "THAWED" };
            fs::write(&state, want).map_err(at(&state))?;
            while started.elapsed() < deadline {
                if fs::read_to_string(&state).map_err(at(&state))?.trim() == want {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            return Err(CgroupError {
                path: state,
                source: io::Error::new(io::ErrorKind::TimedOut, "the freezer did not settle"),
            });
        }
        Err(CgroupError {
            path: PathBuf::new(),
            source: io::Error::other("no freezer cgroup"),
        })
    }

    /// The v2 cgroup's directory, where the event stream filters by cgroup.
    pub fn v2_path(&self) -> Option<&Path> {
        self.v2.as_deref()
    }

    /// The v2 cgroup directory fd for `clone3(CLONE_INTO_CGROUP)`.
    pub fn v2_fd(&self) -> Option<i32> {
        self.v2_fd.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// The `tasks` file of every v1 cgroup, open for writing, for PID 1 to move itself in
    /// (the v2 cgroup is joined at clone time). The kernel checks a write against the
    /// credentials the file was opened with, so these work in PID 1 whatever its uid.
    pub fn open_v1_tasks(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        [&self.memory, &self.pids, &self.freezer, &self.cpuacct]
            .into_iter()
            .flatten()
            .map(|dir| {
                let path = dir.join("tasks");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(at(&path))
            })
            .collect()
    }

    /// Whether the memory limit was enforced by the OOM killer, as a counter.
    pub fn oom_kills(&self) -> u64 {
        if self.v2_controllers {
            let v2 = self.v2.as_ref().expect("v2 layout has a v2 cgroup");
            return read_key(&v2.join("memory.events"), "oom_kill");
        }
        match &self.memory {
            Some(memory) => read_key(&memory.join("memory.oom_control"), "oom_kill"),
            None => 0,
        }
    }

    /// How often a fork failed on the process limit, as a counter.
    pub fn pids_max_events(&self) -> u64 {
        let dir = if self.v2_controllers {
            self.v2.as_ref()
        } else {
            self.pids.as_ref()
        };
        dir.map_or(0, |dir| read_key(&dir.join("pids.events"), "max"))
    }

    /// CPU time used by everything in the sandbox so far, if accounted.
    pub fn cpu_usage(&self) -> Option<Duration> {
        if let Some(v2) = &self.v2 {
            let micros = read_key(&v2.join("cpu.stat"), "usage_usec");
            return Some(Duration::from_micros(micros));
        }
        let cpuacct = self.cpuacct.as_ref()?;
        let nanos: u64 = fs::read_to_string(cpuacct.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Duration::from_nanos(nanos))
    }

    /// Processes alive in the sandbox (zombies excluded), counted from the kill hierarchy.
    pub fn count_processes(&self) -> io::Result<usize> {
        Ok(self.procs()?.lines().count())
    }

    /// Host pids of the processes alive in the sandbox, from the kill hierarchy. A cgroup is
    /// never reused and nothing inside can leave it, so these are the sandbox's processes and
    /// only its.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        Ok(self
            .procs()?
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect())
    }

    fn procs(&self) -> io::Result<String> {
        let file = match (&self.v2, &self.freezer) {
            (Some(v2), _) => v2.join("cgroup.procs"),
            (None, Some(freezer)) => freezer.join("cgroup.procs"),
            (None, None) => return Err(io::Error::other("no cgroup to count")),
        };
        fs::read_to_string(file)
    }

    /// Kill every process and return once none is left (or `deadline` passed).
    /// Returns the number of processes seen before the kill. `init_pidfd` is the sandbox's
    /// PID 1, if known: it turns readable once the whole PID namespace is gone, which is the
    /// fastest wake-up (see `wait_unpopulated`).
    pub fn kill_all(
        &self,
        deadline: Duration,
        init_pidfd: Option<RawFd>,
    ) -> Result<usize, CgroupError> {
        let started = Instant::now();
        let before = self.count_processes().unwrap_or(0);
        if let Some(v2) = &self.v2 {
            let path = v2.join("cgroup.kill");
            fs::write(&path, "1").map_err(at(&path))?;
        } else if let Some(freezer) = &self.freezer {
            self.freeze_and_kill(freezer)?;
        }
        if let Some(v2) = &self.v2 {
            wait_unpopulated(
                &v2.join("cgroup.events"),
                init_pidfd,
                deadline.saturating_sub(started.elapsed()),
            );
        }
        let mut pause = Duration::from_micros(20);
        while self.count_processes().unwrap_or(0) > 0 && started.elapsed() < deadline {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
            if self.v2.is_none()
                && let Some(freezer) = &self.freezer
            {
                // Tasks can be mid-fork when frozen; go around again until none is left.
                self.freeze_and_kill(freezer)?;
            }
        }
        Ok(before)
    }

    fn freeze_and_kill(&self, freezer: &Path) -> Result<(), CgroupError> {
        let state = freezer.join("freezer.state");
        fs::write(&state, "FROZEN").map_err(at(&state))?;
        let frozen_by = Instant::now() + Duration::from_secs(2);
        while fs::read_to_string(&state).map_err(at(&state))?.trim() != "FROZEN"
            && Instant::now() < frozen_by
        {
            std::thread::sleep(Duration::from_micros(100));
        }
        let tasks = freezer.join("tasks");
        for line in fs::read_to_string(&tasks).map_err(at(&tasks))?.lines() {
            if let Ok(pid) = line.trim().parse::<i32>() {
                // SAFETY: sending a signal has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        fs::write(&state, "THAWED").map_err(at(&state))?;
        Ok(())
    }

    /// Remove the cgroups; they must be empty. Retries briefly while the kernel finishes exits.
    pub fn remove(&self) {
        for dir in [
            &self.v2,
            &self.memory,
            &self.pids,
            &self.freezer,
            &self.cpuacct,
        ]
        .into_iter()
        .flatten()
        {
            for attempt in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                    Err(error) => {
                        if attempt == 49 {
                            tracing::warn!("failed to remove cgroup {}: {error}", dir.display());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }
}

/// Wait until a v2 cgroup has no live process: `cgroup.events` says `populated 0`. The kernel
/// wakes pollers of that file when it changes, but at most once per 10 ms per file
/// (`CGROUP_FILE_NOTIFY_MIN_INTV`): a sandbox killed within 10 ms of its PID 1 joining the
/// cgroup hears of it late. PID 1's pidfd has no such delay and turns readable only after
/// the kernel has ended every process of its PID namespace, so it is polled too.
fn wait_unpopulated(events: &Path, mut init_pidfd: Option<RawFd>, timeout: Duration) {
    use std::io::{Read, Seek};
    let Ok(mut file) = fs::File::open(events) else {
        return;
    };
    let started = Instant::now();
    let mut text = String::new();
    loop {
        text.clear();
        if file.rewind().is_err() || file.read_to_string(&mut text).is_err() {
            return;
        }
        if text.lines().any(|line| line == "populated 0") {
            return;
        }
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return;
        }
        let mut entries = [
            libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            },
            libc::pollfd {
                // A negative fd is skipped by poll: once PID 1 is gone its pidfd would stay
                // readable, so it leaves the set.
                fd: init_pidfd.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: a valid pollfd array; a spurious or missed wake-up only re-reads the file
        // (the timeout is capped so a lost notification costs at most 5 ms, 1 ms once PID 1
        // is gone and only the file's late notice is awaited).
        let cap = if init_pidfd.is_some() { 5 } else { 1 };
        unsafe {
            libc::poll(
                entries.as_mut_ptr(),
                2,
                left.as_millis().clamp(1, cap) as i32,
            )
        };
        if entries[1].revents != 0 {
            init_pidfd = None;
        }
    }
}

/// Remove empty sandbox cgroups left by processes that no longer exist (their names start
/// with the creating process's pid, start time and pid namespace: [`Owner`]). Non-empty ones
/// fail to remove and stay.
pub fn sweep_stale(layout: &CgroupLayout) {
    let me = this_owner();
    let roots = [
        &layout.v2,
        &layout.v1_memory,
        &layout.v1_pids,
        &layout.v1_freezer,
        &layout.v1_cpuacct,
    ];
    for root in roots.into_iter().flatten() {
        let Ok(entries) = fs::read_dir(root.join("offswitch")) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|name| outlived(&me, name, start_ticks))
            {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
}

/// Read `key value` from a flat-keyed cgroup file (0 when absent).
fn read_key(path: &Path, key: &str) -> u64 {
    let Ok(text) = fs::read_to_string(path) else {
        return 0;
    };
    text.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(' ')?;
            (name == key).then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which cgroups a sweep takes for stale: only its own pid namespace's, of owners gone
    /// (a pid that is free, or reused by a process started later), never its own.
    #[test]
    fn only_cgroups_of_owners_gone_from_this_namespace_are_stale() {
        let me = Owner {
            pid: 40,
            start_ticks: 1000,
            pid_namespace: 7,
        };
        // Live processes of this namespace: 40 (me) and 41, started at 1000 and 2000.
        let start_of = |pid: u32| match pid {
            40 => Ok(Some(1000)),
            41 => Ok(Some(2000)),
            _ => Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        let cases = [
            ("40.1000.7-3", false),  // mine
            ("41.2000.7-0", false),  // a live process's
            ("41.1500.7-0", true),   // pid 41 was reused: its owner is gone
            ("42.900.7-1", true),    // pid 42 is free
            ("42.900.8-1", false),   // another namespace's: cannot tell
            ("1.5.8-11", false),     // PID 1 of another container
            ("42-4", true),          // an older version's name, pid free
            ("41-4", false),         // an older version's name, pid taken
            ("40-4", false),         // an older version's name, my pid
            ("x.1.7-1", false),      // not a name offswitch makes
            ("cgroup.procs", false), // the parent's own files
        ];
        for (name, stale) in cases {
            assert_eq!(outlived(&me, name, start_of), stale, "{name}");
        }
        let this = this_owner();
        assert!(!outlived(&this, &cgroup_name(&this, 0), start_ticks));
        assert_eq!(
            cgroup_name(&me, 3),
            "40.1000.7-3",
            "the name a sweep parses"
        );
    }
}
