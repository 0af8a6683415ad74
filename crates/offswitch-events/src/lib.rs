//! What the kernel saw happen inside each sandbox, recorded from outside it: the event stream
//! every label, live monitor and audit log of offswitch reads.
//!
//! Two kernel mechanisms, chosen by measuring them on the machines offswitch runs on (see
//! ARCHITECTURE.md):
//! - **eBPF** (`bpf/offswitch.bpf.c`, loaded with aya): every exec with the binary actually
//!   mapped and the argv read from the new image before it runs, forks and exits, signals to
//!   the sandbox's PID 1 with their sender, connects, binds and listens. Filtered in the
//!   kernel by the sandbox's cgroup, written to a ring buffer that counts what it could not
//!   take, per sandbox.
//! - **fanotify** (`files.rs`): every file mutation on the filesystems the sandbox can write
//!   (its home volume, its `/tmp` and `/dev/shm`), with the acting process.
//!
//! Nothing inside a sandbox can reach either: the programs and the fanotify group belong to
//! this (host) process, and the seccomp filter refuses `bpf`, `perf_event_open` and
//! `fanotify_init` to everything inside. What is lost is said: a stream lists its losses by
//! source, and a host where the kernel side cannot load gets no stream and one reason.
//!
//! A "host pid" here is a pid in this process's own pid namespace: what `/proc`, its children's
//! pids and fanotify call a process. The BPF programs see the kernel's pids and translate them
//! when this process runs in a pid namespace of its own (a container without the host's pids).

mod bpf;
mod files;
mod opens;
mod records;
mod stream;
mod syscalls;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub use offswitch_core::events::{Event, EventKind, EventSource, EventStream, FileOp, Loss, NetOp};

use crate::bpf::{Kernel, Sink};
pub use crate::stream::Live;
use crate::stream::{Collector, Subscriber};

/// How often a watch drains its fanotify queue.
const FILE_POLL: Duration = Duration::from_millis(10);

/// A read of at least this many file events means a burst: the reader then waits [`BURST_WAIT`]
/// before it reads again, instead of being woken by the next event.
const BURST: usize = 64;

/// How long the reader lets a burst of file events queue up. A reader woken for every event
/// makes every write in the sandbox pay for a wake-up (measured: about a third of the file-heavy
/// workload's recording cost, BENCHMARKS.md); a queued event costs the writer nothing more.
/// A quiet sandbox's events are still read as they come.
const BURST_WAIT: Duration = Duration::from_millis(2);

/// What to watch: one sandbox.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// The sandbox's name in its stream (the agent's hostname, or another host's name).
    pub host: String,
    /// The sandbox's cgroup in the v2 hierarchy: every process in it or below is recorded.
    pub cgroup: PathBuf,
    /// The host pid of the sandbox's PID 1 (signals to it are recorded, whoever sends them).
    pub init: u32,
    /// The filesystems the sandbox can write: where it sees each one's root (`/home/agent`),
    /// and a host path to that root (the home volume, `/proc/<PID 1>/root/tmp`).
    pub filesystems: Vec<(String, PathBuf)>,
    /// Places the sandbox can write whose file events cannot be recorded, with why: the
    /// stream then lists a file loss for each, so no label reads their silence as "nothing
    /// happened".
    pub unwatched: Vec<(String, String)>,
    /// Regular files whose opens are recorded (`EventKind::Open`): the path inside the sandbox
    /// and a host path to the file. At most `MAX_WATCHED_OPENS`; one that cannot be watched
    /// is listed as a file loss with why.
    pub opens: Vec<(String, PathBuf)>,
}

pub use crate::opens::MAX_WATCHED_OPENS;

/// `Ok` when `/proc` belongs to this process's pid namespace, as everything that looks a
/// process up by the pid this process knows it by (a sandbox's PID 1, the harness's commands,
/// the recorder's records) needs. Under `unshare --pid` without `--mount-proc`, or in a
/// container that kept another namespace's `/proc`, it would name other processes.
pub fn proc_is_this_namespaces() -> Result<(), String> {
    let me = std::process::id();
    let seen = std::fs::read_link("/proc/self").map_err(|e| format!("reading /proc/self: {e}"))?;
    if seen.to_str() == Some(me.to_string().as_str()) {
        return Ok(());
    }
    Err(format!(
        "/proc belongs to another pid namespace than this process's (/proc/self is {}, this \
         process is {me}): mount a proc of this process's namespace (unshare --mount-proc)",
        seen.display()
    ))
}

/// Whether this process runs in a pid namespace of its own rather than the host's (a container
/// without the host's pids): the recorder then writes every pid as this namespace sees it.
pub fn in_own_pid_namespace() -> bool {
    bpf::reader_pid_namespace().is_ok_and(|inum| inum != 0)
}

/// Whether streams can be recorded on this host; `Err` says why not.
pub fn available() -> Result<(), String> {
    bpf::kernel().map(|_| ())
}

/// Start loading the kernel recorder in the background, so that a program with other things
/// to do before its first sandbox (a guard reading its policy and opening its audit log)
/// does them meanwhile; the first [`Watch::start`] waits for the load to end. Loading takes
/// a few hundred milliseconds of kernel verification (BENCHMARKS.md).
pub fn prepare() {
    let _ = std::thread::Builder::new()
        .name("offswitch-events-load".into())
        .spawn(|| {
            let _ = bpf::kernel();
        });
}

/// The recording of one sandbox, from `start` to `finish`.
pub struct Watch {
    kernel: &'static Kernel,
    cgroup_id: u64,
    init: u32,
    links: Vec<(
        String,
        aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId,
    )>,
    collector: Arc<Mutex<Option<Collector>>>,
    files: Option<(Arc<Stop>, JoinHandle<()>)>,
    unattributed_at_start: u64,
    unwatched: Vec<(String, String)>,
}

impl Watch {
    /// Start recording the sandbox `spec` describes. Call before anything runs in it (the
    /// kernel records from the moment its cgroup is watched).
    pub fn start(spec: &WatchSpec) -> Result<Watch, String> {
        let kernel = bpf::kernel()?;
        let cgroup = std::fs::File::open(&spec.cgroup)
            .map_err(|e| format!("opening the cgroup {}: {e}", spec.cgroup.display()))?;
        let cgroup_id = cgroup
            .metadata()
            .map_err(|e| format!("the cgroup {}: {e}", spec.cgroup.display()))?
            .ino();
        let mut mounts = Vec::new();
        let mut files = files::FileWatch::new().map_err(|e| format!("fanotify_init: {e}"))?;
        for (inside, host_path) in &spec.filesystems {
            let device = std::fs::metadata(host_path)
                .map_err(|e| format!("{}: {e}", host_path.display()))?
                .dev();
            mounts.push(((libc::major(device), libc::minor(device)), inside.clone()));
            files
                .add(inside, host_path)
                .map_err(|e| format!("watching {} ({inside}): {e}", host_path.display()))?;
        }
        let mut unwatched = spec.unwatched.clone();
        let opens = if spec.opens.is_empty() {
            None
        } else {
            let mut opens =
                opens::OpenWatch::new().map_err(|e| format!("fanotify_init for opens: {e}"))?;
            for (inside, host_path) in &spec.opens {
                if let Err(error) = opens.add(inside, host_path) {
                    unwatched.push((
                        inside.clone(),
                        format!("its opens cannot be watched ({error})"),
                    ));
                }
            }
            Some(opens)
        };
        let collector = Arc::new(Mutex::new(Some(Collector::new(
            &spec.host,
            monotonic_ns(),
            spec.init,
            mounts,
        ))));
        let sink: Arc<dyn Sink> = Arc::new(CollectorSink(Arc::clone(&collector)));
        let (_, unattributed_at_start) = kernel.lost(cgroup_id);
        let links = kernel.watch(&cgroup, cgroup_id, spec.init, sink)?;
        let stop = match Stop::new() {
            Ok(stop) => Arc::new(stop),
            Err(error) => {
                kernel.unwatch(cgroup_id, spec.init, links);
                return Err(format!("no eventfd to stop the file reader: {error}"));
            }
        };
        let reader = {
            let stop = Arc::clone(&stop);
            let collector = Arc::clone(&collector);
            let ring = RingLosses {
                kernel,
                cgroup_id,
                seen: kernel.lost(cgroup_id).0,
            };
            std::thread::Builder::new()
                .name("offswitch-files".into())
                .spawn(move || read_files(files, opens, &collector, &stop, ring))
        };
        let reader = match reader {
            Ok(reader) => reader,
            Err(error) => {
                kernel.unwatch(cgroup_id, spec.init, links);
                return Err(format!("no thread to read file events: {error}"));
            }
        };
        Ok(Watch {
            kernel,
            cgroup_id,
            init: spec.init,
            links,
            collector,
            files: Some((stop, reader)),
            unattributed_at_start,
            unwatched,
        })
    }

    /// The process with host pid `host_pid` (and everything it starts) runs a command of the
    /// harness's, not the agent's: its events are marked so.
    pub fn mark_harness(&self, host_pid: u32) {
        if let Some(collector) = lock(&self.collector).as_mut() {
            collector.mark_harness(host_pid);
        }
    }

    /// Receive every event from now on as it is recorded, and every loss as it happens, until
    /// the stream is finished (then `Subscription::next` returns `None`). At most `capacity`
    /// items wait; past that the subscription reports what it missed as a loss, so a slow
    /// reader never blocks the recording and never reads a gap as silence.
    pub fn subscribe(&self, capacity: usize) -> Subscription {
        let (sender, receiver) = tokio::sync::mpsc::channel(capacity.max(1));
        let missed: Arc<[std::sync::atomic::AtomicU64; 2]> = Arc::default();
        if let Some(collector) = lock(&self.collector).as_mut() {
            collector.subscribe(Subscriber {
                sender,
                missed: Arc::clone(&missed),
            });
        }
        Subscription {
            receiver,
            missed,
            reported: [0; 2],
            ahead: None,
        }
    }

    /// A limit of the sandbox was hit (`memory`, `processes`, `disk`, ...).
    pub fn limit(&self, limit: &str) {
        if let Some(collector) = lock(&self.collector).as_mut() {
            collector.limit(limit, monotonic_ns());
        }
    }

    /// Stop recording and return the stream. Call once nothing runs in the sandbox any more
    /// (after its kill), so that nothing it did is missed.
    pub fn finish(mut self) -> EventStream {
        self.stop()
    }

    fn stop(&mut self) -> EventStream {
        if let Some((stop, reader)) = self.files.take() {
            stop.raise();
            let _ = reader.join();
        }
        // Every record written before now reaches the collector.
        self.kernel.sync();
        let (lost, unattributed) = self.kernel.lost(self.cgroup_id);
        self.kernel
            .unwatch(self.cgroup_id, self.init, std::mem::take(&mut self.links));
        let mut stream = match lock(&self.collector).take() {
            Some(collector) => collector.finish(
                lost,
                unattributed.saturating_sub(self.unattributed_at_start),
            ),
            None => EventStream::default(),
        };
        for (place, why) in &self.unwatched {
            stream.lost.push(Loss {
                source: EventSource::File,
                count: 0,
                detail: format!("file events under {place} were not recorded: {why}"),
            });
        }
        stream
    }
}

impl Drop for Watch {
    /// A stream nobody took: stop recording without waiting (the reader's last read, the
    /// kernel's detach and the fanotify group's release run on the janitor thread), so that
    /// tearing a sandbox down does not wait on the kernel's grace periods.
    fn drop(&mut self) {
        let files = self.files.take();
        let links = std::mem::take(&mut self.links);
        if files.is_none() && links.is_empty() {
            return;
        }
        if let Some((stop, _)) = &files {
            stop.raise();
        }
        let (kernel, cgroup_id, init) = (self.kernel, self.cgroup_id, self.init);
        janitor(Box::new(move || {
            if let Some((_, reader)) = files {
                let _ = reader.join();
            }
            kernel.unwatch(cgroup_id, init, links);
        }));
    }
}

/// A live view of one sandbox's stream (`Watch::subscribe`).
pub struct Subscription {
    receiver: tokio::sync::mpsc::Receiver<Live>,
    missed: Arc<[std::sync::atomic::AtomicU64; 2]>,
    reported: [u64; 2],
    /// An item read while a loss was still to be reported first.
    ahead: Option<Live>,
}

impl Subscription {
    /// The next event or loss; `None` once the stream is finished and everything was read.
    pub async fn next(&mut self) -> Option<Live> {
        if let Some(live) = self.ready() {
            return Some(live);
        }
        let live = self.receiver.recv().await;
        self.after(live)
    }

    /// The next event or loss, waiting on this thread (not in an async context).
    pub fn blocking_next(&mut self) -> Option<Live> {
        if let Some(live) = self.ready() {
            return Some(live);
        }
        let live = self.receiver.blocking_recv();
        self.after(live)
    }

    /// The next event or loss without waiting: `Ok(None)` when nothing is there yet,
    /// `Err(())` once the stream is finished and everything was read.
    #[expect(
        clippy::result_unit_err,
        reason = "the only error is the end of the stream"
    )]
    pub fn try_next(&mut self) -> Result<Option<Live>, ()> {
        if let Some(live) = self.ready() {
            return Ok(Some(live));
        }
        match self.receiver.try_recv() {
            Ok(live) => Ok(self.after(Some(live))),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Err(()),
        }
    }

    /// What is due before anything new: an item read ahead, or a loss not yet reported.
    fn ready(&mut self) -> Option<Live> {
        self.missed_loss()
            .map(Live::Lost)
            .or_else(|| self.ahead.take())
    }

    /// `live` just received: a loss that happened meanwhile is reported first (items that did
    /// not fit were newer than what was queued, so the loss belongs before what follows).
    fn after(&mut self, live: Option<Live>) -> Option<Live> {
        match (self.missed_loss(), live) {
            (Some(loss), Some(live)) => {
                self.ahead = Some(live);
                Some(Live::Lost(loss))
            }
            (Some(loss), None) => Some(Live::Lost(loss)),
            (None, live) => live,
        }
    }

    /// Items that did not fit since last reported, as one loss per source.
    fn missed_loss(&mut self) -> Option<Loss> {
        for (index, source) in [EventSource::Process, EventSource::File]
            .into_iter()
            .enumerate()
        {
            let missed = self.missed[index].load(Ordering::Relaxed);
            if missed > self.reported[index] {
                let count = missed - self.reported[index];
                self.reported[index] = missed;
                return Some(Loss {
                    source,
                    count,
                    detail: format!(
                        "this live subscriber fell behind by {count} {} events",
                        source.name()
                    ),
                });
            }
        }
        None
    }
}

/// The kernel's count of process records it could not take for one sandbox, followed live.
struct RingLosses {
    kernel: &'static Kernel,
    cgroup_id: u64,
    seen: u64,
}

impl RingLosses {
    fn check(&mut self, collector: &Mutex<Option<Collector>>) {
        let (lost, _) = self.kernel.lost(self.cgroup_id);
        if lost > self.seen {
            let count = lost - self.seen;
            self.seen = lost;
            if let Some(collector) = lock(collector).as_mut() {
                collector.lost_live(Loss {
                    source: EventSource::Process,
                    count,
                    detail: "the kernel's ring buffer was full".into(),
                });
            }
        }
    }
}

/// The file reader's stop signal: a flag, and an eventfd that wakes its `poll` at once.
struct Stop {
    raised: AtomicBool,
    wake: std::os::fd::OwnedFd,
}

impl Stop {
    fn new() -> std::io::Result<Stop> {
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Stop {
            raised: AtomicBool::new(false),
            // SAFETY: `fd` was just created and is owned by nobody else.
            wake: unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
        })
    }

    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd this struct owns.
        unsafe {
            libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&self.wake),
                (&one as *const u64).cast(),
                8,
            )
        };
    }

    fn raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }
}

/// A release for the janitor thread.
type Chore = Box<dyn FnOnce() + Send>;

/// Run `work` on the one janitor thread: releases that may wait on the kernel (a fanotify
/// group's marks, BPF links) without holding up whoever let go of them. Runs inline if the
/// thread cannot be had.
fn janitor(work: Chore) {
    static JANITOR: std::sync::OnceLock<Option<Mutex<std::sync::mpsc::Sender<Chore>>>> =
        std::sync::OnceLock::new();
    let sender = JANITOR.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<Chore>();
        std::thread::Builder::new()
            .name("offswitch-events-janitor".into())
            .spawn(move || {
                for work in receiver {
                    work();
                }
            })
            .ok()
            .map(|_| Mutex::new(sender))
    });
    let work = match sender {
        Some(sender) => match lock(sender).send(work) {
            Ok(()) => return,
            Err(std::sync::mpsc::SendError(work)) => work,
        },
        None => work,
    };
    work();
}

struct CollectorSink(Arc<Mutex<Option<Collector>>>);

impl Sink for CollectorSink {
    fn record(&self, record: records::Record) {
        if let Some(collector) = lock(&self.0).as_mut() {
            collector.record(record);
        }
    }
}

fn read_files(
    files: files::FileWatch,
    mut opens: Option<opens::OpenWatch>,
    collector: &Mutex<Option<Collector>>,
    stop: &Stop,
    mut ring: RingLosses,
) {
    let mut files = files;
    loop {
        let stopping = stop.raised();
        let batch = files.read();
        let burst = batch.events.len() >= BURST;
        let opened = opens
            .as_mut()
            .map(opens::OpenWatch::read)
            .unwrap_or_default();
        // A live subscriber gets each file event attributed when it is read: first let every
        // process record written before it arrive (a fork's child writes before the ring is
        // drained). Opens are kept only for processes the sandbox's records name, so they
        // always wait for the ring. Not under the collector's lock: the ring's reader takes it.
        let live = lock(collector)
            .as_ref()
            .is_some_and(Collector::has_subscribers);
        if (live && !batch.events.is_empty()) || !opened.events.is_empty() {
            ring.kernel.sync();
        }
        if (!batch.events.is_empty() || batch.overflows > 0 || batch.unresolved > 0)
            && let Some(collector) = lock(collector).as_mut()
        {
            collector.files(batch, monotonic_ns());
        }
        if (!opened.events.is_empty() || opened.overflows > 0)
            && let Some(collector) = lock(collector).as_mut()
        {
            collector.opens(opened, monotonic_ns());
        }
        ring.check(collector);
        if stopping {
            // Closing a fanotify group waits for the kernel to release its marks: not here.
            janitor(Box::new(move || {
                drop(files);
                drop(opens);
            }));
            return;
        }
        let opens_fd = opens.as_ref().map_or(-1, opens::OpenWatch::raw_fd);
        // In a burst, only the stop signal or the timeout ends the wait (a negative fd is
        // ignored by poll).
        let (files_fd, wait) = if burst {
            (-1, BURST_WAIT)
        } else {
            (files.raw_fd(), FILE_POLL)
        };
        let mut poll = [
            libc::pollfd {
                fd: files_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&stop.wake),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: opens_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: a valid pollfd array of three entries.
        unsafe { libc::poll(poll.as_mut_ptr(), 3, wait.as_millis() as i32) };
    }
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime into a zeroed timespec.
    let mut time: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time) };
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fanotify group made and marked exactly as a watch's, on the filesystem whose root is at
/// `root`, with nothing reading it: for benchmarks that separate what the kernel charges each
/// change in the sandbox from what the recorder's reader adds (the caller reads and discards the
/// events; with no reader the unlimited queue grows and the kernel's merge scans get longer).
pub fn bare_file_group(root: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    let mut files = files::FileWatch::new()?;
    files.add("/", root)?;
    Ok(files.into_fd())
}

/// The stream of a sandbox for which none could be recorded, saying why.
pub fn unavailable(host: &str, why: &str) -> EventStream {
    EventStream {
        host: host.to_owned(),
        unavailable: Some(why.to_owned()),
        ..EventStream::default()
    }
}
