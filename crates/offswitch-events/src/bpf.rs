//! The kernel side's loader and the reader of its ring buffer: one per process, shared by
//! every sandbox's watch.
//!
//! The object (`bpf/offswitch.bpf.c`, compiled by `build.rs`) is loaded once with aya, its
//! tracepoint programs attached for good; each watch adds its sandbox's cgroup id (and its
//! PID 1) to the filter maps and attaches the cgroup socket programs to its cgroup. One thread
//! drains the ring buffer every 10 ms (records are written without wake-ups: waking the reader
//! per record cost 20 µs a record on the machines measured, against 1 µs) and hands each record
//! to the watch of its sandbox.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr, Program};
use aya::{Btf, Ebpf, EbpfLoader};

use crate::records::{self, Record};

/// The object built from `bpf/offswitch.bpf.c`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/offswitch.bpf.o"));

/// Ring buffer size: a flood of 200,000 records a second of about 300 bytes leaves 50 ms
/// of slack for the reader; a loss beyond it is counted, never silent. The tests shrink it
/// with `OFFSWITCH_EVENTS_RING_BYTES` (a power of two, at least a page) to prove that.
const RING_BYTES: u32 = 32 << 20;
/// How often the reader drains the ring.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// `BPF_RB_NO_WAKEUP`: the programs never wake the reader, which polls.
const RB_NO_WAKEUP: u32 = 1;

/// (program, tracepoint) pairs attached once for the whole process; the first, the exec
/// program, is the costliest to load.
const TRACEPOINTS: &[(&str, &str)] = &[
    ("handle_exec", "sched_process_exec"),
    ("handle_fork", "sched_process_fork"),
    ("handle_exit", "sched_process_exit"),
    ("handle_signal_generate", "signal_generate"),
    ("handle_inet_sock_set_state", "inet_sock_set_state"),
    ("handle_sys_exit", "sys_exit"),
];

/// Socket programs attached to each sandbox's cgroup.
const CGROUP_PROGRAMS: &[&str] = &[
    "sock_connect4",
    "sock_connect6",
    "sock_bind4",
    "sock_bind6",
    "sock_sendmsg4",
    "sock_sendmsg6",
];

/// Load `programs` (tracepoint programs are attached for good, socket programs wait for
/// their cgroups).
fn load_programs(programs: Vec<(&str, &mut Program)>, btf: &Btf) -> Result<(), String> {
    for (name, program) in programs {
        if let Some(tracepoint) = TRACEPOINTS
            .iter()
            .find_map(|(n, t)| (*n == name).then_some(*t))
        {
            let program: &mut BtfTracePoint = program
                .try_into()
                .map_err(|e| format!("{name}: {}", chain(&e)))?;
            program
                .load(tracepoint, btf)
                .map_err(|e| format!("loading {name} on {tracepoint}: {}", chain(&e)))?;
            program
                .attach()
                .map_err(|e| format!("attaching {name} to {tracepoint}: {}", chain(&e)))?;
        } else {
            let program: &mut CgroupSockAddr = program
                .try_into()
                .map_err(|e| format!("{name}: {}", chain(&e)))?;
            program
                .load()
                .map_err(|e| format!("loading {name}: {}", chain(&e)))?;
        }
    }
    Ok(())
}

/// The inode number of the initial pid namespace (`PROC_PID_INIT_INO`, linux/proc_ns.h).
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// The pid namespace this process sees pids in, by inode number, 0 for the initial one (a
/// host, or a container sharing the host's pids). The programs write every host pid of a
/// record as a pid in this namespace, so that they name the processes this process knows by
/// those pids (its children, `/proc`, fanotify's records), wherever it runs.
///
/// `/proc` must be this namespace's: a sandbox's PID 1 and the harness's commands are found in
/// it by the pids this process knows them by.
pub(crate) fn reader_pid_namespace() -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt;
    crate::proc_is_this_namespaces()?;
    let inum = std::fs::metadata("/proc/self/ns/pid")
        .map_err(|e| format!("reading this process's pid namespace: {e}"))?
        .ino();
    if inum == INITIAL_PID_NAMESPACE {
        return Ok(0);
    }
    u32::try_from(inum).map_err(|_| format!("a pid namespace with inode number {inum}"))
}

/// Receives the records of one sandbox (its watch).
pub(crate) trait Sink: Send + Sync {
    fn record(&self, record: Record);
}

/// The loaded programs and the reader.
pub(crate) struct Kernel {
    ebpf: Mutex<Ebpf>,
    sinks: Mutex<Sinks>,
    /// Completed drain passes, and a wake-up for whoever waits for one.
    passes: Mutex<u64>,
    passed: Condvar,
    /// Passes someone is waiting for (`sync`), and the drain thread's wake-up: it drains at
    /// once instead of at the end of its pause.
    wanted: Mutex<u64>,
    wake: Condvar,
    /// Records that did not decode (a bug: every record the programs write decodes).
    pub(crate) malformed: AtomicU64,
}

#[derive(Default)]
struct Sinks {
    by_cgroup: HashMap<u64, Arc<dyn Sink>>,
    /// A sandbox's PID 1 (host pid) -> its cgroup id, for signals from outside.
    by_init: HashMap<u32, u64>,
}

/// The process's kernel recorder, loaded on first use; `Err` says why there is none here.
pub(crate) fn kernel() -> Result<&'static Kernel, String> {
    static KERNEL: OnceLock<Result<&'static Kernel, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let (kernel, ring) = Kernel::load()?;
            let kernel: &'static Kernel = Box::leak(Box::new(kernel));
            std::thread::Builder::new()
                .name("offswitch-events".into())
                .spawn(move || kernel.drain_forever(ring))
                .map_err(|e| format!("no thread to read the ring buffer: {e}"))?;
            Ok(kernel)
        })
        .clone()
}

impl Kernel {
    fn load() -> Result<(Kernel, RingBuf<MapData>), String> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: loading BPF programs needs CAP_BPF and CAP_PERFMON".into());
        }
        let btf = Btf::from_sys_fs()
            .map_err(|e| format!("no kernel BTF at /sys/kernel/btf/vmlinux: {e}"))?;
        let fail_closed: u32 = 0;
        let reader_ns_inum = reader_pid_namespace()?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("fail_closed", &fail_closed, true)
            .override_global("rb_flags", &RB_NO_WAKEUP, true)
            .override_global("reader_ns_inum", &reader_ns_inum, true)
            .map_max_entries("events", ring_bytes())
            .load(OBJECT)
            .map_err(|e| format!("loading the BPF object: {}", chain(&e)))?;
        // Two loaders at once: the kernel verifies and compiles each program in the thread
        // that loads it, and that is most of a guard's start (BENCHMARKS.md). The exec
        // program, the costliest, goes first in one and the rest in the other.
        let mut programs: HashMap<&str, &mut Program> = ebpf.programs_mut().collect();
        let mut first = Vec::new();
        let mut second = Vec::new();
        let names = TRACEPOINTS
            .iter()
            .map(|(name, _)| name)
            .chain(CGROUP_PROGRAMS);
        for (index, name) in names.enumerate() {
            let program = programs
                .remove(name)
                .ok_or_else(|| format!("the BPF object has no program {name}"))?;
            if index == 0 {
                first.push((*name, program));
            } else {
                second.push((*name, program));
            }
        }
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| load_programs(first, &btf));
            let b = load_programs(second, &btf);
            (a.join(), b)
        });
        a.map_err(|_| "a BPF loader thread panicked".to_owned())??;
        b?;
        {
            let mut refusable: Array<_, [u8; 4]> = Array::try_from(
                ebpf.map_mut("refusable")
                    .ok_or("the BPF object has no map refusable")?,
            )
            .map_err(|e| format!("the map refusable: {}", chain(&e)))?;
            for (number, _, how) in crate::syscalls::refusable() {
                refusable
                    .set(number as u32, how, 0)
                    .map_err(|e| format!("filling the map refusable: {}", chain(&e)))?;
            }
        }
        let ring = RingBuf::try_from(
            ebpf.take_map("events")
                .ok_or("the BPF object has no ring buffer")?,
        )
        .map_err(|e| format!("the ring buffer: {}", chain(&e)))?;
        let kernel = Kernel {
            ebpf: Mutex::new(ebpf),
            sinks: Mutex::new(Sinks::default()),
            passes: Mutex::new(0),
            passed: Condvar::new(),
            wanted: Mutex::new(0),
            wake: Condvar::new(),
            malformed: AtomicU64::new(0),
        };
        Ok((kernel, ring))
    }

    /// Route the records of `cgroup` (and signals to `init`) to `sink`, and attach the socket
    /// programs to the cgroup. The returned links are detached by `unwatch`.
    pub(crate) fn watch(
        &self,
        cgroup: &std::fs::File,
        cgroup_id: u64,
        init: u32,
        sink: Arc<dyn Sink>,
    ) -> Result<Vec<(String, CgroupSockAddrLinkId)>, String> {
        {
            let mut sinks = lock(&self.sinks);
            sinks.by_cgroup.insert(cgroup_id, sink);
            sinks.by_init.insert(init, cgroup_id);
        }
        let mut ebpf = lock(&self.ebpf);
        let result = (|| {
            let mut cgroups: BpfHashMap<_, u64, u8> = BpfHashMap::try_from(
                ebpf.map_mut("watched_cgroups")
                    .ok_or("no map watched_cgroups")?,
            )
            .map_err(|e| chain(&e))?;
            cgroups
                .insert(cgroup_id, 1, 0)
                .map_err(|e| format!("watching cgroup {cgroup_id}: {}", chain(&e)))?;
            let mut inits: BpfHashMap<_, u32, u64> =
                BpfHashMap::try_from(ebpf.map_mut("watched_pids").ok_or("no map watched_pids")?)
                    .map_err(|e| chain(&e))?;
            inits
                .insert(init, cgroup_id, 0)
                .map_err(|e| format!("watching PID 1 {init}: {}", chain(&e)))?;
            let mut links = Vec::new();
            for name in CGROUP_PROGRAMS {
                let program: &mut CgroupSockAddr = ebpf
                    .program_mut(name)
                    .ok_or_else(|| format!("no program {name}"))?
                    .try_into()
                    .map_err(|e| chain(&e))?;
                // Single: a link of its own per cgroup (AllowMultiple is refused here).
                let link = program
                    .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                    .map_err(|e| format!("attaching {name} to the cgroup: {}", chain(&e)))?;
                links.push(((*name).to_owned(), link));
            }
            Ok(links)
        })();
        if result.is_err() {
            drop(ebpf);
            self.unwatch(cgroup_id, init, Vec::new());
        }
        result
    }

    /// Stop routing `cgroup`'s records; detach its socket programs.
    pub(crate) fn unwatch(
        &self,
        cgroup_id: u64,
        init: u32,
        links: Vec<(String, CgroupSockAddrLinkId)>,
    ) {
        let mut ebpf = lock(&self.ebpf);
        for (name, link) in links {
            if let Some(program) = ebpf.program_mut(&name)
                && let Ok(program) = <&mut CgroupSockAddr>::try_from(program)
            {
                let _ = program.detach(link);
            }
        }
        if let Some(map) = ebpf.map_mut("watched_cgroups")
            && let Ok(mut cgroups) = BpfHashMap::<_, u64, u8>::try_from(map)
        {
            let _ = cgroups.remove(&cgroup_id);
        }
        if let Some(map) = ebpf.map_mut("watched_pids")
            && let Ok(mut inits) = BpfHashMap::<_, u32, u64>::try_from(map)
        {
            let _ = inits.remove(&init);
        }
        if let Some(map) = ebpf.map_mut("lost_by_sandbox")
            && let Ok(mut lost) = BpfHashMap::<_, u64, u64>::try_from(map)
        {
            let _ = lost.remove(&cgroup_id);
        }
        drop(ebpf);
        let mut sinks = lock(&self.sinks);
        sinks.by_cgroup.remove(&cgroup_id);
        sinks.by_init.remove(&init);
    }

    /// Records of `cgroup_id` the kernel could not write, and losses it could not attribute
    /// to any sandbox (which may have been this one's).
    pub(crate) fn lost(&self, cgroup_id: u64) -> (u64, u64) {
        let ebpf = lock(&self.ebpf);
        let own = ebpf
            .map("lost_by_sandbox")
            .and_then(|map| BpfHashMap::<_, u64, u64>::try_from(map).ok())
            .and_then(|lost| lost.get(&cgroup_id, 0).ok())
            .unwrap_or(0);
        let unattributed = ebpf
            .map("stats")
            .and_then(|map| Array::<_, u64>::try_from(map).ok())
            .and_then(|stats| stats.get(&records::STAT_LOST_UNATTRIBUTED, 0).ok())
            .unwrap_or(0);
        (own, unattributed)
    }

    /// Wait until the reader has drained the ring at least once after this call, so that
    /// every record written before it has reached its sink.
    pub(crate) fn sync(&self) {
        let mut passes = lock(&self.passes);
        let target = *passes + 2;
        {
            let mut wanted = lock(&self.wanted);
            *wanted = (*wanted).max(target);
            self.wake.notify_all();
        }
        while *passes < target {
            let (next, timeout) = self
                .passed
                .wait_timeout(passes, Duration::from_secs(5))
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            passes = next;
            if timeout.timed_out() {
                tracing::warn!("the event reader did not finish a pass in 5 s");
                return;
            }
        }
    }

    fn drain_forever(&self, mut ring: RingBuf<MapData>) {
        loop {
            while let Some(item) = ring.next() {
                match records::decode(&item) {
                    Some(record) => self.route(record),
                    None => {
                        self.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let done = {
                let mut passes = lock(&self.passes);
                *passes += 1;
                *passes
            };
            self.passed.notify_all();
            // Pause, unless a `sync` waits for more passes than are done.
            let wanted = lock(&self.wanted);
            if *wanted <= done {
                let _ = self
                    .wake
                    .wait_timeout(wanted, drain_every())
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
    }

    fn route(&self, record: Record) {
        let sink = {
            let sinks = lock(&self.sinks);
            let mut cgroup = record.header().sandbox;
            if cgroup == 0
                && let Record::Signal { target_tgid, .. } = &record
            {
                cgroup = sinks.by_init.get(target_tgid).copied().unwrap_or(0);
            }
            sinks.by_cgroup.get(&cgroup).cloned()
        };
        if let Some(sink) = sink {
            sink.record(record);
        }
    }
}

/// How often the reader drains the ring; the tests slow it (`OFFSWITCH_EVENTS_DRAIN_MS`, at
/// most a second) so that a flood overflows a small ring whatever the machine's speed.
fn drain_every() -> Duration {
    static EVERY: OnceLock<Duration> = OnceLock::new();
    *EVERY.get_or_init(|| {
        std::env::var("OFFSWITCH_EVENTS_DRAIN_MS")
            .ok()
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| (1..=1000).contains(ms))
            .map_or(DRAIN_EVERY, Duration::from_millis)
    })
}

fn ring_bytes() -> u32 {
    std::env::var("OFFSWITCH_EVENTS_RING_BYTES")
        .ok()
        .and_then(|bytes| bytes.parse::<u32>().ok())
        .filter(|bytes| bytes.is_power_of_two() && *bytes >= 4096)
        .unwrap_or(RING_BYTES)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An aya error with its causes, the verifier's log cut to its last lines.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if text.len() > 2000 {
        let cut = text.len() - 2000;
        let cut = (cut..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text = format!("...{}", &text[cut..]);
    }
    text
}
