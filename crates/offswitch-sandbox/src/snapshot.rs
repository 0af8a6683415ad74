//! Snapshots of a hostile home directory and their differences, as `FileChange`s.
//!
//! The home was written by the agent, so the walk opens every directory and file relative to
//! its parent's descriptor with `O_NOFOLLOW` (a symlink swapped in mid-walk cannot lead
//! outside), opens files non-blocking (a FIFO cannot hang it), hashes only regular files, and
//! stops after a bounded number of entries and bytes, saying so in `Snapshot::incomplete`.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use offswitch_core::trial::{FileChange, FileChangeKind};
use sha2::{Digest, Sha256};

/// Entries walked at most; beyond it the snapshot is incomplete.
pub const MAX_ENTRIES: usize = 100_000;
/// Bytes hashed at most over the whole snapshot; beyond it files get no hash.
pub const MAX_HASHED_BYTES: u64 = 1 << 30;
/// Directory depth walked at most.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    File,
    Directory,
    Symlink,
    /// FIFOs, sockets, device nodes.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub entry_type: EntryType,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Hex sha256 for regular files (absent past the byte bound).
    pub sha256: Option<String>,
    /// The target, for symlinks (never followed).
    pub link_target: Option<String>,
}

/// The home directory's state at one moment: path -> (type, mode, sha256).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub entries: BTreeMap<String, SnapshotEntry>,
    /// Why the walk stopped early, if it did (the diff then covers only what was seen).
    pub incomplete: Option<String>,
}

impl Snapshot {
    /// Take a snapshot of `dir` without following symlinks out of it.
    pub fn take(dir: &Path) -> io::Result<Snapshot> {
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::other(format!("path {} contains a NUL", dir.display())))?;
        // SAFETY: `path` is a valid C string; the returned fd is owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let error = io::Error::last_os_error();
            return Err(io::Error::new(
                error.kind(),
                format!("failed to open {}: {error}", dir.display()),
            ));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut walk = Walk {
            snapshot: Snapshot::default(),
            hashed_bytes: 0,
        };
        walk.directory(&root, "", 0)?;
        Ok(walk.snapshot)
    }

    pub fn diff(&self, after: &Snapshot) -> Vec<FileChange> {
        let mut changes = Vec::new();
        let mut paths: Vec<&String> = self.entries.keys().chain(after.entries.keys()).collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            let before = self.entries.get(path);
            let now = after.entries.get(path);
            let kind = match (before, now) {
                (None, None) => continue,
                (None, Some(_)) => FileChangeKind::Created,
                (Some(_), None) => FileChangeKind::Deleted,
                (Some(b), Some(a)) if b.entry_type != a.entry_type => FileChangeKind::TypeChanged,
                (Some(b), Some(a)) if b.sha256 != a.sha256 || b.link_target != a.link_target => {
                    FileChangeKind::Modified
                }
                (Some(b), Some(a)) if b.mode != a.mode => FileChangeKind::ModeChanged,
                (Some(_), Some(_)) => continue,
            };
            changes.push(FileChange {
                path: path.clone(),
                kind,
                mode_before: before.map(|e| e.mode),
                mode_after: now.map(|e| e.mode),
                sha256_before: before.and_then(|e| e.sha256.clone()),
                sha256_after: now.and_then(|e| e.sha256.clone()),
            });
        }
        changes
    }
}

struct Walk {
    snapshot: Snapshot,
    hashed_bytes: u64,
}

impl Walk {
    fn stop(&mut self, why: String) {
        if self.snapshot.incomplete.is_none() {
            self.snapshot.incomplete = Some(why);
        }
    }

    fn directory(&mut self, dir: &OwnedFd, prefix: &str, depth: usize) -> io::Result<()> {
        if depth > MAX_DEPTH {
            self.stop(format!("stopped at depth {MAX_DEPTH} under {prefix}"));
            return Ok(());
        }
        // Listing through the fd's /proc path reads the directory we hold open, not whatever
        // the path names now.
        let listing = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&listing)?
            .filter_map(|entry| entry.ok().map(|entry| entry.file_name()))
            .collect();
        names.sort();
        for name in names {
            if self.snapshot.entries.len() >= MAX_ENTRIES {
                self.stop(format!("stopped after {MAX_ENTRIES} entries"));
                return Ok(());
            }
            let relative = if prefix.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{prefix}/{}", name.to_string_lossy())
            };
            self.entry(dir, &name, relative, depth)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        relative: String,
        depth: usize,
    ) -> io::Result<()> {
        let Ok(c_name) = CString::new(name.as_bytes()) else {
            return Ok(());
        };
        // SAFETY: plain fstatat into a zeroed stat buffer.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        let result = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                c_name.as_ptr(),
                &mut stat,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if result < 0 {
            // Vanished between listing and stat: it is simply not in this snapshot.
            return Ok(());
        }
        let mode = stat.st_mode & 0o7777;
        let file_type = stat.st_mode & libc::S_IFMT;
        let mut entry = SnapshotEntry {
            entry_type: EntryType::Other,
            mode,
            sha256: None,
            link_target: None,
        };
        match file_type {
            libc::S_IFREG => {
                entry.entry_type = EntryType::File;
                entry.sha256 = self.hash_file(dir, &c_name, &relative);
            }
            libc::S_IFLNK => {
                entry.entry_type = EntryType::Symlink;
                let mut buffer = vec![0u8; 4096];
                // SAFETY: the buffer is valid for its length.
                let n = unsafe {
                    libc::readlinkat(
                        dir.as_raw_fd(),
                        c_name.as_ptr(),
                        buffer.as_mut_ptr().cast(),
                        buffer.len(),
                    )
                };
                if n >= 0 {
                    buffer.truncate(n as usize);
                    entry.link_target = Some(String::from_utf8_lossy(&buffer).into_owned());
                }
            }
            libc::S_IFDIR => {
                entry.entry_type = EntryType::Directory;
                self.snapshot.entries.insert(relative.clone(), entry);
                // SAFETY: openat relative to a directory fd we own; O_NOFOLLOW refuses a
                // symlink swapped in since the stat.
                let fd = unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        c_name.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if fd >= 0 {
                    // SAFETY: freshly opened, owned here.
                    let child = unsafe { OwnedFd::from_raw_fd(fd) };
                    self.directory(&child, &relative, depth + 1)?;
                }
                return Ok(());
            }
            _ => {}
        }
        self.snapshot.entries.insert(relative, entry);
        Ok(())
    }

    fn hash_file(&mut self, dir: &OwnedFd, name: &CString, relative: &str) -> Option<String> {
        // SAFETY: openat relative to a directory fd we own.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: freshly opened, owned here.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let metadata = file.metadata().ok()?;
        if !metadata.is_file() {
            return None;
        }
        if self.hashed_bytes + metadata.len() > MAX_HASHED_BYTES {
            self.stop(format!(
                "stopped hashing at {relative}: over {MAX_HASHED_BYTES} bytes in total"
            ));
            return None;
        }
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 64 * 1024];
        // Read at most what the bound still allows, even if the file grows while we read.
        let mut reader = (&file).take(MAX_HASHED_BYTES - self.hashed_bytes);
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buffer[..n]);
                    self.hashed_bytes += n as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
        Some(hex::encode(hasher.finalize()))
    }
}
