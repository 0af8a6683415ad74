//! A process as the owner of what offswitch leaves on the host named after it (sandbox cgroups,
//! a run's directory of homes), so that a later process can tell whether the owner is gone and
//! clean up after it, and never touches what a live one still uses.
//!
//! A pid alone does not name a process: the kernel reuses it, and in another pid namespace (a
//! container sharing the host's cgroup tree or a host directory) the same number is another
//! process. An owner is its pid, its start time and its pid namespace; only an owner of this
//! process's own namespace can be judged, the others are left alone.

use std::io;

/// A process: pid, start time and pid namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
    pub start_ticks: u64,
    /// The inode number of its pid namespace (`/proc/<pid>/ns/pid`).
    pub pid_namespace: u64,
}

impl Owner {
    /// This process (read once).
    pub fn this_process() -> io::Result<Owner> {
        static THIS: std::sync::OnceLock<Result<Owner, String>> = std::sync::OnceLock::new();
        THIS.get_or_init(|| Owner::of_process(std::process::id()).map_err(|e| e.to_string()))
            .clone()
            .map_err(io::Error::other)
    }

    /// Process `pid` of this process's pid namespace, as it is now.
    pub fn of_process(pid: u32) -> io::Result<Owner> {
        use std::os::unix::fs::MetadataExt;
        let start_ticks = start_ticks(pid)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no start time in /proc/{pid}/stat"),
            )
        })?;
        let pid_namespace = std::fs::metadata(format!("/proc/{pid}/ns/pid"))?.ino();
        Ok(Owner {
            pid,
            start_ticks,
            pid_namespace,
        })
    }

    /// Whether this owner may still be running, as far as this process can tell: an owner of
    /// another pid namespace (or when this process's own cannot be read) counts as alive, as
    /// does one whose `/proc` entry cannot be read (hidden, permissions). Gone: its pid is free,
    /// or taken by a process that started at another time.
    pub fn is_alive(&self) -> bool {
        match Owner::this_process() {
            Ok(me) => self.is_alive_as_seen_by(&me, start_ticks),
            Err(_) => true,
        }
    }

    /// [`is_alive`](Owner::is_alive) as seen by `me`, with `start_of` reading a pid's start
    /// time (`Err(NotFound)` when there is no such process).
    pub fn is_alive_as_seen_by(
        &self,
        me: &Owner,
        start_of: impl Fn(u32) -> io::Result<Option<u64>>,
    ) -> bool {
        // An identity /proc could not give (0) judges nothing and is judged by nobody.
        let unknown = |owner: &Owner| owner.start_ticks == 0 || owner.pid_namespace == 0;
        if unknown(self) || unknown(me) || self.pid_namespace != me.pid_namespace {
            return true;
        }
        match start_of(self.pid) {
            Ok(Some(start)) => start == self.start_ticks,
            Ok(None) => true,
            Err(error) => error.kind() != io::ErrorKind::NotFound,
        }
    }
}

/// The start time of process `pid` in this process's pid namespace: `Ok(None)` when its stat
/// line cannot be parsed, `Err(NotFound)` when there is no such process.
pub(crate) fn start_ticks(pid: u32) -> io::Result<Option<u64>> {
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
    fn an_owner_is_alive_while_its_process_runs_in_this_namespace() {
        let me = Owner::this_process().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_ticks > 0 && me.pid_namespace > 0, "{me:?}");
        assert!(me.is_alive());
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let other = Owner::of_process(child.id()).unwrap();
        assert_eq!(other.pid_namespace, me.pid_namespace);
        assert!(other.is_alive());
        // The same pid started at another time: a reused pid, its owner gone.
        assert!(
            !Owner {
                start_ticks: other.start_ticks + 1,
                ..other
            }
            .is_alive()
        );
        // Another namespace's process is never judged, even with a pid free here.
        let elsewhere = Owner {
            pid: 1 << 30,
            pid_namespace: me.pid_namespace + 1,
            ..me
        };
        assert!(elsewhere.is_alive());
        // An owner whose identity /proc could not give is never judged gone.
        for unknown in [
            Owner {
                start_ticks: 0,
                ..other
            },
            Owner {
                pid_namespace: 0,
                ..other
            },
        ] {
            assert!(unknown.is_alive_as_seen_by(&me, |_| Ok(Some(1))));
            assert!(other.is_alive_as_seen_by(&unknown, |_| Ok(Some(1))));
        }
        assert!(
            !Owner {
                pid_namespace: me.pid_namespace,
                ..elsewhere
            }
            .is_alive()
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!other.is_alive());
    }
}
