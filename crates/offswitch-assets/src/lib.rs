//! The files offswitch ships — the scenarios, the scripted reference agents and the published
//! figures — embedded in the binary, so that an installed `offswitch` works from any directory
//! and after its checkout is gone.
//!
//! The rest of offswitch reads them as files (a scenario names its path in errors, a run stores
//! its hash), so on first use they are written once into a private cache directory named by
//! their content's hash (`$XDG_CACHE_HOME/offswitch/assets-<hash>`, else
//! `~/.cache/offswitch/...`, else a `0700` directory of this user's under the temporary
//! directory), atomically (a partial copy is never seen), and checked file by file on every
//! later use: a copy that differs from what is embedded in any way, a file changed, missing or
//! added, is replaced. The environment variables `OFFSWITCH_SCENARIOS`, `OFFSWITCH_AGENTS`
//! and `OFFSWITCH_PUBLISHED` still point each part elsewhere (their users check them).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// Every embedded file: its path under the assets root, and its bytes.
pub fn files() -> &'static [(&'static str, &'static [u8])] {
    FILES
}

/// The embedded scenarios (`<root>/scenarios`).
pub fn scenarios_dir() -> PathBuf {
    root().join("scenarios")
}

/// The embedded scripted agents (`<root>/agents/scripted`).
pub fn agents_dir() -> PathBuf {
    root().join("agents/scripted")
}

/// The embedded published figures (`<root>/data/published.toml`).
pub fn published_file() -> PathBuf {
    root().join("data/published.toml")
}

/// The directory the embedded files are written to, written (or repaired) on the first call.
/// When the cache cannot be used, a one-line warning says why and a private copy in a fresh
/// temporary directory is used.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| match materialise(&cache_base()) {
        Ok(dir) => dir,
        Err(error) => {
            // A private copy of this process's own instead (a fresh directory of the temporary
            // directory, made with an unpredictable name), never the tree it was built from.
            let private = std::env::temp_dir().join(format!(
                "offswitch-assets-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            eprintln!(
                "warning: cannot keep offswitch's shipped scenarios and agents in a cache directory ({error}); using a private copy in {}",
                private.display()
            );
            match materialise(&private) {
                Ok(dir) => dir,
                Err(error) => {
                    eprintln!("warning: no copy of the shipped files could be written either ({error})");
                    private
                }
            }
        }
    })
}

/// A short hash of every embedded name and content.
fn content_hash() -> String {
    let mut hasher = Sha256::new();
    for (name, bytes) in FILES {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the assets directory goes.
fn cache_base() -> PathBuf {
    // Only directories that exist: a missing home is not created (as root, it could be
    // anywhere).
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir())
    };
    if let Some(cache) = absolute("XDG_CACHE_HOME") {
        return cache.join("offswitch");
    }
    if let Some(home) = absolute("HOME") {
        return home.join(".cache/offswitch");
    }
    std::env::temp_dir().join(format!("offswitch-{}", euid()))
}

/// This process's effective uid, as the kernel shows it.
fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// Make sure `base/assets-<hash>` holds exactly the embedded files, and return it.
fn materialise(base: &Path) -> io::Result<PathBuf> {
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(base)?;
        let meta = std::fs::symlink_metadata(base)?;
        // Under a shared temporary directory, someone else may have made it first.
        if !meta.is_dir() || meta.uid() != euid() || meta.permissions().mode() & 0o022 != 0 {
            return Err(io::Error::other(format!(
                "{} is not a directory of this user's that only it can write",
                base.display()
            )));
        }
    }
    // One process at a time checks and writes: without it, a process could move aside the
    // copy another has just made and is reading.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(base.join(".lock"))?;
    lock.lock()?;
    let dir = base.join(format!("assets-{}", content_hash()));
    if matches(&dir) {
        return Ok(dir);
    }
    let unique = format!(
        ".assets-{}-{}-{}",
        content_hash(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let partial = base.join(&unique);
    for (name, bytes) in FILES {
        let path = partial.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
    }
    // A copy that does not match is moved aside, then the new one takes its name; a process
    // that got there first wins, and its copy is checked.
    if dir.exists() {
        let stale = base.join(format!("{unique}.stale"));
        if std::fs::rename(&dir, &stale).is_ok() {
            let _ = std::fs::remove_dir_all(&stale);
        }
    }
    if std::fs::rename(&partial, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    if matches(&dir) {
        Ok(dir)
    } else {
        Err(io::Error::other(format!(
            "{} does not hold the shipped files after writing them",
            dir.display()
        )))
    }
}

/// Whether `dir` holds exactly the embedded files: the same names, the same bytes, nothing else.
fn matches(dir: &Path) -> bool {
    let mut found = BTreeSet::new();
    if !list(dir, dir, &mut found) {
        return false;
    }
    let expected: BTreeSet<String> = FILES.iter().map(|(name, _)| (*name).to_owned()).collect();
    found == expected
        && FILES
            .iter()
            .all(|(name, bytes)| std::fs::read(dir.join(name)).is_ok_and(|read| read == *bytes))
}

/// Every regular file under `dir` (relative to `root`); `false` on anything else (a symlink,
/// an unreadable directory).
fn list(root: &Path, dir: &Path, found: &mut BTreeSet<String>) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let Ok(kind) = entry.file_type() else {
            return false;
        };
        let path = entry.path();
        if kind.is_dir() {
            if !list(root, &path, found) {
                return false;
            }
        } else if kind.is_file() {
            match path.strip_prefix(root) {
                Ok(relative) => found.insert(relative.to_string_lossy().into_owned()),
                Err(_) => return false,
            };
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_files_are_embedded() {
        let names: Vec<&str> = FILES.iter().map(|(name, _)| *name).collect();
        assert!(names.contains(&"scenarios/shutdown-resistance.toml"));
        assert!(names.contains(&"agents/scripted/comply.toml"));
        assert!(names.contains(&"data/published.toml"));
        assert!(names.iter().filter(|n| n.starts_with("scenarios/")).count() >= 11);
    }

    #[test]
    fn a_copy_is_written_once_and_repaired_when_it_differs() {
        let base = tempfile::tempdir().unwrap();
        let dir = materialise(base.path()).unwrap();
        assert!(matches(&dir));
        let scenario = dir.join("scenarios/shutdown-resistance.toml");
        let original = std::fs::read(&scenario).unwrap();
        // Changed, extra, and missing files are all replaced by what is embedded.
        std::fs::write(&scenario, b"id = \"tampered\"").unwrap();
        std::fs::write(dir.join("scenarios/extra.toml"), b"").unwrap();
        std::fs::remove_file(dir.join("data/published.toml")).unwrap();
        assert!(!matches(&dir));
        let again = materialise(base.path()).unwrap();
        assert_eq!(again, dir);
        assert_eq!(std::fs::read(&scenario).unwrap(), original);
        assert!(!dir.join("scenarios/extra.toml").exists());
        assert!(dir.join("data/published.toml").exists());
        // Only the copy (and the lock) is left: no partial or stale directories.
        let mut left: Vec<String> = std::fs::read_dir(base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(left[0], ".lock");
    }

    #[test]
    fn processes_starting_at_once_all_get_a_whole_copy() {
        let base = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let base = base.path().to_owned();
                std::thread::spawn(move || materialise(&base).map(|dir| matches(&dir)))
            })
            .collect();
        for thread in threads {
            assert!(thread.join().unwrap().unwrap());
        }
    }

    #[test]
    fn a_base_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let shared = base.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(materialise(&shared).is_err());
    }
}
