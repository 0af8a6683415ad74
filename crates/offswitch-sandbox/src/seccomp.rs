//! The system-call filter every exec runs under, built once by the host with `seccompiler`.
//!
//! The sandbox's walls are namespaces, cgroups and dropped capabilities; this filter removes
//! the kernel attack surface those leave reachable to an unprivileged process, and the kernel
//! state that namespaces do not separate. It is a deny list, not an allow list: agents run
//! arbitrary programs (compilers, interpreters, servers), and an allow list broad enough for
//! them would allow nearly everything anyway. Denied calls fail with `EPERM`, except `clone3`,
//! which fails with `ENOSYS` so that the C library falls back to `clone`, whose flags the
//! filter can read (`clone3` passes them in memory, where a filter cannot look).
//!
//! Denied, by group (see `DENIED` for the exact list):
//! - kernel subsystems with a history of privilege escalations that agents have no need for:
//!   io_uring, eBPF, perf events, userfaultfd, fanotify;
//! - the kernel keyring (`keyctl`, `add_key`, `request_key`): keyrings belong to the host uid
//!   that every sandbox shares, so they would be a channel between concurrent trials and a
//!   way to exhaust a common quota;
//! - new namespaces of any kind (`unshare`, `clone` with a `CLONE_NEW*` flag, `setns`): a
//!   nested user namespace would hand back capabilities over fresh mount and network
//!   namespaces, which is where most namespace escapes start;
//! - mounts in every form, `pivot_root`, `chroot`, swap, quotas, reboot, kexec, kernel
//!   modules, the clocks, the kernel log, process accounting, raw I/O ports, file handles
//!   (`open_by_handle_at`) and the obsolete calls nothing uses any more.
//!
//! Allowed on purpose: `ptrace` and `process_vm_*` (the PID namespace already confines them
//! to the sandbox's own processes, and PID 1 is not dumpable, so not traceable), `seccomp`
//! and Landlock (they only restrict further), `personality`, and everything else.
//!
//! Every rule is installed twice: under its x86-64 number and under the same number with the
//! x32 bit set, which a kernel built with the x32 ABI accepts from any 64-bit process. Calls
//! made through the 32-bit `int 0x80` entry have another architecture in `seccomp_data` and
//! kill the process (seccompiler's architecture check).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Most instructions one program may have (the kernel's limit is 4096).
pub(crate) const MAX_INSTRUCTIONS: usize = 1024;

/// The x32 ABI's marker bit in a system call number.
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// One BPF program, inline, so init (which cannot allocate) can install it from its plan.
#[derive(Clone, Copy)]
pub(crate) struct Program {
    pub length: u16,
    pub code: [libc::sock_filter; MAX_INSTRUCTIONS],
}

/// System calls denied with `EPERM` whatever their arguments.
pub(crate) const DENIED: &[(&str, libc::c_long)] = &[
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("setns", libc::SYS_setns),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("reboot", libc::SYS_reboot),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("settimeofday", libc::SYS_settimeofday),
    ("adjtimex", libc::SYS_adjtimex),
    ("syslog", libc::SYS_syslog),
    ("acct", libc::SYS_acct),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("vhangup", libc::SYS_vhangup),
    ("uselib", libc::SYS_uselib),
    ("ustat", libc::SYS_ustat),
    ("sysfs", libc::SYS_sysfs),
    ("_sysctl", libc::SYS__sysctl),
];

/// Namespace flags `unshare` and `clone` may not carry. `CLONE_NEWTIME` shares its bit with
/// `clone`'s exit signal, so it is checked for `unshare` only (`clone3` is refused whole).
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
];
const CLONE_NEWTIME: u64 = 0x80;

/// The two programs every exec installs, in order: the `EPERM` deny list, then `clone3`'s
/// `ENOSYS`. Built once per process.
pub(crate) fn programs() -> &'static [Program; 2] {
    static PROGRAMS: std::sync::OnceLock<[Program; 2]> = std::sync::OnceLock::new();
    PROGRAMS.get_or_init(|| {
        let denied = build(deny_rules(), libc::EPERM);
        let clone3 = build(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            libc::ENOSYS,
        );
        [denied, clone3]
    })
}

fn deny_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    let flag_rules = |flags: &[u64]| -> Vec<SeccompRule> {
        flags
            .iter()
            .map(|&flag| {
                let condition = SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )
                .expect("argument 0 exists");
                SeccompRule::new(vec![condition]).expect("one condition")
            })
            .collect()
    };
    let mut unshare_flags = NAMESPACE_FLAGS.to_vec();
    unshare_flags.push(CLONE_NEWTIME);
    let mut rules = BTreeMap::new();
    for &(_, number) in DENIED {
        rules.insert(number, Vec::new());
    }
    rules.insert(libc::SYS_unshare, flag_rules(&unshare_flags));
    rules.insert(libc::SYS_clone, flag_rules(NAMESPACE_FLAGS));
    with_x32_twins(rules)
}

/// The same rules again under the x32 numbers.
fn with_x32_twins(rules: BTreeMap<i64, Vec<SeccompRule>>) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut all = rules.clone();
    for (number, chain) in rules {
        all.insert(number | X32_SYSCALL_BIT, chain);
    }
    all
}

fn build(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Program {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        TargetArch::x86_64,
    )
    .expect("allow and errno differ");
    let bpf: BpfProgram = filter.try_into().expect("the filter is well formed");
    assert!(bpf.len() <= MAX_INSTRUCTIONS, "seccomp program too long");
    let mut program = Program {
        length: bpf.len() as u16,
        code: [libc::sock_filter {
            code: 0,
            jt: 0,
            jf: 0,
            k: 0,
        }; MAX_INSTRUCTIONS],
    };
    for (slot, instruction) in program.code.iter_mut().zip(&bpf) {
        *slot = libc::sock_filter {
            code: instruction.code,
            jt: instruction.jt,
            jf: instruction.jf,
            k: instruction.k,
        };
    }
    program
}

/// Install `programs` on the calling thread. Raw syscalls only, no allocation (this runs in
/// the exec child of init). `no_new_privs` must already be set.
///
/// # Safety
/// The programs must come from `programs()`.
pub(crate) unsafe fn install(programs: &[Program; 2]) -> Result<(), ()> {
    for program in programs {
        let fprog = libc::sock_fprog {
            len: program.length,
            filter: program.code.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `fprog` points at a valid program for the duration of the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            )
        };
        if result < 0 {
            return Err(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_programs_build_within_the_inline_limit() {
        let [denied, clone3] = super::programs();
        assert!(denied.length > 100, "{}", denied.length);
        assert!((clone3.length as usize) < 16, "{}", clone3.length);
    }
}
