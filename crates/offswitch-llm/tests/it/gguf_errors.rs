//! A file that is not a usable GGUF gives a clear error naming the file, never a panic.

use expect_test::{Expect, expect};
use offswitch_llm::{LoadOptions, Model};

fn check(bytes: &[u8], expect: Expect) {
    let dir = std::env::temp_dir().join(format!("offswitch-llm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("model.gguf");
    std::fs::write(&path, bytes).expect("write");
    let error = Model::load(&path, &LoadOptions::default())
        .err()
        .expect("load must fail")
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    expect.assert_eq(&error.replace(&dir.display().to_string(), "$DIR"));
}

fn header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b
}

fn kv_string(b: &mut Vec<u8>, key: &str, value: &str) {
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key.as_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend((value.len() as u64).to_le_bytes());
    b.extend(value.as_bytes());
}

#[test]
fn not_gguf() {
    check(
        b"PK\x03\x04 a zip file",
        expect![[
            r#"invalid gguf file $DIR/model.gguf: bad magic [80, 75, 3, 4], expected "GGUF" (at byte 4)"#
        ]],
    );
}

#[test]
fn truncated_header() {
    check(
        &header(3, 1, 5)[..20],
        expect![
            "invalid gguf file $DIR/model.gguf: truncated header: failed to fill whole buffer (at byte 16)"
        ],
    );
}

#[test]
fn old_version() {
    check(
        &header(1, 0, 0),
        expect!["unsupported model in $DIR/model.gguf: gguf version 1 (only 2 and 3 are read)"],
    );
}

#[test]
fn other_architecture() {
    let mut b = header(3, 0, 1);
    kv_string(&mut b, "general.architecture", "mamba");
    check(
        &b,
        expect![
            "unsupported model in $DIR/model.gguf: architecture mamba (only llama is implemented)"
        ],
    );
}

#[test]
fn missing_file() {
    let error = Model::load(
        std::path::Path::new("/nonexistent/model.gguf"),
        &LoadOptions::default(),
    )
    .err()
    .expect("must fail")
    .to_string();
    expect!["failed to read /nonexistent/model.gguf: No such file or directory (os error 2)"]
        .assert_eq(&error);
}
