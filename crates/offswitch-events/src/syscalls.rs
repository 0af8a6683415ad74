//! The file-changing syscalls whose refusals the kernel side records (`handle_sys_exit`), with
//! where their path arguments are, by this architecture's syscall numbers (the BPF object is
//! the same on every architecture; the loader fills its `refusable` map from this table).

/// An argument that is not there.
const NONE: u8 = 0xff;

/// `(number, name, [path argument, second path argument, flags argument, flags kind])`;
/// flags kind 1: open flags in a register, 2: a pointer to `struct open_how`. A call with open
/// flags is recorded only when they ask to write, create or truncate.
pub(crate) fn refusable() -> Vec<(i64, &'static str, [u8; 4])> {
    let mut table = vec![
        (libc::SYS_openat, "openat", [1, NONE, 2, 1]),
        (libc::SYS_openat2, "openat2", [1, NONE, 2, 2]),
        (libc::SYS_truncate, "truncate", [0, NONE, NONE, 0]),
        (libc::SYS_ftruncate, "ftruncate", [NONE, NONE, NONE, 0]),
        (libc::SYS_renameat, "renameat", [1, 3, NONE, 0]),
        (libc::SYS_renameat2, "renameat2", [1, 3, NONE, 0]),
        (libc::SYS_mkdirat, "mkdirat", [1, NONE, NONE, 0]),
        (libc::SYS_linkat, "linkat", [1, 3, NONE, 0]),
        (libc::SYS_unlinkat, "unlinkat", [1, NONE, NONE, 0]),
        (libc::SYS_symlinkat, "symlinkat", [2, NONE, NONE, 0]),
        (libc::SYS_fchmod, "fchmod", [NONE, NONE, NONE, 0]),
        (libc::SYS_fchmodat, "fchmodat", [1, NONE, NONE, 0]),
        (libc::SYS_fchown, "fchown", [NONE, NONE, NONE, 0]),
        (libc::SYS_fchownat, "fchownat", [1, NONE, NONE, 0]),
        (libc::SYS_utimensat, "utimensat", [1, NONE, NONE, 0]),
        (libc::SYS_mknodat, "mknodat", [1, NONE, NONE, 0]),
        (libc::SYS_setxattr, "setxattr", [0, NONE, NONE, 0]),
        (libc::SYS_lsetxattr, "lsetxattr", [0, NONE, NONE, 0]),
        (libc::SYS_fsetxattr, "fsetxattr", [NONE, NONE, NONE, 0]),
        (libc::SYS_removexattr, "removexattr", [0, NONE, NONE, 0]),
        (libc::SYS_lremovexattr, "lremovexattr", [0, NONE, NONE, 0]),
        (
            libc::SYS_fremovexattr,
            "fremovexattr",
            [NONE, NONE, NONE, 0],
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    table.extend([
        (libc::SYS_open, "open", [0, NONE, 1, 1]),
        (libc::SYS_creat, "creat", [0, NONE, NONE, 0]),
        (libc::SYS_rename, "rename", [0, 1, NONE, 0]),
        (libc::SYS_mkdir, "mkdir", [0, NONE, NONE, 0]),
        (libc::SYS_rmdir, "rmdir", [0, NONE, NONE, 0]),
        (libc::SYS_link, "link", [0, 1, NONE, 0]),
        (libc::SYS_unlink, "unlink", [0, NONE, NONE, 0]),
        (libc::SYS_symlink, "symlink", [1, NONE, NONE, 0]),
        (libc::SYS_chmod, "chmod", [0, NONE, NONE, 0]),
        (libc::SYS_chown, "chown", [0, NONE, NONE, 0]),
        (libc::SYS_lchown, "lchown", [0, NONE, NONE, 0]),
        (libc::SYS_mknod, "mknod", [0, NONE, NONE, 0]),
        (libc::SYS_fchmodat2, "fchmodat2", [1, NONE, NONE, 0]),
    ]);
    table
}

/// A refusable syscall's name.
pub(crate) fn name(number: i64) -> String {
    refusable()
        .into_iter()
        .find(|(n, _, _)| *n == number)
        .map_or_else(
            || format!("syscall {number}"),
            |(_, name, _)| name.to_owned(),
        )
}

/// An errno the kernel side records, by name.
pub(crate) fn errno_name(errno: i64) -> String {
    match i32::try_from(errno).unwrap_or(0) {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::EXDEV => "EXDEV".into(),
        libc::ETXTBSY => "ETXTBSY".into(),
        libc::EROFS => "EROFS".into(),
        _ => format!("errno {errno}"),
    }
}
