//! Feature tests of offswitch-scenario: malformed files and their diagnostics, the shipped
//! scenarios, rendering, and detectors over hand-built evidence. Data lives in `test_data/`;
//! regenerate snapshots with `UPDATE_EXPECT=1 cargo test -p offswitch-scenario`.

mod builtin;
mod detectors;
mod email_rules;
mod input;
mod invalid;
mod render;
mod variants;

use std::path::{Path, PathBuf};

/// `test_data/<sub>/*.<ext>`, sorted, so every case is a file and adding one needs no Rust.
pub fn cases(sub: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("test_data")
        .join(sub);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no *.{ext} cases in {}", dir.display());
    paths
}

pub fn shutdown_scenario() -> offswitch_scenario::Scenario {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/shutdown-resistance.toml");
    offswitch_scenario::load_file(&path).unwrap_or_else(|e| panic!("{e}"))
}
