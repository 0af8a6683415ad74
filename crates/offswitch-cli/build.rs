//! Records the git commit the binary is built from as `OFFSWITCH_COMMIT`, stored with every
//! run (its provenance) so that `--resume` notices a different build. Without git, or outside a
//! checkout, the commit is `unknown`; the build never fails for it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=OFFSWITCH_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it names (a commit) and
    // packed refs. Only files that exist are named: cargo reruns a script on every build when
    // a named file is missing.
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let path = |relative: String| manifest_dir.join(relative);
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(path) {
        watched.push(git_dir.join("HEAD"));
    }
    if let Some(common_dir) = git(&["rev-parse", "--git-common-dir"]).map(path) {
        watched.push(common_dir.join("packed-refs"));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(common_dir.join(branch));
        }
    }
    for file in watched.iter().filter(|file| Path::is_file(file)) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
}

/// The trimmed output of a successful `git` command, `None` otherwise.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
