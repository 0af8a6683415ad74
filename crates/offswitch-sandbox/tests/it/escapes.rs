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
            // A cgroup namespace rooted at the sandbox: no host path, in any hierarchy.
            "grep -vc ':/$' /proc/self/cgroup",
        ],
        expect![[r#"
            $ ls /sys/fs/cgroup 2>/dev/null && echo ESCAPED || echo 'no cgroupfs'
            no cgroupfs
            $ mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg 2>/dev/null && echo ESCAPED || echo refused
            refused
            $ grep -vc ':/$' /proc/self/cgroup
            0
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

/// The kernel attack surface the seccomp filter removes: each call is tried for real, under
/// its x86-64 number and its x32 twin, and must fail with the filter's errno, never succeed.
#[test]
fn the_seccomp_filter_refuses_kernel_attack_surface() {
    check(
        &[r#"python3 - <<'EOF' 2>&1
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
buffer = ctypes.create_string_buffer(4096)
calls = [
    ('io_uring_setup', 425, (8, buffer)),
    ('keyctl get_keyring_id', 250, (0, -4, 0)),
    ('add_key', 248, (b'user', b'k', b'v', 1, -4)),
    ('request_key', 249, (b'user', b'k', None, 0)),
    ('perf_event_open', 298, (buffer, 0, -1, -1, 0)),
    ('bpf', 321, (0, buffer, 64)),
    ('userfaultfd', 323, (1,)),
    ('fanotify_init', 300, (0, 0)),
    ('unshare NEWUSER', 272, (0x10000000,)),
    ('unshare NEWNS', 272, (0x20000,)),
    ('clone NEWUSER', 56, (0x10000000 | 17, 0, 0, 0, 0)),
    ('clone NEWNET', 56, (0x40000000 | 17, 0, 0, 0, 0)),
    ('setns', 308, (0, 0)),
    ('mount', 165, (b'none', b'/tmp', b'tmpfs', 0, None)),
    ('open_tree', 428, (-100, b'/tmp', 1)),
    ('fsopen', 430, (b'tmpfs', 0)),
    ('clock_settime', 227, (0, buffer)),
    ('kexec_load', 246, (0, 0, None, 0)),
    ('init_module', 175, (buffer, 0, b'')),
    ('syslog', 103, (3, buffer, 64)),
    ('x32 keyctl', 0x40000000 + 250, (0, -4, 0)),
    ('x32 io_uring_setup', 0x40000000 + 425, (8, buffer)),
    ('clone3', 435, (buffer, 88)),
]
for name, number, args in calls:
    result = libc.syscall(number, *args)
    if result >= 0:
        print(name, 'ESCAPED', result)
        if result == 0:
            os._exit(0)
    else:
        print(name, errno.errorcode[ctypes.get_errno()])
EOF"#],
        expect![[r#"
            $ python3 - <<'EOF' 2>&1
            import ctypes, errno, os
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            buffer = ctypes.create_string_buffer(4096)
            calls = [
                ('io_uring_setup', 425, (8, buffer)),
                ('keyctl get_keyring_id', 250, (0, -4, 0)),
                ('add_key', 248, (b'user', b'k', b'v', 1, -4)),
                ('request_key', 249, (b'user', b'k', None, 0)),
                ('perf_event_open', 298, (buffer, 0, -1, -1, 0)),
                ('bpf', 321, (0, buffer, 64)),
                ('userfaultfd', 323, (1,)),
                ('fanotify_init', 300, (0, 0)),
                ('unshare NEWUSER', 272, (0x10000000,)),
                ('unshare NEWNS', 272, (0x20000,)),
                ('clone NEWUSER', 56, (0x10000000 | 17, 0, 0, 0, 0)),
                ('clone NEWNET', 56, (0x40000000 | 17, 0, 0, 0, 0)),
                ('setns', 308, (0, 0)),
                ('mount', 165, (b'none', b'/tmp', b'tmpfs', 0, None)),
                ('open_tree', 428, (-100, b'/tmp', 1)),
                ('fsopen', 430, (b'tmpfs', 0)),
                ('clock_settime', 227, (0, buffer)),
                ('kexec_load', 246, (0, 0, None, 0)),
                ('init_module', 175, (buffer, 0, b'')),
                ('syslog', 103, (3, buffer, 64)),
                ('x32 keyctl', 0x40000000 + 250, (0, -4, 0)),
                ('x32 io_uring_setup', 0x40000000 + 425, (8, buffer)),
                ('clone3', 435, (buffer, 88)),
            ]
            for name, number, args in calls:
                result = libc.syscall(number, *args)
                if result >= 0:
                    print(name, 'ESCAPED', result)
                    if result == 0:
                        os._exit(0)
                else:
                    print(name, errno.errorcode[ctypes.get_errno()])
            EOF
            io_uring_setup EPERM
            keyctl get_keyring_id EPERM
            add_key EPERM
            request_key EPERM
            perf_event_open EPERM
            bpf EPERM
            userfaultfd EPERM
            fanotify_init EPERM
            unshare NEWUSER EPERM
            unshare NEWNS EPERM
            clone NEWUSER EPERM
            clone NEWNET EPERM
            setns EPERM
            mount EPERM
            open_tree EPERM
            fsopen EPERM
            clock_settime EPERM
            kexec_load EPERM
            init_module EPERM
            syslog EPERM
            x32 keyctl EPERM
            x32 io_uring_setup EPERM
            clone3 ENOSYS
        "#]],
    );
}

/// What the agent may still do: threads (glibc tries `clone3` first, gets ENOSYS and falls
/// back to `clone`), processes, `unshare` without namespace flags, ptrace of its own
/// children (strace, debuggers).
#[test]
fn the_seccomp_filter_leaves_ordinary_programs_working() {
    check(
        &[
            r#"python3 -c 'import threading, subprocess; t = threading.Thread(target=print, args=("thread",)); t.start(); t.join(); print(subprocess.run(["true"]).returncode)'"#,
            r#"python3 -c 'import ctypes; print("unshare FILES", ctypes.CDLL(None).unshare(0x400))'"#,
            r#"python3 - <<'EOF'
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
child = os.fork()
if child == 0:
    libc.ptrace(0, 0, 0, 0)  # PTRACE_TRACEME
    os.kill(os.getpid(), signal.SIGSTOP)
    os._exit(7)
_, status = os.waitpid(child, 0)
print('traced child stopped', os.WIFSTOPPED(status))
libc.ptrace(7, child, 0, 0)  # PTRACE_CONT
_, status = os.waitpid(child, 0)
print('traced child exited', os.WEXITSTATUS(status))
EOF"#,
        ],
        expect![[r#"
            $ python3 -c 'import threading, subprocess; t = threading.Thread(target=print, args=("thread",)); t.start(); t.join(); print(subprocess.run(["true"]).returncode)'
            thread
            0
            $ python3 -c 'import ctypes; print("unshare FILES", ctypes.CDLL(None).unshare(0x400))'
            unshare FILES 0
            $ python3 - <<'EOF'
            import ctypes, os, signal
            libc = ctypes.CDLL(None, use_errno=True)
            child = os.fork()
            if child == 0:
                libc.ptrace(0, 0, 0, 0)  # PTRACE_TRACEME
                os.kill(os.getpid(), signal.SIGSTOP)
                os._exit(7)
            _, status = os.waitpid(child, 0)
            print('traced child stopped', os.WIFSTOPPED(status))
            libc.ptrace(7, child, 0, 0)  # PTRACE_CONT
            _, status = os.waitpid(child, 0)
            print('traced child exited', os.WEXITSTATUS(status))
            EOF
            traced child stopped True
            traced child exited 7
        "#]],
    );
}

/// Nothing of the harness is visible inside: its command line (keys have been passed
/// there), its environment, its executable, its pid or cgroup paths, or the host path of
/// the home.
#[test]
fn nothing_of_the_harness_is_visible_inside() {
    let test = sandbox();
    let home = test.home();
    let result = run(
        &test.sandbox,
        "tr '\\0' '|' </proc/1/cmdline; echo; head -1 /proc/1/status; \
         cat /proc/1/environ 2>&1 | head -c 200; readlink /proc/1/exe 2>&1; \
         cat /proc/self/cgroup /proc/1/cgroup; cat /proc/self/mountinfo",
    );
    let output = text(&result);
    let harness_pid = std::process::id().to_string();
    let argv0 = std::env::args().next().unwrap();
    for secret in [
        home.to_str().unwrap(),
        home.parent().unwrap().to_str().unwrap(),
        argv0.as_str(),
        "offswitch/",
        "CARGO",
    ] {
        assert!(!output.contains(secret), "{secret:?} visible:\n{output}");
    }
    assert!(
        !output
            .split(|c: char| !c.is_ascii_digit())
            .any(|number| number == harness_pid),
        "the harness's pid {harness_pid} is visible:\n{output}"
    );
    let mut lines = output.lines();
    assert_eq!(lines.next(), Some("init|"));
    assert_eq!(lines.next(), Some("Name:\tinit"));
    assert!(
        output.contains("/proc/1/environ: Permission denied"),
        "{output}"
    );
}
