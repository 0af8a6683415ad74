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
