//! Tests of offswitch-events that need no sandbox: the build's BPF object. The event stream
//! itself is tested end to end with real sandboxes in offswitch-sandbox's `events` tests.

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
