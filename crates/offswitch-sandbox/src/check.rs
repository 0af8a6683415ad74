//! What this host supports, feature by feature, for `offswitch sandbox check`.

use std::time::Duration;

use crate::cgroup::CgroupLayout;
use crate::sandbox::host;
use crate::{ExecRequest, ExecStatus, Limits, NetworkMode, Sandbox, SandboxConfig};

/// One feature: whether it works here, and why (or how it degrades).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureCheck {
    pub name: &'static str,
    pub works: bool,
    pub detail: String,
}

/// Probe the host: namespaces by creating a real sandbox in `scratch_home`, cgroups by layout.
pub fn check_host(scratch_home: &std::path::Path) -> Vec<FeatureCheck> {
    let host = host();
    let layout: &CgroupLayout = &host.layout;
    let mut checks = vec![FeatureCheck {
        name: "privileges",
        works: host.root,
        detail: if host.root {
            "running as root: cgroup limits and the cgroup kill are available".into()
        } else {
            "not root: limits fall back to rlimits, kill ends the PID namespace (slower)".into()
        },
    }];
    let config = SandboxConfig {
        home: scratch_home.to_path_buf(),
        limits: Limits::default(),
        network: NetworkMode::LoopbackOnly,
        env: Vec::new(),
        hostname: "check".into(),
        ro_binds: Vec::new(),
        protect: Vec::new(),
        home_idmap: None,
        watch_opens: Vec::new(),
    };
    let probe = Sandbox::create(config).and_then(|sandbox| {
        let result = sandbox.exec(&ExecRequest {
            command: "cat /proc/self/uid_map; ls /proc | grep -c '^[0-9]'".into(),
            stdin: Vec::new(),
            timeout: Duration::from_secs(10),
            output_cap: 4096,
        })?;
        let report = sandbox.kill()?;
        Ok((result, report))
    });
    match probe {
        Ok((result, report)) if result.status == ExecStatus::Exited(0) => {
            checks.push(FeatureCheck {
                name: "namespaces",
                works: true,
                detail: "user, pid, mount, net, uts and ipc namespaces, tmpfs root, fresh /proc"
                    .into(),
            });
            checks.push(FeatureCheck {
                name: "off-switch",
                works: report.survivors == 0,
                detail: format!(
                    "killed {} processes in {:?}, {} survivors",
                    report.processes_killed, report.elapsed, report.survivors
                ),
            });
        }
        Ok((result, _)) => checks.push(FeatureCheck {
            name: "namespaces",
            works: false,
            detail: format!(
                "a probe exec ended {:?}: {}",
                result.status,
                String::from_utf8_lossy(&result.stderr).trim()
            ),
        }),
        Err(error) => checks.push(FeatureCheck {
            name: "namespaces",
            works: false,
            detail: format!("could not create a sandbox: {error}"),
        }),
    }
    checks.push(check_link(scratch_home));
    let v2_kill = layout.v2.is_some();
    checks.push(FeatureCheck {
        name: "cgroup kill",
        works: host.root && layout.can_kill(),
        detail: match (&layout.v2, &layout.v1_freezer) {
            _ if !host.root => "needs root: kill ends the PID namespace instead (slower)".into(),
            (Some(v2), _) if v2_kill => format!("cgroup v2 cgroup.kill under {}", v2.display()),
            (None, Some(freezer)) => format!("cgroup v1 freezer under {}", freezer.display()),
            _ => "no cgroup v2 and no v1 freezer: kill ends the PID namespace instead".into(),
        },
    });
    let memory = layout.v2_controllers || layout.v1_memory.is_some();
    checks.push(FeatureCheck {
        name: "memory limit",
        works: host.root && memory,
        detail: if !host.root {
            "degraded to RLIMIT_AS per process (not root)".into()
        } else if layout.v2_controllers {
            "cgroup v2 memory.max".into()
        } else if memory {
            "cgroup v1 memory.limit_in_bytes".into()
        } else {
            "no memory controller".into()
        },
    });
    let pids = layout.v2_controllers || layout.v1_pids.is_some();
    checks.push(FeatureCheck {
        name: "process limit",
        works: host.root && pids,
        detail: if !host.root {
            "degraded to RLIMIT_NPROC per sandbox user namespace (not root)".into()
        } else if layout.v2_controllers {
            "cgroup v2 pids.max".into()
        } else if pids {
            "cgroup v1 pids.max".into()
        } else {
            "no pids controller".into()
        },
    });
    checks.push(FeatureCheck {
        name: "cpu time limit",
        works: host.root && (layout.v2.is_some() || layout.v1_cpuacct.is_some()),
        detail: if host.root {
            "whole-sandbox CPU accounting checked by the monitor, plus RLIMIT_CPU per process"
                .into()
        } else {
            "degraded to RLIMIT_CPU per process (not root)".into()
        },
    });
    checks.push(FeatureCheck {
        name: "wall time limit",
        works: true,
        detail: "enforced by the monitor thread".into(),
    });
    checks.push(check_disk(scratch_home));
    checks.push(FeatureCheck {
        name: "oom protection",
        works: host.oom_protection,
        detail: if host.oom_protection {
            "PID 1's oom_score_adj is -1000 and every exec's +500: the agent's processes are \
             the OOM killer's victims"
                .into()
        } else {
            "PID 1's oom_score_adj cannot be lowered (no CAP_SYS_RESOURCE): every exec starts \
             at +500 so the agent's processes are chosen first, and an OOM kill of PID 1 ends \
             the sandbox as its memory limit"
                .into()
        },
    });
    checks.push(FeatureCheck {
        name: "seccomp filter",
        // Every exec above installed it, or it would have failed.
        works: true,
        detail: "every exec runs under the deny filter (io_uring, keyring, eBPF, perf, \
            userfaultfd, fanotify, new namespaces, mounts, kexec, modules, clocks)"
            .into(),
    });
    checks.push(match offswitch_events::available() {
        Ok(()) => FeatureCheck {
            name: "event stream",
            works: true,
            detail: format!(
                "eBPF tracepoints record execs, forks, exits, signals to PID 1 and connections \
                 by cgroup; fanotify records file changes on each home volume, /tmp and \
                 /dev/shm{}",
                if offswitch_events::in_own_pid_namespace() {
                    "; pids as this process's own pid namespace sees them (not the host's: \
                     translated in the kernel)"
                } else {
                    ""
                }
            ),
        },
        Err(reason) => FeatureCheck {
            name: "event stream",
            works: false,
            detail: format!(
                "no kernel event stream ({reason}): labels that need one are indeterminate"
            ),
        },
    });
    checks
}

/// How homes get their disk limit here: a small real home, made and removed.
fn check_disk(scratch_home: &std::path::Path) -> FeatureCheck {
    let name = "disk limit";
    let path = scratch_home.join("disk-probe");
    let made = crate::create_home(
        &path,
        crate::DiskLimit {
            bytes: crate::DiskLimit::MIN_BYTES,
        },
    );
    let _ = crate::remove_home(&path);
    match made {
        Ok(crate::HomeKind::Ext4Volume) => FeatureCheck {
            name,
            works: true,
            detail: "each home is an ext4 volume in a preallocated image (loop device)".into(),
        },
        Ok(crate::HomeKind::Tmpfs) => FeatureCheck {
            name,
            works: true,
            detail: "each home is a tmpfs (memory, not disk): mkfs.ext4 or loop devices missing"
                .into(),
        },
        Ok(crate::HomeKind::Directory) => FeatureCheck {
            name,
            works: false,
            detail: "not root: homes are plain directories, a sandbox can fill the host's disk"
                .into(),
        },
        Err(error) => FeatureCheck {
            name,
            works: false,
            detail: format!("could not make a home: {error}"),
        },
    }
}

/// Whether two sandboxes can be joined by a veth link (`crate::link`): two real sandboxes,
/// linked, and a TCP connect across the link that must be refused (nothing listens) rather
/// than unroutable.
fn check_link(scratch_home: &std::path::Path) -> FeatureCheck {
    let name = "veth links";
    if !host().root {
        return FeatureCheck {
            name,
            works: false,
            detail: "needs root: sandboxes stay loopback-only, with no second host".into(),
        };
    }
    let config = |suffix: &str| SandboxConfig {
        home: scratch_home.join(suffix),
        limits: Limits::default(),
        network: NetworkMode::LoopbackOnly,
        env: Vec::new(),
        hostname: "check".into(),
        ro_binds: Vec::new(),
        protect: Vec::new(),
        home_idmap: None,
        watch_opens: Vec::new(),
    };
    let a_addr = std::net::Ipv4Addr::new(10, 254, 254, 1);
    let b_addr = std::net::Ipv4Addr::new(10, 254, 254, 2);
    let probe = Sandbox::create(config("link-a")).and_then(|a| {
        let b = Sandbox::create(config("link-b"))?;
        crate::link(&a, &b, a_addr, b_addr)?;
        a.exec(&ExecRequest {
            command: format!("(echo > /dev/tcp/{b_addr}/1) 2>&1"),
            stdin: Vec::new(),
            timeout: Duration::from_secs(10),
            output_cap: 4096,
        })
    });
    match probe {
        Ok(result) if String::from_utf8_lossy(&result.stdout).contains("refused") => FeatureCheck {
            name,
            works: true,
            detail: "veth pairs between sandboxes' network namespaces (iproute2)".into(),
        },
        Ok(result) => FeatureCheck {
            name,
            works: false,
            detail: format!(
                "linked, but the other end did not answer: {}",
                String::from_utf8_lossy(&result.stdout).trim()
            ),
        },
        Err(error) => FeatureCheck {
            name,
            works: false,
            detail: format!("could not link two sandboxes: {error}"),
        },
    }
}
