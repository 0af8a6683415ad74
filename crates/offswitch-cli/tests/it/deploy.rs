//! The Kubernetes manifests of `deploy/kubernetes/` checked against the Kubernetes API's
//! schemas by `deploy/kubernetes/validate.sh` (the PyPI package kubernetes-validate, which
//! `.ci/run` installs), and the check shown to catch what it is there for: a misspelt field, a
//! wrong type, a shard count that disagrees with the Job's completions.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// `validate.sh` of `dir`, with the system python3 a `.ci/run` installs into.
fn validate(dir: &Path) -> Output {
    Command::new("bash")
        .arg(dir.join("validate.sh"))
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .unwrap()
}

/// Whether the validator is installed; under CI (which installs it) it must be.
fn validator_or_skip(test: &str) -> bool {
    let output = validate(&deploy_dir());
    if output.status.code() == Some(2) {
        let why = String::from_utf8_lossy(&output.stderr);
        assert!(
            std::env::var_os("OFFSWITCH_CI").is_none(),
            "kubernetes-validate is not installed under CI: {why}"
        );
        eprintln!("skipping {test}: {}", why.trim());
        return false;
    }
    true
}

#[test]
fn the_kubernetes_manifests_are_valid_against_the_api_schemas() {
    if !validator_or_skip("the_kubernetes_manifests_are_valid_against_the_api_schemas") {
        return;
    }
    let output = validate(&deploy_dir());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("ok: 4 objects"), "{stdout}");
}

#[test]
fn the_validation_catches_typos_wrong_types_and_a_shard_count_that_disagrees() {
    if !validator_or_skip(
        "the_validation_catches_typos_wrong_types_and_a_shard_count_that_disagrees",
    ) {
        return;
    }
    let job = std::fs::read_to_string(deploy_dir().join("job.yaml")).unwrap();
    for (what, from, to, expected) in [
        (
            "a misspelt field",
            "backoffLimitPerIndex: 3",
            "backoffLimitPerIndx: 3",
            "backoffLimitPerIndx",
        ),
        (
            "a wrong type",
            "completions: 4",
            "completions: four",
            "completions",
        ),
        (
            "a shard count",
            "value: \"4\"",
            "value: \"3\"",
            "SHARDS is '3' but completions is 4",
        ),
        (
            "a misspelt mode",
            "completionMode: Indexed",
            "completionMode: Indexd",
            "completionMode",
        ),
    ] {
        assert!(job.contains(from), "job.yaml no longer has {from:?}");
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(deploy_dir()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
        std::fs::write(dir.path().join("job.yaml"), job.replacen(from, to, 1)).unwrap();
        let output = validate(dir.path());
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{what}: {stdout}");
        assert!(stdout.contains(expected), "{what}: {stdout}");
    }
}

/// The `offswitch run` command of the shard Job, as written in `job.yaml`, is a command this
/// binary runs: its flags are taken as they are, only the model server swapped for a scripted
/// agent, the epochs cut and the volumes' paths moved into a temporary directory.
#[test]
fn the_shard_jobs_command_runs_as_written() {
    if let Some(reason) = crate::run::sandbox_unavailable() {
        eprintln!("skipping the_shard_jobs_command_runs_as_written: {reason}");
        return;
    }
    let job = std::fs::read_to_string(deploy_dir().join("job.yaml")).unwrap();
    let mut lines = job
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("exec offswitch run"));
    let mut command = String::new();
    for line in lines.by_ref() {
        command.push_str(line.trim_end_matches('\\'));
        command.push(' ');
        if !line.ends_with('\\') {
            break;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let words: Vec<String> = command
        .replace("$shard", "1")
        .replace("$SHARDS", "4")
        .replace("$RUN_ID", "study-1")
        .replace("/data/", &format!("{root}/data/"))
        .replace("/work", &format!("{root}/work"))
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_owned())
        .collect();
    assert_eq!(&words[..3], ["exec", "offswitch", "run"], "{command}");
    let mut args = vec!["run".to_owned()];
    let mut words = words[3..].iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            // The model server and its key: a scripted agent instead.
            "--model" => {
                words.next();
                args.extend(["--model".to_owned(), "scripted:comply".to_owned()]);
            }
            "--api-key-file" => {
                words.next();
            }
            "--epochs" => {
                words.next();
                args.extend(["--epochs".to_owned(), "1".to_owned()]);
            }
            _ => args.push(word.clone()),
        }
    }
    for flag in [
        "--shard",
        "--run-id",
        "--db",
        "--work-dir",
        "--cache-dir",
        "--scenario",
    ] {
        assert!(
            args.iter().any(|a| a == flag),
            "job.yaml's command lost {flag}: {args:?}"
        );
    }
    std::fs::create_dir_all(dir.path().join("data/study-1")).unwrap();
    let output = crate::run::offswitch().args(&args).output().unwrap();
    assert!(output.status.success(), "{args:?}: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("this database holds shard 1/4 of run study-1"),
        "{stdout}"
    );
}
