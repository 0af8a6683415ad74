//! Verification: one pass over the log, line by line, recomputing the chain and the tree from
//! the bytes and checking every checkpoint against them and against the trusted key, then the
//! witness against the log. Every problem is reported with its line; nothing in the file is
//! trusted except what the trusted key signed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::Deserialize as _;
use sha2::{Digest, Sha256};

use crate::error::AuditError;
use crate::format::{
    CHECKPOINT_PREFIX, Checkpoint, FORMAT, HEADER_PREFIX, LogId, MAX_LINE_BYTES, RECORD_PREFIX,
    RecordLineV1, genesis_link, next_link, split_record_line,
};
use crate::key::default_public_key;
use crate::merkle::{Frontier, Hash, leaf_hash};
use crate::read::{Header, Line, LineReader, looks_like_audit_log};

/// At most this many problems are listed; the rest are counted.
pub const MAX_LISTED_PROBLEMS: usize = 1000;

/// What to check a log against.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The key the log must be signed with. `None`: the public key in the default key
    /// directory, else no key at all, which is itself a problem: a forgery made with a fresh
    /// key is consistent in itself.
    pub trusted_public_key: Option<VerifyingKey>,
    /// A witness file of checkpoint lines (from `Witness::File` or a witness command) that the
    /// log must contain.
    pub witness: Option<PathBuf>,
}

/// Where the key that verification trusted came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustedKey {
    /// Given by the caller.
    Given,
    /// The public key file in the default key directory.
    DefaultFile(PathBuf),
    /// None: signatures were checked against the header's own key, which proves nothing.
    Missing,
}

/// What verification found.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// The log's id, from its header (or its first checkpoint when the header is damaged).
    pub log_id: Option<LogId>,
    pub lines: u64,
    pub records: u64,
    pub checkpoints: u64,
    /// Records covered by the last checkpoint that verified.
    pub sealed_records: u64,
    /// Whether the log ends with its writer's final checkpoint.
    pub closed: bool,
    pub trusted_key: TrustedKey,
    /// Checkpoints of this log in the witness file, if one was given.
    pub witness_checkpoints: Option<u64>,
    pub problems: Vec<Problem>,
    /// Problems past [`MAX_LISTED_PROBLEMS`], counted only.
    pub problems_not_listed: u64,
    /// Facts worth knowing that are not problems (an unclosed log that ends at a checkpoint).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Whether the log is intact: no problem at all.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.problems_not_listed == 0
    }

    /// The report as text: each problem on a line, located, then the summary.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for problem in &self.problems {
            let _ = writeln!(out, "{problem}");
        }
        if self.problems_not_listed > 0 {
            let _ = writeln!(
                out,
                "... and {} more problems not listed",
                self.problems_not_listed
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let log = self
            .log_id
            .map_or_else(|| "of unknown id".to_owned(), |id| id.to_string());
        let total = self.problems.len() as u64 + self.problems_not_listed;
        let verdict = if self.ok() {
            "intact".to_owned()
        } else {
            format!(
                "NOT intact: {total} problem{}",
                if total == 1 { "" } else { "s" }
            )
        };
        let _ = writeln!(
            out,
            "log {log}: {verdict}; {} records ({} sealed), {} checkpoints, {}",
            self.records,
            self.sealed_records,
            self.checkpoints,
            if self.closed { "closed" } else { "not closed" }
        );
        out
    }
}

/// One thing wrong with a log, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The log's line (from 1), when the problem has one.
    pub line: Option<u64>,
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// What is wrong. Each message is what `offswitch audit verify` prints after the line number;
/// `docs/audit-log.md` explains each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    EmptyFile,
    NotAHeader,
    MalformedHeader {
        reason: String,
    },
    UnknownFormat {
        format: String,
    },
    SecondHeader,
    HeaderKeyNotTrusted {
        header_key: String,
    },
    NoTrustedKey,
    HeaderChanged {
        checkpoint: u64,
    },
    MalformedLine {
        reason: String,
    },
    LineTooLong,
    CutLine,
    EmptyLine,
    UnknownLine,
    SequenceGap {
        expected: u64,
        found: u64,
    },
    OutOfOrder {
        expected: u64,
        found: u64,
    },
    DuplicateRecord {
        seq: u64,
        first_line: u64,
    },
    BadChainLink {
        seq: u64,
    },
    CheckpointNumber {
        expected: u64,
        found: u64,
    },
    CheckpointOtherLog {
        log_id: String,
    },
    CheckpointTreeSize {
        number: u64,
        claimed: u64,
        actual: u64,
    },
    CheckpointRoot {
        number: u64,
    },
    CheckpointChainHead {
        number: u64,
    },
    BadSignature {
        number: u64,
    },
    AfterClose {
        closed_at: u64,
    },
    NoCheckpoint,
    UnsealedTail {
        records: u64,
        first_line: u64,
        last_line: u64,
    },
    LaterCheckpointsDisagree {
        count: u64,
    },
    WitnessUnreadable {
        reason: String,
    },
    WitnessMalformed {
        witness_line: u64,
        reason: String,
    },
    WitnessBadSignature {
        witness_line: u64,
        number: u64,
    },
    WitnessNotInLog {
        witness_line: u64,
        number: u64,
        tree_size: u64,
    },
    WitnessDiffers {
        witness_line: u64,
        number: u64,
    },
    WitnessHasNone,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyFile => write!(f, "the file is empty: no header, no record, no checkpoint"),
            Self::NotAHeader => write!(f, "the first line is not the log's header"),
            Self::MalformedHeader { reason } => write!(f, "malformed header: {reason}"),
            Self::UnknownFormat { format } => write!(
                f,
                "unknown format {format:?}: this offswitch verifies {FORMAT:?} only"
            ),
            Self::SecondHeader => write!(f, "a second header: a log has one, on line 1"),
            Self::HeaderKeyNotTrusted { header_key } => write!(
                f,
                "the header names public key {header_key}, which is not the trusted key: the log was made or re-signed with another key"
            ),
            Self::NoTrustedKey => write!(
                f,
                "no trusted public key (give --public-key, or keep one in the default key directory): signatures were checked against the header's own key, so a forgery made with a fresh key would pass"
            ),
            Self::HeaderChanged { checkpoint } => write!(
                f,
                "header changed: checkpoint {checkpoint} signed a different header"
            ),
            Self::MalformedLine { reason } => write!(f, "malformed line: {reason}"),
            Self::LineTooLong => write!(f, "line longer than {MAX_LINE_BYTES} bytes, skipped"),
            Self::CutLine => write!(
                f,
                "the file ends in the middle of this line (no newline): it was cut"
            ),
            Self::EmptyLine => write!(f, "empty line"),
            Self::UnknownLine => write!(f, "neither a record nor a checkpoint"),
            Self::SequenceGap { expected, found } => write!(
                f,
                "sequence gap: expected record {expected}, found {found} ({} missing)",
                found - expected
            ),
            Self::OutOfOrder { expected, found } => write!(
                f,
                "record {found} out of order (expected {expected}): reordered or duplicated"
            ),
            Self::DuplicateRecord { seq, first_line } => {
                write!(f, "duplicated record {seq} (also at line {first_line})")
            }
            Self::BadChainLink { seq } => write!(
                f,
                "bad chain link of record {seq}: the record or the one before it was changed, removed or moved"
            ),
            Self::CheckpointNumber { expected, found } if found > expected => write!(
                f,
                "checkpoint {found} where {expected} was expected: checkpoint {expected}{} missing",
                if found - expected > 1 {
                    format!(" to {}", found - 1)
                } else {
                    String::new()
                }
            ),
            Self::CheckpointNumber { expected, found } => write!(
                f,
                "checkpoint {found} again or out of order (expected {expected}): duplicated or moved"
            ),
            Self::CheckpointOtherLog { log_id } => {
                write!(f, "checkpoint of another log ({log_id})")
            }
            Self::CheckpointTreeSize {
                number,
                claimed,
                actual,
            } => write!(
                f,
                "checkpoint {number} covers {claimed} records but follows {actual}: records were removed or added, or the checkpoint was moved"
            ),
            Self::CheckpointRoot { number } => write!(
                f,
                "checkpoint root mismatch: checkpoint {number} signed a different tree than the records before it"
            ),
            Self::CheckpointChainHead { number } => write!(
                f,
                "checkpoint chain head mismatch: checkpoint {number} signed a different chain than the records before it"
            ),
            Self::BadSignature { number } => write!(
                f,
                "bad signature on checkpoint {number}: the trusted key did not sign it"
            ),
            Self::AfterClose { closed_at } => write!(
                f,
                "line after the final checkpoint (line {closed_at}): appended after the log was closed"
            ),
            Self::NoCheckpoint => write!(
                f,
                "no checkpoint: nothing in the log is signed, not even its header"
            ),
            Self::UnsealedTail {
                records,
                first_line,
                last_line,
            } => write!(
                f,
                "unsealed tail of {records} record{} (lines {first_line}-{last_line}): no checkpoint covers {}, so they cannot be proven; the writer stopped before its next checkpoint (a crash), or they were appended",
                if *records == 1 { "" } else { "s" },
                if *records == 1 { "it" } else { "them" }
            ),
            Self::LaterCheckpointsDisagree { count } => write!(
                f,
                "{count} later checkpoint{} also disagree{} with the records before {} (following from the first mismatch)",
                if *count == 1 { "" } else { "s" },
                if *count == 1 { "s" } else { "" },
                if *count == 1 { "it" } else { "them" }
            ),
            Self::WitnessUnreadable { reason } => write!(f, "witness unreadable: {reason}"),
            Self::WitnessMalformed {
                witness_line,
                reason,
            } => write!(f, "witness line {witness_line} is malformed: {reason}"),
            Self::WitnessBadSignature {
                witness_line,
                number,
            } => write!(
                f,
                "witness line {witness_line}: bad signature on checkpoint {number}"
            ),
            Self::WitnessNotInLog {
                witness_line,
                number,
                tree_size,
            } => write!(
                f,
                "witness checkpoint {number} (tree size {tree_size}, witness line {witness_line}) is not in the log: the log is shorter than the witness says (truncated or rewritten)"
            ),
            Self::WitnessDiffers {
                witness_line,
                number,
            } => write!(
                f,
                "checkpoint {number} differs from the witness's copy (witness line {witness_line}): the log was rewritten"
            ),
            Self::WitnessHasNone => write!(
                f,
                "the witness holds no checkpoint of this log: the log was replaced, or never witnessed"
            ),
        }
    }
}

/// Verify the log at `path`. An `Err` is for a file that cannot be read or is not an audit log
/// at all; everything wrong with an audit log is a [`Problem`] in the report.
pub fn verify(path: &Path, options: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let (trusted, source) = match options.trusted_public_key {
        Some(key) => (Some(key), TrustedKey::Given),
        None => match default_public_key() {
            Ok(Some((key, path))) => (Some(key), TrustedKey::DefaultFile(path)),
            // No home at all is the same as no key there.
            Ok(None) | Err(AuditError::NoHome) => (None, TrustedKey::Missing),
            Err(error) => return Err(error),
        },
    };
    let mut scan = Scan::new(trusted, source, options.witness.is_some(), None);
    scan.read_log(path)?;
    if let Some(witness) = &options.witness {
        scan.check_witness(witness);
    }
    Ok(scan.into_report())
}

/// The state of one pass over a log. Memory is O(log n) for the tree, plus one entry per
/// checkpoint when a witness is checked, plus every leaf hash when a proof is being made.
pub(crate) struct Scan {
    trusted: Option<VerifyingKey>,
    header_key: Option<VerifyingKey>,
    report: VerifyReport,
    keep_checkpoints: bool,
    /// Checkpoint number -> (line, SHA-256 of the line, whether its signature verified), for
    /// the witness.
    checkpoint_lines: HashMap<u64, (u64, Hash, bool)>,
    frontier: Frontier,
    /// The chain as the records in the file compute it (resynchronised to a signed head after
    /// a reported mismatch, so that one change is reported once).
    computed_link: Hash,
    /// The link the previous record line states: each line's link is checked against it, so a
    /// bad link is located at the line that breaks the chain.
    stated_link: Hash,
    next_seq: u64,
    last_record: Option<(u64, Hash, u64)>,
    next_checkpoint: u64,
    checkpoint_mismatch_reported: bool,
    later_mismatches: u64,
    unsealed: u64,
    first_unsealed_line: u64,
    last_record_line: u64,
    closed_at: Option<u64>,
    /// Drop malformed-line problems while reading a cut last line: the cut is the problem.
    in_cut_line: bool,
    /// For a proof: every leaf hash, the entry of one record, the last good checkpoint.
    pub(crate) leaves: Option<Vec<Hash>>,
    pub(crate) wanted_entry: Option<(u64, Option<Vec<u8>>)>,
    pub(crate) last_good_checkpoint: Option<Checkpoint>,
}

impl Scan {
    pub(crate) fn new(
        trusted: Option<VerifyingKey>,
        source: TrustedKey,
        keep_checkpoints: bool,
        proving: Option<u64>,
    ) -> Self {
        Self {
            trusted,
            header_key: None,
            report: VerifyReport {
                log_id: None,
                lines: 0,
                records: 0,
                checkpoints: 0,
                sealed_records: 0,
                closed: false,
                trusted_key: source,
                witness_checkpoints: None,
                problems: Vec::new(),
                problems_not_listed: 0,
                notes: Vec::new(),
            },
            keep_checkpoints,
            checkpoint_lines: HashMap::new(),
            frontier: Frontier::new(),
            computed_link: [0; 32],
            stated_link: [0; 32],
            next_seq: 0,
            last_record: None,
            next_checkpoint: 0,
            checkpoint_mismatch_reported: false,
            later_mismatches: 0,
            unsealed: 0,
            first_unsealed_line: 0,
            last_record_line: 0,
            closed_at: None,
            in_cut_line: false,
            leaves: proving.map(|_| Vec::new()),
            wanted_entry: proving.map(|seq| (seq, None)),
            last_good_checkpoint: None,
        }
    }

    pub(crate) fn problems(&self) -> &[Problem] {
        &self.report.problems
    }

    fn problem(&mut self, line: Option<u64>, kind: ProblemKind) {
        if self.in_cut_line && matches!(kind, ProblemKind::MalformedLine { .. }) {
            return;
        }
        if self.report.problems.len() < MAX_LISTED_PROBLEMS {
            self.report.problems.push(Problem { line, kind });
        } else {
            self.report.problems_not_listed += 1;
        }
    }

    /// The key signatures are checked with: the trusted one, else the header's (which proves
    /// only that the log is consistent in itself).
    fn signing_key(&self) -> Option<VerifyingKey> {
        self.trusted.or(self.header_key)
    }

    pub(crate) fn read_log(&mut self, path: &Path) -> Result<(), AuditError> {
        let mut reader = LineReader::open(path)?;
        let read_error = |source| AuditError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        };
        let Some((number, first)) = reader.next_line().map_err(read_error)? else {
            self.problem(None, ProblemKind::EmptyFile);
            return Ok(());
        };
        self.report.lines = number;
        let stop = match first {
            Line::TooLong { .. } => {
                return Err(AuditError::NotAnAuditLog {
                    path: path.to_owned(),
                    reason: format!("its first line is longer than {MAX_LINE_BYTES} bytes"),
                });
            }
            Line::Complete(line) | Line::Unterminated(line) if !looks_like_audit_log(&line) => {
                return Err(AuditError::NotAnAuditLog {
                    path: path.to_owned(),
                    reason: "its first line is not an offswitch.audit header".into(),
                });
            }
            Line::Complete(line) => self.header(number, &line),
            Line::Unterminated(line) => {
                self.problem(Some(number), ProblemKind::CutLine);
                self.in_cut_line = true;
                let stop = self.header(number, &line);
                self.in_cut_line = false;
                stop
            }
        };
        if stop {
            return Ok(());
        }
        while let Some((number, line)) = reader.next_line().map_err(read_error)? {
            self.report.lines = number;
            match line {
                Line::Complete(line) => self.body_line(number, &line),
                Line::Unterminated(line) => {
                    self.problem(Some(number), ProblemKind::CutLine);
                    self.in_cut_line = true;
                    self.body_line(number, &line);
                    self.in_cut_line = false;
                }
                Line::TooLong { terminated } => {
                    self.problem(Some(number), ProblemKind::LineTooLong);
                    if !terminated {
                        self.problem(Some(number), ProblemKind::CutLine);
                    }
                }
            }
        }
        self.finish_log();
        Ok(())
    }

    /// Line 1. Returns whether to stop (a format this version cannot read).
    fn header(&mut self, number: u64, line: &[u8]) -> bool {
        // The chain starts from the bytes as they are, parsed or not: a changed header then
        // fails every checkpoint that signed the original.
        self.computed_link = genesis_link(line);
        self.stated_link = self.computed_link;
        if line.starts_with(RECORD_PREFIX) || line.starts_with(CHECKPOINT_PREFIX) {
            self.problem(Some(number), ProblemKind::NotAHeader);
            self.body_line(number, line);
            return false;
        }
        match Header::parse(line) {
            Ok(header) => {
                self.report.log_id = Some(header.log_id);
                self.header_key = Some(header.public_key);
                if let Some(trusted) = self.trusted
                    && trusted != header.public_key
                {
                    self.problem(
                        Some(number),
                        ProblemKind::HeaderKeyNotTrusted {
                            header_key: hex::encode(header.public_key.as_bytes()),
                        },
                    );
                }
                false
            }
            Err(reason) => {
                let format = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|value| value.get("format")?.as_str().map(str::to_owned));
                if let Some(format) = format
                    .filter(|format| format != FORMAT && format.starts_with("offswitch.audit/"))
                    && line.starts_with(HEADER_PREFIX)
                {
                    self.problem(Some(number), ProblemKind::UnknownFormat { format });
                    return true;
                }
                self.problem(Some(number), ProblemKind::MalformedHeader { reason });
                false
            }
        }
    }

    fn body_line(&mut self, number: u64, line: &[u8]) {
        if line.is_empty() {
            self.problem(Some(number), ProblemKind::EmptyLine);
        } else if line.starts_with(RECORD_PREFIX) {
            self.record(number, line);
        } else if line.starts_with(CHECKPOINT_PREFIX) {
            self.checkpoint(number, line);
        } else if line.starts_with(b"{\"format\"") {
            self.problem(Some(number), ProblemKind::SecondHeader);
        } else {
            let kind = match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Ok(_) => ProblemKind::UnknownLine,
                Err(error) => ProblemKind::MalformedLine {
                    reason: format!("malformed JSON: {error}"),
                },
            };
            self.problem(Some(number), kind);
        }
    }

    fn record(&mut self, number: u64, line: &[u8]) {
        let Some((entry, stated_link)) = split_record_line(line) else {
            let reason = match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Err(error) => format!("malformed JSON: {error}"),
                Ok(_) => "a record line must end with its chain link (\"chain\": 64 lowercase hex digits)".into(),
            };
            self.problem(Some(number), ProblemKind::MalformedLine { reason });
            return;
        };
        let mut deserializer = serde_json::Deserializer::from_slice(line);
        let parsed = RecordLineV1::<serde::de::IgnoredAny>::deserialize(&mut deserializer)
            .and_then(|record| deserializer.end().map(|()| record.seq));
        let seq = match parsed {
            Ok(seq) => seq,
            Err(error) => {
                self.problem(
                    Some(number),
                    ProblemKind::MalformedLine {
                        reason: format!("malformed JSON: {error}"),
                    },
                );
                return;
            }
        };
        let leaf = leaf_hash(&entry);
        if seq == self.next_seq {
            self.next_seq += 1;
        } else if seq > self.next_seq {
            self.problem(
                Some(number),
                ProblemKind::SequenceGap {
                    expected: self.next_seq,
                    found: seq,
                },
            );
            self.next_seq = seq + 1;
        } else if let Some((last_seq, last_leaf, last_line)) = self.last_record
            && last_seq == seq
            && last_leaf == leaf
        {
            self.problem(
                Some(number),
                ProblemKind::DuplicateRecord {
                    seq,
                    first_line: last_line,
                },
            );
        } else {
            self.problem(
                Some(number),
                ProblemKind::OutOfOrder {
                    expected: self.next_seq,
                    found: seq,
                },
            );
        }
        if next_link(&self.stated_link, &leaf) != stated_link {
            self.problem(Some(number), ProblemKind::BadChainLink { seq });
        }
        self.stated_link = stated_link;
        self.computed_link = next_link(&self.computed_link, &leaf);
        if let Some(closed_at) = self.closed_at {
            self.problem(Some(number), ProblemKind::AfterClose { closed_at });
        }
        if let Some(leaves) = &mut self.leaves {
            leaves.push(leaf);
        }
        if let Some((wanted, found)) = &mut self.wanted_entry
            && self.frontier.size() == *wanted
        {
            *found = Some(entry);
        }
        self.frontier.push(leaf);
        self.last_record = Some((seq, leaf, number));
        self.report.records += 1;
        if self.unsealed == 0 {
            self.first_unsealed_line = number;
        }
        self.unsealed += 1;
        self.last_record_line = number;
    }

    fn checkpoint(&mut self, number: u64, line: &[u8]) {
        let checkpoint = match Checkpoint::parse_line(line) {
            Ok(checkpoint) => checkpoint,
            Err(reason) => {
                self.problem(
                    Some(number),
                    ProblemKind::MalformedLine {
                        reason: format!("checkpoint: {reason}"),
                    },
                );
                return;
            }
        };
        self.report.checkpoints += 1;
        let mut good = true;
        match self.report.log_id {
            None => self.report.log_id = Some(checkpoint.log_id),
            Some(log_id) if log_id != checkpoint.log_id => {
                self.problem(
                    Some(number),
                    ProblemKind::CheckpointOtherLog {
                        log_id: checkpoint.log_id.to_string(),
                    },
                );
                good = false;
            }
            Some(_) => {}
        }
        if checkpoint.number != self.next_checkpoint {
            self.problem(
                Some(number),
                ProblemKind::CheckpointNumber {
                    expected: self.next_checkpoint,
                    found: checkpoint.number,
                },
            );
            good = false;
        }
        self.next_checkpoint = self.next_checkpoint.max(checkpoint.number + 1);
        let signed = self
            .signing_key()
            .is_some_and(|key| checkpoint.signature_is_valid(&key));
        if !signed {
            self.problem(
                Some(number),
                ProblemKind::BadSignature {
                    number: checkpoint.number,
                },
            );
            good = false;
        }
        let actual = self.frontier.size();
        let mut mismatches = Vec::new();
        if checkpoint.tree_size != actual {
            mismatches.push(ProblemKind::CheckpointTreeSize {
                number: checkpoint.number,
                claimed: checkpoint.tree_size,
                actual,
            });
        } else {
            if checkpoint.root != self.frontier.root() {
                mismatches.push(ProblemKind::CheckpointRoot {
                    number: checkpoint.number,
                });
            }
            if checkpoint.chain_head != self.computed_link {
                mismatches.push(if checkpoint.tree_size == 0 {
                    ProblemKind::HeaderChanged {
                        checkpoint: checkpoint.number,
                    }
                } else {
                    ProblemKind::CheckpointChainHead {
                        number: checkpoint.number,
                    }
                });
            }
        }
        if !mismatches.is_empty() {
            good = false;
            // A removed record or a changed one makes every later checkpoint disagree too;
            // the first says where, the rest are counted.
            if self.checkpoint_mismatch_reported {
                self.later_mismatches += 1;
            } else {
                self.checkpoint_mismatch_reported = true;
                for kind in mismatches {
                    self.problem(Some(number), kind);
                }
            }
            if signed && checkpoint.tree_size == actual {
                self.computed_link = checkpoint.chain_head;
            }
        }
        // The next record's link is checked from what the key signed, so a damaged link or
        // header before this checkpoint is not reported again after it.
        if signed && checkpoint.tree_size == actual {
            self.stated_link = checkpoint.chain_head;
        }
        if let Some(closed_at) = self.closed_at {
            self.problem(Some(number), ProblemKind::AfterClose { closed_at });
            good = false;
        }
        if checkpoint.closed {
            self.closed_at.get_or_insert(number);
        }
        if self.keep_checkpoints {
            self.checkpoint_lines
                .entry(checkpoint.number)
                .or_insert_with(|| (number, Sha256::digest(line).into(), signed));
        }
        self.unsealed = 0;
        if good {
            self.report.sealed_records = checkpoint.tree_size;
            self.report.closed = checkpoint.closed;
            self.last_good_checkpoint = Some(checkpoint);
        } else {
            self.report.closed = false;
        }
    }

    fn finish_log(&mut self) {
        if self.report.checkpoints == 0 {
            self.problem(None, ProblemKind::NoCheckpoint);
        }
        if self.unsealed > 0 {
            let kind = ProblemKind::UnsealedTail {
                records: self.unsealed,
                first_line: self.first_unsealed_line,
                last_line: self.last_record_line,
            };
            self.problem(None, kind);
        }
        if self.later_mismatches > 0 {
            let kind = ProblemKind::LaterCheckpointsDisagree {
                count: self.later_mismatches,
            };
            self.problem(None, kind);
        }
        if self.trusted.is_none() {
            self.problem(None, ProblemKind::NoTrustedKey);
        }
        if let TrustedKey::DefaultFile(path) = &self.report.trusted_key {
            self.report.notes.push(format!(
                "trusted public key from the default key directory ({})",
                path.display()
            ));
        }
        // Only for a log that is otherwise intact: on a damaged one the problems say more.
        if self.report.problems.is_empty()
            && self.report.checkpoints > 0
            && !self.report.closed
            && self.unsealed == 0
        {
            self.report.notes.push(format!(
                "the log was not closed by its writer: it ends at a checkpoint, so its {} sealed records are proven, but any written after that checkpoint are gone (a crash, or a cut exactly at a checkpoint, which only a witness can tell apart)",
                self.report.sealed_records
            ));
        }
    }

    /// Every witness checkpoint of this log must be signed by the trusted key and be in the
    /// log, byte for byte.
    pub(crate) fn check_witness(&mut self, path: &Path) {
        let mut reader = match LineReader::open(path) {
            Ok(reader) => reader,
            Err(error) => {
                self.problem(
                    None,
                    ProblemKind::WitnessUnreadable {
                        reason: error.to_string(),
                    },
                );
                return;
            }
        };
        let mut of_this_log = 0;
        loop {
            let (witness_line, line) = match reader.next_line() {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(error) => {
                    self.problem(
                        None,
                        ProblemKind::WitnessUnreadable {
                            reason: format!("failed to read {}: {error}", path.display()),
                        },
                    );
                    return;
                }
            };
            let line = match line {
                Line::Complete(line) => line,
                Line::Unterminated(_) => {
                    self.problem(
                        None,
                        ProblemKind::WitnessMalformed {
                            witness_line,
                            reason: "cut (no newline)".into(),
                        },
                    );
                    continue;
                }
                Line::TooLong { .. } => {
                    self.problem(
                        None,
                        ProblemKind::WitnessMalformed {
                            witness_line,
                            reason: "too long".into(),
                        },
                    );
                    continue;
                }
            };
            let checkpoint = match Checkpoint::parse_line(&line) {
                Ok(checkpoint) => checkpoint,
                Err(reason) => {
                    self.problem(
                        None,
                        ProblemKind::WitnessMalformed {
                            witness_line,
                            reason,
                        },
                    );
                    continue;
                }
            };
            // A witness may serve many logs; the others' checkpoints are none of our business.
            if Some(checkpoint.log_id) != self.report.log_id {
                continue;
            }
            of_this_log += 1;
            let digest: Hash = Sha256::digest(&line).into();
            let in_log = self.checkpoint_lines.get(&checkpoint.number).copied();
            // The same bytes as a checkpoint whose signature already verified verify again;
            // anything else is checked here.
            let signed = match in_log {
                Some((_, log_digest, true)) if log_digest == digest => true,
                _ => self
                    .signing_key()
                    .is_some_and(|key| checkpoint.signature_is_valid(&key)),
            };
            if !signed {
                self.problem(
                    None,
                    ProblemKind::WitnessBadSignature {
                        witness_line,
                        number: checkpoint.number,
                    },
                );
                continue;
            }
            match in_log {
                None => self.problem(
                    None,
                    ProblemKind::WitnessNotInLog {
                        witness_line,
                        number: checkpoint.number,
                        tree_size: checkpoint.tree_size,
                    },
                ),
                Some((log_line, log_digest, _)) if log_digest != digest => self.problem(
                    Some(log_line),
                    ProblemKind::WitnessDiffers {
                        witness_line,
                        number: checkpoint.number,
                    },
                ),
                Some(_) => {}
            }
        }
        self.report.witness_checkpoints = Some(of_this_log);
        if of_this_log == 0 {
            self.problem(None, ProblemKind::WitnessHasNone);
        } else {
            self.report.notes.push(format!(
                "the witness holds {of_this_log} checkpoints of this log"
            ));
        }
    }

    pub(crate) fn into_report(self) -> VerifyReport {
        self.report
    }
}
