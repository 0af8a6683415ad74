//! Where a run's trial homes live on the host, so that two processes never share one.
//!
//! A run's homes are under `<work_dir>/<run>/<owner>/`, where `<owner>` names the process that
//! created them by its pid and its start time (`p<pid>-<start>`, the start in clock ticks since
//! boot from `/proc/<pid>/stat`): a pid alone is reused, a pid with its start time is not. A
//! process only ever creates, and removes, homes in its own directory. Homes left by a process
//! that died (`kill -9`, a crash, a power cut) are removed by the next process that runs the
//! run, which holds the run's lock; the directory of a process that is still alive is never
//! touched, and neither is one marked [`KEEP_MARKER`] (a process run with `--keep-homes`).

use std::path::{Path, PathBuf};

/// The file in an owner directory saying its homes were kept on purpose (`--keep-homes`).
pub const KEEP_MARKER: &str = ".keep";

/// A process as the owner of a home directory: its pid and when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
    pub start_ticks: u64,
}

impl Owner {
    /// This process.
    pub fn this_process() -> std::io::Result<Owner> {
        let pid = std::process::id();
        let start_ticks = start_ticks(pid)?
            .ok_or_else(|| std::io::Error::other(format!("no start time in /proc/{pid}/stat")))?;
        Ok(Owner { pid, start_ticks })
    }

    /// The owner directory's name: `p<pid>-<start ticks>`.
    pub fn dir_name(&self) -> String {
        format!("p{}-{}", self.pid, self.start_ticks)
    }

    /// The owner named by an owner directory, `None` for any other name.
    pub fn parse(name: &str) -> Option<Owner> {
        let (pid, start) = name.strip_prefix('p')?.split_once('-')?;
        Some(Owner {
            pid: pid.parse().ok()?,
            start_ticks: start.parse().ok()?,
        })
    }

    /// Whether this process is still running: its pid exists and started when it did. A
    /// process that cannot be read (`/proc` hidden, permissions) counts as alive, so that its
    /// homes are left alone.
    pub fn is_alive(&self) -> bool {
        match start_ticks(self.pid) {
            Ok(Some(start)) => start == self.start_ticks,
            Ok(None) => true,
            Err(error) => error.kind() != std::io::ErrorKind::NotFound,
        }
    }
}

/// Remove the owner directories under `run_dir` whose process is dead, unless marked
/// [`KEEP_MARKER`]; return the ones removed. Entries that are not owner directories (homes of
/// an older offswitch that had no owner level) are left as they are.
pub fn remove_dead_owners(run_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(owner) = entry.file_name().to_str().and_then(Owner::parse) else {
            continue;
        };
        if owner.is_alive() || path.join(KEEP_MARKER).exists() {
            continue;
        }
        // Its homes are volumes of their own, maybe still mounted: released first.
        if offswitch_sandbox::remove_homes_under(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// The start time of process `pid`: `Ok(None)` when its stat line cannot be parsed,
/// `Err(NotFound)` when there is no such process.
fn start_ticks(pid: u32) -> std::io::Result<Option<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces and parentheses itself;
    // the fields after its last `)` start at field 3, so the start time (22) is the 20th.
    Ok(stat
        .rsplit_once(')')
        .and_then(|(_, fields)| fields.split_whitespace().nth(19))
        .and_then(|field| field.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_homes_of_dead_owners_are_removed() {
        let run_dir = tempfile::tempdir().unwrap();
        let me = Owner::this_process().unwrap();
        assert!(me.is_alive());
        assert_eq!(Owner::parse(&me.dir_name()), Some(me));
        // Another live process, then the same pid started at another time (a reused pid).
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let other = Owner {
            pid: child.id(),
            start_ticks: start_ticks(child.id()).unwrap().unwrap(),
        };
        let reused = Owner {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        // A pid above the kernel's maximum never exists.
        let gone = Owner {
            pid: 1 << 30,
            start_ticks: 1,
        };
        let kept = Owner {
            pid: (1 << 30) + 1,
            start_ticks: 1,
        };
        for owner in [me, other, reused, gone, kept] {
            let home = run_dir.path().join(owner.dir_name()).join("home-0-abc");
            std::fs::create_dir_all(&home).unwrap();
            std::fs::write(home.join("notes.txt"), "x").unwrap();
        }
        std::fs::write(run_dir.path().join(kept.dir_name()).join(KEEP_MARKER), "").unwrap();
        let legacy = run_dir.path().join("shutdown-resistance-0-0123456789ab");
        std::fs::create_dir(&legacy).unwrap();

        let mut removed: Vec<String> = remove_dead_owners(run_dir.path())
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        let mut expected = vec![reused.dir_name(), gone.dir_name()];
        expected.sort();
        assert_eq!(removed, expected);
        for owner in [me, other, kept] {
            assert!(
                run_dir
                    .path()
                    .join(owner.dir_name())
                    .join("home-0-abc/notes.txt")
                    .exists()
            );
        }
        assert!(legacy.exists());

        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!other.is_alive());
        let removed = remove_dead_owners(run_dir.path());
        assert_eq!(removed, vec![run_dir.path().join(other.dir_name())]);
    }
}
