//! Hostile contents: each test tries an escape from inside and asserts that it fails.

use std::os::unix::fs::MetadataExt;

use expect_test::{Expect, expect};
use offswitch_sandbox::ExecStatus;

use crate::support::{run, sandbox, text};

/// Run one attempt per line; print each line's status and output. An attempt prints
/// `ESCAPED` only if it succeeded, so the snapshot must never contain it.
fn check(attempts: &[&str], expected: Expect) {
    let test = sandbox();
    let mut rendered = String::new();
    for attempt in attempts {
        let result = run(&test.sandbox, attempt);
        let output = text(&result);
        assert!(!output.contains("ESCAPED"), "{attempt}: {output}");
        rendered.push_str(&format!("$ {attempt}\n{output}"));
    }
    expected.assert_eq(&rendered);
}

#[test]
fn cannot_write_outside_home_and_tmp() {
    check(
        &[
            "touch /usr/escape 2>&1 && echo ESCAPED",
            "touch /etc/escape 2>&1 && echo ESCAPED",
            "echo x >> /etc/passwd 2>/dev/null && echo ESCAPED || echo refused",
            "touch /escape 2>/dev/null && echo ESCAPED || echo refused",
            "touch /var/escape 2>/dev/null && echo ESCAPED || echo refused",
            "echo 1 > /proc/sys/kernel/panic 2>/dev/null && echo ESCAPED || echo refused",
            "echo 1 > /proc/sysrq-trigger 2>/dev/null && echo ESCAPED || echo refused",
            "touch /home/agent/ok /tmp/ok /dev/shm/ok && echo allowed",
        ],
        expect![[r#"
            $ touch /usr/escape 2>&1 && echo ESCAPED
            touch: cannot touch '/usr/escape': Read-only file system
            $ touch /etc/escape 2>&1 && echo ESCAPED
            touch: cannot touch '/etc/escape': Read-only file system
            $ echo x >> /etc/passwd 2>/dev/null && echo ESCAPED || echo refused
            refused
            [stderr] bash: line 1: /etc/passwd: Read-only file system
            $ touch /escape 2>/dev/null && echo ESCAPED || echo refused
            refused
            $ touch /var/escape 2>/dev/null && echo ESCAPED || echo refused
            refused
            $ echo 1 > /proc/sys/kernel/panic 2>/dev/null && echo ESCAPED || echo refused
            refused
            [stderr] bash: line 1: /proc/sys/kernel/panic: Permission denied
            $ echo 1 > /proc/sysrq-trigger 2>/dev/null && echo ESCAPED || echo refused
            refused
            [stderr] bash: line 1: /proc/sysrq-trigger: No such file or directory
            $ touch /home/agent/ok /tmp/ok /dev/shm/ok && echo allowed
            allowed
        "#]],
    );
    assert!(!std::path::Path::new("/usr/escape").exists());
    assert!(!std::path::Path::new("/etc/escape").exists());
}

#[test]
fn cannot_mount_or_remount() {
    check(
        &[
            "mount -o remount,rw /usr 2>/dev/null && echo ESCAPED || echo refused",
            "mount -o remount,rw / 2>/dev/null && echo ESCAPED || echo refused",
            "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m 2>/dev/null && echo ESCAPED || echo refused",
            "mount --bind /tmp /usr 2>/dev/null && echo ESCAPED || echo refused",
            // A nested user namespace gives capabilities only over itself: the read-only
            // binds it inherits stay locked read-only.
            "unshare -rm sh -c 'mount -o remount,bind,rw /usr && touch /usr/escape' 2>/dev/null && echo ESCAPED || echo refused",
            "test -e /usr/escape && echo ESCAPED || echo absent",
        ],
        expect![[r#"
            $ mount -o remount,rw /usr 2>/dev/null && echo ESCAPED || echo refused
            refused
            $ mount -o remount,rw / 2>/dev/null && echo ESCAPED || echo refused
            refused
            $ mkdir -p /tmp/m && mount -t tmpfs none /tmp/m 2>/dev/null && echo ESCAPED || echo refused
            refused
            $ mount --bind /tmp /usr 2>/dev/null && echo ESCAPED || echo refused
            refused
            $ unshare -rm sh -c 'mount -o remount,bind,rw /usr && touch /usr/escape' 2>/dev/null && echo ESCAPED || echo refused
            refused
            $ test -e /usr/escape && echo ESCAPED || echo absent
            absent
        "#]],
    );
}

#[test]
fn cannot_see_signal_or_trace_host_processes() {
    let host_pid = std::process::id();
    let test = sandbox();
    let result = run(
        &test.sandbox,
        &format!(
            "kill -0 {host_pid} 2>/dev/null && echo ESCAPED; \
             ls /proc | grep -c '^[0-9]'; \
             cat /proc/1/environ >/dev/null 2>&1 && echo ESCAPED; \
             ls -l /proc/1/ns/ >/dev/null 2>&1 && echo ESCAPED; \
             nsenter -t 1 -m -U true 2>/dev/null && echo ESCAPED; \
             nsenter --mount=/proc/1/ns/mnt true 2>/dev/null && echo ESCAPED; \
             echo done"
        ),
    );
    let output = text(&result);
    assert!(!output.contains("ESCAPED"), "{output}");
    // Only PID 1, this shell, and the `ls` pipeline are visible: nothing from the host.
    let visible: usize = output.lines().next().unwrap().parse().unwrap();
    assert!(visible <= 5, "{output}");
    assert!(output.ends_with("done\n"));
}

#[test]
fn cannot_ptrace_pid_1() {
    check(
        &["python3 - <<'EOF' 2>&1
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
r = libc.ptrace(PTRACE_ATTACH, 1, 0, 0)
print('ESCAPED' if r == 0 else 'ptrace refused errno=%d' % ctypes.get_errno())
EOF"],
        expect![[r#"
            $ python3 - <<'EOF' 2>&1
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            PTRACE_ATTACH = 16
            r = libc.ptrace(PTRACE_ATTACH, 1, 0, 0)
            print('ESCAPED' if r == 0 else 'ptrace refused errno=%d' % ctypes.get_errno())
            EOF
            ptrace refused errno=1
        "#]],
    );
}

#[test]
fn network_is_loopback_only() {
    check(
        &[
            "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
            "timeout 3 bash -c 'echo > /dev/tcp/1.1.1.1/53' 2>/dev/null && echo ESCAPED || echo unreachable",
            "timeout 3 bash -c 'echo > /dev/tcp/10.0.0.1/80' 2>/dev/null && echo ESCAPED || echo unreachable",
            "python3 -c '
import socket, threading
s = socket.socket(); s.bind((\"127.0.0.1\", 0)); s.listen(1)
port = s.getsockname()[1]
c = socket.create_connection((\"127.0.0.1\", port)); c.sendall(b\"hi\")
print(\"loopback\", s.accept()[0].recv(2).decode())'",
        ],
        expect![[r#"
            $ tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '
            lo
            $ timeout 3 bash -c 'echo > /dev/tcp/1.1.1.1/53' 2>/dev/null && echo ESCAPED || echo unreachable
            unreachable
            $ timeout 3 bash -c 'echo > /dev/tcp/10.0.0.1/80' 2>/dev/null && echo ESCAPED || echo unreachable
            unreachable
            $ python3 -c '
            import socket, threading
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
            port = s.getsockname()[1]
            c = socket.create_connection(("127.0.0.1", port)); c.sendall(b"hi")
            print("loopback", s.accept()[0].recv(2).decode())'
            loopback hi
        "#]],
    );
}

#[test]
fn cannot_leave_the_cgroup() {
    check(
        &[
            "ls /sys/fs/cgroup 2>/dev/null && echo ESCAPED || echo 'no cgroupfs'",
            "mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg 2>/dev/null && echo ESCAPED || echo refused",
            "cat /proc/self/cgroup | grep -c offswitch",
        ],
        expect![[r#"
            $ ls /sys/fs/cgroup 2>/dev/null && echo ESCAPED || echo 'no cgroupfs'
            no cgroupfs
            $ mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg 2>/dev/null && echo ESCAPED || echo refused
            refused
            $ cat /proc/self/cgroup | grep -c offswitch
            1
        "#]],
    );
}

#[test]
fn host_secrets_do_not_leak() {
    // `cargo test` runs this binary with CARGO_* variables set: none may reach the sandbox.
    assert!(std::env::vars().any(|(key, _)| key.starts_with("CARGO")));
    let test = sandbox();
    let result = run(
        &test.sandbox,
        "env | grep -c CARGO; ls /root 2>&1 | head -1; cat /etc/shadow 2>&1 | head -1",
    );
    expect![[r#"
        0
        ls: cannot access '/root': No such file or directory
        cat: /etc/shadow: No such file or directory
    "#]]
    .assert_eq(&text(&result));
}

#[test]
fn home_files_belong_to_an_unprivileged_host_uid() {
    let test = sandbox();
    assert_eq!(
        run(&test.sandbox, "echo x > made-inside").status,
        ExecStatus::Exited(0)
    );
    let meta = std::fs::metadata(test.home().join("made-inside")).unwrap();
    assert_ne!(meta.uid(), 0);
    assert_eq!(meta.uid(), offswitch_sandbox::SANDBOX_HOST_ID);
}
