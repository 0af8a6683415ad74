//! Tests of offswitch-events that need no sandbox: the build's BPF object, and the bare fanotify
//! group the benchmark measures. The event stream itself is tested end to end with real
//! sandboxes in offswitch-sandbox's `events` tests.

use std::path::Path;
use std::process::Command;

/// The object committed for machines without clang is the source compiled: where clang is
/// installed (as in CI), compiling `bpf/offswitch.bpf.c` with `bpf/compile-args` gives exactly
/// the committed bytes (`-fdebug-compilation-dir=.` keeps the build directory out of them).
/// Regenerate with: `cd crates/offswitch-events && clang $(cat bpf/compile-args)
/// bpf/prebuilt/offswitch.bpf.o`.
#[test]
fn the_committed_object_is_the_source_compiled() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let clang = ["clang", "clang-19", "clang-16", "clang-14"]
        .into_iter()
        .find(|clang| Command::new(clang).arg("--version").output().is_ok());
    let Some(clang) = clang else {
        eprintln!("skipping: no clang to compile the BPF source with");
        return;
    };
    let args = std::fs::read_to_string(crate_dir.join("bpf/compile-args")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let object = out.path().join("offswitch.bpf.o");
    let status = Command::new(clang)
        .current_dir(crate_dir)
        .args(args.split_whitespace())
        .arg(&object)
        .status()
        .unwrap();
    assert!(status.success());
    let built = std::fs::read(&object).unwrap();
    let committed = std::fs::read(crate_dir.join("bpf/prebuilt/offswitch.bpf.o")).unwrap();
    let version = Command::new(clang).arg("--version").output().unwrap();
    assert!(
        built == committed,
        "bpf/prebuilt/offswitch.bpf.o is stale (or was built by another clang than {}): rebuild it",
        String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
}

/// The benchmark's floor (`bare_file_group`) is a real group on the filesystem it is given: a
/// file made there is an event, one made on another filesystem is not.
#[test]
fn a_bare_file_group_sees_its_filesystem_and_nothing_else() {
    use std::os::fd::AsRawFd;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: a tmpfs of its own and fanotify need root");
        return;
    }
    let watched = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = std::ffi::CString::new(watched.path().to_str().unwrap()).unwrap();
    // SAFETY: mount a fresh tmpfs with valid C strings.
    let mounted = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=1m".as_ptr().cast(),
        )
    };
    assert_eq!(mounted, 0, "{}", std::io::Error::last_os_error());
    let read_all = |fd: i32| {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            // SAFETY: a buffer we own, of its length, from a non-blocking group.
            let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
            if n <= 0 {
                return total;
            }
            total += n as usize;
        }
    };
    let group = offswitch_events::bare_file_group(watched.path()).unwrap();
    std::fs::write(elsewhere.path().join("other"), b"x").unwrap();
    let before = read_all(group.as_raw_fd());
    std::fs::write(watched.path().join("seen"), b"x").unwrap();
    let after = read_all(group.as_raw_fd());
    drop(group);
    // SAFETY: unmount what this test mounted.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    assert_eq!(before, 0, "a change on another filesystem was reported");
    assert!(
        after > 0,
        "a change on the watched filesystem was not reported"
    );
}
