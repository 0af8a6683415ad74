//! Feature tests of the audit log: one binary, one module per feature, shared helpers here.

mod keys;
mod limits;
mod problems;
mod rfc6962;
mod roundtrip;
mod tamper;
mod witness;

use std::path::{Path, PathBuf};

use offswitch_audit::{AuditKey, AuditWriter, Options, VerifyOptions, VerifyReport, Witness};
use sha2::{Digest as _, Sha256};

/// The key a test's logs are signed with; seeds make public keys stable across runs.
pub fn key() -> AuditKey {
    AuditKey::from_seed([7; 32])
}

/// Another key: the attacker's.
pub fn other_key() -> AuditKey {
    AuditKey::from_seed([9; 32])
}

/// A record body shaped like a kernel event from the guard, about 300 bytes as JSON.
pub fn kernel_event(index: u64) -> serde_json::Value {
    serde_json::json!({
        "source": "kernel",
        "time_us": 1_510_000 + index * 137,
        "pid": 4000 + index % 97,
        "ppid": 1,
        "exe": "/usr/bin/python3",
        "harness": false,
        "event": "exec",
        "path": format!("/home/agent/tools/step_{index}.sh"),
        "argv": ["bash", "-c", format!("cp /home/agent/model.bin /tmp/.cache/{index} && sync")],
        "argv_truncated": false,
        "cgroup": "/offswitch/session-7f3a/agent"
    })
}

/// Write a closed log of `records` kernel events with a checkpoint every `every` records.
pub fn write_log(path: &Path, records: u64, every: u64, witness: Option<&Path>) {
    let mut writer = AuditWriter::create(
        path,
        &key(),
        Options {
            checkpoint_every: every,
            witness: witness.map(|w| Witness::File(w.to_owned())),
            metadata: serde_json::json!({"session": "test"}),
        },
    )
    .unwrap();
    for index in 0..records {
        let kind = if index % 5 == 4 {
            "rule_hit"
        } else {
            "kernel_event"
        };
        assert_eq!(writer.append(kind, &kernel_event(index)).unwrap(), index);
    }
    writer.finish().unwrap();
}

/// Verify with the test key as the trusted key.
pub fn verify_trusted(path: &Path, witness: Option<&Path>) -> VerifyReport {
    offswitch_audit::verify(
        path,
        &VerifyOptions {
            trusted_public_key: Some(key().public_key()),
            witness: witness.map(Path::to_owned),
        },
    )
    .unwrap()
}

/// The report's text with the log's random id replaced.
pub fn redacted(report: &VerifyReport) -> String {
    let mut text = report.render();
    if let Some(id) = report.log_id {
        text = text.replace(&id.to_string(), "[log]");
    }
    text
}

pub fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    (dir, path)
}

/// What a forger who knows the format but not the key can do: recompute every chain link,
/// tree size, root and chain head of a (changed) log and sign each checkpoint with `signer`.
/// Lines are without their newline.
pub fn reseal(lines: &[String], signer: &ed25519_dalek::SigningKey) -> Vec<String> {
    use ed25519_dalek::Signer as _;
    let mut out = Vec::new();
    let mut frontier = offswitch_audit::merkle::Frontier::new();
    let mut link = genesis(lines[0].as_bytes());
    out.push(lines[0].clone());
    for line in &lines[1..] {
        if line.starts_with("{\"type\":\"record\"") {
            let entry = record_entry(line);
            let leaf = offswitch_audit::merkle::leaf_hash(entry.as_bytes());
            link = chain(&link, &leaf);
            frontier.push(leaf);
            out.push(record_line(&entry, &link));
        } else {
            let mut checkpoint = offswitch_audit::Checkpoint::parse_line(line.as_bytes()).unwrap();
            checkpoint.tree_size = frontier.size();
            checkpoint.root = frontier.root();
            checkpoint.chain_head = link;
            checkpoint.signature = signer.sign(&checkpoint.signed_message()).to_bytes();
            out.push(checkpoint.to_line());
        }
    }
    out
}

/// SHA-256(0x02 || header line), as docs/audit-log.md defines the chain's first link.
pub fn genesis(header: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update([0x02])
        .chain_update(header)
        .finalize()
        .into()
}

/// SHA-256(0x03 || previous link || leaf hash).
pub fn chain(previous: &[u8; 32], leaf: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update([0x03])
        .chain_update(previous)
        .chain_update(leaf)
        .finalize()
        .into()
}

/// A record line without its `,"chain":"<64 hex>"` member.
pub fn record_entry(line: &str) -> String {
    let cut = line.rfind(",\"chain\":\"").unwrap();
    format!("{}}}", &line[..cut])
}

pub fn record_line(entry: &str, link: &[u8; 32]) -> String {
    format!(
        "{},\"chain\":\"{}\"}}",
        &entry[..entry.len() - 1],
        hex::encode(link)
    )
}

pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}
