//! Where a run's trial homes live on the host, so that two processes never share one.
//!
//! A run's homes are under `<work_dir>/<run>/<owner>/`, where `<owner>` names the process that
//! created them by its pid, its start time and its pid namespace (`p<pid>-<start>-<namespace>`,
//! an [`Owner`]): a pid alone is reused, and in another pid namespace (a container sharing the
//! work directory) it is another process. A process only ever creates, and removes, homes in
//! its own directory. Homes left by a process that died (`kill -9`, a crash, a power cut) are
//! removed by the next process that runs the run, which holds the run's lock; the directory of
//! a process that is still alive is never touched, nor one of another pid namespace, nor one
//! marked [`KEEP_MARKER`] (a process run with `--keep-homes`).

use std::path::{Path, PathBuf};

pub use offswitch_sandbox::Owner;

/// The file in an owner directory saying its homes were kept on purpose (`--keep-homes`).
pub const KEEP_MARKER: &str = ".keep";

/// The owner directory's name: `p<pid>-<start ticks>-<pid namespace>`.
pub fn dir_name(owner: &Owner) -> String {
    format!(
        "p{}-{}-{}",
        owner.pid, owner.start_ticks, owner.pid_namespace
    )
}

/// The owner named by an owner directory, `None` for any other name. A name of an older
/// version, without the namespace (`p<pid>-<start>`), is of this process's namespace.
pub fn parse_dir_name(name: &str) -> Option<Owner> {
    let mut parts = name.strip_prefix('p')?.split('-');
    let pid = parts.next()?.parse().ok()?;
    let start_ticks = parts.next()?.parse().ok()?;
    let pid_namespace = match parts.next() {
        Some(namespace) => namespace.parse().ok()?,
        None => Owner::this_process().ok()?.pid_namespace,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Owner {
        pid,
        start_ticks,
        pid_namespace,
    })
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
        let Some(owner) = entry.file_name().to_str().and_then(parse_dir_name) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_homes_of_dead_owners_are_removed() {
        let run_dir = tempfile::tempdir().unwrap();
        let me = Owner::this_process().unwrap();
        assert_eq!(parse_dir_name(&dir_name(&me)), Some(me));
        // Another live process, then the same pid started at another time (a reused pid).
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let other = Owner::of_process(child.id()).unwrap();
        let reused = Owner {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        // A pid above the kernel's maximum never exists.
        let gone = Owner {
            pid: 1 << 30,
            start_ticks: 1,
            ..me
        };
        let kept = Owner {
            pid: (1 << 30) + 1,
            ..gone
        };
        // A process of another pid namespace (a container sharing the directory): its pid
        // means nothing here, so it is left alone.
        let elsewhere = Owner {
            pid_namespace: me.pid_namespace + 1,
            ..gone
        };
        let names: Vec<String> = [me, other, reused, gone, kept, elsewhere]
            .iter()
            .map(dir_name)
            .chain([format!("p{}-1", (1 << 30) + 2)]) // an older version's name
            .collect();
        for name in &names {
            let home = run_dir.path().join(name).join("home-0-abc");
            std::fs::create_dir_all(&home).unwrap();
            std::fs::write(home.join("notes.txt"), "x").unwrap();
        }
        std::fs::write(run_dir.path().join(dir_name(&kept)).join(KEEP_MARKER), "").unwrap();
        let legacy = run_dir.path().join("shutdown-resistance-0-0123456789ab");
        std::fs::create_dir(&legacy).unwrap();

        let mut removed: Vec<String> = remove_dead_owners(run_dir.path())
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        let mut expected = vec![dir_name(&reused), dir_name(&gone), names[6].clone()];
        expected.sort();
        assert_eq!(removed, expected);
        for owner in [me, other, kept, elsewhere] {
            assert!(
                run_dir
                    .path()
                    .join(dir_name(&owner))
                    .join("home-0-abc/notes.txt")
                    .exists()
            );
        }
        assert!(legacy.exists());

        child.kill().unwrap();
        child.wait().unwrap();
        let removed = remove_dead_owners(run_dir.path());
        assert_eq!(removed, vec![run_dir.path().join(dir_name(&other))]);
    }
}
