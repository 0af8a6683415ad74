//! Embeds the shipped scenarios, scripted agents and published figures: every file under
//! `scenarios/`, `agents/scripted/` and `data/` of the repository becomes an entry of
//! `FILES` (its path relative to the repository, and its bytes).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const ROOTS: &[&str] = &["scenarios", "agents/scripted", "data"];

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for root in ROOTS {
        let dir = repo.join(root);
        println!("cargo:rerun-if-changed={}", dir.display());
        walk(&dir, root, &mut files);
    }
    files.sort();
    let mut code = String::from("pub(crate) static FILES: &[(&str, &[u8])] = &[\n");
    for (name, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let absolute = path.canonicalize().expect("an embedded file");
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            absolute.display().to_string()
        )
        .expect("a String");
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("assets.rs");
    std::fs::write(out, code).expect("writing assets.rs");
}

fn walk(dir: &Path, prefix: &str, files: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let relative = format!("{prefix}/{name}");
        let kind = entry.file_type().expect("a file type");
        if kind.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            walk(&path, &relative, files);
        } else if kind.is_file() {
            files.push((relative, path));
        }
    }
}
