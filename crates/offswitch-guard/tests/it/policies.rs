//! Policy files: the shipped ones are valid, and every mistake is located.

use std::path::Path;

fn check(text: &str, expect: expect_test::Expect) {
    let actual = match offswitch_guard::policy::parse(text, Path::new("p.toml")) {
        Ok(policy) => format!(
            "ok: {} protected, rules [{}], breakers [{}]",
            policy.protect.len(),
            policy
                .rules
                .iter()
                .map(|r| format!("{}:{}:{}", r.name, r.kind.name(), r.action.name()))
                .collect::<Vec<_>>()
                .join(", "),
            policy
                .breakers
                .iter()
                .map(|b| format!("{}:{}>{}/{:?}", b.name, b.metric.name(), b.max, b.per))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(error) => error.to_string(),
    };
    expect.assert_eq(&actual);
}

#[test]
fn the_shipped_policies_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            offswitch_guard::policy::load(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    expect_test::expect![[
        r#"["coding-agent.toml", "default.toml", "offline.toml", "protect-self.toml"]"#
    ]]
    .assert_eq(&format!("{names:?}"));
}

#[test]
fn a_small_policy() {
    check(
        r#"
version = 1
name = "t"
[[protect]]
path = "agent.toml"
[[rule]]
name = "p"
on = "protected"
action = "kill"
[[rule]]
name = "git-push"
on = "exec"
program = "**/git"
argv = "push"
action = "alert"
[[breaker]]
name = "b"
metric = "execs"
max = 10
per = "1s"
"#,
        expect_test::expect![
            "ok: 1 protected, rules [p:protected:kill, git-push:exec:alert], breakers [b:execs>10/1s]"
        ],
    );
}

#[test]
fn every_mistake_is_located() {
    check(
        r#"version = 1
name = "t"
[session]
deadline = "soon"
project = "mirror"
[[protect]]
path = "../etc/passwd"
[[protect]]
path = "x"
mode = "secret"
[network]
forward = ["nowhere"]
allow = ["example.com"]
[[rule]]
name = "a b"
on = "protected"
action = "kill"
[[rule]]
name = "r"
on = "telepathy"
action = "kill"
[[rule]]
name = "d"
on = "protected"
action = "deny"
[[rule]]
name = "e"
on = "exec"
action = "record"
[[rule]]
name = "f"
on = "file"
path = "**/x"
ops = ["teleport"]
action = "record"
program = "x"
[[breaker]]
name = "t"
metric = "bytes_sent"
max = 0
per = "10"
"#,
        expect_test::expect![[r#"
            p.toml:4:12: a duration is a positive number with a unit: `500ms`, `30s`, `5m`, `2h`
            p.toml:5:11: unknown project mode "mirror": `bind` or `copy`
            p.toml:7:8: a protected path is relative to the project, without `.`, `..` or empty parts
            p.toml:10:8: unknown mode "secret": `read-only` or `hidden`
            p.toml:12:12: a forward is `HOST:PORT` or `PORT=HOST:PORT` (a loopback port inside to an address outside)
            p.toml:13:10: an allowed destination is `HOST:PORT`
            p.toml:15:8: a name is 1 to 64 letters, digits, `-` or `_`
            p.toml:20:6: unknown rule kind "telepathy": one of protected, protected_copy, detach, shadowed_tool, supervisor, connect_outside, lost, secret_read, exec, file, connect
            p.toml:25:10: `deny` is done by the kernel where it can be (protected paths are read-only or hidden, and nothing is routed outside the allowed destinations); a rule acts after the fact: record, alert, pause or kill
            p.toml:26:1: a rule on "exec" needs `program` (a path glob)
            p.toml:34:8: unknown file operation "teleport": one of create, write, close_write, delete, rename, attrib, mkdir, rmdir
            p.toml:36:11: `program` does not apply to a rule on "file"
            p.toml:39:10: bytes sent are not counted: the event stream records connections, not their bytes (a model's traffic is counted by `tokens` and `model_requests`)
            p.toml:40:7: `max` must be at least 1
            p.toml:41:7: a duration is a positive number with a unit: `500ms`, `30s`, `5m`, `2h`"#]],
    );
}

#[test]
fn syntax_errors_and_unknown_keys_are_located() {
    check(
        "version = 1\nname = \"t\"\n[[rule]]\nname = \"x\"\non = \"lost\"\naction = \"kill\"\ncolour = \"red\"\n",
        expect_test::expect![[r#"
            p.toml:7:1: unknown field `colour`, expected one of `name`, `on`, `action`, `program`, `argv`, `path`, `ops`, `address`"#]],
    );
    check(
        "version = 2\nname = \"t\"\n",
        expect_test::expect![
            "p.toml:1:11: unknown policy version 2: this offswitch reads version 1"
        ],
    );
    check(
        "version = 1\nname = \"t\"\n[[rule]\n",
        expect_test::expect!["p.toml:3:8: unclosed array table, expected `]`"],
    );
}
