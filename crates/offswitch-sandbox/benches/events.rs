//! What recording the event stream costs, printed as markdown: two workloads inside a real
//! sandbox, each with recording off, on, and under `strace -f -e trace=execve,file` (the
//! familiar peer, recording off), interleaved run by run so that machine load hits all three
//! alike. With recording on, each run also checks that no event was lost and that every exec
//! and every file of the workload is in the stream.
//!
//! A fourth column, `kernel`, is the floor under recording file events: recording off, and a
//! bare fanotify group made and marked exactly as the recorder's on the home, whose events a
//! thread reads every 2 ms and throws away. What it costs is what the kernel charges each change
//! in the sandbox, whatever the reader does.
//!
//! Besides the median of each mode, the overhead is given as the median of the run-by-run ratio
//! to the recording-off run next to it: this VM's speed wanders by a third over seconds (a fixed
//! Python loop: 395-576 ms), and a pair shares its moment.
//!
//! - exec-heavy: 1,000 short execs (`/bin/true`, one process each);
//! - file-heavy: unpack a 10,000-file tar archive in the home, then delete it.
//!
//! Usage: `cargo bench -p offswitch-sandbox --bench events -- [--runs N] [--only exec|file]
//! [--mode off|on|kernel|strace] [--no-strace]` (root; strace must be installed for its column,
//! `bench/events/run.sh` installs it). `--only` and `--mode` narrow the run for profiling one
//! cell (for instance under `perf record`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use offswitch_sandbox::{
    DiskLimit, EventKind, ExecRequest, ExecStatus, FileOp, Limits, NetworkMode, Sandbox,
    SandboxConfig, create_home, remove_home, set_event_recording,
};

/// The allocator the `offswitch` binary ships with: the recorder's reader threads allocate per
/// event, and they share the two cores with the workload.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXECS: usize = 1000;
const FILES: usize = 10_000;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Off,
    On,
    Kernel,
    Strace,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::On => "on",
            Mode::Kernel => "kernel",
            Mode::Strace => "strace",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Off => "recording off",
            Mode::On => "recording on",
            Mode::Kernel => "kernel: fanotify alone, events discarded (recording off)",
            Mode::Strace => "strace -f (recording off)",
        }
    }
}

struct Workload {
    name: &'static str,
    command: String,
    /// Checks a stream recorded with recording on: `Err` says what is missing.
    check: fn(&offswitch_sandbox::EventStream) -> Result<(), String>,
    /// Whether it changes files (the `kernel` column measures file events only).
    changes_files: bool,
}

fn main() {
    let mut runs = 10;
    let mut only = None;
    let mut mode_only: Option<String> = None;
    let mut strace = Path::new("/usr/bin/strace").is_file();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--only" => only = Some(args.next().expect("--only exec|file")),
            "--no-strace" => strace = false,
            "--mode" => mode_only = Some(args.next().expect("--mode off|on|kernel|strace")),
            _ => {}
        }
    }
    let scratch =
        std::env::temp_dir().join(format!("offswitch-events-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let archive = make_archive(&scratch);
    let workloads = [
        Workload {
            name: "exec-heavy: 1,000 execs of /bin/true",
            command: format!("i=0; while [ $i -lt {EXECS} ]; do /bin/true; i=$((i+1)); done"),
            check: check_execs,
            changes_files: false,
        },
        Workload {
            name: "file-heavy: untar 10,000 files, then delete them",
            command: "mkdir -p x && tar xf archive.tar -C x && rm -rf x".into(),
            check: check_files,
            changes_files: true,
        },
    ];
    println!("## Event capture overhead\n");
    println!(
        "Host: {} CPUs, kernel {}. {runs} runs per cell, interleaved (off, on, strace, off, ...); \
         each time is one exec of the workload inside a live sandbox, from request to exit.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let mut modes: Vec<Mode> = vec![Mode::Off, Mode::On, Mode::Kernel];
    if strace {
        modes.push(Mode::Strace);
    } else {
        println!("(strace is not installed or not asked for: its column is left out)\n");
    }
    if let Some(name) = &mode_only {
        modes.retain(|mode| mode.flag() == name);
    }
    for workload in &workloads {
        if only
            .as_deref()
            .is_some_and(|only| !workload.name.starts_with(only))
        {
            continue;
        }
        let modes: Vec<Mode> = modes
            .iter()
            .copied()
            .filter(|mode| *mode != Mode::Kernel || workload.changes_files)
            .collect();
        // results[mode][run]: None where that run failed.
        let mut results: Vec<Vec<Option<Duration>>> = vec![Vec::new(); modes.len()];
        let mut failures = Vec::new();
        for run in 0..runs {
            for (index, mode) in modes.iter().enumerate() {
                let result = one(&scratch, &archive, workload, *mode, run);
                if let Err(error) = &result {
                    failures.push(format!("{} run {run}: {error}", mode.name()));
                }
                results[index].push(result.ok());
            }
        }
        let times: Vec<Vec<Duration>> = results
            .iter()
            .map(|runs| runs.iter().flatten().copied().collect())
            .collect();
        println!("### {}\n", workload.name);
        println!("| mode | median | p90 | min | vs. off (medians) | vs. off (paired, median) |");
        println!("|---|---|---|---|---|---|");
        let off_index = modes.iter().position(|m| *m == Mode::Off);
        for (index, mode) in modes.iter().enumerate() {
            let median = median(&times[index]);
            let (by_median, paired) = match off_index {
                Some(off) => (
                    format!(
                        "{:+.1}%",
                        (ms(median) / ms(self::median(&times[off])) - 1.0) * 100.0
                    ),
                    paired_overhead(&results[index], &results[off])
                        .map_or("-".into(), |p| format!("{:+.1}%", p * 100.0)),
                ),
                None => ("-".into(), "-".into()),
            };
            println!(
                "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {by_median} | {paired} |",
                mode.name(),
                ms(median),
                ms(percentile(&times[index], 0.9)),
                ms(times[index].iter().min().copied().unwrap_or_default()),
            );
        }
        if failures.is_empty() {
            println!(
                "\nEvery recorded run: no loss, every exec and file of the workload in the stream.\n"
            );
        } else {
            println!("\nFailures:\n");
            for failure in failures {
                println!("- {failure}");
            }
            println!();
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// One run: a fresh sandbox (recording as `mode` says), the workload timed, the stream checked.
fn one(
    scratch: &Path,
    archive: &Path,
    workload: &Workload,
    mode: Mode,
    run: usize,
) -> Result<Duration, String> {
    let home = scratch.join(format!("home-{run}"));
    create_home(&home, DiskLimit { bytes: 512 << 20 }).map_err(|e| e.to_string())?;
    std::fs::copy(archive, home.join("archive.tar")).map_err(|e| e.to_string())?;
    set_event_recording(mode == Mode::On);
    let sandbox = Sandbox::create(SandboxConfig {
        home: home.clone(),
        limits: Limits {
            max_processes: Some(4096),
            ..Limits::default()
        },
        network: NetworkMode::LoopbackOnly,
        env: Vec::new(),
        hostname: "bench".into(),
        ro_binds: Vec::new(),
        protect: Vec::new(),
        home_idmap: None,
        watch_opens: Vec::new(),
    })
    .map_err(|e| e.to_string())?;
    set_event_recording(true);
    let command = match mode {
        Mode::Strace => format!(
            "strace -f -qq -o /dev/null -e trace=execve,file bash -c {}",
            quote(&workload.command)
        ),
        _ => workload.command.clone(),
    };
    let bare = if mode == Mode::Kernel {
        Some(BareReader::start(&home)?)
    } else {
        None
    };
    let started = Instant::now();
    let result = sandbox
        .exec(&ExecRequest {
            command,
            stdin: Vec::new(),
            timeout: Duration::from_secs(300),
            output_cap: 4096,
        })
        .map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    if let Some(bare) = bare {
        let read = bare.stop();
        if read == 0 {
            return Err("the bare fanotify group saw no events".into());
        }
    }
    if result.status != ExecStatus::Exited(0) {
        return Err(format!(
            "ended {:?}: {}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    sandbox.kill().map_err(|e| e.to_string())?;
    let checked = if mode == Mode::On {
        let stream = sandbox.event_stream();
        if let Some(why) = &stream.unavailable {
            Err(format!("no stream: {why}"))
        } else if !stream.lost.is_empty() {
            Err(format!("lost: {:?}", stream.lost))
        } else {
            (workload.check)(&stream)
        }
    } else {
        Ok(())
    };
    drop(sandbox);
    remove_home(&home).map_err(|e| e.to_string())?;
    checked.map(|()| elapsed)
}

/// A bare fanotify group on the home (`offswitch_events::bare_file_group`) and a thread that
/// reads it every 2 ms (the recorder's wait in a burst) and throws the events away.
struct BareReader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl BareReader {
    fn start(home: &Path) -> Result<BareReader, String> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        // A filesystem mark on a home that is not a mount of its own would watch the host's.
        let device = |path: &Path| std::fs::metadata(path).map(|m| m.dev()).ok();
        if home.parent().and_then(device) == device(home) {
            return Err(format!("{} is not a mount of its own", home.display()));
        }
        let group = offswitch_events::bare_file_group(home).map_err(|e| e.to_string())?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buffer = vec![0u8; 256 * 1024];
            let mut read = 0u64;
            loop {
                let last = stopping.load(std::sync::atomic::Ordering::Acquire);
                loop {
                    // SAFETY: reading into a buffer we own from the group we own (non-blocking).
                    let n = unsafe {
                        libc::read(group.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len())
                    };
                    if n <= 0 {
                        break;
                    }
                    read += n as u64;
                }
                if last {
                    return read;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Ok(BareReader {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop after a last drain; the bytes of events read.
    fn stop(mut self) -> u64 {
        self.finish()
    }

    fn finish(&mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread
            .take()
            .map_or(0, |thread| thread.join().unwrap_or(0))
    }
}

impl Drop for BareReader {
    fn drop(&mut self) {
        self.finish();
    }
}

fn check_execs(stream: &offswitch_sandbox::EventStream) -> Result<(), String> {
    let execs = stream
        .events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Exec { path, .. } if path == "/bin/true"))
        .count();
    if execs == EXECS {
        Ok(())
    } else {
        Err(format!("{execs} of {EXECS} execs of /bin/true recorded"))
    }
}

fn check_files(stream: &offswitch_sandbox::EventStream) -> Result<(), String> {
    let count = |op: FileOp| {
        stream
            .events
            .iter()
            .filter(|e| {
                matches!(&e.kind, EventKind::File { op: o, path, .. }
                    if *o == op && path.starts_with("/home/agent/x/"))
            })
            .count()
    };
    let (created, deleted) = (count(FileOp::Create), count(FileOp::Delete));
    if created >= FILES && deleted >= FILES {
        Ok(())
    } else {
        Err(format!(
            "{created} creates and {deleted} deletes of {FILES} files recorded"
        ))
    }
}

/// A tar archive of 10,000 small files in 100 folders.
fn make_archive(scratch: &Path) -> PathBuf {
    let source = scratch.join("source");
    for folder in 0..100 {
        let dir = source.join(format!("d{folder}"));
        std::fs::create_dir_all(&dir).unwrap();
        for file in 0..FILES / 100 {
            std::fs::write(dir.join(format!("f{file}")), format!("{folder} {file}\n")).unwrap();
        }
    }
    let archive = scratch.join("archive.tar");
    let status = std::process::Command::new("tar")
        .arg("cf")
        .arg(&archive)
        .arg("-C")
        .arg(&source)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(&source).unwrap();
    archive
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The median over runs of `mode`'s time over the recording-off time of the same run, minus
/// one; runs where either failed are left out.
fn paired_overhead(mode: &[Option<Duration>], off: &[Option<Duration>]) -> Option<f64> {
    let mut ratios: Vec<f64> = mode
        .iter()
        .zip(off)
        .filter_map(|(m, o)| Some(ms((*m)?) / ms((*o)?) - 1.0))
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some(
        ratios[(ratios.len() - 1) / 2]
            + (ratios[ratios.len() / 2] - ratios[(ratios.len() - 1) / 2]) / 2.0,
    )
}

fn median(times: &[Duration]) -> Duration {
    percentile(times, 0.5)
}

fn percentile(times: &[Duration], p: f64) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
