//! Configuration files: every mistake located.

use std::path::Path;

#[test]
fn every_mistake_is_located() {
    let text = r#"version = 2
listen = "localhost"
[[upstream]]
name = "a b"
url = "https://user:pw@api.example.com/v1"
api = "gemini"
key_env = "KEY"
key_file = "/k"
[[session]]
name = "s"
[[session]]
name = "s"
[[rule]]
name = "r"
on = "tool_call"
action = "deny"
[[rule]]
name = "p"
on = "prompt"
tool = "x"
pattern = "("
action = "kill"
[[budget]]
name = "b"
metric = "dollars"
max = 0
per = "soon"
action = "record"
[limits]
max_attempts = 99
"#;
    let error = offswitch_proxy::parse(text, Path::new("p.toml")).unwrap_err();
    expect_test::expect![[r#"
        p.toml:1:11: unknown config version 2: this offswitch reads version 1
        p.toml:2:10: `listen` is an address and port: `127.0.0.1:4000`
        p.toml:4:8: a name is 1 to 64 letters, digits, `-`, `_` or `.`
        p.toml:5:7: an upstream `url` is an http(s) base URL without credentials or a query (`https://host/v1`); keys go in `key_env` or `key_file`
        p.toml:6:7: unknown api "gemini": `openai` (chat completions, Responses) or `anthropic` (Messages)
        p.toml:8:12: a key comes from an environment variable or a file, not both
        p.toml:12:8: a second session named "s"
        p.toml:13:1: a rule on "tool_call" needs `tool` (a glob), `pattern`, or both
        p.toml:16:10: unknown action "deny": one of record, block, kill
        p.toml:20:8: `tool` does not apply to a rule on "prompt"
        p.toml:21:11: bad regex: regex parse error:
            (
            ^
        error: unclosed group
        p.toml:25:10: unknown metric "dollars": one of tokens, input_tokens, output_tokens, requests, cost
        p.toml:26:7: `max` must be at least 1
        p.toml:27:7: a duration is a positive number with a unit: `500ms`, `30s`, `5m`, `2h`
        p.toml:30:16: `max_attempts` is 1 to 10"#]]
    .assert_eq(&error.to_string());
}

#[test]
fn the_shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proxy/example.toml");
    let config = offswitch_proxy::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.upstreams.len(), 2);
    assert_eq!(config.sessions[0].guard.as_deref(), Some("coder"));
    assert_eq!(config.rules.len(), 3);
    assert_eq!(config.budgets.len(), 3);
    assert_eq!(config.prices.len(), 2);
}
