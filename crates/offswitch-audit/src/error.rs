//! The crate's errors: faults of the writer, the key files and the reader. What a tampered log
//! contains is not an error but a [`crate::Problem`] in a [`crate::VerifyReport`].

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to overwrite {}", path.display())]
    AlreadyExists { path: PathBuf },
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("record body of {size} bytes is larger than the limit of {limit} bytes")]
    BodyTooLarge { size: usize, limit: usize },
    #[error("record kind {kind:?} is not 1 to 64 ASCII letters, digits, '_', '.', ':' or '-'")]
    BadKind { kind: String },
    #[error("log metadata of {size} bytes is larger than the limit of {limit} bytes")]
    MetadataTooLarge { size: usize, limit: usize },
    #[error("{}: {reason}", path.display())]
    BadKeyFile { path: PathBuf, reason: String },
    #[error(
        "secret key file {} is readable by others (mode {mode:o}); it must be 0600",
        path.display()
    )]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    #[error("neither $OFFSWITCH_HOME nor $HOME is set, so there is no default audit key directory")]
    NoHome,
    #[error("checkpoint {number} is in the log, but its witness copy failed: {reason}")]
    Witness { number: u64, reason: String },
    #[error("the audit writer of {} stopped after a failed write; the log ends at its last complete line", path.display())]
    WriterBroken { path: PathBuf },
    #[error("{} is not an audit log: {reason}", path.display())]
    NotAnAuditLog { path: PathBuf, reason: String },
    #[error("{}:{line}: {reason}", path.display())]
    BadLine {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("{} has no record {seq} (it holds {records})", path.display())]
    NoSuchRecord {
        path: PathBuf,
        seq: u64,
        records: u64,
    },
    #[error("record {seq} of {} is not covered by any checkpoint (the log's last checkpoint covers {sealed} records), so it cannot be proven", path.display())]
    RecordNotSealed {
        path: PathBuf,
        seq: u64,
        sealed: u64,
    },
    #[error("{} does not verify, so no proof is made from it: {first_problem} ({problems} problems; `offswitch audit verify` lists them)", path.display())]
    LogDoesNotVerify {
        path: PathBuf,
        problems: usize,
        first_problem: String,
    },
}

/// Why an inclusion proof does not hold.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("unknown proof format {0:?}, expected \"offswitch.audit.proof/1\"")]
    UnknownFormat(String),
    #[error("the checkpoint's signature does not verify with the trusted public key")]
    BadSignature,
    #[error("the proof is for log {proof} but its checkpoint belongs to log {checkpoint}")]
    WrongLog { proof: String, checkpoint: String },
    #[error("the proof says tree size {proof} but its checkpoint covers {checkpoint} records")]
    TreeSizeMismatch { proof: u64, checkpoint: u64 },
    #[error("record {seq} is not within the checkpoint's {tree_size} records")]
    NotCovered { seq: u64, tree_size: u64 },
    #[error("the entry's leaf hash is not the proof's leaf hash")]
    LeafMismatch,
    #[error("the entry is not a record with seq {seq}: {reason}")]
    BadEntry { seq: u64, reason: String },
    #[error("the audit path does not lead to the checkpoint's root")]
    PathMismatch,
    #[error("malformed {field}: {reason}")]
    Malformed { field: &'static str, reason: String },
}
