//! Read-only binds: host files and directories visible at chosen paths, executable, unwritable.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use expect_test::{Expect, expect};
use offswitch_sandbox::{Bind, Limits, NetworkMode, Sandbox, SandboxConfig};

use crate::support::{run, text};

fn config(dir: &Path, ro_binds: Vec<Bind>) -> SandboxConfig {
    SandboxConfig {
        home: dir.join("home"),
        limits: Limits::default(),
        network: NetworkMode::LoopbackOnly,
        env: Vec::new(),
        hostname: "binds".into(),
        ro_binds,
        protect: Vec::new(),
        home_idmap: None,
        watch_opens: Vec::new(),
    }
}

/// A host directory holding an executable script and a data directory, bound into a sandbox
/// that then runs `commands`; each status and output is rendered.
fn check(commands: &[&str], expected: Expect) {
    let dir = tempfile::tempdir().expect("tempdir");
    // The sandbox's init mounts as an unprivileged host uid: the source must be reachable.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tool = dir.path().join("tool.sh");
    std::fs::write(&tool, "#!/bin/sh\necho tool ran with \"$@\"\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("weights.bin"), "WEIGHTS").unwrap();
    let binds = vec![
        Bind {
            host: tool.clone(),
            inside: PathBuf::from("/opt/offswitch/bin/offswitch"),
        },
        Bind {
            host: data,
            inside: PathBuf::from("/srv/model"),
        },
        Bind {
            host: tool,
            inside: PathBuf::from("/tmp/tools/tool"),
        },
    ];
    let sandbox = Sandbox::create(config(dir.path(), binds)).expect("create sandbox");
    let mut rendered = String::new();
    for command in commands {
        let result = run(&sandbox, command);
        rendered.push_str(&format!(
            "$ {command}\n{:?}\n{}",
            result.status,
            text(&result)
        ));
    }
    expected.assert_eq(&rendered);
    sandbox.kill().expect("kill");
}

#[test]
fn bound_file_is_readable_and_executable_but_not_writable() {
    check(
        &[
            "/opt/offswitch/bin/offswitch --version; head -1 /opt/offswitch/bin/offswitch",
            "echo evil > /opt/offswitch/bin/offswitch",
            "rm -f /opt/offswitch/bin/offswitch; chmod 777 /opt/offswitch/bin/offswitch",
            "touch /opt/offswitch/bin/other; mkdir /opt/x",
            "grep -E ' /(opt/offswitch/bin/offswitch|srv/model) ' /proc/self/mounts | cut -d' ' -f2,4 | cut -d, -f1-4",
        ],
        expect![[r#"
            $ /opt/offswitch/bin/offswitch --version; head -1 /opt/offswitch/bin/offswitch
            Exited(0)
            tool ran with --version
            #!/bin/sh
            $ echo evil > /opt/offswitch/bin/offswitch
            Exited(1)
            [stderr] bash: line 1: /opt/offswitch/bin/offswitch: Read-only file system
            $ rm -f /opt/offswitch/bin/offswitch; chmod 777 /opt/offswitch/bin/offswitch
            Exited(1)
            [stderr] rm: cannot remove '/opt/offswitch/bin/offswitch': Read-only file system
            chmod: changing permissions of '/opt/offswitch/bin/offswitch': Read-only file system
            $ touch /opt/offswitch/bin/other; mkdir /opt/x
            Exited(1)
            [stderr] touch: cannot touch '/opt/offswitch/bin/other': Read-only file system
            mkdir: cannot create directory ‘/opt/x’: Read-only file system
            $ grep -E ' /(opt/offswitch/bin/offswitch|srv/model) ' /proc/self/mounts | cut -d' ' -f2,4 | cut -d, -f1-4
            Exited(0)
            /opt/offswitch/bin/offswitch ro,nosuid,nodev,relatime
            /srv/model ro,nosuid,nodev,relatime
        "#]],
    );
}

#[test]
fn bound_directory_and_bind_under_tmp() {
    check(
        &[
            "cat /srv/model/weights.bin; echo; cp /srv/model/weights.bin ~/copy && cat ~/copy; echo",
            "echo x > /srv/model/new; rm /srv/model/weights.bin",
            "/tmp/tools/tool in-tmp; echo scratch > /tmp/still-writable && cat /tmp/still-writable",
        ],
        expect![[r#"
            $ cat /srv/model/weights.bin; echo; cp /srv/model/weights.bin ~/copy && cat ~/copy; echo
            Exited(0)
            WEIGHTS
            WEIGHTS
            $ echo x > /srv/model/new; rm /srv/model/weights.bin
            Exited(1)
            [stderr] bash: line 1: /srv/model/new: Read-only file system
            rm: cannot remove '/srv/model/weights.bin': Read-only file system
            $ /tmp/tools/tool in-tmp; echo scratch > /tmp/still-writable && cat /tmp/still-writable
            Exited(0)
            tool ran with in-tmp
            scratch
        "#]],
    );
}

#[test]
fn invalid_binds_are_rejected_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let existing = dir.path().join("present");
    std::fs::write(&existing, "x").unwrap();
    let cases = [
        (existing.clone(), "opt/relative"),
        (existing.clone(), "/usr/local/bin/tool"),
        (existing.clone(), "/home/agent/tool"),
        (existing.clone(), "/proc/tool"),
        (existing.clone(), "/opt/../etc/tool"),
        (dir.path().join("missing"), "/opt/tool"),
    ];
    // Run as root, the sandbox's init is an unprivileged host uid: a source under a 0700
    // directory is refused up front instead of failing inside init.
    let private_parent = if crate::support::root_or_skip("the unsearchable-source case") {
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(private.join("tool"), "x").unwrap();
        vec![(private.join("tool"), "/opt/tool")]
    } else {
        Vec::new()
    };
    let mut rendered = String::new();
    for (host, inside) in cases.into_iter().chain(private_parent) {
        let bind = Bind {
            host,
            inside: PathBuf::from(inside),
        };
        let error = Sandbox::create(config(dir.path(), vec![bind]))
            .err()
            .expect("invalid bind must fail");
        rendered.push_str(&format!("{error}\n").replace(&dir.path().display().to_string(), "$DIR"));
    }
    expect![[r#"
        invalid read-only bind $DIR/present -> opt/relative: the path inside must be absolute
        invalid read-only bind $DIR/present -> /usr/local/bin/tool: /usr is the host's, bound read-only; choose a path such as /opt/...
        invalid read-only bind $DIR/present -> /home/agent/tool: the path inside must not be the home or hide it
        invalid read-only bind $DIR/present -> /proc/tool: /proc is managed by the sandbox
        invalid read-only bind $DIR/present -> /opt/../etc/tool: the path inside must not contain `.` or `..`
        invalid read-only bind $DIR/missing -> /opt/tool: cannot resolve the host path: No such file or directory (os error 2)
        invalid read-only bind $DIR/private/tool -> /opt/tool: $DIR/private is not searchable by the sandbox's host uid 1000000000
    "#]]
    .assert_eq(&rendered);
}
