//! What a guard session needs from the sandbox: paths of the home the kernel keeps read-only
//! or hidden whatever runs inside, a project directory bound read-write with an id mapping
//! (the operator's files stay the operator's), a freezer, and streamed input and output.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use offswitch_sandbox::{
    ExecRequest, Limits, NetworkMode, Protect, Sandbox, SandboxConfig, Streams,
};

use crate::support::{HomeGuard, TEST_DISK, root_or_skip, run, text};

fn config(home: &Path, protect: Vec<Protect>, home_idmap: Option<(u32, u32)>) -> SandboxConfig {
    SandboxConfig {
        home: home.to_path_buf(),
        limits: Limits::default(),
        network: NetworkMode::LoopbackOnly,
        env: Vec::new(),
        hostname: "guarded".into(),
        ro_binds: Vec::new(),
        protect,
        home_idmap,
        watch_opens: Vec::new(),
    }
}

fn protect(path: &str, hide: bool) -> Protect {
    Protect {
        inside: format!("/home/agent/{path}").into(),
        hide,
    }
}

/// Every way of changing a file the kernel knows, tried on protected paths from several
/// languages: each is refused, and the files are unchanged afterwards.
#[test]
fn protected_paths_cannot_be_changed_by_any_means() {
    if !root_or_skip("protected paths (mounts as root)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    offswitch_sandbox::create_home(&home, TEST_DISK).unwrap();
    let _guard = HomeGuard(home.clone());
    std::fs::create_dir_all(home.join("agent/weights")).unwrap();
    std::fs::write(home.join("agent/config.toml"), "oversight = true\n").unwrap();
    std::fs::write(home.join("agent/weights/model.bin"), "weights").unwrap();
    std::fs::write(home.join("agent/secret.txt"), "the key").unwrap();
    std::fs::write(home.join("notes.txt"), "free to change").unwrap();
    let sandbox = Sandbox::create(config(
        &home,
        vec![
            protect("agent/config.toml", false),
            protect("agent/weights", false),
            protect("agent/secret.txt", true),
        ],
        None,
    ))
    .unwrap();
    let attempts = [
        "echo 'oversight = false' > agent/config.toml",
        "echo x >> agent/config.toml",
        "truncate -s0 agent/config.toml",
        "chmod 666 agent/config.toml",
        "rm -f agent/config.toml",
        "mv agent/config.toml agent/config.old",
        "mv notes.txt agent/config.toml",
        "ln -f notes.txt agent/config.toml",
        "python3 -c 'open(\"agent/config.toml\", \"w\").write(\"oversight = false\")'",
        "perl -e 'open(F, \">\", \"agent/weights/model.bin\") or die $!; print F \"x\"'",
        "rm -rf agent/weights",
        "touch agent/weights/extra",
        "mv agent/weights agent/w2",
        "cat agent/secret.txt",
        "echo leak > agent/secret.txt",
        "echo ok > notes.txt && cat notes.txt",
    ];
    let mut lines = Vec::new();
    for attempt in attempts {
        let result = run(
            &sandbox,
            &format!("cd ~ && ( {attempt} ) 2>/dev/null; echo \"[$?]\""),
        );
        lines.push(format!(
            "{attempt}: {}",
            text(&result).trim().replace('\n', " ")
        ));
    }
    expect_test::expect![[r#"
        echo 'oversight = false' > agent/config.toml: [1]
        echo x >> agent/config.toml: [1]
        truncate -s0 agent/config.toml: [1]
        chmod 666 agent/config.toml: [1]
        rm -f agent/config.toml: [1]
        mv agent/config.toml agent/config.old: [1]
        mv notes.txt agent/config.toml: [1]
        ln -f notes.txt agent/config.toml: [1]
        python3 -c 'open("agent/config.toml", "w").write("oversight = false")': [1]
        perl -e 'open(F, ">", "agent/weights/model.bin") or die $!; print F "x"': [30]
        rm -rf agent/weights: [1]
        touch agent/weights/extra: [1]
        mv agent/weights agent/w2: [1]
        cat agent/secret.txt: [0]
        echo leak > agent/secret.txt: [1]
        echo ok > notes.txt && cat notes.txt: ok [0]"#]]
    .assert_eq(&lines.join("\n"));
    sandbox.kill().unwrap();
    drop(sandbox);
    assert_eq!(
        std::fs::read_to_string(home.join("agent/config.toml")).unwrap(),
        "oversight = true\n"
    );
    assert_eq!(
        std::fs::read_to_string(home.join("agent/weights/model.bin")).unwrap(),
        "weights"
    );
    assert_eq!(
        std::fs::read_to_string(home.join("agent/secret.txt")).unwrap(),
        "the key"
    );
}

#[test]
fn a_protected_path_through_a_link_or_outside_the_home_is_refused() {
    if !root_or_skip("protected paths (mounts as root)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("real")).unwrap();
    std::fs::write(home.join("real/config"), "x").unwrap();
    std::os::unix::fs::symlink("real", home.join("link")).unwrap();
    let refused = |path: &str| match Sandbox::create(config(
        &home,
        vec![Protect {
            inside: path.into(),
            hide: false,
        }],
        None,
    )) {
        Ok(_) => format!("{path}: accepted"),
        Err(error) => error.to_string(),
    };
    let lines: Vec<String> = [
        "/home/agent/link/config",
        "/etc/passwd",
        "/home/agent/../agent/real/config",
        "/home/agent/missing",
        "/home/agent",
    ]
    .into_iter()
    .map(refused)
    .collect();
    expect_test::expect![[r#"
        cannot protect /home/agent/link/config: link is a symbolic link
        cannot protect /etc/passwd: it is not under /home/agent
        cannot protect /home/agent/../agent/real/config: it must not contain `.` or `..`
        cannot protect /home/agent/missing: No such file or directory (os error 2)
        cannot protect /home/agent: it is the home itself"#]]
    .assert_eq(&lines.join("\n"));
}

/// A project directory of another owner, bound read-write: the agent sees its files as its
/// own and edits them; on the host they stay the owner's, and what the agent creates is the
/// owner's too. Nothing is chowned.
#[test]
fn a_project_is_bound_with_an_id_mapping_and_keeps_its_owner() {
    if !root_or_skip("idmapped mounts (root)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("src/main.c"), "int main(){return 0;}\n").unwrap();
    let owner = std::fs::metadata(&project).unwrap();
    let sandbox = match Sandbox::create(config(&project, vec![], Some((owner.uid(), owner.gid()))))
    {
        Ok(sandbox) => sandbox,
        Err(error) => panic!("{error}"),
    };
    let result = run(
        &sandbox,
        "cd ~ && stat -c '%u %n' src/main.c && echo '// edited' >> src/main.c && mkdir -p build && echo out > build/a.o && echo done",
    );
    assert_eq!(text(&result), "0 src/main.c\ndone\n", "{}", text(&result));
    sandbox.kill().unwrap();
    drop(sandbox);
    for path in ["src/main.c", "build", "build/a.o"] {
        let meta = std::fs::metadata(project.join(path)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (owner.uid(), owner.gid()),
            "{path} changed owner"
        );
    }
    assert!(
        std::fs::read_to_string(project.join("src/main.c"))
            .unwrap()
            .ends_with("// edited\n")
    );
}

/// A paused sandbox runs nothing: a loop counting into a file stops counting until it is
/// resumed, and a paused sandbox can still be killed to zero.
#[test]
fn a_paused_sandbox_runs_nothing_until_resumed() {
    if !root_or_skip("the freezer (cgroups)") {
        return;
    }
    let test = crate::support::sandbox();
    run(
        &test.sandbox,
        "(setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.01; done' >/dev/null 2>&1 &); sleep 0.3",
    );
    let count = || -> u64 {
        std::fs::read_to_string(format!(
            "/proc/{}/root/tmp/count",
            test.sandbox.host_pids()[0]
        ))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
    };
    test.sandbox.pause().unwrap();
    let frozen_at = count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), frozen_at, "the loop ran while paused");
    test.sandbox.resume().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(count() > frozen_at, "the loop did not go on after resume");
    test.sandbox.pause().unwrap();
    let report = test.sandbox.kill().unwrap();
    assert_eq!(report.survivors, 0);
}

/// A streaming exec reads its input from the caller's pipe and hands over output as it comes.
#[test]
fn a_streaming_exec_passes_input_and_output_through() {
    if !root_or_skip("a sandbox") {
        return;
    }
    let test = crate::support::sandbox();
    let (read, write) = std::io::pipe().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = std::sync::Arc::clone(&seen);
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let mut write = write;
        for line in ["one\n", "two\n"] {
            write.write_all(line.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let result = test
        .sandbox
        .exec_streaming(
            &ExecRequest {
                command: "while read -r line; do echo \"got $line\"; done".into(),
                stdin: Vec::new(),
                timeout: Duration::from_secs(20),
                output_cap: 4096,
            },
            Streams {
                stdin: Some(read.into()),
                stdout: Some(Box::new(move |chunk| {
                    sink.lock().unwrap().extend_from_slice(chunk)
                })),
                stderr: None,
            },
        )
        .unwrap();
    feeder.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen.lock().unwrap()),
        "got one\ngot two\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&result.stdout),
        "got one\ngot two\n"
    );
}
