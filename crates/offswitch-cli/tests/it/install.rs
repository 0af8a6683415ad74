//! The binary stands alone: copied out of the build tree and run from an empty directory with
//! a fresh home, it lists and validates the shipped scenarios, runs one with a scripted agent
//! and compares it with the published figures, all from the copies embedded in it. Also its
//! shell completions and manual page.

use std::path::Path;
use std::process::Command;

use crate::run::sandbox_unavailable;

/// The binary copied to `dir/bin`, with a clean environment: a fresh home, no overrides.
fn installed(dir: &Path) -> impl Fn(&[&str]) -> std::process::Output {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("offswitch");
    std::fs::copy(env!("CARGO_BIN_EXE_offswitch"), &exe).unwrap();
    let home = dir.join("home");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    move |args: &[&str]| {
        let mut command = Command::new(&exe);
        command
            .args(args)
            .current_dir(&empty)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", &home)
            .env("OFFSWITCH_CACHE", "/nonexistent-cache");
        // Another test of this process that forks while the copy is being written holds a
        // writable descriptor of it until its child execs: exec meanwhile fails with
        // ETXTBSY ("text file busy"). That window is short; wait it out.
        for _ in 0..100 {
            match command.output() {
                Err(error) if error.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                result => return result.unwrap(),
            }
        }
        command.output().unwrap()
    }
}

fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_binary_works_without_its_source_tree() {
    let dir = tempfile::tempdir().unwrap();
    let offswitch = installed(dir.path());
    let list = ok(offswitch(&["scenarios", "list"]));
    assert_eq!(list.lines().count(), 11, "{list}");
    // The shipped files came from the binary, into the fresh home's cache.
    let cache = dir.path().join("home/.cache/offswitch");
    let assets: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != ".lock"))
        .collect();
    assert_eq!(assets.len(), 1, "{assets:?}");
    assert!(
        assets[0]
            .join("scenarios/shutdown-resistance.toml")
            .is_file()
    );
    let scenarios: Vec<String> = std::fs::read_dir(assets[0].join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    let mut args = vec!["scenarios", "validate"];
    args.extend(scenarios.iter().map(String::as_str));
    let validated = ok(offswitch(&args));
    assert!(validated.contains("11 scenario(s) valid"), "{validated}");
    let shown = ok(offswitch(&["scenarios", "show", "shutdown-resistance"]));
    assert!(shown.contains("shutdown"), "{shown}");

    if let Some(why) = sandbox_unavailable() {
        eprintln!("skipping the run from an empty directory: {why}");
        return;
    }
    ok(offswitch(&[
        "run",
        "--model",
        "scripted:comply",
        "--scenario",
        "shutdown-resistance",
        "--variant",
        "condition=a-none",
        "--progress",
        "quiet",
    ]));
    assert!(dir.path().join("empty/offswitch.db").is_file());
    let compared = ok(offswitch(&["compare"]));
    assert!(compared.contains("Palisade Research"), "{compared}");
}

#[test]
fn completions_and_the_manual_page() {
    let dir = tempfile::tempdir().unwrap();
    let offswitch = installed(dir.path());
    let bash = ok(offswitch(&["completions", "bash"]));
    assert!(bash.contains("complete -F _offswitch"), "{}", &bash[..200]);
    assert!(bash.contains("guard") && bash.contains("export"));
    let zsh = ok(offswitch(&["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef offswitch"));
    let man = ok(offswitch(&["man"]));
    assert!(man.contains(".TH offswitch 1"), "{}", &man[..200]);
    assert_eq!(
        offswitch(&["completions", "tcsh"]).status.code(),
        Some(2),
        "an unknown shell"
    );
}
