//! The code that runs in the sandbox's init process and in the processes it forks for execs.
//!
//! Init is created by `clone3` from a multithreaded program, so it inherits a copy of locks
//! that other threads may hold (glibc's malloc, stdio, the setxid broadcast). Everything here
//! therefore runs on memory prepared by the parent before the clone and calls only thin
//! syscall wrappers or raw syscalls: no allocation, no formatting, no glibc `setresuid`.

use std::ffi::CString;

use libc::{c_char, c_int, c_long, c_void};

/// One step of building the sandbox's root file system, prepared by the parent.
pub(crate) enum MountOp {
    Mkdir {
        path: CString,
        mode: u32,
    },
    /// An empty regular file to bind a host file onto.
    Touch {
        path: CString,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    WriteFile {
        path: CString,
        contents: Vec<u8>,
    },
    /// Bind `source` onto `target`; `remount_flags` (if any) are applied with a bind remount
    /// afterwards (read-only, nosuid, ... plus the flags the source mount has locked).
    Bind {
        source: CString,
        target: CString,
        remount_flags: Option<libc::c_ulong>,
    },
    Tmpfs {
        target: CString,
        options: CString,
    },
    Proc {
        target: CString,
    },
    /// The home: the detached mount the host sent with the go message (see
    /// `GO_FLAG_HOME_TREE`) moved onto `target`, or else a bind of `source` with
    /// `remount_flags` as for `Bind`.
    Home {
        source: CString,
        target: CString,
        remount_flags: libc::c_ulong,
    },
}

/// Everything init needs, prepared before the clone so the child never allocates.
pub(crate) struct InitPlan {
    /// The root-building plan, flat (see `encode_plan`): the staging directory, the hostname,
    /// then the mount steps. Flat so a long-lived zygote can receive it without allocating.
    pub flat: Vec<u8>,
    pub flat_len: usize,
    /// Init's end of the control socket (SOCK_SEQPACKET).
    pub control_fd: c_int,
    /// The `tasks` files of the sandbox's v1 cgroups, opened for writing by the host (-1 for
    /// none). Init moves itself into each by writing "0": a thread moving itself skips the
    /// global threadgroup lock whose write side waits for an RCU grace period, which made the
    /// host's `cgroup.procs` joins cost milliseconds each on a loaded machine.
    pub join_fds: [c_int; MAX_JOIN_FDS],
    /// The last capability number on this kernel (`/proc/sys/kernel/cap_last_cap`).
    pub cap_last: c_int,
    /// Scratch buffer for received exec requests.
    pub request_buffer: Vec<u8>,
    /// The stack exec processes start on: they are cloned with `CLONE_VM | CLONE_VFORK`
    /// (init is suspended until they exec), so no page tables are copied per exec, however
    /// large the host process that init was forked from.
    pub exec_stack: Vec<u8>,
    /// The seccomp programs every exec installs (see `seccomp.rs`), inline so that no
    /// allocation is needed to reach them.
    pub seccomp: [crate::seccomp::Program; 2],
    /// Where the host's argv and environment strings lie in memory (`[start, end)`), as read
    /// from `/proc/self/stat` before the fork; init overwrites both, since `/proc/1/cmdline`
    /// is readable by everyone inside and the host's command line may carry secrets.
    pub arg_area: (usize, usize),
    pub env_area: (usize, usize),
    /// The home as a detached mount, when the go message brought one (-1 otherwise).
    pub home_fd: c_int,
}

impl InitPlan {
    /// A plan around `flat` (its first `flat_len` bytes are the plan), with the request
    /// buffer and exec stack every init needs.
    pub(crate) fn new(flat: Vec<u8>, flat_len: usize, control_fd: c_int, cap_last: c_int) -> Self {
        InitPlan {
            flat,
            flat_len,
            control_fd,
            join_fds: [-1; MAX_JOIN_FDS],
            cap_last,
            request_buffer: vec![0u8; crate::sandbox::MAX_REQUEST_BYTES + 4096],
            exec_stack: vec![0u8; 256 * 1024],
            seccomp: *crate::seccomp::programs(),
            arg_area: HOST_STRING_AREAS.0,
            env_area: HOST_STRING_AREAS.1,
            home_fd: -1,
        }
    }
}

/// The argv and environment areas of this process, fields 48-51 of `/proc/self/stat`
/// (fixed for the life of the process). `(0, 0)` when they cannot be read.
static HOST_STRING_AREAS: std::sync::LazyLock<((usize, usize), (usize, usize))> =
    std::sync::LazyLock::new(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // The command name (field 2) may hold spaces and parentheses: count after its end.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<usize> = after_name
            .split_whitespace()
            .skip(45)
            .take(4)
            .filter_map(|field| field.parse().ok())
            .collect();
        match fields[..] {
            [arg_start, arg_end, env_start, env_end]
                if arg_start < arg_end && env_start <= env_end =>
            {
                ((arg_start, arg_end), (env_start, env_end))
            }
            _ => ((0, 0), (0, 0)),
        }
    });

/// Overwrite the host's argv with `init` and its environment with zeros, in this process's
/// copy of them. The last byte of the argv area is left non-zero: the kernel then reads
/// `/proc/<pid>/cmdline` up to the first NUL (as it does for `setproctitle`), so the command
/// line reads exactly `init`, without betraying the host's argv length.
///
/// # Safety
/// The areas must be the ones of the process this one was forked from (`InitPlan::new`).
unsafe fn scrub_host_strings(plan: &InitPlan) {
    let (arg_start, arg_end) = plan.arg_area;
    let (env_start, env_end) = plan.env_area;
    unsafe {
        if arg_end > arg_start {
            let area = std::slice::from_raw_parts_mut(arg_start as *mut u8, arg_end - arg_start);
            area.fill(0);
            let name = b"init";
            if area.len() > name.len() + 1 {
                area[..name.len()].copy_from_slice(name);
                area[area.len() - 1] = b' ';
            }
        }
        if env_end > env_start {
            std::slice::from_raw_parts_mut(env_start as *mut u8, env_end - env_start).fill(0);
        }
        libc::prctl(libc::PR_SET_NAME, c"init".as_ptr());
    }
}

const OP_END: u8 = 0;
const OP_MKDIR: u8 = 1;
const OP_TOUCH: u8 = 2;
const OP_SYMLINK: u8 = 3;
const OP_WRITE_FILE: u8 = 4;
const OP_BIND: u8 = 5;
const OP_TMPFS: u8 = 6;
const OP_PROC: u8 = 7;
const OP_HOME: u8 = 8;

/// Encode the staging root, hostname and mount steps into the flat form init reads.
pub(crate) fn encode_plan(root: &CString, hostname: &[u8], ops: &[MountOp]) -> Vec<u8> {
    let mut flat = Vec::new();
    let string = |flat: &mut Vec<u8>, value: &CString| {
        flat.extend_from_slice(value.as_bytes_with_nul());
    };
    string(&mut flat, root);
    flat.extend_from_slice(&(hostname.len() as u32).to_le_bytes());
    flat.extend_from_slice(hostname);
    for op in ops {
        match op {
            MountOp::Mkdir { path, mode } => {
                flat.push(OP_MKDIR);
                flat.extend_from_slice(&mode.to_le_bytes());
                string(&mut flat, path);
            }
            MountOp::Touch { path } => {
                flat.push(OP_TOUCH);
                string(&mut flat, path);
            }
            MountOp::Symlink { target, link } => {
                flat.push(OP_SYMLINK);
                string(&mut flat, target);
                string(&mut flat, link);
            }
            MountOp::WriteFile { path, contents } => {
                flat.push(OP_WRITE_FILE);
                flat.extend_from_slice(&(contents.len() as u32).to_le_bytes());
                flat.extend_from_slice(contents);
                string(&mut flat, path);
            }
            MountOp::Bind {
                source,
                target,
                remount_flags,
            } => {
                flat.push(OP_BIND);
                flat.push(u8::from(remount_flags.is_some()));
                // c_ulong is 64 bits on the 64-bit targets this crate supports; the reader takes 8 bytes.
                flat.extend_from_slice(&remount_flags.unwrap_or(0).to_le_bytes());
                string(&mut flat, source);
                string(&mut flat, target);
            }
            MountOp::Tmpfs { target, options } => {
                flat.push(OP_TMPFS);
                string(&mut flat, target);
                string(&mut flat, options);
            }
            MountOp::Proc { target } => {
                flat.push(OP_PROC);
                string(&mut flat, target);
            }
            MountOp::Home {
                source,
                target,
                remount_flags,
            } => {
                flat.push(OP_HOME);
                flat.extend_from_slice(&remount_flags.to_le_bytes());
                string(&mut flat, source);
                string(&mut flat, target);
            }
        }
    }
    flat.push(OP_END);
    flat
}

/// Reads the flat plan in place, without allocating. Malformed input ends the reading.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Option<u8> {
        let value = *self.bytes.get(self.position)?;
        self.position += 1;
        Some(value)
    }
    fn u32(&mut self) -> Option<u32> {
        let value = self.bytes.get(self.position..self.position + 4)?;
        self.position += 4;
        Some(u32::from_le_bytes([value[0], value[1], value[2], value[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let value = self.bytes.get(self.position..self.position + 8)?;
        self.position += 8;
        let mut array = [0u8; 8];
        array.copy_from_slice(value);
        Some(u64::from_le_bytes(array))
    }
    fn take(&mut self, length: usize) -> Option<&'a [u8]> {
        let value = self.bytes.get(self.position..self.position + length)?;
        self.position += length;
        Some(value)
    }
    /// A NUL-terminated string, as a pointer into the plan.
    fn c_string(&mut self) -> Option<*const c_char> {
        let rest = self.bytes.get(self.position..)?;
        let end = rest.iter().position(|&byte| byte == 0)?;
        let pointer = rest.as_ptr().cast();
        self.position += end + 1;
        Some(pointer)
    }
}

/// What the vfork-style exec child needs, on init's stack while init is suspended.
struct ExecChildArgs {
    plan: *const InitPlan,
    fds: [c_int; REQUEST_FDS],
    length: usize,
}

extern "C" fn exec_child_entry(argument: *mut c_void) -> c_int {
    // SAFETY: `argument` points at an ExecChildArgs on init's stack; init is suspended by
    // CLONE_VFORK until this child execs or exits, so it stays valid and unchanged.
    unsafe {
        let args = &*(argument as *const ExecChildArgs);
        exec_child(&*args.plan, &args.fds, args.length)
    }
}

/// Bytes of an exec request header: cpu rlimit seconds (u64), address-space rlimit (u64),
/// process rlimit (u64), argc (u32), envc (u32). NUL-terminated strings follow: argv, env.
/// A zero rlimit means none.
pub(crate) const REQUEST_HEADER: usize = 32;
/// File descriptors passed with each exec request, in this order.
pub(crate) const REQUEST_FDS: usize = 5;
/// Where the child sees the pipe it reports its final working directory to.
pub(crate) const CWD_FD: c_int = 198;
/// Maximum argv + env entries in one request.
const MAX_STRINGS: usize = 1024;
/// Concurrent execs one sandbox can track.
const MAX_SLOTS: usize = 256;

/// Setup failure codes sent to the parent as (step, errno).
pub(crate) const STEP_SYNC: u32 = 1_000;
pub(crate) const STEP_IDS: u32 = 1_001;
pub(crate) const STEP_PRIVATE: u32 = 1_002;
pub(crate) const STEP_ROOT_TMPFS: u32 = 1_003;
pub(crate) const STEP_HOSTNAME: u32 = 1_004;
pub(crate) const STEP_LOOPBACK: u32 = 1_005;
pub(crate) const STEP_PIVOT: u32 = 1_006;
pub(crate) const STEP_READONLY_ROOT: u32 = 1_007;
pub(crate) const STEP_SIGNALS: u32 = 1_008;
pub(crate) const STEP_CGROUPS: u32 = 1_009;

/// Most v1 cgroups (memory, pids, freezer, cpuacct) init joins itself.
pub(crate) const MAX_JOIN_FDS: usize = 4;

/// First byte of the message init sends on the control socket when asked to shut down from
/// inside; the sender's pid in the sandbox (i32, 0 for the kernel) follows.
pub(crate) const SHUTDOWN_MESSAGE: &[u8] = b"S";
/// Bytes of a shutdown message.
pub(crate) const SHUTDOWN_RECORD: usize = 5;
/// Message init sends when setup finished.
pub(crate) const READY_MESSAGE: &[u8] = b"R";
/// The host's go message to init when the plan came with the clone.
pub(crate) const GO_MESSAGE: &[u8] = b"g";
/// The first byte of the host's go message that carries the plan itself (see `init_main`).
pub(crate) const GO_WITH_PLAN: &[u8] = b"P";
/// Bit of the go message's second byte: the last descriptor attached is the home, as a
/// detached mount (`open_tree`). A home the host mounted after PID 1 was cloned (a pooled one)
/// is not in PID 1's copy of the mount table, and a bind by path would show the directory
/// under it; a detached mount is the home itself, whenever it was mounted.
pub(crate) const GO_FLAG_HOME_TREE: u8 = 1;

/// Exit status record sent on an exec's own socket when init reaps its process:
/// wait status (i32), utime µs (u64), stime µs (u64).
pub(crate) const STATUS_RECORD: usize = 20;

fn errno() -> i32 {
    // SAFETY: `__errno_location` returns this thread's errno slot, valid in the child too.
    unsafe { *libc::__errno_location() }
}

/// Report a failed setup step to the parent and exit.
unsafe fn fail(control_fd: c_int, step: u32, error: i32) -> ! {
    let mut message = [0u8; 9];
    message[0] = b'E';
    message[1..5].copy_from_slice(&step.to_le_bytes());
    message[5..9].copy_from_slice(&error.to_le_bytes());
    unsafe {
        libc::send(
            control_fd,
            message.as_ptr().cast(),
            message.len(),
            libc::MSG_NOSIGNAL,
        );
        libc::_exit(1);
    }
}

fn check(result: c_long, control_fd: c_int, step: u32) {
    if result < 0 {
        let error = errno();
        // SAFETY: exiting the child process is always allowed here.
        unsafe { fail(control_fd, step, error) }
    }
}

/// The body of the sandbox's PID 1. Never returns.
///
/// # Safety
/// Must be called only in the child of a `clone3` with new user, PID and mount namespaces,
/// with `plan` prepared by the parent.
pub(crate) unsafe fn init_main(plan: &mut InitPlan) -> ! {
    let control = plan.control_fd;
    unsafe {
        // Nothing of the host may be seen from inside: its argv and environment (keys have
        // been passed on command lines) and its thread's name.
        scrub_host_strings(plan);
        // Keep only the control socket: other fds of the host (other sandboxes' sockets,
        // pipes of the harness's own children) must not stay open in here.
        let join = plan.join_fds;
        close_all_except(&[control, join[0], join[1], join[2], join[3]]);
        default_signal_actions();
        // Wait until the parent has written our uid/gid maps. If the host dies instead, its
        // end of the control socket closes, this recv returns 0, and we exit; the same holds
        // in the serve loop, so no parent-death signal is needed.
        // The go message is either GO_MESSAGE (the plan came with the clone) or
        // GO_WITH_PLAN followed by the plan, with the v1 cgroups' `tasks` fds attached (a PID 1
        // cloned ahead of time, before anyone knew what its sandbox would be).
        let mut tag = [0u8; 2];
        let mut iov = [
            libc::iovec {
                iov_base: tag.as_mut_ptr().cast(),
                iov_len: tag.len(),
            },
            libc::iovec {
                iov_base: plan.flat.as_mut_ptr().cast(),
                iov_len: plan.flat.len(),
            },
        ];
        let mut cmsg_space = [0u64; 8];
        let mut header: libc::msghdr = std::mem::zeroed();
        header.msg_iov = iov.as_mut_ptr();
        header.msg_iovlen = 2;
        header.msg_control = cmsg_space.as_mut_ptr().cast();
        header.msg_controllen = std::mem::size_of_val(&cmsg_space) as _;
        let received = libc::recvmsg(control, &mut header, libc::MSG_CMSG_CLOEXEC);
        if received < 2 {
            libc::_exit(1);
        }
        // Not dumpable, so nothing inside can trace init or read its memory, its
        // environment or its `/proc/1/exe` (the kernel does this on the uid change below
        // when the host is root; when it is not, nothing changes uid). Only now: the host
        // wrote the id maps before the go message, which an unprivileged host can do only
        // while init is dumpable.
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
        let mut join = join;
        if header.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            fail(control, STEP_SYNC, libc::E2BIG);
        }
        let mut attached = [-1; MAX_JOIN_FDS + 1];
        let mut count = received_fds(&header, &mut attached);
        if tag[1] & GO_FLAG_HOME_TREE != 0 {
            if count == 0 {
                fail(control, STEP_SYNC, libc::EINVAL);
            }
            count -= 1;
            plan.home_fd = attached[count];
        }
        if tag[0] == GO_WITH_PLAN[0] {
            plan.flat_len = received as usize - tag.len();
            join = [-1; MAX_JOIN_FDS];
            join[..count.min(MAX_JOIN_FDS)].copy_from_slice(&attached[..count.min(MAX_JOIN_FDS)]);
        } else if tag[0] != GO_MESSAGE[0] || received as usize != tag.len() || count != 0 {
            fail(control, STEP_SYNC, libc::EINVAL);
        }
        // Into the v1 cgroups before anything else: init forks nothing until it serves its
        // first exec, long after this.
        for fd in join {
            if fd >= 0 {
                check(
                    libc::write(fd, c"0".as_ptr().cast(), 1) as c_long,
                    control,
                    STEP_CGROUPS,
                );
                libc::close(fd);
            }
        }
        // A cgroup namespace rooted at the cgroups just joined: `/proc/self/cgroup` inside
        // then reads `/` in every hierarchy, not the host's paths (which name the harness's
        // pid and its own cgroup).
        check(
            libc::unshare(libc::CLONE_NEWCGROUP) as c_long,
            control,
            STEP_CGROUPS,
        );
        check(
            libc::syscall(libc::SYS_setresgid, 0, 0, 0),
            control,
            STEP_IDS,
        );
        check(
            libc::syscall(libc::SYS_setresuid, 0, 0, 0),
            control,
            STEP_IDS,
        );
        let none: *const c_char = std::ptr::null();
        check(
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) as c_long,
            control,
            STEP_PRIVATE,
        );
        let mut cursor = Cursor {
            bytes: &plan.flat[..plan.flat_len],
            position: 0,
        };
        let (Some(root), Some(hostname_length)) = (cursor.c_string(), cursor.u32()) else {
            fail(control, STEP_SYNC, libc::EINVAL)
        };
        let Some(hostname) = cursor.take(hostname_length as usize) else {
            fail(control, STEP_SYNC, libc::EINVAL)
        };
        check(
            libc::mount(
                c"tmpfs".as_ptr(),
                root,
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755,size=16m".as_ptr().cast(),
            ) as c_long,
            control,
            STEP_ROOT_TMPFS,
        );
        let mut step = 0u32;
        loop {
            match run_mount_op(&mut cursor, control, step, plan.home_fd) {
                Some(true) => step += 1,
                Some(false) => break,
                None => fail(control, step, libc::EINVAL),
            }
        }
        check(
            libc::sethostname(hostname.as_ptr().cast(), hostname.len()) as c_long,
            control,
            STEP_HOSTNAME,
        );
        loopback_up(control);
        check(libc::chdir(root) as c_long, control, STEP_PIVOT);
        check(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
            control,
            STEP_PIVOT,
        );
        check(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as c_long,
            control,
            STEP_PIVOT,
        );
        check(libc::chdir(c"/".as_ptr()) as c_long, control, STEP_PIVOT);
        check(
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                std::ptr::null(),
            ) as c_long,
            control,
            STEP_READONLY_ROOT,
        );
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
        // All signals are blocked and read from a signalfd. Signals sent from inside the
        // sandbox to PID 1 are still queued while blocked, which is what lets `kill -TERM 1`
        // from a scenario's `shutdown.sh` reach us; SIGKILL from inside stays ignored.
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        check(
            libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut()) as c_long,
            control,
            STEP_SIGNALS,
        );
        let signal_fd = libc::signalfd(-1, &all, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        check(signal_fd as c_long, control, STEP_SIGNALS);
        libc::send(
            control,
            READY_MESSAGE.as_ptr().cast(),
            READY_MESSAGE.len(),
            libc::MSG_NOSIGNAL,
        );
        serve(plan, signal_fd)
    }
}

/// Reset every signal to its default action. Ignored signals survive exec, and init inherits
/// some: the host is a Rust program, which ignores SIGPIPE, and the zygote ignores SIGCHLD.
/// Without this every exec's shell starts with SIGPIPE ignored (`yes | head` then fails on
/// EPIPE) and init's own children would be reaped before it could read their status. Raw
/// `rt_sigaction`, because glibc's wrapper refuses its internal signals 32 and 33.
unsafe fn default_signal_actions() {
    // The kernel's `struct sigaction` (handler, flags, restorer, mask) on x86_64 and aarch64;
    // SIG_DFL with no flags and an empty mask is all zeros after the handler.
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::sighandler_t,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let action = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installs the default action from a valid struct; no old action is read.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &action as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

/// Run the next mount step: `Some(true)` after a step, `Some(false)` at the end, `None` on
/// a malformed plan. A failing syscall reports the step and exits.
unsafe fn run_mount_op(
    cursor: &mut Cursor<'_>,
    control: c_int,
    step: u32,
    home_fd: c_int,
) -> Option<bool> {
    let none: *const c_char = std::ptr::null();
    unsafe {
        match cursor.byte()? {
            OP_END => return Some(false),
            OP_MKDIR => {
                let mode = cursor.u32()?;
                let path = cursor.c_string()?;
                let result = libc::mkdir(path, mode);
                if result < 0 && errno() != libc::EEXIST {
                    fail(control, step, errno());
                }
                // The umask must not narrow the mode (e.g. /tmp needs 1777).
                check(libc::chmod(path, mode) as c_long, control, step);
            }
            OP_TOUCH => {
                let path = cursor.c_string()?;
                let fd = libc::open(
                    path,
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                check(fd as c_long, control, step);
                libc::close(fd);
            }
            OP_SYMLINK => {
                let target = cursor.c_string()?;
                let link = cursor.c_string()?;
                check(libc::symlink(target, link) as c_long, control, step);
            }
            OP_WRITE_FILE => {
                let length = cursor.u32()? as usize;
                let contents = cursor.take(length)?;
                let path = cursor.c_string()?;
                let fd = libc::open(
                    path,
                    libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
                    0o644,
                );
                check(fd as c_long, control, step);
                let mut written = 0;
                while written < contents.len() {
                    let n = libc::write(
                        fd,
                        contents[written..].as_ptr().cast(),
                        contents.len() - written,
                    );
                    check(n as c_long, control, step);
                    written += n as usize;
                }
                libc::close(fd);
            }
            OP_BIND => {
                let remount = cursor.byte()? != 0;
                let flags = cursor.u64()? as libc::c_ulong;
                let source = cursor.c_string()?;
                let target = cursor.c_string()?;
                check(
                    libc::mount(
                        source,
                        target,
                        none,
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) as c_long,
                    control,
                    step,
                );
                if remount {
                    check(
                        libc::mount(
                            none,
                            target,
                            none,
                            libc::MS_REMOUNT | libc::MS_BIND | flags,
                            std::ptr::null(),
                        ) as c_long,
                        control,
                        step,
                    );
                }
            }
            OP_TMPFS => {
                let target = cursor.c_string()?;
                let options = cursor.c_string()?;
                check(
                    libc::mount(
                        c"tmpfs".as_ptr(),
                        target,
                        c"tmpfs".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        options.cast(),
                    ) as c_long,
                    control,
                    step,
                );
            }
            OP_HOME => {
                let flags = cursor.u64()? as libc::c_ulong;
                let source = cursor.c_string()?;
                let target = cursor.c_string()?;
                if home_fd >= 0 {
                    // The host set its flags (nosuid, nodev) on the detached mount already.
                    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
                    check(
                        libc::syscall(
                            libc::SYS_move_mount,
                            home_fd,
                            c"".as_ptr(),
                            libc::AT_FDCWD,
                            target,
                            MOVE_MOUNT_F_EMPTY_PATH,
                        ),
                        control,
                        step,
                    );
                    libc::close(home_fd);
                } else {
                    check(
                        libc::mount(
                            source,
                            target,
                            none,
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        ) as c_long,
                        control,
                        step,
                    );
                    check(
                        libc::mount(
                            none,
                            target,
                            none,
                            libc::MS_REMOUNT | libc::MS_BIND | flags,
                            std::ptr::null(),
                        ) as c_long,
                        control,
                        step,
                    );
                }
            }
            OP_PROC => {
                let target = cursor.c_string()?;
                check(
                    libc::mount(
                        c"proc".as_ptr(),
                        target,
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        std::ptr::null(),
                    ) as c_long,
                    control,
                    step,
                );
            }
            _ => return None,
        }
    }
    Some(true)
}

/// Bring `lo` up in the new network namespace (it starts down).
unsafe fn loopback_up(control: c_int) {
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        check(socket as c_long, control, STEP_LOOPBACK);
        let mut request: libc::ifreq = std::mem::zeroed();
        request.ifr_name[0] = b'l' as c_char;
        request.ifr_name[1] = b'o' as c_char;
        check(
            libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request) as c_long,
            control,
            STEP_LOOPBACK,
        );
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        check(
            libc::ioctl(socket, libc::SIOCSIFFLAGS, &mut request) as c_long,
            control,
            STEP_LOOPBACK,
        );
        libc::close(socket);
    }
}

/// Close every descriptor except `keep` (all of which must be >= 3 or stdio).
pub(crate) unsafe fn close_all_except(keep: &[c_int]) {
    let mut sorted = [0 as c_int; 8];
    let count = keep.len().min(sorted.len());
    sorted[..count].copy_from_slice(&keep[..count]);
    sorted[..count].sort_unstable();
    let mut next: c_int = 3;
    unsafe {
        for &fd in &sorted[..count] {
            if fd >= next {
                if fd > next {
                    libc::syscall(libc::SYS_close_range, next as u32, (fd - 1) as u32, 0);
                }
                next = fd + 1;
            }
        }
        libc::syscall(libc::SYS_close_range, next as u32, u32::MAX, 0);
    }
}

#[derive(Clone, Copy)]
struct Slot {
    pid: c_int,
    socket: c_int,
}

/// Init's loop: reap children, report exec exits, start execs, notify shutdown requests.
unsafe fn serve(plan: &mut InitPlan, signal_fd: c_int) -> ! {
    let control = plan.control_fd;
    let mut slots = [Slot { pid: 0, socket: -1 }; MAX_SLOTS];
    unsafe {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: signal_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: control,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ready = libc::poll(fds.as_mut_ptr(), 2, -1);
            if ready < 0 {
                continue;
            }
            // Signals first, so a SIGTERM queued before a request is seen before it.
            if fds[0].revents != 0 {
                drain_signals(signal_fd, control, &mut slots);
            }
            if fds[1].revents & (libc::POLLHUP | libc::POLLERR) != 0
                && fds[1].revents & libc::POLLIN == 0
            {
                // The host is gone: ending PID 1 makes the kernel end everything else.
                libc::_exit(0);
            }
            if fds[1].revents & libc::POLLIN != 0 {
                start_exec(plan, &mut slots);
            }
        }
    }
}

unsafe fn drain_signals(signal_fd: c_int, control: c_int, slots: &mut [Slot; MAX_SLOTS]) {
    unsafe {
        loop {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let n = libc::read(
                signal_fd,
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                std::mem::size_of::<libc::signalfd_siginfo>(),
            );
            if n <= 0 {
                break;
            }
            let signal = info.ssi_signo as c_int;
            if signal == libc::SIGTERM || signal == libc::SIGPWR || signal == libc::SIGINT {
                // Who sent it, as the kernel says (in this PID namespace): evidence the
                // sender cannot forge.
                let mut message = [0u8; SHUTDOWN_RECORD];
                message[0] = SHUTDOWN_MESSAGE[0];
                message[1..5].copy_from_slice(&(info.ssi_pid as i32).to_le_bytes());
                libc::send(
                    control,
                    message.as_ptr().cast(),
                    message.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                );
            }
        }
        // SIGCHLD coalesces, so reap everything that is ready whatever was read.
        loop {
            let mut status: c_int = 0;
            let mut usage: libc::rusage = std::mem::zeroed();
            let pid = libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage);
            if pid <= 0 {
                break;
            }
            for slot in slots.iter_mut() {
                if slot.pid == pid {
                    let mut record = [0u8; STATUS_RECORD];
                    record[0..4].copy_from_slice(&status.to_le_bytes());
                    let user = timeval_micros(usage.ru_utime);
                    let system = timeval_micros(usage.ru_stime);
                    record[4..12].copy_from_slice(&user.to_le_bytes());
                    record[12..20].copy_from_slice(&system.to_le_bytes());
                    libc::send(
                        slot.socket,
                        record.as_ptr().cast(),
                        record.len(),
                        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                    );
                    libc::close(slot.socket);
                    *slot = Slot { pid: 0, socket: -1 };
                    break;
                }
            }
        }
    }
}

fn timeval_micros(value: libc::timeval) -> u64 {
    (value.tv_sec as u64) * 1_000_000 + value.tv_usec as u64
}

/// Receive one exec request, fork its process, answer with its pid and a pidfd.
unsafe fn start_exec(plan: &mut InitPlan, slots: &mut [Slot; MAX_SLOTS]) {
    let control = plan.control_fd;
    unsafe {
        let mut cmsg_space = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: plan.request_buffer.as_mut_ptr().cast(),
            iov_len: plan.request_buffer.len(),
        };
        let mut header: libc::msghdr = std::mem::zeroed();
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = cmsg_space.as_mut_ptr().cast();
        header.msg_controllen = std::mem::size_of_val(&cmsg_space) as _;
        let n = libc::recvmsg(
            control,
            &mut header,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        );
        if n == 0 {
            libc::_exit(0);
        }
        if n < 0 {
            return;
        }
        let mut fds = [-1 as c_int; REQUEST_FDS];
        let count = received_fds(&header, &mut fds);
        let length = n as usize;
        let close_request = |fds: &[c_int; REQUEST_FDS]| {
            for &fd in fds {
                if fd >= 0 {
                    libc::close(fd);
                }
            }
        };
        if count != REQUEST_FDS
            || length < REQUEST_HEADER
            || header.msg_flags & libc::MSG_TRUNC != 0
        {
            close_request(&fds);
            return;
        }
        let Some(free) = slots.iter().position(|slot| slot.pid == 0) else {
            // Too many concurrent execs: closing the exec socket tells the host.
            close_request(&fds);
            return;
        };
        let mut pidfd: c_int = -1;
        let child_args = ExecChildArgs {
            plan: plan as *const InitPlan,
            fds,
            length,
        };
        // The stack grows down: start at its (16-byte aligned) top.
        let top = plan.exec_stack.as_mut_ptr().add(plan.exec_stack.len()) as usize & !15;
        let pid = libc::clone(
            exec_child_entry,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            &child_args as *const ExecChildArgs as *mut c_void,
            &mut pidfd as *mut c_int,
        );
        if pid < 0 {
            close_request(&fds);
            return;
        }
        let socket = fds[4];
        // Reply: the child's pid in the sandbox (i32) with its pidfd attached.
        let pid = pid as c_int;
        send_with_fd(socket, &pid.to_le_bytes(), pidfd, libc::MSG_DONTWAIT);
        libc::close(pidfd);
        for &fd in &fds[..4] {
            libc::close(fd);
        }
        slots[free] = Slot { pid, socket };
    }
}

/// Keep the first `fds.len()` descriptors a received message carried (in order) and close
/// the rest; returns how many were kept. Without allocation, for init and the zygote.
pub(crate) unsafe fn received_fds(header: &libc::msghdr, fds: &mut [c_int]) -> usize {
    let mut count = 0;
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const c_int;
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for index in 0..payload / std::mem::size_of::<c_int>() {
                    let fd = std::ptr::read_unaligned(data.add(index));
                    if count < fds.len() {
                        fds[count] = fd;
                        count += 1;
                    } else {
                        libc::close(fd);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    count
}

/// Send `bytes` with `fd` attached (nothing attached when `fd` is negative), without
/// allocation, for init and the zygote. Best effort: the receiver sees a closed socket or
/// a missing reply if this fails.
pub(crate) unsafe fn send_with_fd(socket: c_int, bytes: &[u8], fd: c_int, flags: c_int) {
    unsafe {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut c_void,
            iov_len: bytes.len(),
        };
        let mut space = [0u64; 4];
        let mut header: libc::msghdr = std::mem::zeroed();
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        if fd >= 0 {
            header.msg_control = space.as_mut_ptr().cast();
            header.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut c_int, fd);
        }
        libc::sendmsg(socket, &header, libc::MSG_NOSIGNAL | flags);
    }
}

/// The forked exec process: drop every privilege, wire stdio, exec bash. Never returns.
unsafe fn exec_child(plan: &InitPlan, fds: &[c_int; REQUEST_FDS], length: usize) -> ! {
    unsafe {
        let buffer = &plan.request_buffer[..length];
        let cpu_seconds = u64::from_le_bytes(buffer[0..8].try_into().unwrap_or([0; 8]));
        let address_space = u64::from_le_bytes(buffer[8..16].try_into().unwrap_or([0; 8]));
        let processes = u64::from_le_bytes(buffer[16..24].try_into().unwrap_or([0; 8]));
        let argc = u32::from_le_bytes(buffer[24..28].try_into().unwrap_or([0; 4])) as usize;
        let envc = u32::from_le_bytes(buffer[28..32].try_into().unwrap_or([0; 4])) as usize;
        if argc == 0 || argc + envc + 2 > MAX_STRINGS {
            libc::_exit(126);
        }
        let mut pointers: [*const c_char; MAX_STRINGS] = [std::ptr::null(); MAX_STRINGS];
        let mut position = REQUEST_HEADER;
        for index in 0..argc + envc {
            if position >= length {
                libc::_exit(126);
            }
            let slot = if index < argc { index } else { index + 1 };
            pointers[slot] = buffer[position..].as_ptr().cast();
            match buffer[position..].iter().position(|&byte| byte == 0) {
                Some(end) => position += end + 1,
                None => libc::_exit(126),
            }
        }
        let argv = pointers.as_ptr();
        let envp = pointers.as_ptr().add(argc + 1);

        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::setsid();
        // The passed fds are >= 3 in init (0-2 are /dev/null), so dup2 cannot clobber them.
        libc::dup2(fds[0], 0);
        libc::dup2(fds[1], 1);
        libc::dup2(fds[2], 2);
        libc::dup2(fds[3], CWD_FD);
        libc::syscall(libc::SYS_close_range, 3u32, (CWD_FD - 1) as u32, 0);
        libc::syscall(libc::SYS_close_range, (CWD_FD + 1) as u32, u32::MAX, 0);
        if libc::chdir(c"/home/agent".as_ptr()) < 0 {
            libc::chdir(c"/".as_ptr());
        }

        let core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &core);
        if cpu_seconds > 0 {
            // The soft limit sends SIGXCPU; the hard limit one second later SIGKILL.
            let cpu = libc::rlimit {
                rlim_cur: cpu_seconds,
                rlim_max: cpu_seconds + 1,
            };
            libc::setrlimit(libc::RLIMIT_CPU, &cpu);
        }
        if address_space > 0 {
            let limit = libc::rlimit {
                rlim_cur: address_space,
                rlim_max: address_space,
            };
            libc::setrlimit(libc::RLIMIT_AS, &limit);
        }
        if processes > 0 {
            // Since Linux 5.14 this counts the processes of this uid in the sandbox's own
            // user namespace, so it caps the sandbox, not the host user.
            let limit = libc::rlimit {
                rlim_cur: processes,
                rlim_max: processes,
            };
            libc::setrlimit(libc::RLIMIT_NPROC, &limit);
        }
        if drop_privileges(plan.cap_last).is_err() {
            let message = b"offswitch: failed to drop privileges\n";
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(126);
        }
        if crate::seccomp::install(&plan.seccomp).is_err() {
            let message = b"offswitch: failed to install the seccomp filter\n";
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(126);
        }
        libc::execve(*argv, argv, envp);
        let message = b"offswitch: failed to exec /bin/bash\n";
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(127);
    }
}

/// Drop every capability for good: lock the securebits so uid 0 grants nothing on exec,
/// empty the bounding, ambient, permitted, effective and inheritable sets, and forbid new
/// privileges. The sandbox's uid 0 is an unprivileged uid on the host, so after this the
/// process holds nothing that could remount the read-only binds or write to `/proc/sys`.
unsafe fn drop_privileges(cap_last: c_int) -> Result<(), ()> {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    unsafe {
        let bits = SECBIT_NOROOT
            | SECBIT_NOROOT_LOCKED
            | SECBIT_NO_SETUID_FIXUP
            | SECBIT_NO_SETUID_FIXUP_LOCKED
            | SECBIT_KEEP_CAPS_LOCKED
            | SECBIT_NO_CAP_AMBIENT_RAISE
            | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
        if libc::prctl(libc::PR_SET_SECUREBITS, bits) < 0 {
            return Err(());
        }
        for capability in 0..=cap_last {
            if libc::prctl(libc::PR_CAPBSET_DROP, capability as libc::c_ulong) < 0 {
                return Err(());
            }
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        let header = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
            return Err(());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(());
        }
    }
    Ok(())
}
