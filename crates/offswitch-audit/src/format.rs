//! The serialised form of `offswitch.audit/1`: the header, record and checkpoint lines as
//! versioned types, the chain and signed-message byte layouts, strict hex and the clock's text.
//!
//! Everything that decides a hash or a signature is in this file, so that the format is
//! changed deliberately and in one place (`docs/audit-log.md` describes it byte by byte).

use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The format of a log, its first field.
pub const FORMAT: &str = "offswitch.audit/1";
/// The format of an inclusion proof.
pub const PROOF_FORMAT: &str = "offswitch.audit.proof/1";
/// The largest record body, as compact JSON.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The largest record kind.
pub const MAX_KIND_BYTES: usize = 64;
/// The largest header metadata, as compact JSON.
pub const MAX_METADATA_BYTES: usize = 64 << 10;
/// The longest line a reader accepts: the largest body with room for the other fields.
pub const MAX_LINE_BYTES: usize = MAX_BODY_BYTES + (8 << 10);

/// The context every checkpoint signature starts with: the format version is part of it, so a
/// signature made for another format or another purpose never verifies as a checkpoint here.
pub const SIGNATURE_CONTEXT: &[u8] = b"offswitch.audit/1 checkpoint\n";

/// Domain tags of the chain's two hashes; RFC 6962 uses 0x00 and 0x01 for the tree.
const GENESIS_TAG: u8 = 0x02;
const LINK_TAG: u8 = 0x03;

/// The random id of one log, named by its header and every checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogId(pub [u8; 16]);

impl LogId {
    pub fn generate() -> Result<Self, rand::rand_core::OsError> {
        use rand::TryRngCore as _;
        let mut id = [0; 16];
        rand::rngs::OsRng.try_fill_bytes(&mut id)?;
        Ok(Self(id))
    }

    pub fn parse(text: &str) -> Option<Self> {
        parse_hex(text).map(Self)
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The first line of a log, as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderV1 {
    pub format: String,
    pub log_id: String,
    pub created: String,
    pub public_key: String,
    pub metadata: serde_json::Value,
}

/// What a record line holds, its body skipped: the verifier hashes the line's bytes and never
/// needs the body's value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordLineV1<'a, Body> {
    #[serde(rename = "type")]
    pub _line_type: RecordType,
    pub seq: u64,
    #[serde(borrow)]
    pub time: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    pub body: Body,
    /// Checked on the raw bytes ([`split_record_line`]); parsed only to refuse a line where it
    /// is not a string.
    #[serde(rename = "chain")]
    pub _chain: &'a str,
}

/// The `type` of a record line or entry: only `"record"` parses.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordType {
    Record,
}

/// A signed checkpoint line as written. Its bytes must be exactly what `serde_json` writes for
/// it (compact, in this field order), so no byte of it escapes the signature.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointV1 {
    #[serde(rename = "type")]
    pub line_type: String,
    pub log_id: String,
    pub number: u64,
    pub tree_size: u64,
    pub root: String,
    pub chain_head: String,
    pub time: String,
    pub closed: bool,
    pub signature: String,
}

/// A signed checkpoint: the log's state after `tree_size` records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CheckpointV1", into = "CheckpointV1")]
pub struct Checkpoint {
    /// The log it belongs to.
    pub log_id: LogId,
    /// Its place among the log's checkpoints: 0 for the one written at creation, then 1, 2, ...
    pub number: u64,
    /// How many records it covers: records `0..tree_size`.
    pub tree_size: u64,
    /// The Merkle tree root of those records.
    pub root: Hash,
    /// The chain link of the last of them (the header's genesis link when there are none).
    pub chain_head: Hash,
    /// When it was written (RFC 3339, UTC).
    pub time: String,
    /// Whether the writer closed the log with it (`AuditWriter::finish`): nothing may follow.
    pub closed: bool,
    /// Ed25519 over [`Checkpoint::signed_message`].
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// The bytes the signature covers:
    /// `SIGNATURE_CONTEXT || log_id (16) || number (u64 BE) || tree_size (u64 BE) || root (32)
    /// || chain_head (32) || closed (1 byte, 0 or 1) || time length (u32 BE) || time (UTF-8)`.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + 125 + self.time.len());
        message.extend_from_slice(SIGNATURE_CONTEXT);
        message.extend_from_slice(&self.log_id.0);
        message.extend_from_slice(&self.number.to_be_bytes());
        message.extend_from_slice(&self.tree_size.to_be_bytes());
        message.extend_from_slice(&self.root);
        message.extend_from_slice(&self.chain_head);
        message.push(u8::from(self.closed));
        // A time longer than 4 GiB cannot come from a bounded line.
        let time_length = u32::try_from(self.time.len()).unwrap_or(u32::MAX);
        message.extend_from_slice(&time_length.to_be_bytes());
        message.extend_from_slice(self.time.as_bytes());
        message
    }

    /// Whether `key` signed this checkpoint. Strict verification: a signature with a
    /// non-canonical scalar or a weak key is refused, so no second encoding of a signature
    /// verifies.
    pub fn signature_is_valid(&self, key: &VerifyingKey) -> bool {
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&self.signed_message(), &signature)
            .is_ok()
    }

    /// The line as written in the log and the witness, without its newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(&CheckpointV1::from(self.clone()))
            .expect("a checkpoint always serialises")
    }

    /// Parse a checkpoint line, refusing any spelling other than the one [`Self::to_line`]
    /// writes.
    pub fn parse_line(line: &[u8]) -> Result<Self, String> {
        let stored: CheckpointV1 =
            serde_json::from_slice(line).map_err(|error| format!("malformed JSON: {error}"))?;
        let checkpoint = Self::try_from(stored)?;
        if checkpoint.to_line().as_bytes() != line {
            return Err("not in the canonical form the writer writes".into());
        }
        Ok(checkpoint)
    }
}

impl From<Checkpoint> for CheckpointV1 {
    fn from(checkpoint: Checkpoint) -> Self {
        Self {
            line_type: "checkpoint".into(),
            log_id: checkpoint.log_id.to_string(),
            number: checkpoint.number,
            tree_size: checkpoint.tree_size,
            root: hex::encode(checkpoint.root),
            chain_head: hex::encode(checkpoint.chain_head),
            time: checkpoint.time,
            closed: checkpoint.closed,
            signature: hex::encode(checkpoint.signature),
        }
    }
}

impl TryFrom<CheckpointV1> for Checkpoint {
    type Error = String;

    fn try_from(stored: CheckpointV1) -> Result<Self, String> {
        if stored.line_type != "checkpoint" {
            return Err(format!("type {:?} is not \"checkpoint\"", stored.line_type));
        }
        let field = |name: &str| format!("{name} is not lowercase hex of the right length");
        Ok(Self {
            log_id: LogId::parse(&stored.log_id).ok_or_else(|| field("log_id"))?,
            number: stored.number,
            tree_size: stored.tree_size,
            root: parse_hex(&stored.root).ok_or_else(|| field("root"))?,
            chain_head: parse_hex(&stored.chain_head).ok_or_else(|| field("chain_head"))?,
            time: stored.time,
            closed: stored.closed,
            signature: parse_hex(&stored.signature).ok_or_else(|| field("signature"))?,
        })
    }
}

/// The chain's first link: SHA-256(0x02 || the header line's bytes without the newline), so
/// every checkpoint is bound to the exact header, its key and metadata included.
pub fn genesis_link(header_line: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([GENESIS_TAG]);
    hasher.update(header_line);
    hasher.finalize().into()
}

/// The chain link of a record: SHA-256(0x03 || previous link || the record's leaf hash).
pub fn next_link(previous: &Hash, leaf: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LINK_TAG]);
    hasher.update(previous);
    hasher.update(leaf);
    hasher.finalize().into()
}

/// The start of every record line.
pub const RECORD_PREFIX: &[u8] = b"{\"type\":\"record\",";
/// The start of every checkpoint line.
pub const CHECKPOINT_PREFIX: &[u8] = b"{\"type\":\"checkpoint\",";
/// The start of the header line.
pub const HEADER_PREFIX: &[u8] = b"{\"format\":\"offswitch.audit/";
const CHAIN_MEMBER: &[u8] = b",\"chain\":\"";
/// `,"chain":"` + 64 hex digits + `"}`.
const CHAIN_SUFFIX_LEN: usize = CHAIN_MEMBER.len() + 64 + 2;

/// The entry of a record: the record line without its chain link member,
/// `{"type":"record","seq":..,"time":..,"kind":..,"body":..}`. Its leaf hash is the tree's leaf
/// and the chain's input, so every byte of the line except the link itself is covered.
pub fn write_record_entry(entry: &mut Vec<u8>, seq: u64, time: &str, kind: &str, body_json: &[u8]) {
    use std::io::Write as _;
    entry.clear();
    entry.extend_from_slice(RECORD_PREFIX);
    // Writing to a Vec cannot fail.
    let _ = write!(entry, "\"seq\":{seq},\"time\":");
    let _ = serde_json::to_writer(&mut *entry, time);
    entry.extend_from_slice(b",\"kind\":");
    let _ = serde_json::to_writer(&mut *entry, kind);
    entry.extend_from_slice(b",\"body\":");
    entry.extend_from_slice(body_json);
    entry.push(b'}');
}

/// The record line for an entry and its link, newline included.
pub fn record_line_from_entry(entry: &[u8], link: &Hash) -> Vec<u8> {
    let mut line = Vec::with_capacity(entry.len() + CHAIN_SUFFIX_LEN + 1);
    line.extend_from_slice(&entry[..entry.len() - 1]);
    line.extend_from_slice(CHAIN_MEMBER);
    line.extend_from_slice(hex::encode(link).as_bytes());
    line.extend_from_slice(b"\"}\n");
    line
}

/// Split a record line (no newline) into its entry and its stated link, or `None` when it does
/// not end with a well-formed link member.
pub fn split_record_line(line: &[u8]) -> Option<(Vec<u8>, Hash)> {
    if line.len() < CHAIN_SUFFIX_LEN + RECORD_PREFIX.len() || !line.ends_with(b"\"}") {
        return None;
    }
    let cut = line.len() - CHAIN_SUFFIX_LEN;
    let (before, suffix) = line.split_at(cut);
    let hex_digits = suffix.strip_prefix(CHAIN_MEMBER)?.strip_suffix(b"\"}")?;
    let link = parse_hex(std::str::from_utf8(hex_digits).ok()?)?;
    let mut entry = Vec::with_capacity(cut + 1);
    entry.extend_from_slice(before);
    entry.push(b'}');
    Some((entry, link))
}

/// Lowercase hex of exactly `N` bytes. Uppercase is refused so that a value has one spelling.
pub fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// A kind is a short machine name: ASCII letters, digits, `_ . : -`, at most 64 bytes.
pub fn kind_is_valid(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_KIND_BYTES
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// RFC 3339 in UTC with microseconds: `2026-12-07T10:11:12.123456Z`.
pub fn format_time(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        since_epoch.subsec_micros()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_microseconds() {
        let at = |seconds, micros| {
            format_time(UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_796_688_672, 123_456), "2026-12-08T00:11:12.123456Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }

    #[test]
    fn a_record_line_splits_back_into_its_entry_and_link() {
        let mut entry = Vec::new();
        write_record_entry(&mut entry, 7, "t", "kernel.exec", br#"{"a":"}"}"#);
        assert_eq!(
            std::str::from_utf8(&entry).unwrap(),
            r#"{"type":"record","seq":7,"time":"t","kind":"kernel.exec","body":{"a":"}"}}"#
        );
        let link = [0xab; 32];
        let line = record_line_from_entry(&entry, &link);
        let line = line.strip_suffix(b"\n").unwrap();
        assert_eq!(split_record_line(line), Some((entry, link)));
        let mut upper = line.to_vec();
        let at = upper.len() - 3;
        upper[at] = b'B';
        assert_eq!(split_record_line(&upper), None, "uppercase hex is refused");
    }

    #[test]
    fn hex_has_one_spelling() {
        assert_eq!(parse_hex::<2>("0aff"), Some([0x0a, 0xff]));
        assert_eq!(parse_hex::<2>("0AFF"), None);
        assert_eq!(parse_hex::<2>("0af"), None);
        assert_eq!(parse_hex::<2>("+aff"), None);
    }
}
