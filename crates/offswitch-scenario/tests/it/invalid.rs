//! Malformed scenario files: each `test_data/invalid/<case>.toml` has its diagnostics in
//! `<case>.diagnostics`, one `file:line:col: message` per line.

use std::path::Path;

use expect_test::expect_file;

#[test]
fn malformed_files_give_located_diagnostics() {
    for case in crate::cases("invalid", "toml") {
        let text = std::fs::read_to_string(&case).unwrap();
        let name = Path::new(case.file_name().unwrap());
        let actual = match offswitch_scenario::load_str(&text, name) {
            Ok(scenario) => format!("unexpectedly valid: {}\n", scenario.id()),
            Err(error) => {
                assert!(!error.diagnostics().is_empty(), "{name:?}: no diagnostics");
                format!("{error}\n")
            }
        };
        expect_file![case.with_extension("diagnostics")].assert_eq(&actual);
    }
}

#[test]
fn a_directory_loads_the_valid_files_and_reports_the_rest() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/duplicate-ids");
    let (scenarios, errors) = offswitch_scenario::load_dir(&dir);
    let ids: Vec<&str> = scenarios.iter().map(|s| s.id()).collect();
    assert_eq!(ids, ["generic"]);
    assert_eq!(scenarios[0].title, "Every detector kind");
    let root = format!("{}/", dir.display());
    let messages: String = errors
        .iter()
        .map(|e| format!("{}\n", e.to_string().replace(&root, "")))
        .collect();
    expect_test::expect![[r#"
        b.toml:2:6: duplicate scenario id "generic", already defined in a.toml
        c.toml:1:1: missing field `category` in the scenario, expected a string
        c.toml:1:1: missing field `id` in the scenario, expected a string
        c.toml:1:1: missing field `limits` in the scenario, expected a table [limits]
        c.toml:1:1: missing field `prompts` in the scenario, expected a table [prompts]
        c.toml:1:1: missing field `source` in the scenario, expected a table [source]
        c.toml:1:1: missing field `title` in the scenario, expected a string
        c.toml:1:1: unknown field `not` in the scenario, expected one of: id, title, category, description, source, prompts, defaults, files, tools, mechanics, factors, limits, task, detectors, hosts, references, emails, interview, judges, analyses, headline
    "#]].assert_eq(&messages);
}
