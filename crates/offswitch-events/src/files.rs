//! File mutations on a sandbox's writable filesystems, with fanotify.
//!
//! One fanotify group per sandbox, with a filesystem mark on each filesystem the sandbox can
//! write (its home volume, its `/tmp` and `/dev/shm` tmpfs, reached through
//! `/proc/<PID 1>/root`). A filesystem mark sees every change to that superblock, whatever
//! mount namespace or path it comes through, and these superblocks are the sandbox's alone, so
//! every event is the sandbox's. Each event carries the acting process's host pid, the parent
//! directory as a file handle and the entry's name (both names for a rename).
//!
//! Directory handles become paths from this module's own record of the directories the
//! events showed being made and moved (so a directory deleted before its events are read still
//! has a path), falling back to `open_by_handle_at` for directories that existed before. A
//! handle that cannot be resolved either way gives a path `(unresolved)/<name>`, and is counted.
//!
//! The queue is unlimited (`FAN_UNLIMITED_QUEUE`): a bounded one overflows under an ordinary
//! `tar x` of ten thousand files when the machine is busy. Its memory is charged to this
//! process's memory cgroup, and the reader drains it continuously into the watch's bounded
//! buffer, which counts what it cannot keep. An overflow the kernel reports anyway is a loss.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use offswitch_core::events::FileOp;

const FAN_MODIFY: u64 = 0x2;
const FAN_ATTRIB: u64 = 0x4;
const FAN_CLOSE_WRITE: u64 = 0x8;
const FAN_CREATE: u64 = 0x100;
const FAN_DELETE: u64 = 0x200;
const FAN_Q_OVERFLOW: u64 = 0x4000;
const FAN_RENAME: u64 = 0x1000_0000;
const FAN_ONDIR: u64 = 0x4000_0000;

const FAN_CLOEXEC: u32 = 0x1;
const FAN_NONBLOCK: u32 = 0x2;
const FAN_UNLIMITED_QUEUE: u32 = 0x10;
const FAN_REPORT_FID: u32 = 0x200;
const FAN_REPORT_DIR_FID: u32 = 0x400;
const FAN_REPORT_NAME: u32 = 0x800;
const FAN_REPORT_TARGET_FID: u32 = 0x1000;

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_FILESYSTEM: u32 = 0x100;

const INFO_FID: u8 = 1;
const INFO_DFID_NAME: u8 = 2;
const INFO_DFID: u8 = 3;
const INFO_OLD_DFID_NAME: u8 = 10;
const INFO_NEW_DFID_NAME: u8 = 12;

/// What is watched on every filesystem.
const MASK: u64 =
    FAN_CREATE | FAN_DELETE | FAN_RENAME | FAN_ATTRIB | FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ONDIR;

/// The most directory levels a path is built from.
const MAX_DEPTH: usize = 64;

/// One file mutation, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileEvent {
    /// The acting process's host pid (0 when the kernel did not say).
    pub pid: i32,
    pub op: FileOp,
    /// Absolute inside the sandbox.
    pub path: String,
    pub to: Option<String>,
}

/// What one read of the queue gave.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub events: Vec<FileEvent>,
    /// Queue overflows the kernel reported (each is a loss of unknown size).
    pub overflows: u64,
    /// Events whose directory could not be resolved.
    pub unresolved: u64,
}

/// A filesystem under watch.
struct Filesystem {
    /// The sandbox's path of its root (`/home/agent`, `/tmp`).
    inside: String,
    /// An open directory at its root: the mark's target, and the mount for
    /// `open_by_handle_at`.
    root: OwnedFd,
    /// The host's path of that root as `/proc/self/fd` shows it (to make resolved paths
    /// relative).
    root_link: String,
    fsid: [u8; 8],
}

/// What a directory handle names: its parent and name (from events), or a path from the
/// filesystem's root (resolved by the kernel, for directories that predate the watch).
#[derive(Debug, Clone)]
enum Directory {
    Root,
    Child { parent: Vec<u8>, name: String },
    Resolved(String),
}

/// The fanotify group of one sandbox.
pub(crate) struct FileWatch {
    fd: OwnedFd,
    filesystems: Vec<Filesystem>,
    /// Directory handles (prefixed with their filesystem's fsid) and what they name.
    directories: HashMap<Vec<u8>, Directory>,
    buffer: Vec<u8>,
}

impl FileWatch {
    pub(crate) fn new() -> io::Result<FileWatch> {
        let flags = FAN_CLOEXEC
            | FAN_NONBLOCK
            | FAN_UNLIMITED_QUEUE
            | FAN_REPORT_FID
            | FAN_REPORT_DIR_FID
            | FAN_REPORT_NAME
            | FAN_REPORT_TARGET_FID;
        // SAFETY: fanotify_init has no memory arguments; the fd it returns is owned below.
        let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_LARGEFILE) as u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FileWatch {
            // SAFETY: a fresh fd owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            filesystems: Vec::new(),
            directories: HashMap::new(),
            buffer: vec![0; 256 * 1024],
        })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The group alone, for a caller that reads its events itself.
    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Watch the filesystem whose root is at `host_path`, which the sandbox sees at `inside`.
    pub(crate) fn add(&mut self, inside: &str, host_path: &Path) -> io::Result<()> {
        let c_path = CString::new(host_path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // Not O_PATH: fanotify_mark refuses an O_PATH directory.
        // SAFETY: open with a valid C string; the fd is owned below.
        let root = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if root < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        let root = unsafe { OwnedFd::from_raw_fd(root) };
        // SAFETY: fanotify_mark on fds we own; the path argument is unused with a dirfd.
        let marked = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                FAN_MARK_ADD | FAN_MARK_FILESYSTEM,
                MASK,
                root.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if marked != 0 {
            return Err(io::Error::last_os_error());
        }
        let fsid = fsid(&root)?;
        let root_link = std::fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd()))?
            .to_string_lossy()
            .into_owned();
        if let Some(handle) = handle_of(&root) {
            self.directories
                .insert(key(&fsid, &handle), Directory::Root);
        }
        self.filesystems.push(Filesystem {
            inside: inside.trim_end_matches('/').to_owned(),
            root,
            root_link,
            fsid,
        });
        Ok(())
    }

    /// Everything queued now, decoded.
    pub(crate) fn read(&mut self) -> Batch {
        let mut batch = Batch::default();
        let mut buffer = std::mem::take(&mut self.buffer);
        read_queue(self.fd.as_raw_fd(), &mut buffer, |bytes| {
            self.decode_all(bytes, &mut batch)
        });
        self.buffer = buffer;
        batch
    }

    fn decode_all(&mut self, mut bytes: &[u8], batch: &mut Batch) {
        // struct fanotify_event_metadata: event_len u32, vers u8, reserved u8,
        // metadata_len u16, mask u64, fd i32, pid i32.
        while bytes.len() >= 24 {
            let event_len = u32_at(bytes, 0) as usize;
            let metadata_len = u16::from_ne_bytes([bytes[6], bytes[7]]) as usize;
            if event_len < metadata_len || event_len > bytes.len() || metadata_len < 24 {
                return;
            }
            let mask = u64::from_ne_bytes(bytes[8..16].try_into().expect("8 bytes"));
            let pid = u32_at(bytes, 20) as i32;
            let event = &bytes[..event_len];
            bytes = &bytes[event_len..];
            if mask & FAN_Q_OVERFLOW != 0 {
                batch.overflows += 1;
                continue;
            }
            self.decode_one(event, metadata_len, mask, pid, batch);
        }
    }

    fn decode_one(
        &mut self,
        event: &[u8],
        metadata_len: usize,
        mask: u64,
        pid: i32,
        batch: &mut Batch,
    ) {
        let mut named: Option<(usize, Vec<u8>, String)> = None;
        let mut old: Option<(usize, Vec<u8>, String)> = None;
        let mut new: Option<(usize, Vec<u8>, String)> = None;
        let mut object: Option<Vec<u8>> = None;
        let mut offset = metadata_len;
        // struct fanotify_event_info_header: info_type u8, pad u8, len u16; then for fids:
        // fsid [u8; 8], struct file_handle { handle_bytes u32, handle_type i32, f_handle[] },
        // and for the _NAME kinds the name, NUL-terminated.
        while offset + 4 <= event.len() {
            let info_type = event[offset];
            let length = u16::from_ne_bytes([event[offset + 2], event[offset + 3]]) as usize;
            if length < 4 || offset + length > event.len() {
                break;
            }
            let body = &event[offset + 4..offset + length];
            offset += length;
            if body.len() < 16 {
                continue;
            }
            let fsid: [u8; 8] = body[0..8].try_into().expect("8 bytes");
            let handle_bytes = u32_at(body, 8) as usize;
            let handle_end = (16 + handle_bytes).min(body.len());
            let handle = body[8..handle_end].to_vec();
            let name_bytes = &body[handle_end..];
            let name =
                String::from_utf8_lossy(name_bytes.split(|&b| b == 0).next().unwrap_or_default())
                    .into_owned();
            let Some(index) = self.filesystems.iter().position(|f| f.fsid == fsid) else {
                continue;
            };
            let keyed = (index, key(&fsid, &handle), name);
            match info_type {
                INFO_DFID_NAME | INFO_DFID => named = Some(keyed),
                INFO_OLD_DFID_NAME => old = Some(keyed),
                INFO_NEW_DFID_NAME => new = Some(keyed),
                INFO_FID => object = Some(keyed.1),
                _ => {}
            }
        }
        let is_dir = mask & FAN_ONDIR != 0;
        // Keep the record of directories current before resolving anything.
        if is_dir && let Some(child) = &object {
            if mask & FAN_CREATE != 0
                && let Some((_, parent, name)) = &named
            {
                self.directories.insert(
                    child.clone(),
                    Directory::Child {
                        parent: parent.clone(),
                        name: name.clone(),
                    },
                );
            }
            if mask & FAN_RENAME != 0
                && let Some((_, parent, name)) = &new
            {
                // A moved directory moves every path resolved below it: forget those.
                self.directories
                    .retain(|_, directory| !matches!(directory, Directory::Resolved(_)));
                self.directories.insert(
                    child.clone(),
                    Directory::Child {
                        parent: parent.clone(),
                        name: name.clone(),
                    },
                );
            }
        }
        let mut path_of = |entry: &Option<(usize, Vec<u8>, String)>, batch: &mut Batch| {
            let (index, directory, name) = entry.as_ref()?;
            Some(match self.directory_path(*index, directory) {
                Some(dir) => join(&self.filesystems[*index].inside, &dir, name),
                None => {
                    batch.unresolved += 1;
                    format!("(unresolved)/{name}")
                }
            })
        };
        if mask & FAN_RENAME != 0
            && let (Some(from), Some(to)) = (path_of(&old, batch), path_of(&new, batch))
        {
            batch.events.push(FileEvent {
                pid,
                op: FileOp::Rename,
                path: from,
                to: Some(to),
            });
        }
        let Some(path) = path_of(&named, batch) else {
            return;
        };
        for (bit, op) in [
            (
                FAN_CREATE,
                if is_dir {
                    FileOp::MakeDir
                } else {
                    FileOp::Create
                },
            ),
            (FAN_MODIFY, FileOp::Write),
            (FAN_ATTRIB, FileOp::Attrib),
            (FAN_CLOSE_WRITE, FileOp::CloseWrite),
            (
                FAN_DELETE,
                if is_dir {
                    FileOp::RemoveDir
                } else {
                    FileOp::Delete
                },
            ),
        ] {
            if mask & bit != 0 {
                batch.events.push(FileEvent {
                    pid,
                    op,
                    path: path.clone(),
                    to: None,
                });
            }
        }
    }

    /// The path of a directory from its filesystem's root (`""` for the root itself).
    fn directory_path(&mut self, filesystem: usize, directory: &[u8]) -> Option<String> {
        let mut components = Vec::new();
        let mut current = directory.to_vec();
        for _ in 0..MAX_DEPTH {
            let known = match self.directories.get(&current) {
                Some(known) => known.clone(),
                None => {
                    let resolved = self.resolve(filesystem, &current)?;
                    self.directories
                        .insert(current.clone(), Directory::Resolved(resolved.clone()));
                    Directory::Resolved(resolved)
                }
            };
            match known {
                Directory::Root => break,
                Directory::Resolved(path) => {
                    components.push(path);
                    break;
                }
                Directory::Child { parent, name } => {
                    components.push(format!("/{name}"));
                    current = parent;
                }
            }
        }
        Some(components.iter().rev().map(String::as_str).collect())
    }

    /// Ask the kernel for a directory that still exists: its path from the root.
    fn resolve(&self, filesystem: usize, keyed: &[u8]) -> Option<String> {
        let filesystem = &self.filesystems[filesystem];
        let mut handle = keyed.get(8..)?.to_vec();
        // SAFETY: open_by_handle_at reads a struct file_handle (its size field first) from our
        // buffer, which holds a whole one as the kernel reported it; the fd is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                filesystem.root.as_raw_fd(),
                handle.as_mut_ptr(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let link = link.to_string_lossy();
        let relative = link.strip_prefix(filesystem.root_link.as_str())?;
        Some(if relative == "/" {
            String::new()
        } else {
            relative.to_owned()
        })
    }
}

/// Read a non-blocking fanotify group until it is empty, each read's bytes to `decode`.
pub(crate) fn read_queue(fd: RawFd, buffer: &mut [u8], mut decode: impl FnMut(&[u8])) {
    loop {
        // SAFETY: reading into a buffer we own, of its length, from a descriptor we own.
        let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n <= 0 {
            return;
        }
        decode(&buffer[..n as usize]);
    }
}

fn join(inside: &str, directory: &str, name: &str) -> String {
    if name.is_empty() || name == "." {
        format!("{inside}{directory}")
    } else {
        format!("{inside}{directory}/{name}")
    }
}

fn key(fsid: &[u8; 8], handle: &[u8]) -> Vec<u8> {
    let mut key = fsid.to_vec();
    key.extend_from_slice(handle);
    key
}

/// The `struct file_handle` of an open directory, as fanotify reports handles.
fn handle_of(directory: &OwnedFd) -> Option<Vec<u8>> {
    const MAX_HANDLE: usize = 128;
    let mut buffer = vec![0u8; 8 + MAX_HANDLE];
    buffer[0..4].copy_from_slice(&(MAX_HANDLE as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: name_to_handle_at writes a struct file_handle of at most MAX_HANDLE bytes into
    // our buffer (its size field says so) and the mount id into an int.
    let result = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            directory.as_raw_fd(),
            c"".as_ptr(),
            buffer.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    if result != 0 {
        return None;
    }
    let bytes = u32_at(&buffer, 0) as usize;
    buffer.truncate(8 + bytes.min(MAX_HANDLE));
    Some(buffer)
}

fn fsid(fd: &OwnedFd) -> io::Result<[u8; 8]> {
    // SAFETY: fstatfs into a zeroed buffer.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on an fd we own.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fsid_t` is two i32 (8 bytes), the bytes fanotify reports as the fsid.
    Ok(unsafe { std::mem::transmute::<libc::fsid_t, [u8; 8]>(stat.f_fsid) })
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}
