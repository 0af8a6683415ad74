//! Compiles `bpf/offswitch.bpf.c` into a BPF object with clang, for `src/bpf.rs` to embed.
//!
//! Only clang is needed: the C sources carry their own minimal kernel types and helper
//! declarations and rely on CO-RE relocations, which the loader resolves against the running
//! kernel's BTF, so the object is the same on every x86-64 or arm64 kernel. Clang is looked up
//! as `$OFFSWITCH_CLANG`, then `clang`, `clang-19` .. `clang-14`. Without one, the object
//! committed at `bpf/prebuilt/offswitch.bpf.o` is used, with a warning, so that a machine
//! without clang still builds. The test
//! `the_committed_object_is_the_source_compiled` (run where clang exists, as in CI) fails when
//! the committed object no longer matches the source.

use std::path::PathBuf;
use std::process::Command;

const SOURCES: &[&str] = &[
    "bpf/offswitch.bpf.c",
    "bpf/vmlinux_min.h",
    "bpf/bpf_min.h",
    "bpf/events.h",
];
const PREBUILT: &str = "bpf/prebuilt/offswitch.bpf.o";

fn main() {
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-changed={PREBUILT}");
    println!("cargo:rerun-if-env-changed=OFFSWITCH_CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("offswitch.bpf.o");
    match find_clang() {
        Some(clang) => {
            let status = Command::new(&clang)
                .args(compile_args())
                .arg(&out)
                .status()
                .unwrap_or_else(|error| panic!("running {clang}: {error}"));
            assert!(status.success(), "{clang} failed to compile the BPF object");
            println!("cargo:rustc-env=OFFSWITCH_BPF_COMPILER={clang}");
        }
        None => {
            println!(
                "cargo:warning=clang not found: using the committed {PREBUILT} (install clang to build it from source)"
            );
            std::fs::copy(PREBUILT, &out)
                .unwrap_or_else(|error| panic!("no clang and no {PREBUILT}: {error}"));
            println!("cargo:rustc-env=OFFSWITCH_BPF_COMPILER=");
        }
    }
}

/// The clang arguments, up to the output path (shared with the test that checks the
/// committed object, through `bpf/compile-args`).
fn compile_args() -> Vec<String> {
    std::fs::read_to_string("bpf/compile-args")
        .expect("bpf/compile-args")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn find_clang() -> Option<String> {
    let mut candidates = Vec::new();
    if let Ok(clang) = std::env::var("OFFSWITCH_CLANG") {
        candidates.push(clang);
    }
    candidates.push("clang".into());
    candidates.extend((14..=19).rev().map(|version| format!("clang-{version}")));
    candidates.into_iter().find(|clang| {
        Command::new(clang)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    })
}
