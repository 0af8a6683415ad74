//! Reading a log: a bounded line reader (no line longer than [`MAX_LINE_BYTES`] is ever held),
//! the header, and the records for `show` and `export`, which do not verify anything.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::Deserialize as _;

use crate::error::AuditError;
use crate::format::{
    CHECKPOINT_PREFIX, FORMAT, HEADER_PREFIX, HeaderV1, LogId, MAX_LINE_BYTES, RECORD_PREFIX,
    RecordLineV1, parse_hex,
};

/// A log's first line.
#[derive(Clone, Debug)]
pub struct Header {
    pub log_id: LogId,
    /// When the log was created (RFC 3339, UTC).
    pub created: String,
    /// The key the writer says it signs with. Verification trusts it only when it is the
    /// trusted key.
    pub public_key: VerifyingKey,
    /// Free-form metadata from the writer's options (the session's name, ...).
    pub metadata: serde_json::Value,
}

impl Header {
    /// Parse a header line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Self, String> {
        let stored: HeaderV1 =
            serde_json::from_slice(line).map_err(|error| format!("malformed JSON: {error}"))?;
        if stored.format != FORMAT {
            return Err(format!("unknown format {:?}", stored.format));
        }
        let log_id = LogId::parse(&stored.log_id)
            .ok_or("log_id is not 32 lowercase hex digits".to_owned())?;
        let public_key = parse_hex::<32>(&stored.public_key)
            .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
            .ok_or("public_key is not 64 lowercase hex digits of an Ed25519 key".to_owned())?;
        Ok(Self {
            log_id,
            created: stored.created,
            public_key,
            metadata: stored.metadata,
        })
    }
}

/// One record as read, not verified.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Its line in the file, from 1.
    pub line: u64,
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub body: serde_json::Value,
}

/// Read a log's header.
pub fn read_header(path: &Path) -> Result<Header, AuditError> {
    let mut reader = LineReader::open(path)?;
    let not_a_log = |reason: String| AuditError::NotAnAuditLog {
        path: path.to_owned(),
        reason,
    };
    match reader
        .next_line()
        .map_err(|source| read_error(path, source))?
    {
        None => Err(not_a_log("the file is empty".into())),
        Some((_, Line::TooLong { .. })) => Err(not_a_log("its first line is too long".into())),
        Some((_, Line::Complete(line) | Line::Unterminated(line))) => {
            Header::parse(&line).map_err(not_a_log)
        }
    }
}

/// The records of a log in file order, checkpoints skipped. Nothing is verified: a line that
/// is not a well-formed record is an error item and reading goes on.
pub fn records(path: &Path) -> Result<Records, AuditError> {
    read_header(path)?;
    let mut reader = LineReader::open(path)?;
    reader
        .next_line()
        .map_err(|source| read_error(path, source))?;
    Ok(Records {
        path: path.to_owned(),
        reader,
    })
}

pub struct Records {
    path: PathBuf,
    reader: LineReader<File>,
}

impl Iterator for Records {
    type Item = Result<Record, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (number, line) = match self.reader.next_line() {
                Ok(next) => next?,
                Err(source) => return Some(Err(read_error(&self.path, source))),
            };
            let bad = |reason: String| {
                Some(Err(AuditError::BadLine {
                    path: self.path.clone(),
                    line: number,
                    reason,
                }))
            };
            let line = match line {
                Line::Complete(line) => line,
                Line::Unterminated(_) => return bad("the line is cut (no newline)".into()),
                Line::TooLong { .. } => {
                    return bad(format!("longer than {MAX_LINE_BYTES} bytes"));
                }
            };
            if line.starts_with(CHECKPOINT_PREFIX) {
                continue;
            }
            if !line.starts_with(RECORD_PREFIX) {
                return bad("not a record or checkpoint line".into());
            }
            let mut deserializer = serde_json::Deserializer::from_slice(&line);
            let parsed = RecordLineV1::<serde_json::Value>::deserialize(&mut deserializer)
                .and_then(|record| deserializer.end().map(|()| record));
            return Some(match parsed {
                Ok(record) => Ok(Record {
                    line: number,
                    seq: record.seq,
                    time: record.time.into_owned(),
                    kind: record.kind.into_owned(),
                    body: record.body,
                }),
                Err(error) => return bad(format!("malformed record: {error}")),
            });
        }
    }
}

/// One line of a log.
pub(crate) enum Line {
    /// A line ended by a newline, without it.
    Complete(Vec<u8>),
    /// The file's last bytes, with no newline after them.
    Unterminated(Vec<u8>),
    /// A line longer than the bound; its bytes were skipped, not kept.
    TooLong { terminated: bool },
}

/// Reads lines of at most [`MAX_LINE_BYTES`], numbering them from 1.
pub(crate) struct LineReader<R> {
    reader: BufReader<R>,
    number: u64,
    done: bool,
}

impl LineReader<File> {
    pub(crate) fn open(path: &Path) -> Result<Self, AuditError> {
        let file = File::open(path).map_err(|source| AuditError::Io {
            action: "open",
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(file))
    }
}

impl<R: Read> LineReader<R> {
    pub(crate) fn new(reader: R) -> Self {
        Self {
            reader: BufReader::with_capacity(256 << 10, reader),
            number: 0,
            done: false,
        }
    }

    pub(crate) fn next_line(&mut self) -> std::io::Result<Option<(u64, Line)>> {
        if self.done {
            return Ok(None);
        }
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if available.is_empty() {
                self.done = true;
                if line.is_empty() && !too_long {
                    return Ok(None);
                }
                self.number += 1;
                let line = if too_long {
                    Line::TooLong { terminated: false }
                } else {
                    Line::Unterminated(line)
                };
                return Ok(Some((self.number, line)));
            }
            let (chunk, consumed, ended) = match memchr::memchr(b'\n', available) {
                Some(at) => (&available[..at], at + 1, true),
                None => (available, available.len(), false),
            };
            if !too_long {
                if line.len() + chunk.len() > MAX_LINE_BYTES {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            self.reader.consume(consumed);
            if ended {
                self.number += 1;
                let line = if too_long {
                    Line::TooLong { terminated: true }
                } else {
                    Line::Complete(line)
                };
                return Ok(Some((self.number, line)));
            }
        }
    }
}

/// Whether a first line looks like it was meant to be an audit log's, however damaged: then
/// verification reports what is wrong with it, rather than refusing the file as something else.
pub(crate) fn looks_like_audit_log(first_line: &[u8]) -> bool {
    let markers: [&[u8]; 5] = [
        b"offswitch.audit",
        b"\"log_id\"",
        b"\"public_key\"",
        RECORD_PREFIX,
        CHECKPOINT_PREFIX,
    ];
    markers
        .iter()
        .any(|marker| memchr::memmem::find(first_line, marker).is_some())
        || (!first_line.is_empty() && HEADER_PREFIX.starts_with(first_line))
        || first_line.starts_with(HEADER_PREFIX)
}

fn read_error(path: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        let mut reader = LineReader::new(input);
        let mut out = Vec::new();
        while let Some((number, line)) = reader.next_line().unwrap() {
            out.push(match line {
                Line::Complete(bytes) => format!("{number} {}", String::from_utf8_lossy(&bytes)),
                Line::Unterminated(bytes) => {
                    format!("{number} cut {}", String::from_utf8_lossy(&bytes))
                }
                Line::TooLong { terminated } => format!("{number} too long {terminated}"),
            });
        }
        out
    }

    #[test]
    fn lines_are_numbered_bounded_and_a_cut_end_is_told() {
        assert_eq!(lines(b"a\n\nb\n"), ["1 a", "2 ", "3 b"]);
        assert_eq!(lines(b"a\nb"), ["1 a", "2 cut b"]);
        assert!(lines(b"").is_empty());
        let mut long = vec![b'x'; MAX_LINE_BYTES + 1];
        long.extend_from_slice(b"\nok\n");
        long.extend(vec![b'y'; MAX_LINE_BYTES + 1]);
        assert_eq!(
            lines(&long),
            ["1 too long true", "2 ok", "3 too long false"]
        );
        let mut exact = vec![b'x'; MAX_LINE_BYTES];
        exact.push(b'\n');
        assert_eq!(lines(&exact).len(), 1);
        assert!(lines(&exact)[0].starts_with("1 xxx"));
    }
}
