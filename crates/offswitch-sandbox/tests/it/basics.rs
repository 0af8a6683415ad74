//! Exec basics: output, exit status, stdin, cwd persistence, environment, timeouts.

use std::time::Duration;

use expect_test::{Expect, expect};
use offswitch_sandbox::{ExecRequest, ExecStatus};

use crate::support::{run, run_with, sandbox, text};

fn check(command: &str, expected: Expect) {
    let test = sandbox();
    let result = run(&test.sandbox, command);
    expected.assert_eq(&format!("{:?}\n{}", result.status, text(&result)));
}

#[test]
fn echo_and_status() {
    check(
        "echo hello; exit 3",
        expect![[r#"
        Exited(3)
        hello
    "#]],
    );
}
