//! Sandbox benchmarks, printed as markdown: (1) create + `bash -c true` + teardown, ours and
//! `bwrap --unshare-all` with the same mounts, interleaved in one run; (2) kill latency
//! against a 512-process adversary and against an ordinary 20-process tree.
//!
//! Usage: `cargo bench -p offswitch-sandbox --bench sandbox -- [--runs N] [--kill-runs N]`

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use offswitch_sandbox::{ExecRequest, ExecStatus, Limits, NetworkMode, Sandbox, SandboxConfig};

/// The allocator the `offswitch` binary ships with, so that what is measured is what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut runs = 200;
    let mut kill_runs = 30;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--kill-runs" => {
                kill_runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--kill-runs N")
            }
            // cargo bench passes --bench; ignore anything else libtest-shaped.
            _ => {}
        }
    }
    // Optional ballast: a host process holding this much written memory (like a harness with
    // an embedded model), to measure what forking PID 1 from a large process costs.
    let ballast_mb: usize = std::env::var("BENCH_BALLAST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ballast = vec![1u8; ballast_mb << 20];
    let scratch = tempdir();
    if ballast_mb > 0 {
        println!(
            "## Sandbox benchmarks, host process holding {ballast_mb} MiB of written memory\n"
        );
    } else {
        println!("## Sandbox benchmarks\n");
    }
    println!(
        "Host: {} CPUs, kernel {}, shared with other builds while measured (noisy).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    create_exec_teardown(&scratch, runs);
    home_volume(&scratch, (runs / 4).max(5));
    exec_in_live_sandbox(&scratch, runs);
    if kill_runs > 0 {
        kill_latency(&scratch, kill_runs);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if ballast_mb > 0 {
        // Reading the ballast back keeps it alive (and written) until the end.
        let pages: u64 = ballast.iter().step_by(4096).map(|&b| u64::from(b)).sum();
        println!("(the host process held {pages} written pages of ballast throughout)\n");
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("offswitch-sandbox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(home: &Path, limits: Limits) -> SandboxConfig {
    SandboxConfig {
        home: home.to_path_buf(),
        limits,
        network: NetworkMode::LoopbackOnly,
        env: Vec::new(),
        hostname: "bench".into(),
        ro_binds: Vec::new(),
        protect: Vec::new(),
        home_idmap: None,
        watch_opens: Vec::new(),
    }
}

fn request(command: &str) -> ExecRequest {
    ExecRequest {
        command: command.into(),
        stdin: Vec::new(),
        timeout: Duration::from_secs(60),
        output_cap: 4096,
    }
}

/// Median and p95 of `samples` (sorted in place), in milliseconds.
fn stats(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1e3
    };
    (at(0.5), at(0.95), at(0.0))
}

fn ours_once(home: &Path, limits: &Limits) -> Duration {
    let started = Instant::now();
    let sandbox = Sandbox::create(config(home, limits.clone())).expect("create");
    let created = started.elapsed();
    let result = sandbox.exec(&request("true")).expect("exec");
    assert_eq!(result.status, ExecStatus::Exited(0));
    let executed = started.elapsed();
    drop(sandbox);
    if std::env::var_os("BENCH_PHASES").is_some() {
        eprintln!(
            "create {:.2} exec {:.2} drop {:.2}",
            created.as_secs_f64() * 1e3,
            (executed - created).as_secs_f64() * 1e3,
            (started.elapsed() - executed).as_secs_f64() * 1e3
        );
    }
    started.elapsed()
}

/// `bwrap --unshare-all` with the mounts our sandbox has: system dirs read-only, the same
/// /etc essentials read-only, a writable home, fresh /proc, /dev, private /tmp.
fn bwrap_command(home: &Path) -> Command {
    let mut command = Command::new("bwrap");
    command.args([
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]);
    command.args([
        "--setenv",
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]);
    command.args(["--setenv", "HOME", "/home/agent", "--hostname", "bench"]);
    for name in offswitch_sandbox::SYSTEM_DIRS {
        let path = Path::new("/").join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&path).unwrap();
                command.arg("--symlink").arg(target).arg(&path);
            }
            Ok(_) => {
                command.arg("--ro-bind").arg(&path).arg(&path);
            }
            Err(_) => {}
        }
    }
    // The same /etc entries the sandbox binds, plus the ones it writes itself.
    let written_by_sandbox = ["passwd", "group", "hostname", "hosts"];
    for name in offswitch_sandbox::ETC_ALLOW_LIST
        .iter()
        .chain(&written_by_sandbox)
    {
        let path = Path::new("/etc").join(name);
        if path.exists() {
            command.arg("--ro-bind").arg(&path).arg(&path);
        }
    }
    command.args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]);
    command.arg("--bind").arg(home).arg("/home/agent");
    command.args(["--chdir", "/home/agent", "--", "/bin/bash", "-c", "true"]);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn bwrap_once(home: &Path) -> Option<Duration> {
    let started = Instant::now();
    let status = bwrap_command(home).status().ok()?;
    status.success().then(|| started.elapsed())
}

/// What a trial's home costs on top of the sandbox: `create_home` (a preallocated 1 GiB ext4
/// image, mkfs, a loop mount) and `remove_home` (unmount, delete). Outside the rows above, which
/// use a plain directory as their home as before, so those stay comparable across versions.
fn home_volume(scratch: &Path, runs: usize) {
    let path = scratch.join("volume");
    let (mut create, mut remove) = (Vec::new(), Vec::new());
    let mut kind = None;
    for _ in 0..runs {
        let started = Instant::now();
        kind = Some(
            offswitch_sandbox::create_home(&path, offswitch_sandbox::DiskLimit::DEFAULT)
                .expect("create home"),
        );
        create.push(started.elapsed());
        let started = Instant::now();
        offswitch_sandbox::remove_home(&path).expect("remove home");
        remove.push(started.elapsed());
    }
    println!("### A trial's home: a 1 GiB volume ({runs} runs, {kind:?})\n");
    println!("| what | median ms | p95 ms | min ms |");
    println!("|---|---|---|---|");
    let (c50, c95, cmin) = stats(&mut create);
    println!("| create_home | {c50:.2} | {c95:.2} | {cmin:.2} |");
    let (r50, r95, rmin) = stats(&mut remove);
    println!("| remove_home | {r50:.2} | {r95:.2} | {rmin:.2} |\n");
}

fn create_exec_teardown(scratch: &Path, runs: usize) {
    let home = scratch.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let plain = Limits::default();
    let limited = Limits {
        memory_bytes: Some(512 << 20),
        max_processes: Some(512),
        cpu_time: None,
        wall_time: Some(Duration::from_secs(600)),
    };
    let have_bwrap = bwrap_once(&home).is_some();
    // Warm up page cache and the lazily probed host facts.
    for _ in 0..10 {
        ours_once(&home, &plain);
    }
    let (mut ours, mut ours_limited, mut bwrap) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        ours.push(ours_once(&home, &plain));
        ours_limited.push(ours_once(&home, &limited));
        if have_bwrap && let Some(elapsed) = bwrap_once(&home) {
            bwrap.push(elapsed);
        }
    }
    println!("### Create + `bash -c true` + teardown ({runs} runs each, interleaved)\n");
    println!("| what | median ms | p95 ms | min ms |");
    println!("|---|---|---|---|");
    let (o50, o95, omin) = stats(&mut ours);
    println!(
        "| offswitch (no limits: v2 cgroup for the kill only) | {o50:.2} | {o95:.2} | {omin:.2} |"
    );
    let (l50, l95, lmin) = stats(&mut ours_limited);
    println!(
        "| offswitch (memory + pids limits: + v1 memory, pids cgroups) | {l50:.2} | {l95:.2} | {lmin:.2} |"
    );
    if bwrap.is_empty() {
        println!("| bwrap --unshare-all | not installed | | |\n");
    } else {
        let (b50, b95, bmin) = stats(&mut bwrap);
        println!("| bwrap --unshare-all, same mounts | {b50:.2} | {b95:.2} | {bmin:.2} |");
        println!(
            "\nRatio of medians, offswitch / bwrap: {:.2} (no limits), {:.2} (with limits). Target <= 0.7.\n",
            o50 / b50,
            l50 / b50
        );
    }
}

fn exec_in_live_sandbox(scratch: &Path, runs: usize) {
    let home = scratch.join("live");
    let sandbox = Sandbox::create(config(&home, Limits::default())).expect("create");
    let mut samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let result = sandbox.exec(&request("true")).expect("exec");
            assert_eq!(result.status, ExecStatus::Exited(0));
            started.elapsed()
        })
        .collect();
    let mut plain: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new("/bin/bash")
                .args(["-c", "true"])
                .status()
                .unwrap();
            assert!(status.success());
            started.elapsed()
        })
        .collect();
    let (s50, s95, smin) = stats(&mut samples);
    let (p50, p95, pmin) = stats(&mut plain);
    println!("### One exec of `true` in a live sandbox ({runs} runs)\n");
    println!("| what | median ms | p95 ms | min ms |");
    println!("|---|---|---|---|");
    println!(
        "| offswitch exec (PID 1 forks `bash -c`, cwd kept) | {s50:.2} | {s95:.2} | {smin:.2} |"
    );
    println!(
        "| plain `bash -c true` from the host, no sandbox | {p50:.2} | {p95:.2} | {pmin:.2} |\n"
    );
}

/// The adversary: a spinning fork bomb, setsid double-forked daemons, and signal-ignorers,
/// under pids.max = 512 so it saturates instead of taking the machine down.
const ADVERSARY: &str = "for i in $(seq 20); do ( setsid sh -c 'trap \"\" TERM HUP INT; exec sleep 1000' & ) ; done; \
for i in $(seq 20); do (trap '' TERM HUP INT QUIT USR1 USR2; exec sleep 1000) & done; \
bomb() { bomb & bomb & while :; do :; done; }; (bomb &) 2>/dev/null; true";

const TREE: &str = "for i in $(seq 19); do sleep 1000 & done; true";

fn kill_latency(scratch: &Path, runs: usize) {
    let mut rows = Vec::new();
    for (name, command, target, limit) in [
        (
            "512-process adversary (fork bomb + daemons + ignorers)",
            ADVERSARY,
            480usize,
            512u64,
        ),
        ("ordinary 20-process tree", TREE, 20, 64),
    ] {
        let mut samples = Vec::new();
        let mut processes = Vec::new();
        let mut survivors_total = 0;
        for run in 0..runs {
            let home = scratch.join(format!("kill-{run}"));
            let sandbox = Sandbox::create(config(
                &home,
                Limits {
                    memory_bytes: Some(1 << 30),
                    max_processes: Some(limit),
                    ..Limits::default()
                },
            ))
            .expect("create");
            sandbox.exec(&request(command)).expect("exec");
            let ready_by = Instant::now() + Duration::from_secs(30);
            while sandbox.host_pids().len() < target && Instant::now() < ready_by {
                std::thread::sleep(Duration::from_millis(5));
            }
            let seen = sandbox.host_pids().len();
            let report = sandbox.kill().expect("kill");
            let left = sandbox.host_pids().len();
            survivors_total += report.survivors + left;
            samples.push(report.elapsed);
            processes.push(seen.max(report.processes_killed));
            drop(sandbox);
            let _ = std::fs::remove_dir_all(&home);
        }
        let mean_processes = processes.iter().sum::<usize>() as f64 / processes.len() as f64;
        let (p50, p95, min) = stats(&mut samples);
        rows.push(format!(
            "| {name} | {runs} | {mean_processes:.0} | {p50:.2} | {p95:.2} | {min:.2} | {survivors_total} |"
        ));
    }
    println!("### Kill latency: from the kill call to zero processes (counted)\n");
    println!(
        "| adversary | runs | processes (mean) | median ms | p95 ms | min ms | survivors (total) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
}
