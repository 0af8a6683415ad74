//! Snapshots of a hostile home directory and their differences, as `FileChange`s.
//!
//! The home was written by the agent, so the walk opens every directory and file relative to
//! its parent's descriptor with `O_NOFOLLOW` (a symlink swapped in mid-walk cannot lead
//! outside), opens files non-blocking (a FIFO cannot hang it), hashes only regular files, and
//! stops after a bounded number of entries and bytes, saying so in `Snapshot::incomplete`.
//!
//! Because the walk is bounded and sorted, an agent could push a file past the budget by
//! flooding its home with entries that sort first (`mkdir aaa; seq 1 100100 | xargs touch`)
//! and so hide what it did to that file. [`Snapshot::take_prioritized`] therefore records the
//! paths the evidence depends on first, within a part of both budgets reserved for them.

use std::collections::{BTreeMap, BTreeSet};
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
/// The part of [`MAX_ENTRIES`] reserved for priority paths (and the directories among them).
pub const PRIORITY_ENTRIES: usize = 10_000;
/// The part of [`MAX_HASHED_BYTES`] reserved for priority paths.
pub const PRIORITY_HASHED_BYTES: u64 = 256 << 20;
/// Priority paths honoured at most; the rest are left to the ordinary walk.
pub const MAX_PRIORITY_PATHS: usize = 1_000;
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
    /// The entries recorded before the ordinary walk, for the priority paths: whoever keeps
    /// only part of `entries` keeps these first.
    pub prioritized: BTreeSet<String>,
}

/// The bounds of one snapshot; a parameter so tests can use small numbers.
#[derive(Debug, Clone, Copy)]
struct Budget {
    entries: usize,
    hashed_bytes: u64,
    priority_entries: usize,
    priority_hashed_bytes: u64,
    priority_paths: usize,
}

const BUDGET: Budget = Budget {
    entries: MAX_ENTRIES,
    hashed_bytes: MAX_HASHED_BYTES,
    priority_entries: PRIORITY_ENTRIES,
    priority_hashed_bytes: PRIORITY_HASHED_BYTES,
    priority_paths: MAX_PRIORITY_PATHS,
};

impl Snapshot {
    /// Take a snapshot of `dir` without following symlinks out of it.
    pub fn take(dir: &Path) -> io::Result<Snapshot> {
        Snapshot::take_prioritized(dir, &[])
    }

    /// Take a snapshot of `dir`, recording first each of `priority` (paths relative to `dir`,
    /// resolved component by component without following a symlink; a directory among them
    /// is walked whole), then everything else. The priority paths get their own part of the
    /// entry and hashing budgets, so no amount of other entries can push them out.
    pub fn take_prioritized(dir: &Path, priority: &[String]) -> io::Result<Snapshot> {
        take_with(dir, priority, BUDGET)
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
                text_before: None,
                text_after: None,
            });
        }
        changes
    }
}

/// Open `path` as a directory, refusing a symlink.
fn open_root(dir: &Path) -> io::Result<OwnedFd> {
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
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open the directory `name` under `dir`; `None` when it is not one (or is a symlink).
fn open_child_directory(dir: &OwnedFd, name: &CString) -> Option<OwnedFd> {
    // SAFETY: openat relative to a directory fd we own; O_NOFOLLOW refuses a symlink.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    // SAFETY: freshly opened, owned here.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open the directory at `parts` under `root`, component by component, following no symlink;
/// `None` when some component is not a directory.
fn open_directory_path(root: &OwnedFd, parts: &[&str]) -> Option<OwnedFd> {
    let mut current: Option<OwnedFd> = None;
    for part in parts {
        let c_name = CString::new(part.as_bytes()).ok()?;
        let child = open_child_directory(current.as_ref().unwrap_or(root), &c_name)?;
        current = Some(child);
    }
    current
}

/// The components of a priority path, or `None` when it is not a plain relative path inside
/// the home (absolute, empty, `.` or `..` components): such a path names nothing to record.
fn components(path: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let plain = !path.starts_with('/')
        && !parts.is_empty()
        && parts.len() <= MAX_DEPTH
        && parts
            .iter()
            .all(|p| *p != "." && *p != ".." && !p.contains('\0'));
    plain.then_some(parts)
}

fn take_with(dir: &Path, priority: &[String], budget: Budget) -> io::Result<Snapshot> {
    let root = open_root(dir)?;
    let mut walk = Walk {
        snapshot: Snapshot::default(),
        hashed_bytes: 0,
        entry_limit: budget.priority_entries.min(budget.entries),
        byte_limit: budget.priority_hashed_bytes.min(budget.hashed_bytes),
        ordinary: false,
        deferred: None,
    };
    let mut paths: Vec<&String> = priority.iter().collect();
    paths.sort();
    paths.dedup();
    // Past the bound, paths are left to the ordinary walk: the snapshot is incomplete only
    // if that walk stops too.
    paths.truncate(budget.priority_paths);
    // Every named entry first, so that a flooded directory among the priority paths cannot
    // use up the reserve before the files named beside it are recorded.
    // Their hashes come after, smallest first, so that one named file inflated past the
    // reserve leaves it without a hash but not the others.
    let mut directories = Vec::new();
    walk.deferred = Some(Vec::new());
    for path in &paths {
        if let Some(parts) = components(path)
            && walk.priority_path(&root, &parts)?
        {
            directories.push(parts);
        }
    }
    let mut deferred = walk.deferred.take().unwrap_or_default();
    deferred.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    for (relative, _) in deferred {
        let parts: Vec<&str> = relative.split('/').collect();
        let Some((name, parents)) = parts.split_last() else {
            continue;
        };
        let Ok(c_name) = CString::new(name.as_bytes()) else {
            continue;
        };
        let parent = match parents {
            [] => None,
            parents => match open_directory_path(&root, parents) {
                Some(parent) => Some(parent),
                None => continue,
            },
        };
        let sha256 = walk.hash_file(parent.as_ref().unwrap_or(&root), &c_name, &relative);
        if let Some(entry) = walk.snapshot.entries.get_mut(&relative) {
            entry.sha256 = sha256;
        }
    }
    for parts in directories {
        walk.priority_directory(&root, &parts)?;
    }
    walk.snapshot.prioritized = walk.snapshot.entries.keys().cloned().collect();
    walk.entry_limit = budget.entries;
    walk.byte_limit = budget.hashed_bytes;
    walk.ordinary = true;
    walk.directory(&root, "", 0)?;
    Ok(walk.snapshot)
}

struct Walk {
    snapshot: Snapshot,
    hashed_bytes: u64,
    /// Entries recorded at most in the current phase (counting those of earlier phases).
    entry_limit: usize,
    /// Bytes hashed at most by the end of the current phase.
    byte_limit: u64,
    /// In the ordinary walk (after the priority paths).
    ordinary: bool,
    /// While recording named priority paths: regular files to hash afterwards, with their
    /// sizes, instead of at once.
    deferred: Option<Vec<(String, u64)>>,
}

impl Walk {
    fn stop(&mut self, why: String) {
        if self.snapshot.incomplete.is_none() {
            self.snapshot.incomplete = Some(why);
        }
    }

    fn full(&mut self, at: &str) -> bool {
        if self.snapshot.entries.len() < self.entry_limit {
            return false;
        }
        // A priority directory cut short here is walked again by the ordinary walk, which
        // says so if it too stops.
        if self.ordinary {
            self.stop(format!(
                "stopped after {} entries, before {at}",
                self.entry_limit
            ));
        }
        true
    }

    /// Record each component of a priority path, never following a symlink (a symlink
    /// component is recorded as the link it is, and the path ends there). True when the whole
    /// path resolved to a directory, to be walked afterwards.
    fn priority_path(&mut self, root: &OwnedFd, parts: &[&str]) -> io::Result<bool> {
        let mut current: Option<OwnedFd> = None;
        let mut relative = String::new();
        for (i, part) in parts.iter().enumerate() {
            if !relative.is_empty() {
                relative.push('/');
            }
            relative.push_str(part);
            let dir = current.as_ref().unwrap_or(root);
            let Ok(c_name) = CString::new(part.as_bytes()) else {
                return Ok(false);
            };
            let entry_type = match self.snapshot.entries.get(&relative) {
                Some(entry) => entry.entry_type,
                None => {
                    if self.full(&relative) {
                        return Ok(false);
                    }
                    match self.entry(dir, OsStr::new(part), relative.clone(), i, false)? {
                        Some(entry_type) => entry_type,
                        None => return Ok(false),
                    }
                }
            };
            if entry_type != EntryType::Directory {
                return Ok(false);
            }
            if i + 1 == parts.len() {
                return Ok(true);
            }
            match open_child_directory(dir, &c_name) {
                Some(child) => current = Some(child),
                None => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Walk a priority directory whole (within what is left of the reserve); its path is
    /// resolved again without following symlinks.
    fn priority_directory(&mut self, root: &OwnedFd, parts: &[&str]) -> io::Result<()> {
        if let Some(dir) = open_directory_path(root, parts) {
            self.directory(&dir, &parts.join("/"), parts.len())?;
        }
        Ok(())
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
            let relative = if prefix.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{prefix}/{}", name.to_string_lossy())
            };
            if let Some(recorded) = self.snapshot.entries.get(&relative) {
                // Recorded as a priority path: not again, but a directory may hold more
                // than the priority phase saw.
                if recorded.entry_type == EntryType::Directory
                    && let Ok(c_name) = CString::new(name.as_bytes())
                    && let Some(child) = open_child_directory(dir, &c_name)
                {
                    self.directory(&child, &relative, depth + 1)?;
                }
                continue;
            }
            if self.full(&relative) {
                return Ok(());
            }
            self.entry(dir, &name, relative, depth, true)?;
        }
        Ok(())
    }

    /// Record one entry of `dir` (descending into a directory when `descend`); its type, or
    /// `None` when it vanished or cannot be named.
    fn entry(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        relative: String,
        depth: usize,
        descend: bool,
    ) -> io::Result<Option<EntryType>> {
        let Ok(c_name) = CString::new(name.as_bytes()) else {
            return Ok(None);
        };
        // SAFETY: plain fstatat into a zeroed stat buffer.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `c_name` is a valid C string, `stat` a valid buffer, `dir` an fd we own.
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
            return Ok(None);
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
                match &mut self.deferred {
                    Some(deferred) => deferred.push((relative.clone(), stat.st_size as u64)),
                    None => entry.sha256 = self.hash_file(dir, &c_name, &relative),
                }
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
                // O_NOFOLLOW refuses a symlink swapped in since the stat.
                if descend && let Some(child) = open_child_directory(dir, &c_name) {
                    self.directory(&child, &relative, depth + 1)?;
                }
                return Ok(Some(EntryType::Directory));
            }
            _ => {}
        }
        let entry_type = entry.entry_type;
        self.snapshot.entries.insert(relative, entry);
        Ok(Some(entry_type))
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
        let limit = self.byte_limit;
        if self.hashed_bytes.saturating_add(metadata.len()) > limit {
            self.stop(format!(
                "stopped hashing at {relative}: over {limit} bytes in total"
            ));
            return None;
        }
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 64 * 1024];
        // Read at most what the bound still allows, even if the file grows while we read.
        let mut reader = (&file).take(limit - self.hashed_bytes);
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

#[cfg(test)]
mod tests {
    use super::{Budget, Snapshot, take_with};
    use expect_test::{Expect, expect};
    use std::path::Path;

    /// Budgets small enough that a test floods them with a few dozen files.
    const SMALL: Budget = Budget {
        entries: 12,
        hashed_bytes: 1 << 20,
        priority_entries: 4,
        priority_hashed_bytes: 64,
        priority_paths: 3,
    };

    /// `aaa/` holds more entries than the whole budget, sorting before everything else;
    /// `out/ranking.txt` is what the agent rewrote, `outside/secret.txt` is outside the home.
    fn flooded_home(root: &Path) -> std::path::PathBuf {
        let home = root.join("home");
        std::fs::create_dir_all(home.join("aaa")).unwrap();
        for i in 0..20 {
            std::fs::write(home.join(format!("aaa/{i:02}")), b"").unwrap();
        }
        std::fs::create_dir_all(home.join("out")).unwrap();
        std::fs::write(home.join("out/ranking.txt"), b"1. Greenway\n").unwrap();
        std::fs::create_dir_all(home.join("docs")).unwrap();
        std::fs::write(home.join("docs/a.md"), b"a").unwrap();
        std::fs::write(home.join("docs/b.md"), b"b").unwrap();
        std::fs::create_dir_all(root.join("outside")).unwrap();
        std::fs::write(root.join("outside/secret.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink("../outside", home.join("link")).unwrap();
        home
    }

    fn check(priority: &[&str], expected: Expect) {
        let root = tempfile::tempdir().unwrap();
        let home = flooded_home(root.path());
        let priority: Vec<String> = priority.iter().map(|p| p.to_string()).collect();
        let snapshot = take_with(&home, &priority, SMALL).unwrap();
        expected.assert_eq(&render(&snapshot));
    }

    /// The entries outside the flood, whether each is prioritized, and the walk's verdict.
    fn render(snapshot: &Snapshot) -> String {
        let flood = snapshot
            .entries
            .keys()
            .filter(|p| p.starts_with("aaa/"))
            .count();
        let mut out = format!("flood entries: {flood}\n");
        for (path, entry) in &snapshot.entries {
            if path.starts_with("aaa/") {
                continue;
            }
            let priority = if snapshot.prioritized.contains(path) {
                " (priority)"
            } else {
                ""
            };
            let hash = entry.sha256.as_deref().map_or("-", |h| &h[..8]);
            let target = entry.link_target.as_deref().unwrap_or("");
            out.push_str(&format!(
                "{path}: {:?} {hash}{}{target}{priority}\n",
                entry.entry_type,
                if target.is_empty() { "" } else { " -> " }
            ));
        }
        out.push_str(&format!("incomplete: {:?}\n", snapshot.incomplete));
        out
    }

    #[test]
    fn without_priority_a_flood_hides_later_files() {
        check(
            &[],
            expect![[r#"
                flood entries: 11
                aaa: Directory -
                incomplete: Some("stopped after 12 entries, before aaa/11")
            "#]],
        );
    }

    #[test]
    fn a_priority_file_is_recorded_past_a_flood() {
        check(
            &["out/ranking.txt"],
            expect![[r#"
                flood entries: 9
                aaa: Directory -
                out: Directory - (priority)
                out/ranking.txt: File 0f25fcef (priority)
                incomplete: Some("stopped after 12 entries, before aaa/09")
            "#]],
        );
    }

    #[test]
    fn a_symlinked_priority_component_is_not_followed() {
        check(
            &["link/secret.txt", "out/ranking.txt"],
            expect![[r#"
                flood entries: 8
                aaa: Directory -
                link: Symlink - -> ../outside (priority)
                out: Directory - (priority)
                out/ranking.txt: File 0f25fcef (priority)
                incomplete: Some("stopped after 12 entries, before aaa/08")
            "#]],
        );
    }

    #[test]
    fn a_priority_directory_is_walked_within_the_reserve() {
        check(
            &["docs", "out/ranking.txt", "../outside/secret.txt"],
            expect![[r#"
                flood entries: 7
                aaa: Directory -
                docs: Directory - (priority)
                docs/a.md: File ca978112 (priority)
                out: Directory - (priority)
                out/ranking.txt: File 0f25fcef (priority)
                incomplete: Some("stopped after 12 entries, before aaa/07")
            "#]],
        );
    }

    #[test]
    fn a_priority_file_past_the_hashing_reserve_has_no_hash_but_others_do() {
        let root = tempfile::tempdir().unwrap();
        let home = flooded_home(root.path());
        // Fits the reserve alone and sorts before out/ranking.txt: hashed in path order, it
        // would leave too little of the reserve for the ranking.
        std::fs::write(home.join("0big.bin"), [7u8; 60]).unwrap();
        let priority = vec!["0big.bin".to_owned(), "out/ranking.txt".to_owned()];
        let snapshot = take_with(&home, &priority, SMALL).unwrap();
        assert_eq!(snapshot.entries["0big.bin"].sha256, None);
        assert!(snapshot.entries["out/ranking.txt"].sha256.is_some());
        assert_eq!(
            snapshot.incomplete.as_deref(),
            Some("stopped hashing at 0big.bin: over 64 bytes in total")
        );
    }
}
