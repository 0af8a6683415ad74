//! The host side of a sandbox: creating its init, sending it execs, watching it, killing it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::binds::ResolvedBind;
use crate::capture::HeadTail;
use crate::cgroup::{CgroupLayout, SandboxCgroups};
use crate::child::{self, InitPlan, MountOp};
use crate::{
    ExecRequest, ExecResult, ExecStatus, KillReport, LimitKind, Protect, SandboxConfig,
    SandboxError, SandboxEvent, SandboxState,
};

/// Where the home is inside every sandbox.
const SANDBOX_HOME: &str = "/home/agent";

/// The host uid and gid the sandbox's uid 0 maps to when we run as root. Never host root:
/// with that mapping a command inside could write into the host's `/usr` (see SANDBOX-NOTES).
pub const SANDBOX_HOST_ID: u32 = 1_000_000_000;

/// Top-level host directories bound read-only into every sandbox (or recreated as the same
/// symlinks, for merged-/usr systems).
pub const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Entries of the host's `/etc` bound read-only into every sandbox; nothing else of `/etc`
/// is visible (the sandbox writes its own `passwd`, `group`, `hostname` and `hosts`).
pub const ETC_ALLOW_LIST: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "localtime",
    "alternatives",
    "ssl",
    "ca-certificates",
    "bash.bashrc",
    "profile",
    "inputrc",
    "mime.types",
    "protocols",
    "services",
    "gai.conf",
    "host.conf",
    "magic",
    "magic.mime",
    "python3",
    "debian_version",
    "os-release",
    "lsb-release",
    "terminfo",
    "gitconfig",
];

/// Largest exec request (command, cwd and environment) init accepts in one message.
pub const MAX_REQUEST_BYTES: usize = 96 * 1024;

/// How long a kill may take before it escalates to killing PID 1 and waiting on the kernel.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// How often the monitor looks at a home volume's free space.
const DISK_POLL: Duration = Duration::from_millis(100);

/// The wrapper every exec runs in: raise its OOM score so that the agent's processes, not
/// PID 1, are the OOM killer's first choice (raising needs no privilege, and only after the
/// exec is the process its own: before it, it shares PID 1's memory and so PID 1's
/// non-dumpable `/proc` entries), restore the persistent cwd, report the final one on fd 198
/// when the shell exits (whatever way), then run the command as `bash -c` would.
const WRAPPER: &str = "builtin echo 500 > /proc/self/oom_score_adj 2>/dev/null; \
cd -- \"$OFFSWITCH_CWD\" 2>/dev/null || cd; unset OFFSWITCH_CWD; \
trap 'builtin printf %s \"$PWD\" >&198 2>/dev/null' EXIT; \
OFFSWITCH_COMMAND=$1; set --; eval \"$OFFSWITCH_COMMAND\"";

pub struct Sandbox {
    shared: Arc<Shared>,
    home: PathBuf,
    /// The recording of what the kernel sees inside, until `events` takes it; or why there
    /// is none.
    watch: Mutex<Result<Option<offswitch_events::Watch>, String>>,
    hostname: String,
    /// Limits already put into the event stream.
    limits_noted: Mutex<std::collections::HashSet<LimitKind>>,
    monitor: Mutex<Option<JoinHandle<()>>>,
    cwd: Mutex<String>,
    events: Mutex<Vec<SandboxEvent>>,
    env: Vec<String>,
    /// Per-process rlimits for every exec: CPU seconds and address space (0 = none).
    cpu_rlimit_seconds: u64,
    address_space_limit: u64,
    /// RLIMIT_NPROC for every exec when no pids cgroup enforces the process limit (0 = none).
    process_rlimit: u64,
    warnings: Vec<String>,
}

pub(crate) struct Shared {
    state: Mutex<SandboxState>,
    /// Set once the off-switch ran; holds its report.
    termination: Mutex<Option<KillReport>>,
    cgroups: Option<SandboxCgroups>,
    control: OwnedFd,
    init_pidfd: OwnedFd,
    /// PID 1's host pid; only meaningful while `init_exited` is false (checked after use).
    pub(crate) init_pid: i32,
    /// Interfaces made by `link` so far: the next one is `eth<links>`.
    links: std::sync::atomic::AtomicU32,
    init_reaped: AtomicBool,
    /// Inode of the sandbox's PID namespace, for counting without cgroups.
    pid_namespace: u64,
    limits: crate::Limits,
    created: Instant,
    /// The home's host path when it is a filesystem of its own (`create_home`), whose filling
    /// up is the disk limit.
    disk_volume: Option<PathBuf>,
    /// The shutdown request that ended the sandbox from inside, if one did.
    shutdown_request: Mutex<Option<ShutdownRequest>>,
    /// Times the home was seen full after having been seen with room (by an exec's end or
    /// the monitor's poll), and whether it was full when last seen.
    disk_full: std::sync::atomic::AtomicU64,
    disk_was_full: AtomicBool,
}

impl Sandbox {
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn create(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let io_error =
            |context: String| move |source: io::Error| SandboxError::Io { context, source };
        std::fs::create_dir_all(&config.home).map_err(io_error(format!(
            "failed to create home {}",
            config.home.display()
        )))?;
        let home = std::fs::canonicalize(&config.home).map_err(io_error(format!(
            "failed to resolve home {}",
            config.home.display()
        )))?;
        let host = host();
        if let Some(why) = &host.foreign_proc {
            return Err(SandboxError::Unsupported(why.clone()));
        }
        let binds = crate::binds::resolve(&config.ro_binds, host)?;
        check_protected(&config.protect, &home)?;
        if config.home_idmap.is_some() && !host.root {
            return Err(SandboxError::NeedsRoot(
                "a home mounted with an id mapping (a project bound read-write)".into(),
            ));
        }
        let mut warnings = Vec::new();
        let (map_uid, map_gid) = map_ids(host);
        if host.root && config.home_idmap.is_some() {
            // The project keeps its owner: the id mapping of its mount makes it the agent's.
        } else if host.root {
            chown_tree(&home, map_uid, map_gid);
        } else {
            let message = "not root: cgroup limits and the cgroup kill are unavailable; \
                memory is capped per process (RLIMIT_AS), CPU per process (RLIMIT_CPU), \
                processes by RLIMIT_NPROC (counted in the sandbox's user namespace, breaches \
                not reported as LimitExceeded), kill() ends the PID namespace instead, and \
                homes are plain directories without a disk limit";
            static NOT_ROOT: AtomicBool = AtomicBool::new(false);
            warn_once(&NOT_ROOT, message);
            warnings.push(message.to_string());
        }
        let mut cgroups = None;
        let result = spawn_init(&config, &home, host, &binds, &mut cgroups);
        let LaunchedInit {
            pid,
            pidfd,
            control,
        } = match result {
            Ok(launched) => launched,
            Err(error) => {
                if let Some(cgroups) = &cgroups {
                    let _ = cgroups.kill_all(KILL_DEADLINE, None);
                    cgroups.remove();
                }
                return Err(error);
            }
        };
        let pid_namespace = std::fs::metadata(format!("/proc/{pid}/ns/pid"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(SandboxState::Running),
            termination: Mutex::new(None),
            cgroups,
            control,
            init_pidfd: pidfd,
            init_pid: pid,
            links: std::sync::atomic::AtomicU32::new(0),
            init_reaped: AtomicBool::new(false),
            pid_namespace,
            limits: config.limits.clone(),
            created: Instant::now(),
            disk_volume: crate::volume::is_mount_point(&home).then(|| home.clone()),
            shutdown_request: Mutex::new(None),
            disk_full: std::sync::atomic::AtomicU64::new(0),
            disk_was_full: AtomicBool::new(false),
        });
        let monitor_shared = Arc::clone(&shared);
        let monitor = match std::thread::Builder::new()
            .name("offswitch-sandbox-monitor".into())
            .spawn(move || monitor_shared.monitor())
        {
            Ok(monitor) => monitor,
            Err(source) => {
                // Nothing watches this sandbox: end it now, and remove its cgroups (no
                // `Sandbox` will exist to hand them to the janitor).
                let _ = shared.terminate(SandboxState::Killed);
                if let Some(cgroups) = &shared.cgroups {
                    cgroups.remove();
                }
                return Err(SandboxError::Io {
                    context: format!(
                        "failed to start the monitor thread of sandbox {}",
                        home.display()
                    ),
                    source,
                });
            }
        };
        let mut env = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "HOME=/home/agent".to_string(),
            "USER=root".to_string(),
            "LOGNAME=root".to_string(),
            "SHELL=/bin/bash".to_string(),
            "LANG=C.UTF-8".to_string(),
            "TERM=dumb".to_string(),
            format!("HOSTNAME={}", config.hostname),
        ];
        for (key, value) in &config.env {
            env.retain(|existing| !existing.starts_with(&format!("{key}=")));
            env.push(format!("{key}={value}"));
        }
        let watch = start_watch(&shared, &home, &config.hostname, &config.watch_opens);
        let cpu_rlimit_seconds = config
            .limits
            .cpu_time
            .map_or(0, |cpu| cpu.as_secs() + u64::from(cpu.subsec_nanos() > 0));
        let memory_cgroup = shared.cgroups.is_some();
        let address_space_limit = match config.limits.memory_bytes {
            Some(bytes) if !memory_cgroup => bytes,
            _ => 0,
        };
        let process_rlimit = match config.limits.max_processes {
            Some(count) if !memory_cgroup => count,
            _ => 0,
        };
        Ok(Sandbox {
            process_rlimit,
            shared,
            home,
            watch: Mutex::new(watch.map(Some)),
            hostname: config.hostname.clone(),
            limits_noted: Mutex::new(std::collections::HashSet::new()),
            monitor: Mutex::new(Some(monitor)),
            cwd: Mutex::new("/home/agent".to_string()),
            events: Mutex::new(Vec::new()),
            env,
            cpu_rlimit_seconds,
            address_space_limit,
            warnings,
        })
    }

    /// Blocking; callers on an async runtime use `spawn_blocking`. `&self` so several threads
    /// may exec concurrently in one sandbox.
    pub fn exec(&self, request: &ExecRequest) -> Result<ExecResult, SandboxError> {
        self.exec_for(request, false)
    }

    /// An exec of the harness's own (a reference run, a probe), not the agent's: its
    /// processes' events are marked as the harness's in the event stream.
    pub fn exec_as_harness(&self, request: &ExecRequest) -> Result<ExecResult, SandboxError> {
        self.exec_for(request, true)
    }

    /// What the kernel saw inside, from the sandbox's creation: call once nothing runs in it
    /// any more (after `kill`). Later calls get an empty stream that says it was taken.
    pub fn event_stream(&self) -> offswitch_events::EventStream {
        // A limit that ended the whole sandbox (wall time, CPU time, PID 1 out of memory) was
        // decided by the monitor: it goes into the stream here.
        if let SandboxState::LimitExceeded(kind) = self.state() {
            self.note_limit(kind);
        }
        let watch = std::mem::replace(
            &mut *lock(&self.watch),
            Err("the stream was already taken".into()),
        );
        match watch {
            Ok(Some(watch)) => watch.finish(),
            Ok(None) => offswitch_events::unavailable(&self.hostname, "no watch"),
            Err(why) => offswitch_events::unavailable(&self.hostname, &why),
        }
    }

    /// Everything the kernel records inside from now on, live, as it happens (for monitors
    /// that act while the sandbox runs): see `offswitch_events::Watch::subscribe`. `Err` says
    /// why there is no stream to follow (none on this host, or it was already taken).
    pub fn subscribe_events(
        &self,
        capacity: usize,
    ) -> Result<offswitch_events::Subscription, String> {
        match &*lock(&self.watch) {
            Ok(Some(watch)) => Ok(watch.subscribe(capacity)),
            Ok(None) => Err("no watch".into()),
            Err(why) => Err(why.clone()),
        }
    }

    /// `exec`, with the command's stdin read from a pipe the caller feeds and its output
    /// handed to the caller as it arrives (as well as captured): for a long-running program
    /// whose input and output pass through, such as a guarded agent.
    pub fn exec_streaming(
        &self,
        request: &ExecRequest,
        streams: crate::Streams,
    ) -> Result<ExecResult, SandboxError> {
        if let Some(stdin) = &streams.stdin
            // SAFETY: isatty on an fd the caller handed over.
            && unsafe { libc::isatty(stdin.as_raw_fd()) } == 1
        {
            return Err(SandboxError::Unsupported(
                "a terminal cannot be a sandboxed command's stdin (the agent could push input \
                 into the operator's shell): pass a pipe"
                    .into(),
            ));
        }
        self.exec_for_with(request, false, streams)
    }

    fn exec_for(&self, request: &ExecRequest, harness: bool) -> Result<ExecResult, SandboxError> {
        self.exec_for_with(request, harness, crate::Streams::default())
    }

    fn exec_for_with(
        &self,
        request: &ExecRequest,
        harness: bool,
        streams: crate::Streams,
    ) -> Result<ExecResult, SandboxError> {
        let started = Instant::now();
        let cwd_before = lock(&self.cwd).clone();
        let result = self.exec_inner(request, &cwd_before, started, harness, streams)?;
        if let ExecStatus::LimitExceeded(kind) = &result.status {
            self.note_limit(*kind);
        }
        lock(&self.events).push(SandboxEvent {
            command: request.command.clone(),
            cwd: cwd_before,
            status: result.status.clone(),
            stdout_bytes: result.stdout_total,
            stderr_bytes: result.stderr_total,
            wall: result.result.wall,
        });
        Ok(result.result)
    }

    pub fn state(&self) -> SandboxState {
        lock(&self.shared.state).clone()
    }

    /// The off-switch: returns once zero processes remain, verified by counting.
    pub fn kill(&self) -> Result<KillReport, SandboxError> {
        self.shared.terminate(SandboxState::Killed)
    }

    /// Freeze every process of the sandbox where it stands (`pause`) or let it go on
    /// (`resume`). Nothing frozen runs, signals itself, forks or writes until resumed, and
    /// `kill` still works on a frozen sandbox. Needs cgroups (root).
    pub fn pause(&self) -> Result<(), SandboxError> {
        self.freeze(true)
    }

    /// Ask the freezer to stop every process of the sandbox, without waiting for it to
    /// settle: for an off-switch about to kill (the kill does not need the freeze finished,
    /// and waiting for hundreds of spinning processes to stop would only delay it).
    pub fn begin_pause(&self) -> Result<(), SandboxError> {
        let Some(cgroups) = &self.shared.cgroups else {
            return Err(SandboxError::NeedsRoot(
                "pausing a sandbox (the freezer)".into(),
            ));
        };
        match cgroups.freeze(true, Duration::ZERO) {
            Ok(()) => Ok(()),
            Err(error) if error.source.kind() == io::ErrorKind::TimedOut => Ok(()),
            Err(error) => Err(SandboxError::Io {
                context: format!("freezing sandbox {}", self.home.display()),
                source: io::Error::new(error.source.kind(), error.to_string()),
            }),
        }
    }

    /// Thaw a paused sandbox.
    pub fn resume(&self) -> Result<(), SandboxError> {
        self.freeze(false)
    }

    fn freeze(&self, frozen: bool) -> Result<(), SandboxError> {
        let Some(cgroups) = &self.shared.cgroups else {
            return Err(SandboxError::NeedsRoot(
                "pausing a sandbox (the freezer)".into(),
            ));
        };
        cgroups
            .freeze(frozen, Duration::from_secs(5))
            .map_err(|error| SandboxError::Io {
                context: format!(
                    "{} sandbox {}",
                    if frozen { "freezing" } else { "thawing" },
                    self.home.display()
                ),
                source: io::Error::new(error.source.kind(), error.to_string()),
            })
    }

    /// Host path of the home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Every exec so far, in order.
    pub fn events(&self) -> Vec<SandboxEvent> {
        lock(&self.events).clone()
    }

    /// Features that degraded on this host (e.g. no cgroups when not root), in words.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Host pids of every live process of the sandbox, from its cgroup, which is never
    /// reused. Without cgroups (not root), from its PID namespace, and only while PID 1 lives:
    /// a PID namespace's inode number is reused once the namespace dies, and would then name
    /// another sandbox's processes; while PID 1 lives the namespace does.
    pub fn host_pids(&self) -> Vec<i32> {
        if let Some(cgroups) = &self.shared.cgroups {
            return cgroups.pids().unwrap_or_default();
        }
        self.shared.live_namespace_processes()
    }

    /// Run `f` on a fresh thread in the sandbox's network namespace and return what it
    /// returns. Sockets `f` creates belong to that namespace for good, and are held by this
    /// (host) process, out of reach of everything inside: a harness service the agent can
    /// connect to (`127.0.0.1` inside the sandbox) but cannot kill, or a connection from
    /// outside to a server the agent started.
    pub fn in_network<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, SandboxError> {
        let io_error = |context: &str, source: io::Error| SandboxError::Io {
            context: format!("{context} of sandbox {}", self.home.display()),
            source,
        };
        let namespace = self
            .shared
            .open_net_namespace()
            .map_err(|e| io_error("opening the network namespace", e))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on a namespace fd we own, for this thread only (the
                    // network namespace is per thread); the thread ends after `f`.
                    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
        .map_err(|e| io_error("entering the network namespace", e))
    }

    /// The sandbox's root directory as its processes see it (`/proc/<PID 1>/root`), opened
    /// for the host to resolve paths inside with `openat2(RESOLVE_IN_ROOT)`: an absolute
    /// symbolic link made inside then stays inside, as it would for a process of the sandbox.
    /// Nothing inside can change which root this is (mounts and namespaces are refused there).
    pub fn open_root(&self) -> Result<std::fs::File, SandboxError> {
        self.shared.open_root().map_err(|source| SandboxError::Io {
            context: format!("opening the root of sandbox {}", self.home.display()),
            source,
        })
    }

    /// Read at most `limit` bytes of the regular file at the absolute `path` as the sandbox
    /// sees it, from the host: resolved in the sandbox's root (`openat2` with
    /// `RESOLVE_IN_ROOT`, no magic links), so a symbolic link made inside never leads to a
    /// host file. `Err` for anything but a regular file.
    pub fn read_inside(&self, path: &str, limit: usize) -> io::Result<Vec<u8>> {
        use std::io::Read;
        #[repr(C)]
        struct OpenHow {
            flags: u64,
            mode: u64,
            resolve: u64,
        }
        const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
        const RESOLVE_IN_ROOT: u64 = 0x10;
        let root = self.shared.open_root()?;
        let relative = path.trim_start_matches('/');
        let relative = CString::new(if relative.is_empty() { "." } else { relative })
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
        let how = OpenHow {
            flags: (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64,
            mode: 0,
            resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2 with a valid dirfd, C string and open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                relative.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        let file = unsafe { std::fs::File::from_raw_fd(fd as RawFd) };
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut bytes = Vec::new();
        file.take(limit as u64).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// The sandbox's shutdown request from inside (SIGTERM, SIGINT or SIGPWR to its PID 1),
    /// when one ended it: when the host received it and which process sent it, as the kernel
    /// told PID 1 (its pid inside the sandbox; `None` when the kernel sent it).
    pub fn shutdown_request(&self) -> Option<ShutdownRequest> {
        *lock(&self.shared.shutdown_request)
    }

    /// The working directory the next exec starts in (a path inside the sandbox).
    pub fn cwd(&self) -> String {
        lock(&self.cwd).clone()
    }

    /// Put a limit hit into the event stream, once per kind.
    fn note_limit(&self, kind: LimitKind) {
        if !lock(&self.limits_noted).insert(kind) {
            return;
        }
        if let Ok(Some(watch)) = &*lock(&self.watch) {
            watch.limit(limit_name(kind));
        }
    }

    fn exec_inner(
        &self,
        request: &ExecRequest,
        cwd: &str,
        started: Instant,
        harness: bool,
        streams: crate::Streams,
    ) -> Result<Outcome, SandboxError> {
        let crate::Streams {
            stdin: given_stdin,
            stdout: mut stdout_tee,
            stderr: mut stderr_tee,
        } = streams;
        if let Some(status) = self.shared.ended_status() {
            return Ok(Outcome::immediate(status, started, Vec::new()));
        }
        let os_error = |context: &str| {
            let source = io::Error::last_os_error();
            SandboxError::Io {
                context: format!("exec {:?}: {context}", short(&request.command)),
                source,
            }
        };
        let mut argv = vec![
            "/bin/bash".to_string(),
            "-c".to_string(),
            WRAPPER.to_string(),
            "bash".to_string(),
            request.command.clone(),
        ];
        let mut env = self.env.clone();
        env.push(format!("OFFSWITCH_CWD={cwd}"));
        if argv.iter().chain(&env).any(|s| s.contains('\0')) {
            return Ok(Outcome::immediate(
                ExecStatus::Exited(2),
                started,
                b"offswitch: the command contains a NUL byte\n".to_vec(),
            ));
        }
        let mut payload = Vec::with_capacity(child::REQUEST_HEADER + 256 + request.command.len());
        payload.extend_from_slice(&self.cpu_rlimit_seconds.to_le_bytes());
        payload.extend_from_slice(&self.address_space_limit.to_le_bytes());
        payload.extend_from_slice(&self.process_rlimit.to_le_bytes());
        payload.extend_from_slice(&(argv.len() as u32).to_le_bytes());
        payload.extend_from_slice(&(env.len() as u32).to_le_bytes());
        for string in argv.drain(..).chain(env) {
            payload.extend_from_slice(string.as_bytes());
            payload.push(0);
        }
        if payload.len() > MAX_REQUEST_BYTES {
            let message = format!(
                "offswitch: the command is {} bytes; at most {} fit in one exec\n",
                request.command.len(),
                MAX_REQUEST_BYTES - 1024
            );
            return Ok(Outcome::immediate(
                ExecStatus::Exited(2),
                started,
                message.into_bytes(),
            ));
        }
        let (stdin_read, stdin_write) = match given_stdin {
            Some(fd) => (fd, None),
            None => {
                let (read, write) = pipe().map_err(|_| os_error("pipe"))?;
                (read, Some(write))
            }
        };
        let (stdout_read, stdout_write) = pipe().map_err(|_| os_error("pipe"))?;
        let (stderr_read, stderr_write) = pipe().map_err(|_| os_error("pipe"))?;
        let (cwd_read, cwd_write) = pipe().map_err(|_| os_error("pipe"))?;
        let (exec_host, exec_init) = seqpacket_pair().map_err(|_| os_error("socketpair"))?;
        for fd in [&stdout_read, &stderr_read, &cwd_read]
            .into_iter()
            .chain(stdin_write.as_ref())
        {
            set_nonblocking(fd.as_raw_fd());
        }
        let counters_before = self.limit_counters();
        let fds = [
            stdin_read.as_raw_fd(),
            stdout_write.as_raw_fd(),
            stderr_write.as_raw_fd(),
            cwd_write.as_raw_fd(),
            exec_init.as_raw_fd(),
        ];
        loop {
            match send_with_fds(self.shared.control.as_raw_fd(), &payload, &fds) {
                Ok(()) => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if self.shared.ended_status().is_some() || self.shared.init_exited() => {
                    // Init is gone: the sandbox ended under us.
                    let status = self.shared.wait_ended();
                    return Ok(Outcome::immediate(status, started, Vec::new()));
                }
                Err(source) => {
                    // Init is alive, so this is the host's fault (e.g. no buffer memory), not
                    // a shutdown: treating it as one would end the sandbox as `Killed`.
                    return Err(SandboxError::Io {
                        context: format!(
                            "exec {:?}: failed to send the request to the sandbox's init",
                            short(&request.command)
                        ),
                        source,
                    });
                }
            }
        }
        drop((stdin_read, stdout_write, stderr_write, cwd_write, exec_init));

        let mut stdout = HeadTail::new(request.output_cap);
        let mut stderr = HeadTail::new(request.output_cap);
        let mut stdin_left: &[u8] = &request.stdin;
        let mut stdin_write = stdin_write;
        if stdin_left.is_empty() {
            stdin_write = None;
        }
        // A pipe at EOF stays readable for good: it leaves the poll set (fd -1 is skipped).
        let mut stdout_open = true;
        let mut stderr_open = true;
        let mut pidfd: Option<OwnedFd> = None;
        let mut record: Option<[u8; child::STATUS_RECORD]> = None;
        let mut channel_closed = false;
        let mut timed_out = false;
        let deadline = started + request.timeout;
        let mut grace_deadline: Option<Instant> = None;
        while record.is_none() && !channel_closed {
            let now = Instant::now();
            if !timed_out && now >= deadline {
                timed_out = true;
                if let Some(pidfd) = &pidfd {
                    kill_exec_tree(pidfd);
                }
                grace_deadline = Some(now + Duration::from_secs(5));
            }
            if let Some(grace) = grace_deadline
                && now >= grace
            {
                break;
            }
            let wait_until = grace_deadline.unwrap_or(deadline);
            let timeout_ms = wait_until
                .saturating_duration_since(now)
                .as_millis()
                .min(i32::MAX as u128) as i32;
            let open_fd = |open: bool, fd: &OwnedFd| if open { fd.as_raw_fd() } else { -1 };
            let mut polls = [
                poll_entry(exec_host.as_raw_fd(), libc::POLLIN),
                poll_entry(open_fd(stdout_open, &stdout_read), libc::POLLIN),
                poll_entry(open_fd(stderr_open, &stderr_read), libc::POLLIN),
                poll_entry(
                    stdin_write.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
                    libc::POLLOUT,
                ),
            ];
            // SAFETY: `polls` is a valid array of pollfd for its length.
            let ready = unsafe {
                libc::poll(
                    polls.as_mut_ptr(),
                    polls.len() as libc::nfds_t,
                    timeout_ms.max(1),
                )
            };
            if ready < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(os_error("poll"));
            }
            if polls[1].revents != 0 {
                stdout_open = drain(&stdout_read, &mut stdout, &mut stdout_tee);
            }
            if polls[2].revents != 0 {
                stderr_open = drain(&stderr_read, &mut stderr, &mut stderr_tee);
            }
            if polls[3].revents != 0 {
                let fd = stdin_write.as_ref().expect("polled").as_raw_fd();
                // SAFETY: writing from a valid slice to an fd we own.
                let n = unsafe {
                    libc::write(fd, stdin_left.as_ptr().cast(), stdin_left.len().min(65536))
                };
                if n > 0 {
                    stdin_left = &stdin_left[n as usize..];
                }
                if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
                    || stdin_left.is_empty()
                    || polls[3].revents & (libc::POLLERR | libc::POLLHUP) != 0
                {
                    stdin_write = None;
                }
            }
            if polls[0].revents != 0 {
                match receive_reply(exec_host.as_raw_fd()) {
                    Reply::Started(fd) => {
                        if harness
                            && let Ok(Some(watch)) = &*lock(&self.watch)
                            && let Some(pid) = pidfd_host_pid(&fd)
                        {
                            watch.mark_harness(pid as u32);
                        }
                        pidfd = Some(fd);
                        if timed_out {
                            kill_exec_tree(pidfd.as_ref().expect("just set"));
                        }
                    }
                    Reply::Status(bytes) => record = Some(bytes),
                    Reply::Closed => channel_closed = true,
                    Reply::Nothing => {}
                }
            }
        }
        drop(stdin_write);
        if channel_closed && pidfd.is_none() && !self.shared.init_exited() {
            // Init is alive but closed the exec's channel without starting it: it refused
            // the request (more concurrent execs than it tracks). A harness fault, not the
            // agent's doing, and the sandbox is intact.
            return Err(SandboxError::Io {
                context: format!(
                    "exec {:?}: the sandbox's init refused the request (too many concurrent execs)",
                    short(&request.command)
                ),
                source: io::Error::other("exec refused"),
            });
        }
        // The shell has exited; whatever it wrote is in the pipes. Background processes may
        // still hold them open, so read what is there and stop rather than wait for EOF.
        drain(&stdout_read, &mut stdout, &mut stdout_tee);
        drain(&stderr_read, &mut stderr, &mut stderr_tee);
        let mut cwd_bytes = [0u8; 4096];
        // SAFETY: reading into a valid buffer from an fd we own.
        let n = unsafe {
            libc::read(
                cwd_read.as_raw_fd(),
                cwd_bytes.as_mut_ptr().cast(),
                cwd_bytes.len(),
            )
        };
        if n > 0
            && let Ok(new_cwd) = std::str::from_utf8(&cwd_bytes[..n as usize])
            && new_cwd.starts_with('/')
            && !new_cwd.contains('\0')
        {
            *lock(&self.cwd) = new_cwd.to_string();
        }

        let (wait_status, cpu) = match &record {
            Some(bytes) => {
                let status = i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
                let user = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
                let system = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
                (Some(status), Duration::from_micros(user + system))
            }
            None => (None, Duration::ZERO),
        };
        let killed =
            wait_status.is_none_or(|s| libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGKILL);
        let status = if killed && (channel_closed || self.shared.ended_status().is_some()) {
            self.shared.wait_ended()
        } else if let Some(ended) = self.shared.ended_status().filter(|_| killed) {
            ended
        } else if let Some(kind) = self.limit_hit(counters_before, wait_status, cpu) {
            // Before the timeout: a fork bomb held at the process cap (or a disk filled to
            // the brim) usually also runs out the clock, and the limit is what happened.
            ExecStatus::LimitExceeded(kind)
        } else if timed_out {
            ExecStatus::TimedOut
        } else {
            match wait_status {
                Some(s) if libc::WIFEXITED(s) => ExecStatus::Exited(libc::WEXITSTATUS(s)),
                Some(s) if libc::WIFSIGNALED(s) => ExecStatus::Signaled(libc::WTERMSIG(s)),
                _ => ExecStatus::TimedOut,
            }
        };
        let stdout_total = stdout.total();
        let stderr_total = stderr.total();
        let truncated_bytes = stdout.cut() + stderr.cut();
        Ok(Outcome {
            status: status.clone(),
            stdout_total,
            stderr_total,
            result: ExecResult {
                status,
                stdout: stdout.into_bytes(),
                stderr: stderr.into_bytes(),
                truncated_bytes,
                wall: started.elapsed(),
                cpu,
            },
        })
    }

    fn limit_counters(&self) -> LimitCounters {
        let mut counters = LimitCounters {
            disk_full: self.shared.disk_full_events(),
            ..LimitCounters::default()
        };
        if let Some(cgroups) = &self.shared.cgroups {
            if self.shared.limits.memory_bytes.is_some() {
                counters.oom_kills = cgroups.oom_kills();
            }
            if self.shared.limits.max_processes.is_some() {
                counters.pids_max = cgroups.pids_max_events();
            }
        }
        counters
    }

    fn limit_hit(
        &self,
        before: LimitCounters,
        wait_status: Option<i32>,
        cpu: Duration,
    ) -> Option<LimitKind> {
        // The home filling up during the exec counts whether or not it is still full.
        self.shared.check_disk();
        let after = self.limit_counters();
        if after.oom_kills > before.oom_kills {
            return Some(LimitKind::Memory);
        }
        if after.pids_max > before.pids_max {
            return Some(LimitKind::Processes);
        }
        if after.disk_full > before.disk_full {
            return Some(LimitKind::Disk);
        }
        let signal = wait_status
            .filter(|&s| libc::WIFSIGNALED(s))
            .map(|s| libc::WTERMSIG(s));
        if self.cpu_rlimit_seconds > 0 {
            let limit = Duration::from_secs(self.cpu_rlimit_seconds);
            if signal == Some(libc::SIGXCPU) || (signal == Some(libc::SIGKILL) && cpu >= limit) {
                return Some(LimitKind::CpuTime);
            }
        }
        None
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(error) = self.shared.terminate(SandboxState::Killed) {
            tracing::warn!("failed to kill sandbox at {}: {error}", self.home.display());
        }
        if let Some(monitor) = lock(&self.monitor).take() {
            let _ = monitor.join();
        }
        // Every process is gone (the kill verified it); removing the empty cgroup directories
        // can wait for a janitor thread instead of the caller.
        if let Some(shared) = Arc::get_mut(&mut self.shared)
            && let Some(cgroups) = shared.cgroups.take()
        {
            janitor(cgroups);
        } else if let Some(cgroups) = &self.shared.cgroups {
            cgroups.remove();
        }
    }
}

/// Remove finished sandboxes' cgroups in the background, in order, on one thread.
fn janitor(cgroups: SandboxCgroups) {
    static JANITOR: OnceLock<Mutex<mpsc::Sender<SandboxCgroups>>> = OnceLock::new();
    let sender = JANITOR.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<SandboxCgroups>();
        let spawned = std::thread::Builder::new()
            .name("offswitch-sandbox-janitor".into())
            .spawn(move || {
                // Cgroups of processes that exited before their janitor finished.
                crate::cgroup::sweep_stale(&host().layout);
                for cgroups in receiver {
                    cgroups.remove();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!("no cgroup janitor thread, removing cgroups inline: {error}");
        }
        Mutex::new(sender)
    });
    if let Err(mpsc::SendError(cgroups)) = lock(sender).send(cgroups) {
        cgroups.remove();
    }
}

/// A shutdown request from inside the sandbox (see `Sandbox::shutdown_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownRequest {
    /// When the host received it.
    pub received: Instant,
    /// The pid inside the sandbox of the process that signalled PID 1, as the kernel reported
    /// it; `None` when the kernel itself sent the signal.
    pub sender_pid: Option<i32>,
}

/// The sandbox's limit counters, compared before and after an exec to tell which limit it
/// hit.
#[derive(Debug, Clone, Copy, Default)]
struct LimitCounters {
    oom_kills: u64,
    pids_max: u64,
    disk_full: u64,
}

/// What one exec produced, before it becomes an event and a result.
struct Outcome {
    status: ExecStatus,
    stdout_total: u64,
    stderr_total: u64,
    result: ExecResult,
}

impl Outcome {
    fn immediate(status: ExecStatus, started: Instant, stderr: Vec<u8>) -> Outcome {
        Outcome {
            status: status.clone(),
            stdout_total: 0,
            stderr_total: stderr.len() as u64,
            result: ExecResult {
                status,
                stdout: Vec::new(),
                stderr,
                truncated_bytes: 0,
                wall: started.elapsed(),
                cpu: Duration::ZERO,
            },
        }
    }
}

impl Shared {
    /// PID 1's network namespace, opened so that it cannot be another process's: the pid is
    /// checked against the pidfd after the open.
    pub(crate) fn open_net_namespace(&self) -> io::Result<std::fs::File> {
        let ended = || io::Error::other("the sandbox has ended");
        if self.ended_status().is_some() || self.init_exited() {
            return Err(ended());
        }
        let file = std::fs::File::open(format!("/proc/{}/ns/net", self.init_pid))?;
        if self.init_exited() {
            return Err(ended());
        }
        Ok(file)
    }

    /// PID 1's root directory, checked like its network namespace.
    pub(crate) fn open_root(&self) -> io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let ended = || io::Error::other("the sandbox has ended");
        if self.ended_status().is_some() || self.init_exited() {
            return Err(ended());
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(format!("/proc/{}/root", self.init_pid))?;
        if self.init_exited() {
            return Err(ended());
        }
        Ok(file)
    }

    /// A fresh interface name for this sandbox's next link: `eth0`, `eth1`, ...
    pub(crate) fn next_interface(&self) -> String {
        format!("eth{}", self.links.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether the sandbox's memory limit has been enforced by the OOM killer.
    fn memory_limit_hit(&self) -> bool {
        self.limits.memory_bytes.is_some()
            && self
                .cgroups
                .as_ref()
                .is_some_and(|cgroups| cgroups.oom_kills() > 0)
    }

    fn disk_full_events(&self) -> u64 {
        self.disk_full.load(Ordering::Acquire)
    }

    /// Look at the home volume; count a new event when it is full and was not last time.
    fn check_disk(&self) {
        let Some(volume) = &self.disk_volume else {
            return;
        };
        let full = crate::volume::volume_full(volume).unwrap_or(false);
        if self.disk_was_full.swap(full, Ordering::AcqRel) != full && full {
            self.disk_full.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The status every exec gets once the sandbox has ended, or `None` while it runs.
    fn ended_status(&self) -> Option<ExecStatus> {
        match &*lock(&self.state) {
            SandboxState::Running => None,
            SandboxState::LimitExceeded(kind) => Some(ExecStatus::LimitExceeded(*kind)),
            SandboxState::ShutDownFromInside | SandboxState::Killed => {
                Some(ExecStatus::SandboxShutDown)
            }
        }
    }

    /// Wait until the sandbox has ended and its kill completed, then return the exec status.
    fn wait_ended(&self) -> ExecStatus {
        let give_up = Instant::now() + KILL_DEADLINE;
        loop {
            if let Some(status) = self.ended_status() {
                // The off-switch holds this lock until every process is gone.
                drop(lock(&self.termination));
                return status;
            }
            if Instant::now() >= give_up {
                // Init vanished without the monitor noticing (or the monitor is starved): end
                // it here, honouring a shutdown request it sent before it went.
                let _ = self.terminate_init_gone();
                return self.ended_status().unwrap_or(ExecStatus::SandboxShutDown);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// The off-switch. The first caller decides the final state and does the kill; later
    /// callers wait for it and get the same report.
    fn terminate(&self, reason: SandboxState) -> Result<KillReport, SandboxError> {
        let mut termination = lock(&self.termination);
        self.terminate_locked(&mut termination, reason)
    }

    /// The off-switch when PID 1 is gone (or must be presumed gone) without the host having
    /// killed it. If it asked to shut down first, its request is still queued on the control
    /// socket (a closed peer's messages stay readable) and the sandbox ended from inside,
    /// whoever noticed first; otherwise it was killed. Reading the socket and deciding happen
    /// under the termination lock, so the monitor and `wait_ended` cannot split the request
    /// from the decision between them.
    fn terminate_init_gone(&self) -> Result<KillReport, SandboxError> {
        let mut termination = lock(&self.termination);
        let request = if termination.is_none() {
            shutdown_requested(self.control.as_raw_fd())
        } else {
            None
        };
        let reason = if let Some(sender) = request {
            self.record_shutdown_request(sender);
            SandboxState::ShutDownFromInside
        } else if self.memory_limit_hit() {
            // The OOM killer chose PID 1 (it cannot always be protected: see
            // `Host::oom_protection`): the sandbox ended on its memory limit.
            SandboxState::LimitExceeded(LimitKind::Memory)
        } else {
            SandboxState::Killed
        };
        self.terminate_locked(&mut termination, reason)
    }

    /// The monitor's answer to a readable control socket: a shutdown request ends the
    /// sandbox from inside. Returns whether the sandbox ended.
    fn handle_control_message(&self) -> bool {
        let mut termination = lock(&self.termination);
        if termination.is_some() {
            return true;
        }
        if let Some(sender) = shutdown_requested(self.control.as_raw_fd()) {
            self.record_shutdown_request(sender);
            let _ = self.terminate_locked(&mut termination, SandboxState::ShutDownFromInside);
            return true;
        }
        false
    }

    fn record_shutdown_request(&self, sender: i32) {
        lock(&self.shutdown_request).get_or_insert(ShutdownRequest {
            received: Instant::now(),
            sender_pid: (sender > 0).then_some(sender),
        });
    }

    fn terminate_locked(
        &self,
        termination: &mut std::sync::MutexGuard<'_, Option<KillReport>>,
        reason: SandboxState,
    ) -> Result<KillReport, SandboxError> {
        if let Some(report) = &**termination {
            return Ok(report.clone());
        }
        {
            let mut state = lock(&self.state);
            if *state == SandboxState::Running {
                *state = reason;
            }
        }
        let started = Instant::now();
        let mut processes_killed = 0;
        let mut survivors = usize::MAX;
        if let Some(cgroups) = &self.cgroups {
            match cgroups.kill_all(KILL_DEADLINE, Some(self.init_pidfd.as_raw_fd())) {
                Ok(before) => {
                    processes_killed = before;
                    survivors = cgroups.count_processes().unwrap_or(usize::MAX);
                }
                Err(error) => tracing::warn!("cgroup kill failed, falling back to PID 1: {error}"),
            }
        }
        if survivors != 0 {
            // No cgroup (unprivileged) or it failed: SIGKILL PID 1 from outside, and the
            // kernel ends every process of the namespace before PID 1 can be reaped.
            let before = self.live_namespace_processes().len();
            processes_killed = processes_killed.max(before);
            pidfd_kill(&self.init_pidfd);
            wait_readable(self.init_pidfd.as_raw_fd(), Duration::from_secs(60));
            // Counted before PID 1 is reaped: its zombie keeps the namespace (and so the
            // namespace's inode number) from being reused while the count runs. Zombies
            // have no namespace to stat and are not counted.
            survivors = namespace_processes(self.pid_namespace).len();
        }
        self.reap_init();
        let report = KillReport {
            processes_killed,
            elapsed: started.elapsed(),
            survivors,
        };
        **termination = Some(report.clone());
        if survivors == 0 {
            Ok(report)
        } else {
            Err(SandboxError::Io {
                context: format!("{survivors} processes survived the kill"),
                source: io::Error::other("survivors after kill"),
            })
        }
    }

    /// The processes of the sandbox's PID namespace while PID 1 is alive (then the
    /// namespace's inode number is its own); none once PID 1 has exited.
    fn live_namespace_processes(&self) -> Vec<i32> {
        if self.init_reaped.load(Ordering::Acquire) || self.init_exited() {
            return Vec::new();
        }
        let pids = namespace_processes(self.pid_namespace);
        // PID 1 dying during the scan ends every process of the namespace with it.
        if self.init_exited() { Vec::new() } else { pids }
    }

    /// Whether PID 1 has exited (its pidfd turns readable then).
    pub(crate) fn init_exited(&self) -> bool {
        let mut entry = [poll_entry(self.init_pidfd.as_raw_fd(), libc::POLLIN)];
        // SAFETY: a valid pollfd array, zero timeout.
        unsafe { libc::poll(entry.as_mut_ptr(), 1, 0) > 0 }
    }

    fn reap_init(&self) {
        if self.init_reaped.load(Ordering::Acquire) {
            return;
        }
        if wait_readable(self.init_pidfd.as_raw_fd(), Duration::from_secs(5)) {
            // SAFETY: waitid on a pidfd we own into a zeroed siginfo.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let result = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.init_pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG,
                )
            };
            if result == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                self.init_reaped.store(true, Ordering::Release);
            }
        }
    }

    /// The watcher thread: shutdown requests from inside, PID 1's death, wall and CPU limits.
    fn monitor(&self) {
        let wall_deadline = self.limits.wall_time.map(|wall| self.created + wall);
        loop {
            if lock(&self.state).clone() != SandboxState::Running {
                break;
            }
            let now = Instant::now();
            let mut wait = Duration::from_secs(3600);
            if let Some(deadline) = wall_deadline {
                if now >= deadline {
                    let _ = self.terminate(SandboxState::LimitExceeded(LimitKind::WallTime));
                    break;
                }
                wait = wait.min(deadline - now);
            }
            if let (Some(limit), Some(cgroups)) = (self.limits.cpu_time, &self.cgroups)
                && let Some(used) = cgroups.cpu_usage()
            {
                if used >= limit {
                    let _ = self.terminate(SandboxState::LimitExceeded(LimitKind::CpuTime));
                    break;
                }
                // The budget cannot run out faster than every CPU spinning at once.
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                let soonest = (limit - used) / cpus;
                wait =
                    wait.min(soonest.clamp(Duration::from_millis(5), Duration::from_millis(500)));
            }
            if self.disk_volume.is_some() {
                // A home filled and emptied again within one exec is still a disk limit hit:
                // look often enough to see most of them.
                self.check_disk();
                wait = wait.min(DISK_POLL);
            }
            let mut polls = [
                poll_entry(self.control.as_raw_fd(), libc::POLLIN),
                poll_entry(self.init_pidfd.as_raw_fd(), libc::POLLIN),
            ];
            let timeout = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: valid pollfd array.
            let ready = unsafe { libc::poll(polls.as_mut_ptr(), 2, timeout) };
            if ready <= 0 {
                continue;
            }
            if polls[0].revents & libc::POLLIN != 0 && self.handle_control_message() {
                break;
            }
            if polls[1].revents != 0 || polls[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                // PID 1 died without us killing it: make sure nothing is left. It may have
                // asked to shut down just before (e.g. something outside killed it after
                // `shutdown.sh` ran, while this thread was not scheduled): that request,
                // still queued, decides the state, not the order the two were noticed in.
                let _ = self.terminate_init_gone();
                break;
            }
        }
        self.reap_init();
    }
}

/// The first shutdown request queued on init's control socket, if any: the sender's pid in the
/// sandbox (0 when the kernel sent the signal). Reads every queued message without blocking;
/// init sends nothing else after setup, so nothing else is lost.
fn shutdown_requested(control: RawFd) -> Option<i32> {
    let mut requested = None;
    loop {
        let mut message = [0u8; 16];
        // SAFETY: receiving into a valid buffer from a socket we own.
        let n = unsafe {
            libc::recv(
                control,
                message.as_mut_ptr().cast(),
                message.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return requested;
        }
        if n as usize == child::SHUTDOWN_RECORD && message[..1] == *child::SHUTDOWN_MESSAGE {
            let sender = i32::from_le_bytes(message[1..5].try_into().expect("4 bytes"));
            requested = requested.or(Some(sender));
        }
    }
}

/// Facts about the host, probed once per process.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub root: bool,
    /// Whether PID 1's OOM score can be lowered to -1000 (root with CAP_SYS_RESOURCE; some
    /// container and VM hosts drop it from root's capabilities).
    pub oom_protection: bool,
    pub layout: CgroupLayout,
    pub cap_last: i32,
    /// Where the new root is assembled (the same directory for every sandbox: each mounts
    /// its own tmpfs on it in its own mount namespace).
    pub staging: PathBuf,
    /// Host top-level entries mirrored read-only: (name, symlink target if a symlink).
    pub system_entries: Vec<(String, Option<PathBuf>)>,
    pub etc_entries: Vec<(String, EtcKind)>,
    pub dev_nodes: Vec<String>,
    /// Why `/proc` cannot be used here, as root: it belongs to another pid namespace than this
    /// process's, where PID 1's maps, root and namespaces, opened by its pid, would be another
    /// process's.
    pub foreign_proc: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum EtcKind {
    File,
    Directory,
    Symlink(PathBuf),
}

pub(crate) fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        let staging = std::env::temp_dir().join(format!(".offswitch-sandbox-root-{}", unsafe {
            libc::geteuid()
        }));
        let system_entries = SYSTEM_DIRS
            .iter()
            .filter_map(|name| {
                let path = Path::new("/").join(name);
                let meta = std::fs::symlink_metadata(&path).ok()?;
                if meta.file_type().is_symlink() {
                    Some((name.to_string(), std::fs::read_link(&path).ok()))
                } else if meta.is_dir() {
                    Some((name.to_string(), None))
                } else {
                    None
                }
            })
            .collect();
        let etc_entries = ETC_ALLOW_LIST
            .iter()
            .filter_map(|name| {
                let path = Path::new("/etc").join(name);
                let meta = std::fs::symlink_metadata(&path).ok()?;
                let kind = if meta.file_type().is_symlink() {
                    EtcKind::Symlink(std::fs::read_link(&path).ok()?)
                } else if meta.is_dir() {
                    EtcKind::Directory
                } else if meta.is_file() {
                    EtcKind::File
                } else {
                    return None;
                };
                Some((name.to_string(), kind))
            })
            .collect();
        let dev_nodes = ["null", "zero", "full", "random", "urandom"]
            .iter()
            .filter(|name| Path::new("/dev").join(name).exists())
            .map(|name| name.to_string())
            .collect();
        // CAP_SYS_RESOURCE is capability 24 in the effective set.
        let oom_protection = root
            && std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|status| {
                    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
                    u64::from_str_radix(hex.trim(), 16).ok()
                })
                .is_some_and(|effective| effective & (1 << 24) != 0);
        Host {
            root,
            oom_protection,
            layout: CgroupLayout::detect(),
            cap_last,
            staging,
            system_entries,
            etc_entries,
            dev_nodes,
            foreign_proc: root
                .then(offswitch_events::proc_is_this_namespaces)
                .and_then(Result::err),
        }
    })
}

/// Say once per process (per `flag`) how the sandbox degrades here.
pub(crate) fn warn_once(flag: &'static AtomicBool, message: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        // One warning, through the program's log if it has one, else straight to stderr.
        if tracing::dispatcher::has_been_set() {
            tracing::warn!("offswitch sandbox degraded: {message}");
        } else {
            eprintln!("warning: offswitch sandbox degraded: {message}");
        }
    }
}

fn cstring(path: impl AsRef<Path>) -> CString {
    CString::new(path.as_ref().as_os_str().as_bytes()).expect("paths built here have no NUL")
}

/// Flags a mount has that a bind remount inside a user namespace must keep (they are locked).
fn locked_flags(path: &Path) -> libc::c_ulong {
    let c_path = cstring(path);
    // SAFETY: statvfs into a zeroed buffer.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return 0;
    }
    let mut flags = 0;
    for (st, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if stat.f_flag & st != 0 {
            flags |= ms;
        }
    }
    flags
}

/// Why a protected path cannot be protected, if one cannot: it must be absolute under the
/// home, plain (no `.` or `..`), exist, and have no symbolic link on its way (a link could be
/// re-pointed by the agent, leaving the protection on the old target).
fn check_protected(protect: &[Protect], home: &Path) -> Result<(), SandboxError> {
    for entry in protect {
        let invalid = |reason: String| {
            SandboxError::Unsupported(format!(
                "cannot protect {}: {reason}",
                entry.inside.display()
            ))
        };
        let relative = entry
            .inside
            .strip_prefix(SANDBOX_HOME)
            .map_err(|_| invalid(format!("it is not under {SANDBOX_HOME}")))?;
        let mut on_host = home.to_path_buf();
        let mut parts = 0;
        for component in relative.components() {
            match component {
                std::path::Component::Normal(name) => on_host.push(name),
                _ => return Err(invalid("it must not contain `.` or `..`".into())),
            }
            parts += 1;
            let meta =
                std::fs::symlink_metadata(&on_host).map_err(|error| invalid(format!("{error}")))?;
            if meta.file_type().is_symlink() {
                return Err(invalid(format!(
                    "{} is a symbolic link",
                    on_host.strip_prefix(home).unwrap_or(&on_host).display()
                )));
            }
        }
        if parts == 0 {
            return Err(invalid("it is the home itself".into()));
        }
        if entry.inside.as_os_str().as_bytes().contains(&0) {
            return Err(invalid("it contains a NUL byte".into()));
        }
    }
    Ok(())
}

/// The steps that protect paths of the home, after it is mounted: a read-only bind of each
/// path onto itself, or of an empty read-only file or directory over it.
fn protect_ops(
    ops: &mut Vec<MountOp>,
    protect: &[Protect],
    home: &Path,
    root: &Path,
    read_only: Option<libc::c_ulong>,
) {
    let empty_file = root.join("run/.offswitch-hidden");
    let empty_dir = root.join("run/.offswitch-hidden.d");
    let mut empties_made = false;
    for entry in protect {
        let Ok(relative) = entry.inside.strip_prefix(SANDBOX_HOME) else {
            continue;
        };
        let directory = std::fs::symlink_metadata(home.join(relative)).is_ok_and(|m| m.is_dir());
        let target = cstring(root.join("home/agent").join(relative));
        let source = if entry.hide {
            if !empties_made {
                empties_made = true;
                ops.push(MountOp::WriteFile {
                    path: cstring(&empty_file),
                    contents: Vec::new(),
                });
                ops.push(MountOp::Mkdir {
                    path: cstring(&empty_dir),
                    mode: 0o555,
                });
            }
            cstring(if directory { &empty_dir } else { &empty_file })
        } else {
            target.clone()
        };
        ops.push(MountOp::Bind {
            source,
            target,
            remount_flags: read_only,
        });
    }
}

/// The steps that build the sandbox's root, in order, and its hostname.
fn build_ops(
    config: &SandboxConfig,
    home: &Path,
    host: &Host,
    binds: &[ResolvedBind],
) -> (Vec<MountOp>, String) {
    let root = &host.staging;
    let inside = |relative: &str| cstring(root.join(relative));
    let read_only = |source: &Path| {
        Some(libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | locked_flags(source))
    };
    let mut ops = Vec::new();
    for (name, link) in &host.system_entries {
        match link {
            Some(target) => ops.push(MountOp::Symlink {
                target: cstring(target),
                link: inside(name),
            }),
            None => {
                let source = Path::new("/").join(name);
                ops.push(MountOp::Mkdir {
                    path: inside(name),
                    mode: 0o755,
                });
                ops.push(MountOp::Bind {
                    remount_flags: read_only(&source),
                    source: cstring(&source),
                    target: inside(name),
                });
            }
        }
    }
    ops.push(MountOp::Mkdir {
        path: inside("etc"),
        mode: 0o755,
    });
    for (name, kind) in &host.etc_entries {
        let source = Path::new("/etc").join(name);
        let target = inside(&format!("etc/{name}"));
        match kind {
            EtcKind::Symlink(link) => ops.push(MountOp::Symlink {
                target: cstring(link),
                link: target,
            }),
            EtcKind::File | EtcKind::Directory => {
                ops.push(if matches!(kind, EtcKind::File) {
                    MountOp::Touch {
                        path: target.clone(),
                    }
                } else {
                    MountOp::Mkdir {
                        path: target.clone(),
                        mode: 0o755,
                    }
                });
                ops.push(MountOp::Bind {
                    remount_flags: read_only(&source),
                    source: cstring(&source),
                    target,
                });
            }
        }
    }
    let hostname = if config.hostname.is_empty() {
        "sandbox".to_string()
    } else {
        config.hostname.clone()
    };
    for (name, contents) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/home/agent:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
                .to_string(),
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n".to_string()),
        ("etc/hostname", format!("{hostname}\n")),
        (
            "etc/hosts",
            format!("127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost\n"),
        ),
    ] {
        ops.push(MountOp::WriteFile {
            path: inside(name),
            contents: contents.into_bytes(),
        });
    }
    ops.push(MountOp::Mkdir {
        path: inside("dev"),
        mode: 0o755,
    });
    for node in &host.dev_nodes {
        let target = inside(&format!("dev/{node}"));
        ops.push(MountOp::Touch {
            path: target.clone(),
        });
        // Device nodes stay writable (`> /dev/null` must work); the mount keeps host flags.
        ops.push(MountOp::Bind {
            source: cstring(Path::new("/dev").join(node)),
            target,
            remount_flags: None,
        });
    }
    for (link, target) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
    ] {
        ops.push(MountOp::Symlink {
            target: cstring(target),
            link: inside(link),
        });
    }
    let tmp_size = config
        .limits
        .memory_bytes
        .map_or(1 << 30, |bytes| bytes.max(1 << 20));
    for dir in ["dev/shm", "tmp"] {
        ops.push(MountOp::Mkdir {
            path: inside(dir),
            mode: 0o1777,
        });
        ops.push(MountOp::Tmpfs {
            target: inside(dir),
            options: CString::new(format!("mode=1777,size={tmp_size}")).expect("no NUL"),
        });
    }
    ops.push(MountOp::Mkdir {
        path: inside("proc"),
        mode: 0o555,
    });
    ops.push(MountOp::Proc {
        target: inside("proc"),
    });
    for dir in ["home", "home/agent", "run", "var", "var/tmp"] {
        ops.push(MountOp::Mkdir {
            path: inside(dir),
            mode: 0o755,
        });
    }
    ops.push(MountOp::Home {
        source: cstring(home),
        target: inside("home/agent"),
        remount_flags: libc::MS_NOSUID | libc::MS_NODEV | locked_flags(home),
    });
    protect_ops(&mut ops, &config.protect, home, root, read_only(home));
    // Last, so a bind under /tmp lands on the sandbox's own /tmp.
    crate::binds::append_ops(&mut ops, binds, root, read_only);
    (ops, hostname)
}

#[repr(C)]
pub(crate) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

pub(crate) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The namespaces every sandbox's PID 1 is cloned into.
pub(crate) fn init_clone_flags() -> u64 {
    (libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC) as u64
}

/// A PID 1 cloned into its namespaces (and its v2 cgroup), its uid and gid maps written,
/// waiting for the go message on `control`. Setup, mounts and the v1 cgroups come after.
pub(crate) struct LaunchedInit {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub control: OwnedFd,
}

impl LaunchedInit {
    /// End a PID 1 that will not be used (or failed its setup) and reap it.
    pub(crate) fn abandon(&self) {
        pidfd_kill(&self.pidfd);
        // SAFETY: waiting on our own child (ECHILD at once when the zygote is its parent).
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PIDFD,
                self.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            );
        }
    }
}

/// The uid and gid the sandbox's root maps to on the host.
pub(crate) fn map_ids(host: &Host) -> (u32, u32) {
    if host.root {
        (SANDBOX_HOST_ID, SANDBOX_HOST_ID)
    } else {
        // SAFETY: getuid/getgid cannot fail.
        unsafe { (libc::getuid(), libc::getgid()) }
    }
}

/// Clone a PID 1 for `flat` (through the zygote when there is one) and write its id maps.
/// `join_fds` go with the clone; a plan sent later with the go message brings its own.
pub(crate) fn launch_init(
    flat: Vec<u8>,
    host: &Host,
    cgroups: Option<&SandboxCgroups>,
    join_fds: &[RawFd],
    zygote_only: bool,
) -> io::Result<Option<LaunchedInit>> {
    let context = |step: &'static str| {
        move |error: io::Error| io::Error::new(error.kind(), format!("{step}: {error}"))
    };
    ensure_staging(&host.staging).map_err(context("staging directory"))?;
    let (control_host, control_init) = seqpacket_pair().map_err(context("control socket"))?;
    let v2_fd = cgroups.and_then(|c| c.v2_fd());
    let from_zygote = crate::zygote::spawn_init(&flat, control_init.as_raw_fd(), v2_fd, join_fds);
    let (pid, pidfd) = match from_zygote {
        Some(result) => result.map_err(context("zygote clone3 with new namespaces"))?,
        None if zygote_only => return Ok(None),
        None => {
            // Only a direct clone needs init's buffers in this process (the zygote has its own).
            let flat_len = flat.len();
            let mut plan = InitPlan::new(flat, flat_len, control_init.as_raw_fd(), host.cap_last);
            plan.join_fds[..join_fds.len()].copy_from_slice(join_fds);
            clone_init(plan, v2_fd).map_err(context("clone3 with new namespaces"))?
        }
    };
    drop(control_init);
    let launched = LaunchedInit {
        pid,
        pidfd,
        control: control_host,
    };
    let (map_uid, map_gid) = map_ids(host);
    let write_map = |file: &str, contents: String| {
        std::fs::write(format!("/proc/{pid}/{file}"), contents)
            .map_err(|error| io::Error::new(error.kind(), format!("{file}: {error}")))
    };
    let mapped = (|| {
        if !host.root {
            write_map("setgroups", "deny".into())?;
        }
        write_map("uid_map", format!("0 {map_uid} 1\n"))?;
        write_map("gid_map", format!("0 {map_gid} 1\n"))?;
        if host.oom_protection {
            // PID 1 must not be the OOM killer's victim: the hog should be. Lowering a score
            // needs CAP_SYS_RESOURCE, which some hosts' root lacks (`Host::oom_protection`);
            // without it PID 1 stays at 0 and every exec starts at `EXEC_OOM_SCORE_ADJ`.
            write_map("oom_score_adj", "-1000".into())?;
        }
        Ok(())
    })();
    if let Err(error) = mapped {
        launched.abandon();
        return Err(error);
    }
    Ok(Some(launched))
}

fn spawn_init(
    config: &SandboxConfig,
    home: &Path,
    host: &Host,
    binds: &[ResolvedBind],
    cgroups: &mut Option<SandboxCgroups>,
) -> Result<LaunchedInit, SandboxError> {
    let io_error = |context: &str, source: io::Error| SandboxError::Io {
        context: format!("failed to create sandbox for {}: {context}", home.display()),
        source,
    };
    let (ops, hostname) = build_ops(config, home, host, binds);
    let flat = child::encode_plan(&cstring(&host.staging), hostname.as_bytes(), &ops);
    let cgroup_error = |error: crate::cgroup::CgroupError| {
        io_error(
            "cgroups",
            io::Error::new(error.source.kind(), error.to_string()),
        )
    };
    // A PID 1 cloned ahead of time (see `pool.rs`) takes its plan and cgroups with the go
    // message; otherwise one is cloned now with both.
    let (launched, go_with_plan) = match crate::pool::take(host, &config.limits, flat.len()) {
        Some((launched, prepared_cgroups)) => {
            *cgroups = prepared_cgroups;
            (launched, true)
        }
        None => {
            if host.root {
                *cgroups = Some(
                    SandboxCgroups::create(&host.layout, &config.limits).map_err(cgroup_error)?,
                );
            }
            // Init joins the v1 cgroups itself through these (see `InitPlan::join_fds`).
            let join_files = match cgroups {
                Some(cgroups) => cgroups.open_v1_tasks().map_err(cgroup_error)?,
                None => Vec::new(),
            };
            let join_fds: Vec<RawFd> = join_files.iter().map(|fd| fd.as_raw_fd()).collect();
            let launched = launch_init(flat.clone(), host, cgroups.as_ref(), &join_fds, false)
                .map_err(|e| io_error("launching init", e))?
                .expect("a direct clone when there is no zygote");
            (launched, false)
        }
    };
    let fail_and_kill = |context: &str, error: io::Error| {
        launched.abandon();
        io_error(context, error)
    };
    // The home goes as a detached mount where the host may make one (root): see
    // `child::GO_FLAG_HOME_TREE`.
    let home_tree = match config.home_idmap {
        Some(owner) => match idmapped_home(home, owner) {
            Ok(tree) => Some(tree),
            Err(error) => {
                return Err(fail_and_kill(
                    "mounting the project with an id mapping (the filesystem may not support \
                     idmapped mounts)",
                    error,
                ));
            }
        },
        None => detached_home(home),
    };
    let flags = if home_tree.is_some() {
        child::GO_FLAG_HOME_TREE
    } else {
        0
    };
    let sent = if go_with_plan {
        // The v1 cgroups were made just now (or with the PID 1): it joins them all itself.
        let join_files = match cgroups {
            Some(cgroups) => cgroups
                .open_v1_tasks()
                .map_err(|error| io::Error::new(error.source.kind(), error.to_string())),
            None => Ok(Vec::new()),
        };
        join_files.and_then(|files| {
            let fds: Vec<RawFd> = files
                .iter()
                .chain(&home_tree)
                .map(|fd| fd.as_raw_fd())
                .collect();
            let mut message = Vec::with_capacity(flat.len() + 2);
            message.extend_from_slice(child::GO_WITH_PLAN);
            message.push(flags);
            message.extend_from_slice(&flat);
            send_with_fds(launched.control.as_raw_fd(), &message, &fds)
        })
    } else {
        let fds: Vec<RawFd> = home_tree.iter().map(|fd| fd.as_raw_fd()).collect();
        let message = [child::GO_MESSAGE[0], flags];
        send_with_fds(launched.control.as_raw_fd(), &message, &fds)
    };
    if let Err(error) = sent {
        return Err(fail_and_kill("starting init", error));
    }
    let mut reply = [0u8; 16];
    // SAFETY: receiving into a valid buffer.
    let n = unsafe {
        libc::recv(
            launched.control.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if n == 1 && &reply[..1] == child::READY_MESSAGE {
        return Ok(launched);
    }
    let detail = if n == 9 && reply[0] == b'E' {
        let step = u32::from_le_bytes(reply[1..5].try_into().expect("4 bytes"));
        let errno = i32::from_le_bytes(reply[5..9].try_into().expect("4 bytes"));
        (
            step_name(step, &plan_description(config, home, host, binds, step)),
            io::Error::from_raw_os_error(errno),
        )
    } else {
        (
            "init exited during setup".to_string(),
            io::Error::other("no ready message"),
        )
    };
    Err(fail_and_kill(&detail.0, detail.1))
}

/// The home as a detached mount (`open_tree` with `OPEN_TREE_CLONE`), nosuid and nodev, or
/// `None` where this process may not make one (not root), and init binds the path instead.
fn detached_home(home: &Path) -> Option<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let path = cstring(home);
    // SAFETY: open_tree on a valid C string; the fd it returns is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attributes = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr on our detached mount with a valid attribute struct.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attributes as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    (set == 0).then_some(tree)
}

/// The project directory `home` as a detached mount (nosuid, nodev) whose id mapping shows
/// files of its owner `(uid, gid)` as the sandbox's user's, and stores what that user creates
/// as the owner's: the project is the agent's inside and stays the operator's on the host.
fn idmapped_home(home: &Path, (uid, gid): (u32, u32)) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let namespace = mapping_namespace(
        &format!("{uid} {SANDBOX_HOST_ID} 1\n"),
        &format!("{gid} {SANDBOX_HOST_ID} 1\n"),
    )?;
    let path = cstring(home);
    // SAFETY: open_tree on a valid C string; the fd it returns is owned below. Not
    // recursive: an id mapping applies to one mount, and mounts below the project stay out.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attributes = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: namespace.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on our detached mount with a valid attribute struct.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint & !AT_RECURSIVE,
            &attributes as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// A user namespace with the given id maps, held by an fd: a child is cloned into a new
/// user namespace, its maps written, the namespace opened, and the child let go.
fn mapping_namespace(uid_map: &str, gid_map: &str) -> io::Result<std::fs::File> {
    let (release_read, release_write) = pipe()?;
    let write_end = release_write.as_raw_fd();
    // SAFETY: a raw clone without a new stack acts as fork; the child only blocks on a read
    // of the pipe and exits, touching no memory the parent's threads could hold locked.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let mut byte = 0u8;
        // SAFETY: async-signal-safe calls only, on fds inherited from the parent. The child's
        // copy of the write end goes first, so that the parent's close is the end of input.
        unsafe {
            libc::close(write_end);
            libc::read(release_read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(release_read);
    let pid = pid as i32;
    let result = (|| {
        std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)?;
        std::fs::write(format!("/proc/{pid}/setgroups"), "deny")?;
        std::fs::write(format!("/proc/{pid}/gid_map"), gid_map)?;
        std::fs::File::open(format!("/proc/{pid}/ns/user"))
    })();
    drop(release_write);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result
}

/// Clone PID 1 straight from this process (when there is no zygote).
fn clone_init(mut plan: InitPlan, v2_fd: Option<RawFd>) -> io::Result<(i32, OwnedFd)> {
    let mut pidfd: libc::c_int = -1;
    let mut flags = init_clone_flags() | libc::CLONE_PIDFD as u64;
    if v2_fd.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let args = CloneArgs {
        flags,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: v2_fd.unwrap_or(0) as u64,
    };
    // PID 1 is cloned straight from the calling thread, without a parent-death signal (that
    // would follow this thread, which may be a short-lived blocking worker). PID 1 ends when
    // the host side of the control socket closes instead, which happens when the `Sandbox`
    // is dropped or this process dies in any way.
    // SAFETY: clone3 without CLONE_VM forks this thread; the child only runs `init_main`,
    // which uses memory prepared before the clone and raw syscalls (see child.rs).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: we are the freshly cloned child.
        unsafe { child::init_main(&mut plan) }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(plan);
    // SAFETY: clone3 stored a fresh pidfd owned by nobody else.
    Ok((pid as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// What mount step `step` was, in words, for error messages.
fn plan_description(
    config: &SandboxConfig,
    home: &Path,
    host: &Host,
    binds: &[ResolvedBind],
    step: u32,
) -> String {
    let (ops, _) = build_ops(config, home, host, binds);
    match ops.get(step as usize) {
        Some(MountOp::Mkdir { path, .. }) => format!("mkdir {path:?}"),
        Some(MountOp::Touch { path }) => format!("create {path:?}"),
        Some(MountOp::Symlink { link, .. }) => format!("symlink {link:?}"),
        Some(MountOp::WriteFile { path, .. }) => format!("write {path:?}"),
        Some(MountOp::Bind { source, target, .. }) => format!("bind {source:?} on {target:?}"),
        Some(MountOp::Tmpfs { target, .. }) => format!("tmpfs on {target:?}"),
        Some(MountOp::Proc { target }) => format!("proc on {target:?}"),
        Some(MountOp::Home { source, target, .. }) => format!("home {source:?} on {target:?}"),
        None => String::new(),
    }
}

fn step_name(step: u32, op: &str) -> String {
    match step {
        child::STEP_SYNC => "init sync".into(),
        child::STEP_IDS => "setting ids in the user namespace".into(),
        child::STEP_PRIVATE => "making mounts private".into(),
        child::STEP_ROOT_TMPFS => "mounting the root tmpfs".into(),
        child::STEP_HOSTNAME => "setting the hostname".into(),
        child::STEP_LOOPBACK => "bringing loopback up".into(),
        child::STEP_PIVOT => "pivot_root".into(),
        child::STEP_READONLY_ROOT => "remounting the root read-only".into(),
        child::STEP_SIGNALS => "signal setup".into(),
        child::STEP_CGROUPS => "joining the v1 cgroups and a cgroup namespace".into(),
        _ => format!("mount step {step} ({op})"),
    }
}

fn ensure_staging(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() && !meta.file_type().is_symlink() => {
            // SAFETY: geteuid cannot fail.
            if std::os::unix::fs::MetadataExt::uid(&meta) != unsafe { libc::geteuid() } {
                return Err(io::Error::other(format!(
                    "{} is owned by someone else",
                    path.display()
                )));
            }
            Ok(())
        }
        Ok(_) => Err(io::Error::other(format!(
            "{} exists and is not a directory",
            path.display()
        ))),
        Err(_) => {
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o700).create(path) {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(error) => Err(error),
            }
        }
    }
}

/// Give the home to the sandbox's uid, without following symlinks, bounded.
fn chown_tree(home: &Path, uid: u32, gid: u32) {
    let mut stack = vec![home.to_path_buf()];
    let mut seen = 0usize;
    while let Some(path) = stack.pop() {
        seen += 1;
        if seen > crate::snapshot::MAX_ENTRIES {
            tracing::warn!(
                "stopped giving {} to the sandbox user after {seen} entries",
                home.display()
            );
            return;
        }
        let _ = std::os::unix::fs::lchown(&path, Some(uid), Some(gid));
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
}

/// Processes in the PID namespace `namespace` or in any namespace nested in it (the agent can
/// create those with `unshare -p`; they die with the sandbox's PID 1 but must still be counted).
fn namespace_processes(namespace: u64) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::fs::metadata("/proc/self/ns/pid").map_or(0, |meta| meta.ino());
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            // A zombie has no namespaces left to stat, so it is not counted: it is dead.
            let path = e.path().join("ns/pid");
            let inode = std::fs::metadata(&path).ok()?.ino();
            let inside = inode == namespace || (inode != own && nested_in(&path, namespace, own));
            inside.then_some(pid)
        })
        .collect()
}

/// Whether the PID namespace at `path` descends from `namespace`, walking up its parents
/// until `namespace`, our own namespace, or the top.
fn nested_in(path: &Path, namespace: u64, own: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    const NS_GET_PARENT: libc::c_ulong = 0xb702;
    let Ok(mut current) = std::fs::File::open(path) else {
        return false;
    };
    loop {
        // SAFETY: an ioctl without arguments on a namespace fd we own; it returns a new fd.
        let parent = unsafe { libc::ioctl(current.as_raw_fd(), NS_GET_PARENT) };
        if parent < 0 {
            return false;
        }
        // SAFETY: a fresh fd owned by nobody else.
        current = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(parent) });
        match current.metadata().map(|meta| meta.ino()) {
            Ok(inode) if inode == namespace => return true,
            Ok(inode) if inode != own => {}
            _ => return false,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn short(command: &str) -> String {
    command.chars().take(60).collect()
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a valid array; both fds are owned below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair into a valid array; both fds are owned below.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

fn poll_entry(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut entry = [poll_entry(fd, libc::POLLIN)];
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: valid pollfd array.
        let ready = unsafe {
            libc::poll(
                entry.as_mut_ptr(),
                1,
                left.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if ready > 0 {
            return true;
        }
        if ready == 0 || Instant::now() >= deadline {
            return false;
        }
    }
}

/// Read what the pipe holds now; false once it is at EOF (every writer closed) or broken.
fn drain(fd: &OwnedFd, sink: &mut HeadTail, tee: &mut Option<crate::Tee>) -> bool {
    let mut buffer = [0u8; 65536];
    loop {
        // SAFETY: reading into a valid buffer from a non-blocking fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if n > 0 {
            sink.push(&buffer[..n as usize]);
            if let Some(tee) = tee {
                tee(&buffer[..n as usize]);
            }
            continue;
        }
        return n < 0
            && matches!(
                io::Error::last_os_error().kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            );
    }
}

pub(crate) fn send_with_fds(socket: RawFd, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut space = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: building a msghdr over buffers that outlive the sendmsg call.
    unsafe {
        let mut header: libc::msghdr = std::mem::zeroed();
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = space.as_mut_ptr().cast();
        let data_len = std::mem::size_of_val(fds) as u32;
        header.msg_controllen = libc::CMSG_SPACE(data_len) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&header);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg) as *mut RawFd, fds.len());
        if libc::sendmsg(socket, &header, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

enum Reply {
    Started(OwnedFd),
    Status([u8; child::STATUS_RECORD]),
    Closed,
    Nothing,
}

fn receive_reply(socket: RawFd) -> Reply {
    let mut buffer = [0u8; 64];
    match recv_with_fd(socket, &mut buffer, libc::MSG_DONTWAIT) {
        Ok((0, _)) => Reply::Closed,
        Ok((4, Some(fd))) => Reply::Started(fd),
        Ok((child::STATUS_RECORD, _)) => {
            let mut record = [0u8; child::STATUS_RECORD];
            record.copy_from_slice(&buffer[..child::STATUS_RECORD]);
            Reply::Status(record)
        }
        Ok(_) => Reply::Nothing,
        Err(error) => match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Reply::Nothing,
            _ => Reply::Closed,
        },
    }
}

/// Receive one message into `buffer` on the host side, with the descriptor it carries if any
/// (close-on-exec). Any further descriptors are closed, not leaked. Returns the message length
/// (0: the peer closed) and the descriptor.
pub(crate) fn recv_with_fd(
    socket: RawFd,
    buffer: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: recvmsg into buffers that outlive the call; every received fd is owned below.
    unsafe {
        let mut header: libc::msghdr = std::mem::zeroed();
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = space.as_mut_ptr().cast();
        header.msg_controllen = std::mem::size_of_val(&space) as _;
        let n = libc::recvmsg(socket, &mut header, flags | libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fds = [-1; 4];
        let count = child::received_fds(&header, &mut fds);
        // Owned at once, so the ones after the first are closed when the rest drops.
        let first = fds[..count]
            .iter()
            .map(|&fd| OwnedFd::from_raw_fd(fd))
            .collect::<Vec<_>>()
            .into_iter()
            .next();
        Ok((n as usize, first))
    }
}

/// The host pid of the process behind a pidfd (`None` once it has been reaped).
fn pidfd_host_pid(pidfd: &OwnedFd) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("Pid:"))
                .and_then(|pid| pid.trim().parse::<i32>().ok())
        })
        .filter(|&pid| pid > 0)
}

/// The name a limit has in events and outcomes.
pub(crate) fn limit_name(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::Memory => "memory",
        LimitKind::Processes => "processes",
        LimitKind::CpuTime => "cpu_time",
        LimitKind::WallTime => "wall_time",
        LimitKind::Disk => "disk",
    }
}

/// Whether sandboxes created from now on record their event stream (on by default).
static RECORD_EVENTS: AtomicBool = AtomicBool::new(true);

/// Turn the event stream of sandboxes created from now on off or back on. Off, every stream
/// is unavailable and says so, so every label that needs it is indeterminate: this exists to
/// measure what recording costs (`cargo bench --bench events`), not to run trials without it.
pub fn set_event_recording(on: bool) {
    RECORD_EVENTS.store(on, Ordering::Relaxed);
}

/// Start recording the sandbox's events: its cgroup, its PID 1, and the filesystems it can
/// write that are its own (a home that is not a volume of its own is the host's filesystem,
/// which cannot be watched for this sandbox alone). `Err` says why there is no stream.
fn start_watch(
    shared: &Shared,
    home: &Path,
    hostname: &str,
    watch_opens: &[PathBuf],
) -> Result<offswitch_events::Watch, String> {
    if !RECORD_EVENTS.load(Ordering::Relaxed) {
        return Err("event recording was turned off (set_event_recording)".into());
    }
    let cgroup = shared
        .cgroups
        .as_ref()
        .and_then(|cgroups| cgroups.v2_path())
        .ok_or("no cgroup v2 hierarchy to filter by (not root, or a v1-only host)")?;
    let root = PathBuf::from(format!("/proc/{}/root", shared.init_pid));
    let mut filesystems = vec![
        ("/tmp".to_owned(), root.join("tmp")),
        ("/dev/shm".to_owned(), root.join("dev/shm")),
    ];
    let mut unwatched = Vec::new();
    if crate::volume::is_mount_point(home) {
        filesystems.insert(0, ("/home/agent".to_owned(), home.to_path_buf()));
    } else {
        unwatched.push((
            "/home/agent".to_owned(),
            "the home is a directory of the host's filesystem, not a volume of its own".to_owned(),
        ));
    }
    let spec = offswitch_events::WatchSpec {
        host: if hostname.is_empty() {
            "sandbox".into()
        } else {
            hostname.to_owned()
        },
        cgroup: cgroup.to_path_buf(),
        init: shared.init_pid as u32,
        filesystems,
        unwatched,
        opens: opens_under_home(home, watch_opens),
    };
    let watch = offswitch_events::Watch::start(&spec);
    if let Err(why) = &watch {
        static NO_EVENTS: AtomicBool = AtomicBool::new(false);
        warn_once(
            &NO_EVENTS,
            &format!("no event stream ({why}): labels that rest on it are indeterminate"),
        );
    }
    watch
}

/// The host path of each file under the home whose opens are watched. A path outside the home,
/// or with a `..`, is kept with a path that cannot exist, so the stream lists it as unwatched.
fn opens_under_home(home: &Path, inside: &[PathBuf]) -> Vec<(String, PathBuf)> {
    inside
        .iter()
        .map(|path| {
            let name = path.to_string_lossy().into_owned();
            let host = path
                .strip_prefix("/home/agent")
                .ok()
                .filter(|rest| {
                    rest.components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
                })
                .map_or_else(
                    || PathBuf::from("/nonexistent/outside-the-home"),
                    |rest| home.join(rest),
                );
            (name, host)
        })
        .collect()
}

/// Kill a timed-out exec: its shell and its process group (it is a session leader). Processes
/// that left the session survive until the sandbox is killed; that is the off-switch's job.
fn kill_exec_tree(pidfd: &OwnedFd) {
    let host_pid = pidfd_host_pid(pidfd);
    if let Some(pid) = host_pid {
        // SAFETY: signalling; no memory-safety preconditions.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    pidfd_kill(pidfd);
}

/// SIGKILL the process behind a pidfd (a pidfd cannot reach a recycled pid).
fn pidfd_kill(pidfd: &OwnedFd) {
    // SAFETY: signalling through a pidfd we own; no memory-safety preconditions.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use crate::{
        ExecRequest, ExecStatus, Limits, NetworkMode, Sandbox, SandboxConfig, SandboxState,
    };

    fn sandbox(dir: &std::path::Path) -> Sandbox {
        Sandbox::create(SandboxConfig {
            home: dir.join("home"),
            limits: Limits::default(),
            network: NetworkMode::LoopbackOnly,
            env: Vec::new(),
            hostname: "unit".into(),
            ro_binds: Vec::new(),
            protect: Vec::new(),
            home_idmap: None,
            watch_opens: Vec::new(),
        })
        .expect("create sandbox")
    }

    fn exec(sandbox: &Sandbox, command: String) -> Result<ExecStatus, crate::SandboxError> {
        sandbox
            .exec(&ExecRequest {
                command,
                stdin: Vec::new(),
                timeout: Duration::from_secs(20),
                output_cap: 4096,
            })
            .map(|result| result.status)
    }

    /// A request the host fails to send while init is alive is the host's fault: the exec
    /// fails and the sandbox runs on. It used to be taken for init's death, and ten seconds
    /// later the sandbox ended as `Killed`, which a study would count as an outside kill.
    #[test]
    fn a_failed_send_to_a_live_init_is_an_error_not_a_kill() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = sandbox(dir.path());
        // A send buffer far below a request's size makes sendmsg fail with EMSGSIZE, as a
        // host with a small net.core.wmem_default would for large commands.
        let small: libc::c_int = 4096;
        // SAFETY: setsockopt on a socket we own with a valid int option.
        let set = unsafe {
            libc::setsockopt(
                sandbox.shared.control.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
        let error = exec(&sandbox, format!("true {}", "x".repeat(32 * 1024)))
            .expect_err("the request cannot be sent");
        assert!(
            error.to_string().contains("failed to send the request"),
            "{error}"
        );
        assert_eq!(sandbox.state(), SandboxState::Running);
        assert_eq!(
            exec(&sandbox, "true".into()).unwrap(),
            ExecStatus::Exited(0)
        );
    }

    /// PID 1 gone with its shutdown request still queued: however the host learns of it,
    /// the request decides the state.
    #[test]
    fn a_queued_shutdown_request_outlives_init() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = sandbox(dir.path());
        {
            // Hold the off-switch so the monitor cannot act on the request yet, then let PID 1
            // ask to shut down and die at once, as when something kills it right after.
            let _held = super::lock(&sandbox.shared.termination);
            // SAFETY: signalling through a pidfd we own.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    sandbox.shared.init_pidfd.as_raw_fd(),
                    libc::SIGTERM,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
            // Wait until init has queued its request on the control socket.
            let queued_by = std::time::Instant::now() + Duration::from_secs(20);
            while !control_readable(&sandbox) && std::time::Instant::now() < queued_by {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(control_readable(&sandbox), "init never asked to shut down");
            super::pidfd_kill(&sandbox.shared.init_pidfd);
            assert!(super::wait_readable(
                sandbox.shared.init_pidfd.as_raw_fd(),
                Duration::from_secs(20)
            ));
        }
        // The monitor now sees both the request and the death; so does an exec.
        assert_eq!(
            exec(&sandbox, "true".into()).unwrap(),
            ExecStatus::SandboxShutDown
        );
        assert_eq!(sandbox.state(), SandboxState::ShutDownFromInside);
    }

    fn control_readable(sandbox: &Sandbox) -> bool {
        let mut entry = [super::poll_entry(
            sandbox.shared.control.as_raw_fd(),
            libc::POLLIN,
        )];
        // SAFETY: a valid pollfd array, zero timeout.
        unsafe { libc::poll(entry.as_mut_ptr(), 1, 0) > 0 }
    }
}
