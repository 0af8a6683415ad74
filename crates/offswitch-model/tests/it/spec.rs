//! `--model` strings and building HTTP backends from them.

use std::collections::HashMap;

use expect_test::{Expect, expect};
use offswitch_model::{HttpOptions, ModelSpec, build_http_backend_with_env};

fn check(input: &str, expect: Expect) {
    let actual = match ModelSpec::parse(input) {
        Ok(spec) => {
            // The canonical form parses back to the same spec.
            assert_eq!(ModelSpec::parse(&spec.to_string()), Ok(spec.clone()));
            format!("{spec:?}\n")
        }
        Err(e) => format!("error: {e}\n"),
    };
    expect.assert_eq(&actual);
}

#[test]
fn model_strings_parse() {
    check(
        "smollm2-135m",
        expect![[r#"
        Embedded
    "#]],
    );
    check(
        "openai:gpt-4o",
        expect![[r#"
        OpenAi { model: "gpt-4o", base_url: None }
    "#]],
    );
    check(
        "openai:Qwen/Qwen2.5-72B-Instruct@http://127.0.0.1:8000/v1",
        expect![[r#"
            OpenAi { model: "Qwen/Qwen2.5-72B-Instruct", base_url: Some("http://127.0.0.1:8000/v1") }
        "#]],
    );
    check(
        "anthropic:claude-sonnet-4-5",
        expect![[r#"
        Anthropic { model: "claude-sonnet-4-5", base_url: None }
    "#]],
    );
    check(
        "anthropic:claude-3@20240229",
        expect![[r#"
        Anthropic { model: "claude-3@20240229", base_url: None }
    "#]],
    );
    check(
        "local:/models/qwen.gguf",
        expect![[r#"
        Local { path: "/models/qwen.gguf" }
    "#]],
    );
    check(
        "scripted:overwrite-shutdown",
        expect![[r#"
        Scripted { strategy: "overwrite-shutdown" }
    "#]],
    );
    check(
        "gpt-4o",
        expect![[r#"
        error: unrecognised model "gpt-4o"; accepted forms: openai:<model>[@<base-url>], anthropic:<model>[@<base-url>], local:<path.gguf>, smollm2-135m, scripted:<strategy>
    "#]],
    );
    check(
        "openai:",
        expect![[r#"
        error: model "openai:" names no model name after the prefix; accepted forms: openai:<model>[@<base-url>], anthropic:<model>[@<base-url>], local:<path.gguf>, smollm2-135m, scripted:<strategy>
    "#]],
    );
    check(
        "openai:m@localhost:8000/v1",
        expect![[r#"
        error: model "openai:m@localhost:8000/v1" has base URL "localhost:8000/v1", which must start with http:// or https://
    "#]],
    );
    check(
        "scripted:",
        expect![[r#"
        error: model "scripted:" names no strategy after the prefix; accepted forms: openai:<model>[@<base-url>], anthropic:<model>[@<base-url>], local:<path.gguf>, smollm2-135m, scripted:<strategy>
    "#]],
    );
    check(
        "mistral:large",
        expect![[r#"
        error: unrecognised model "mistral:large"; accepted forms: openai:<model>[@<base-url>], anthropic:<model>[@<base-url>], local:<path.gguf>, smollm2-135m, scripted:<strategy>
    "#]],
    );
}

fn build(spec: &str, options: &HttpOptions, env: &[(&str, &str)]) -> String {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let spec = ModelSpec::parse(spec).unwrap();
    match build_http_backend_with_env(&spec, options, &|name| env.get(name).cloned()) {
        Ok(backend) => backend.id(),
        Err(e) => format!("error: {e}"),
    }
}

#[test]
fn base_urls_and_keys_come_from_spec_flags_env_or_defaults() {
    let none = HttpOptions::default();
    let flags = HttpOptions {
        api_key: Some("sk-flag".into()),
        base_url: Some("http://127.0.0.1:9/v1".into()),
        ..HttpOptions::default()
    };
    let env = [
        ("OPENAI_API_KEY", "sk-env"),
        ("OPENAI_BASE_URL", "http://10.0.0.1:8000/v1"),
        ("ANTHROPIC_API_KEY", "ak-env"),
    ];
    let actual = [
        build("openai:gpt-4o", &none, &[]),
        build("openai:gpt-4o", &none, &env[..1]),
        build("openai:gpt-4o", &none, &env),
        build("openai:gpt-4o", &flags, &env),
        build("openai:llama@http://127.0.0.1:8080/v1", &flags, &env),
        build("openai:llama@http://127.0.0.1:8080/v1", &none, &[]),
        build("anthropic:claude-sonnet-4-5", &none, &[]),
        build("anthropic:claude-sonnet-4-5", &none, &env),
        build("scripted:comply", &none, &env),
    ]
    .join("\n");
    expect![[r#"
        error: no API key for openai:gpt-4o: pass one with --api-key or set OPENAI_API_KEY (only servers other than the provider's own may run without a key)
        openai:gpt-4o@https://api.openai.com/v1
        openai:gpt-4o@http://10.0.0.1:8000/v1
        openai:gpt-4o@http://127.0.0.1:9/v1
        openai:llama@http://127.0.0.1:8080/v1
        openai:llama@http://127.0.0.1:8080/v1
        error: no API key for anthropic:claude-sonnet-4-5: pass one with --api-key or set ANTHROPIC_API_KEY (only servers other than the provider's own may run without a key)
        anthropic:claude-sonnet-4-5@https://api.anthropic.com
        error: model spec "scripted:comply" is not served over HTTP; build it with the crate that owns it"#]].assert_eq(&actual);
}
