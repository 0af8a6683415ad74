//! Opens of named files (a guard policy's secrets), with fanotify.
//!
//! Reads are not file mutations, so the filesystem marks of `files.rs` do not report them,
//! and recording every open in a sandbox would cost far more than the mutations do. This
//! group watches only the files it is given: an inode mark with `FAN_OPEN` on each. An inode
//! mark follows the file through every mount and path that reaches it (the home's bind, a
//! read-only bind of a protected path over it, `/proc/<pid>/root/...`), and an open is what
//! every way of reading passes through: `read`, `mmap`, `sendfile`, `copy_file_range`, a
//! descriptor handed to another process (it was opened once, inside), an `O_PATH` descriptor
//! reopened through `/proc/self/fd`.
//!
//! An inode mark also sees the host's own opens of the file (an operator's editor). The
//! group reports a descriptor per event (not a file handle), opened on the same mount as the
//! opener's; its mount id says whose namespace the open came through, and an open through a
//! mount of this process's (the host's) namespace is not the sandbox's. The collector then
//! keeps only opens by processes of the sandbox.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const FAN_OPEN: u64 = 0x20;
const FAN_Q_OVERFLOW: u64 = 0x4000;

const FAN_CLOEXEC: u32 = 0x1;
const FAN_NONBLOCK: u32 = 0x2;
const FAN_CLASS_NOTIF: u32 = 0x0;
const FAN_UNLIMITED_QUEUE: u32 = 0x10;

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;

/// The most files one group watches.
pub const MAX_WATCHED_OPENS: usize = 4096;

/// One open of a watched file, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenEvent {
    /// The opening process's host pid.
    pub pid: i32,
    /// The watched file's path inside the sandbox.
    pub path: String,
}

/// What one read of the queue gave.
#[derive(Debug, Default)]
pub(crate) struct OpenBatch {
    pub events: Vec<OpenEvent>,
    /// Queue overflows the kernel reported.
    pub overflows: u64,
}

/// The fanotify group watching one sandbox's named files.
pub(crate) struct OpenWatch {
    fd: OwnedFd,
    /// (device, inode) of each watched file, and its path inside the sandbox.
    files: HashMap<(u64, u64), String>,
    /// Mount ids of this process's namespace, read when an id was not known.
    host_mounts: HashSet<u64>,
    /// Mount ids already found to be outside this process's namespace.
    foreign_mounts: HashSet<u64>,
    buffer: Vec<u8>,
}

impl OpenWatch {
    pub(crate) fn new() -> io::Result<OpenWatch> {
        let flags = FAN_CLOEXEC | FAN_NONBLOCK | FAN_CLASS_NOTIF | FAN_UNLIMITED_QUEUE;
        // SAFETY: fanotify_init has no memory arguments; the result is checked.
        let fd = unsafe {
            libc::fanotify_init(
                flags,
                (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_LARGEFILE) as u32,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OpenWatch {
            // SAFETY: a descriptor fanotify_init just returned, owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            files: HashMap::new(),
            host_mounts: host_mount_ids(),
            foreign_mounts: HashSet::new(),
            buffer: vec![0; 64 * 1024],
        })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Watch opens of the regular file at `host_path`, named `inside` in the sandbox. A
    /// symbolic link is refused, not followed.
    pub(crate) fn add(&mut self, inside: &str, host_path: &Path) -> io::Result<()> {
        if self.files.len() >= MAX_WATCHED_OPENS {
            return Err(io::Error::other(format!(
                "more than {MAX_WATCHED_OPENS} watched files"
            )));
        }
        let meta = std::fs::symlink_metadata(host_path)?;
        if !meta.file_type().is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        let path = CString::new(host_path.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("a NUL in the path"))?;
        // SAFETY: fanotify_mark on our own group with a valid C string path.
        let rc = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW,
                FAN_OPEN,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // The mark is on what the path named when it was placed: key it by that inode.
        let meta = std::fs::symlink_metadata(host_path)?;
        self.files
            .insert((meta.dev(), meta.ino()), inside.to_owned());
        Ok(())
    }

    /// Everything queued now, decoded. Opens through the host's own mounts are left out.
    pub(crate) fn read(&mut self) -> OpenBatch {
        let mut batch = OpenBatch::default();
        let mut buffer = std::mem::take(&mut self.buffer);
        crate::files::read_queue(self.fd.as_raw_fd(), &mut buffer, |bytes| {
            self.decode_all(bytes, &mut batch)
        });
        self.buffer = buffer;
        batch
    }

    fn decode_all(&mut self, mut bytes: &[u8], batch: &mut OpenBatch) {
        // struct fanotify_event_metadata: event_len u32, vers u8, reserved u8,
        // metadata_len u16, mask u64, fd i32, pid i32.
        while bytes.len() >= 24 {
            let event_len = u32::from_ne_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
            if event_len < 24 || event_len > bytes.len() {
                return;
            }
            let mask = u64::from_ne_bytes(bytes[8..16].try_into().expect("8 bytes"));
            let fd = i32::from_ne_bytes(bytes[16..20].try_into().expect("4 bytes"));
            let pid = i32::from_ne_bytes(bytes[20..24].try_into().expect("4 bytes"));
            bytes = &bytes[event_len..];
            // Every descriptor the kernel handed over is closed, whatever the event says.
            let file = (fd >= 0).then(|| {
                // SAFETY: the kernel opened this descriptor for us with the event.
                unsafe { OwnedFd::from_raw_fd(fd) }
            });
            if mask & FAN_Q_OVERFLOW != 0 {
                batch.overflows += 1;
                continue;
            }
            let Some(file) = file else { continue };
            if mask & FAN_OPEN == 0 {
                continue;
            }
            if let Some(path) = self.decode_one(&file) {
                batch.events.push(OpenEvent { pid, path });
            }
        }
    }

    fn decode_one(&mut self, file: &OwnedFd) -> Option<String> {
        let meta = std::fs::File::from(file.try_clone().ok()?)
            .metadata()
            .ok()?;
        let path = self.files.get(&(meta.dev(), meta.ino()))?.clone();
        let mount = mount_id(file)?;
        if self.foreign_mounts.contains(&mount) {
            return Some(path);
        }
        if !self.host_mounts.contains(&mount) {
            // Mounts come and go on the host: read its table again before deciding.
            self.host_mounts = host_mount_ids();
        }
        if self.host_mounts.contains(&mount) {
            return None;
        }
        self.foreign_mounts.insert(mount);
        Some(path)
    }
}

/// The mount a descriptor was opened through (`mnt_id` in its fdinfo).
fn mount_id(file: &OwnedFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|id| id.trim().parse().ok())
}

/// The mount ids of this process's mount namespace.
fn host_mount_ids() -> HashSet<u64> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').next()?.parse().ok())
        .collect()
}
