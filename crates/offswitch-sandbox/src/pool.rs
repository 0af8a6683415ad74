//! PID 1s cloned ahead of time, so that creating a sandbox does not wait for them.
//!
//! Cloning a PID 1 into six new namespaces (a network namespace above all) and writing its id
//! maps is the part of `Sandbox::create` that depends on nothing in the sandbox's config. One
//! background thread keeps `POOL_SIZE` such PID 1s ready, each in its own fresh base cgroup
//! (`SandboxCgroups::create_base`) and waiting for its go message; `create` takes one, adds
//! the cgroups its limits need, and sends the plan (mounts, hostname) with the v1 cgroups'
//! `tasks` files in the go message. The pool is a latency optimisation only: without the
//! zygote, under `OFFSWITCH_SANDBOX_NO_POOL`, for an oversized plan, when it is empty, or
//! after it failed, `create` clones inline exactly as before.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use crate::Limits;
use crate::cgroup::SandboxCgroups;
use crate::sandbox::{Host, LaunchedInit, host, launch_init};

/// PID 1s kept ready. One covers a caller creating sandboxes one after another; concurrent
/// creators beyond it clone inline, as they would without a pool.
const POOL_SIZE: usize = 1;
/// Largest plan sent with the go message (a datagram must fit the socket's send buffer);
/// larger plans clone inline, with the plan in the clone.
const MAX_SENT_PLAN: usize = 64 * 1024;
/// Failures in a row after which the pool stops trying for the rest of the process.
const MAX_FAILURES: u32 = 3;

struct Prepared {
    launched: LaunchedInit,
    cgroups: Option<SandboxCgroups>,
}

#[derive(Default)]
struct State {
    entries: VecDeque<Prepared>,
    started: bool,
    disabled: bool,
}

struct Pool {
    state: Mutex<State>,
    /// Wakes the filler when an entry was taken.
    taken: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State::default()),
        taken: Condvar::new(),
    })
}

fn lock(pool: &Pool) -> MutexGuard<'_, State> {
    pool.state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A ready PID 1 for a sandbox with `limits` whose plan is `plan_len` bytes, with its cgroups
/// (limits applied; PID 1 still has to join the v1 ones), or `None` to clone inline.
pub(crate) fn take(
    host: &Host,
    limits: &Limits,
    plan_len: usize,
) -> Option<(LaunchedInit, Option<SandboxCgroups>)> {
    if plan_len + 1 > MAX_SENT_PLAN || std::env::var_os("OFFSWITCH_SANDBOX_NO_POOL").is_some() {
        return None;
    }
    let pool = pool();
    let entry = {
        let mut state = lock(pool);
        if state.disabled {
            return None;
        }
        if !state.started {
            state.started = true;
            let spawned = std::thread::Builder::new()
                .name("offswitch-sandbox-pool".into())
                .spawn(move || fill(pool));
            if let Err(error) = spawned {
                tracing::warn!("no sandbox pool thread, cloning inline: {error}");
                state.disabled = true;
                return None;
            }
        }
        let entry = state.entries.pop_front();
        pool.taken.notify_one();
        entry
    }?;
    // Something outside may have killed a waiting PID 1; a dead one is thrown away.
    if exited(&entry) {
        discard(entry);
        return None;
    }
    let Prepared {
        launched,
        mut cgroups,
    } = entry;
    let failed = cgroups
        .as_mut()
        .is_some_and(|cgroups| cgroups.add_limits(&host.layout, limits).is_err());
    if failed {
        // The inline path will meet the same error and report it.
        discard(Prepared { launched, cgroups });
        return None;
    }
    Some((launched, cgroups))
}

/// The filler thread: keep `POOL_SIZE` entries ready, for the life of the process.
fn fill(pool: &'static Pool) {
    let host = host();
    let mut failures = 0;
    loop {
        {
            let mut state = lock(pool);
            while state.entries.len() >= POOL_SIZE {
                state = pool
                    .taken
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        match prepare(host) {
            Ok(Some(entry)) => {
                failures = 0;
                lock(pool).entries.push_back(entry);
            }
            Ok(None) => {
                // No zygote: cloning from this thread would be no faster than inline.
                lock(pool).disabled = true;
                return;
            }
            Err(error) => {
                failures += 1;
                if failures >= MAX_FAILURES {
                    tracing::warn!("sandbox pool stopped after {failures} failures: {error}");
                    lock(pool).disabled = true;
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Clone one PID 1 with a placeholder plan, in fresh base cgroups; `None` without a zygote.
fn prepare(host: &Host) -> std::io::Result<Option<Prepared>> {
    let cgroups = if host.root {
        Some(
            SandboxCgroups::create_base(&host.layout)
                .map_err(|error| std::io::Error::new(error.source.kind(), error.to_string()))?,
        )
    } else {
        None
    };
    // Never run: the real plan replaces it (see `child::GO_WITH_PLAN`).
    let placeholder = crate::child::encode_plan(&c"/".into(), b"", &[]);
    match launch_init(placeholder, host, cgroups.as_ref(), &[], true) {
        Ok(Some(launched)) => Ok(Some(Prepared { launched, cgroups })),
        Ok(None) => {
            if let Some(cgroups) = &cgroups {
                cgroups.remove();
            }
            Ok(None)
        }
        Err(error) => {
            if let Some(cgroups) = &cgroups {
                cgroups.remove();
            }
            Err(error)
        }
    }
}

fn exited(entry: &Prepared) -> bool {
    let mut poll = [libc::pollfd {
        fd: entry.launched.pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: a valid pollfd array, zero timeout.
    unsafe { libc::poll(poll.as_mut_ptr(), 1, 0) > 0 }
}

fn discard(entry: Prepared) {
    entry.launched.abandon();
    if let Some(cgroups) = &entry.cgroups {
        let _ = cgroups.kill_all(
            std::time::Duration::from_secs(10),
            Some(entry.launched.pidfd.as_raw_fd()),
        );
        cgroups.remove();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::{ExecRequest, Limits, NetworkMode, Sandbox, SandboxConfig};

    fn config(home: std::path::PathBuf, hostname: &str, limits: Limits) -> SandboxConfig {
        SandboxConfig {
            home,
            limits,
            network: NetworkMode::LoopbackOnly,
            env: Vec::new(),
            hostname: hostname.into(),
            ro_binds: Vec::new(),
            protect: Vec::new(),
            home_idmap: None,
            watch_opens: Vec::new(),
        }
    }

    /// The PID 1 waiting in the pool, once there is one.
    fn ready_pid() -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let state = super::lock(super::pool());
            if state.disabled {
                return None;
            }
            if let Some(entry) = state.entries.front() {
                return Some(entry.launched.pid);
            }
            drop(state);
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn a_pooled_pid_1_takes_its_plan_limits_and_cgroups_from_the_go_message() {
        let dir = tempfile::tempdir().unwrap();
        // The first sandbox starts the pool.
        let first = Sandbox::create(config(dir.path().join("first"), "first", Limits::default()))
            .expect("create");
        drop(first);
        // Other tests may take the ready PID 1 first: try until this one gets it.
        for _ in 0..20 {
            let Some(pooled) = ready_pid() else {
                eprintln!("skipping the pooled-create test: no pool here (no zygote)");
                return;
            };
            let limits = Limits {
                memory_bytes: Some(256 << 20),
                max_processes: Some(64),
                ..Limits::default()
            };
            let sandbox = Sandbox::create(config(dir.path().join("pooled"), "pooled", limits))
                .expect("create");
            if sandbox.shared().init_pid != pooled {
                continue;
            }
            let result = sandbox
                .exec(&ExecRequest {
                    command: "hostname; pwd".into(),
                    stdin: Vec::new(),
                    timeout: Duration::from_secs(20),
                    output_cap: 4096,
                })
                .expect("exec");
            assert_eq!(
                String::from_utf8_lossy(&result.stdout),
                "pooled\n/home/agent\n"
            );
            // Inside, a cgroup namespace hides the paths; the host sees which cgroups PID 1
            // joined.
            let joined = std::fs::read_to_string(format!("/proc/{pooled}/cgroup")).unwrap();
            let mut joined: Vec<&str> = joined
                .lines()
                .filter(|line| line.contains("/offswitch/"))
                .filter_map(|line| line.split(':').nth(1))
                .map(|controllers| {
                    if controllers.is_empty() {
                        "unified"
                    } else {
                        controllers
                    }
                })
                .collect();
            joined.sort_unstable();
            // SAFETY: geteuid cannot fail.
            let root = unsafe { libc::geteuid() } == 0;
            let expected: &[&str] = if root {
                &["memory", "pids", "unified"]
            } else {
                &[]
            };
            assert_eq!(joined, expected);
            return;
        }
        panic!("never got the pooled PID 1");
    }
}
