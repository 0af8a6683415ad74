//! A tamper-evident audit log: append-only JSON Lines, hash-chained, with an RFC 6962 Merkle
//! tree over the records and periodic Ed25519-signed checkpoints, optionally copied to a witness.
//!
//! `offswitch guard` writes one per session: what the kernel saw, the rules that fired, the
//! circuit breaker, the operator's commands. The agent it contains is hostile, so the log is
//! built so that the agent cannot forge, drop, reorder or rewrite a record without
//! [`verify`] saying so, line by line.
//!
//! # Format (`offswitch.audit/1`)
//!
//! One JSON object per line (`docs/audit-log.md` has every byte):
//!
//! - line 1, the header: `{"format":"offswitch.audit/1","log_id":..,"created":..,
//!   "public_key":..,"metadata":{..}}`;
//! - records: `{"type":"record","seq":N,"time":..,"kind":..,"body":{..},"chain":".."}`. The
//!   record's *entry* is its line without the final `"chain"` member; the tree's leaf is
//!   SHA-256(0x00 || entry) and the chain link is SHA-256(0x03 || previous link || leaf), the
//!   first link being SHA-256(0x02 || the header line). So every byte of a record is hashed as
//!   written, with no canonical JSON to agree on, and a changed byte anywhere is located at its
//!   line;
//! - checkpoints: `{"type":"checkpoint","log_id":..,"number":K,"tree_size":N,"root":..,
//!   "chain_head":..,"time":..,"closed":false,"signature":..}`, the signature over a fixed byte
//!   layout that starts with the context `offswitch.audit/1 checkpoint\n` and binds the log id,
//!   the checkpoint's number, the tree size and root, the chain head, the time and whether it
//!   closes the log. A checkpoint line must be byte for byte what the writer writes for those
//!   fields, so no byte of it escapes the signature.
//!
//! The writer writes checkpoint 0 right after the header (it signs the header, through the chain's
//! first link), one every `checkpoint_every` records, and a final one with `closed: true`.
//!
//! **Checkpoints are separate lines, not leaves of the tree.** The tree then holds records
//! only, so a record's leaf index is its `seq` and a proof is about a record; a checkpoint at
//! tree size N covers exactly records `0..N`. A checkpoint cannot be deleted or moved unseen
//! anyway: each has a number (0, 1, 2, ...) that the next must continue, its tree size must
//! equal the number of records before it, its root and chain head must be theirs, and the last
//! records of a log must be followed by one, or they are an unsealed tail. Signing the number
//! and the log id is what makes an old checkpoint useless elsewhere: systemd's journal sealing
//! (CVE-2023-31439) verified a tag without checking which epoch it belonged to, so old entries
//! could be removed and re-sealed with a later key.
//!
//! # What verification can and cannot detect
//!
//! With the trusted public key, [`verify`] detects any change to a sealed record (a byte of its
//! body, time, kind or seq), a record removed, added, duplicated or moved, a checkpoint removed
//! from the middle, moved, duplicated, forged or taken from another log, a changed header, a
//! line cut, and a whole log replaced by a self-consistent forgery made with another key.
//! Records after the last checkpoint are reported as an unsealed tail: a crash leaves one too,
//! and verification cannot prove them, so it fails and says so.
//!
//! What it cannot detect, by design:
//!
//! - **Truncation exactly after a checkpoint**, without a witness: the shorter log is a valid
//!   log that a crash could have left (verification notes that it was not closed). A witness
//!   that received the later checkpoints shows the log is shorter than it was.
//! - **Anything, once the signing key is stolen**: whoever holds the key writes a new log that
//!   verifies. The key must live where the agent cannot reach, outside every sandbox, as must
//!   the log and the witness.
//! - **A forgery, without a trusted public key**: the header names a key, but a forger names
//!   his own. [`verify`] without one uses the default key directory's public key, else reports
//!   that it has none.
//! - Whether what was logged is true: the log proves what the writer wrote, not that the
//!   writer saw the world right.

mod error;
mod format;
mod key;
pub mod merkle;
mod proof;
mod read;
mod verify;
mod writer;

pub use ed25519_dalek::VerifyingKey;

pub use error::{AuditError, ProofError};
pub use format::{
    Checkpoint, FORMAT, LogId, MAX_BODY_BYTES, MAX_KIND_BYTES, MAX_LINE_BYTES, MAX_METADATA_BYTES,
    PROOF_FORMAT, SIGNATURE_CONTEXT,
};
pub use key::{
    AuditKey, PUBLIC_KEY_FILE, SECRET_KEY_FILE, default_key_dir, default_public_key,
    load_public_key, save_public_key,
};
pub use proof::{InclusionProof, ProvenRecord, prove, verify_proof};
pub use read::{Header, Record, Records, read_header, records};
pub use verify::{
    MAX_LISTED_PROBLEMS, Problem, ProblemKind, TrustedKey, VerifyOptions, VerifyReport, verify,
};
pub use writer::{AuditWriter, Options, Witness, WitnessCommand};
