//! A file that is not a usable GGUF gives a clear error naming the file, never a panic.

use std::sync::atomic::{AtomicUsize, Ordering};

use expect_test::{Expect, expect};
use offswitch_llm::{LoadOptions, Model};

fn check(bytes: &[u8], expect: Expect) {
    // One directory per call: the tests run on parallel threads of one process, and a shared file would let one
    // test load another's bytes.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "offswitch-llm-test-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
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

/// A tensor info record: name, dims, ggml type id, data offset.
fn tensor(b: &mut Vec<u8>, name: &str, dims: &[u64], type_id: u32, offset: u64) {
    b.extend((name.len() as u64).to_le_bytes());
    b.extend(name.as_bytes());
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(type_id.to_le_bytes());
    b.extend(offset.to_le_bytes());
}

#[test]
fn tensor_size_overflows() {
    // 2^32 * 2^32 * 2^32 f32 values: the element count wraps u64.
    let mut b = header(3, 1, 0);
    tensor(&mut b, "t", &[1 << 32, 1 << 32, 1 << 32], 0, 0);
    check(
        &b,
        expect![
            "invalid gguf file $DIR/model.gguf: tensor t of dims [4294967296, 4294967296, 4294967296] at data offset 0 does not fit in the file's 73 bytes (at byte 73)"
        ],
    );
}

#[test]
fn tensor_offset_overflows() {
    let mut b = header(3, 1, 0);
    tensor(&mut b, "t", &[32], 0, u64::MAX - 8);
    check(
        &b,
        expect![
            "invalid gguf file $DIR/model.gguf: tensor t of dims [32] at data offset 18446744073709551607 does not fit in the file's 57 bytes (at byte 57)"
        ],
    );
}

#[test]
fn huge_array_length() {
    let mut b = header(3, 0, 1);
    b.extend(1u64.to_le_bytes());
    b.extend(b"a");
    b.extend(9u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend((1u64 << 28).to_le_bytes());
    check(
        &b,
        expect![
            "invalid gguf file $DIR/model.gguf: truncated header: failed to fill whole buffer (at byte 49)"
        ],
    );
}

#[test]
fn huge_string_length() {
    let mut b = header(3, 0, 1);
    b.extend((1u64 << 30).to_le_bytes());
    b.extend(b"key");
    check(
        &b,
        expect![
            "invalid gguf file $DIR/model.gguf: truncated string: 3 of its 1073741824 bytes present (at byte 32)"
        ],
    );
}

fn kv_u32(b: &mut Vec<u8>, key: &str, value: u32) {
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key.as_bytes());
    b.extend(4u32.to_le_bytes());
    b.extend(value.to_le_bytes());
}

/// A llama header of `dim` split over `heads` heads, with a 2-token f32 embedding and nothing else.
fn llama(dim: u32, heads: u32, ffn: u32) -> Vec<u8> {
    let mut b = header(3, 1, 6);
    kv_string(&mut b, "general.architecture", "llama");
    kv_u32(&mut b, "llama.attention.head_count", heads);
    kv_u32(&mut b, "llama.embedding_length", dim);
    kv_u32(&mut b, "llama.block_count", 1);
    kv_u32(&mut b, "llama.feed_forward_length", ffn);
    kv_u32(&mut b, "llama.context_length", 16);
    tensor(&mut b, "token_embd.weight", &[u64::from(dim), 2], 0, 0);
    b.resize(b.len().next_multiple_of(32) + 8 * dim as usize, 0);
    b
}

#[test]
fn heads_of_size_zero() {
    check(
        &llama(64, 128, 64),
        expect![
            "unsupported model in $DIR/model.gguf: embedding length 64 does not split into 128 heads of an even size"
        ],
    );
}

#[test]
fn zero_feed_forward_length() {
    check(
        &llama(64, 2, 0),
        expect![
            "unsupported model in $DIR/model.gguf: dimensions 64 / 0 are not nonzero multiples of 32"
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
