//! Inclusion proofs: that one record, byte for byte, is among the records a signed checkpoint
//! covers, checkable with the public key alone, without the log.

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::error::{AuditError, ProofError};
use crate::format::{Checkpoint, PROOF_FORMAT, RecordType, parse_hex};
use crate::merkle::{Hash, audit_path, leaf_hash, verify_path};
use crate::verify::{ProblemKind, Scan, TrustedKey};

/// A record's inclusion proof (`offswitch.audit.proof/1`), serialised as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    pub format: String,
    pub log_id: String,
    /// The record's sequence number, which is its leaf index.
    pub seq: u64,
    /// The record's entry: its line without the chain link member, exactly as hashed.
    pub entry: String,
    /// SHA-256(0x00 || entry), hex.
    pub leaf_hash: String,
    pub tree_size: u64,
    /// The RFC 6962 audit path, bottom-up, hex.
    pub audit_path: Vec<String>,
    /// The signed checkpoint whose root the path leads to.
    pub checkpoint: Checkpoint,
}

impl InclusionProof {
    /// The proven record's fields, parsed from its entry.
    pub fn record(&self) -> Result<ProvenRecord, ProofError> {
        serde_json::from_str::<EntryV1>(&self.entry)
            .map(|entry| ProvenRecord {
                seq: entry.seq,
                time: entry.time,
                kind: entry.kind,
                body: entry.body,
            })
            .map_err(|error| ProofError::BadEntry {
                seq: self.seq,
                reason: error.to_string(),
            })
    }
}

/// The record an inclusion proof is about.
#[derive(Clone, Debug, PartialEq)]
pub struct ProvenRecord {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub body: serde_json::Value,
}

/// Prove that record `seq` of the log at `path` is in the log's last good checkpoint. The log
/// must verify against its own header key (a proof from a damaged log would not hold anyway);
/// the proof itself is checked against a trusted key by [`verify_proof`]. Records after the
/// last checkpoint cannot be proven. Holds every leaf hash in memory (32 bytes a record).
pub fn prove(path: &Path, seq: u64) -> Result<InclusionProof, AuditError> {
    let mut scan = Scan::new(None, TrustedKey::Missing, false, Some(seq));
    scan.read_log(path)?;
    let blocking: Vec<_> = scan
        .problems()
        .iter()
        .filter(|problem| {
            !matches!(
                problem.kind,
                ProblemKind::NoTrustedKey | ProblemKind::UnsealedTail { .. }
            )
        })
        .collect();
    if let Some(first) = blocking.first() {
        return Err(AuditError::LogDoesNotVerify {
            path: path.to_owned(),
            problems: blocking.len(),
            first_problem: first.to_string(),
        });
    }
    let leaves = scan.leaves.take().unwrap_or_default();
    if seq >= leaves.len() as u64 {
        return Err(AuditError::NoSuchRecord {
            path: path.to_owned(),
            seq,
            records: leaves.len() as u64,
        });
    }
    let checkpoint = scan
        .last_good_checkpoint
        .take()
        .filter(|checkpoint| seq < checkpoint.tree_size);
    let Some(checkpoint) = checkpoint else {
        return Err(AuditError::RecordNotSealed {
            path: path.to_owned(),
            seq,
            sealed: scan.into_report().sealed_records,
        });
    };
    let entry = scan
        .wanted_entry
        .take()
        .and_then(|(_, entry)| entry)
        .expect("the entry of a record below the record count was kept");
    let tree_size = checkpoint.tree_size;
    let covered = &leaves[..usize::try_from(tree_size).expect("leaves fit in memory")];
    let path_hashes = audit_path(seq, covered).expect("seq is below the tree size");
    Ok(InclusionProof {
        format: PROOF_FORMAT.into(),
        log_id: checkpoint.log_id.to_string(),
        seq,
        entry: String::from_utf8(entry).expect("a parsed JSON line is UTF-8"),
        leaf_hash: hex::encode(leaf_hash_of(&leaves, seq)),
        tree_size,
        audit_path: path_hashes.iter().map(hex::encode).collect(),
        checkpoint,
    })
}

/// Check a proof against the trusted key: the entry hashes to the leaf, the entry is record
/// `seq`, the checkpoint is signed by the key and covers `seq`, and the path leads from the
/// leaf to the checkpoint's root.
pub fn verify_proof(proof: &InclusionProof, trusted_key: &VerifyingKey) -> Result<(), ProofError> {
    if proof.format != PROOF_FORMAT {
        return Err(ProofError::UnknownFormat(proof.format.clone()));
    }
    let leaf: Hash = parse_hex(&proof.leaf_hash).ok_or(ProofError::Malformed {
        field: "leaf_hash",
        reason: "not 64 lowercase hex digits".into(),
    })?;
    if leaf_hash(proof.entry.as_bytes()) != leaf {
        return Err(ProofError::LeafMismatch);
    }
    let record = proof.record()?;
    if record.seq != proof.seq {
        return Err(ProofError::BadEntry {
            seq: proof.seq,
            reason: format!("its seq is {}", record.seq),
        });
    }
    let checkpoint = &proof.checkpoint;
    if checkpoint.log_id.to_string() != proof.log_id {
        return Err(ProofError::WrongLog {
            proof: proof.log_id.clone(),
            checkpoint: checkpoint.log_id.to_string(),
        });
    }
    if !checkpoint.signature_is_valid(trusted_key) {
        return Err(ProofError::BadSignature);
    }
    if proof.tree_size != checkpoint.tree_size {
        return Err(ProofError::TreeSizeMismatch {
            proof: proof.tree_size,
            checkpoint: checkpoint.tree_size,
        });
    }
    if proof.seq >= checkpoint.tree_size {
        return Err(ProofError::NotCovered {
            seq: proof.seq,
            tree_size: checkpoint.tree_size,
        });
    }
    let path = proof
        .audit_path
        .iter()
        .map(|hash| parse_hex::<32>(hash))
        .collect::<Option<Vec<Hash>>>()
        .ok_or(ProofError::Malformed {
            field: "audit_path",
            reason: "an entry is not 64 lowercase hex digits".into(),
        })?;
    if !verify_path(
        proof.seq,
        checkpoint.tree_size,
        &leaf,
        &path,
        &checkpoint.root,
    ) {
        return Err(ProofError::PathMismatch);
    }
    Ok(())
}

/// A record's entry, as in a proof: the record line's fields without the chain link.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryV1 {
    #[serde(rename = "type")]
    _line_type: RecordType,
    seq: u64,
    time: String,
    kind: String,
    body: serde_json::Value,
}

fn leaf_hash_of(leaves: &[Hash], seq: u64) -> Hash {
    leaves[usize::try_from(seq).expect("seq is below the leaf count")]
}
