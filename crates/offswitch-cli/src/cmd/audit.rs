//! `offswitch audit verify|show|export|prove|verify-proof|keygen`: check, read and prove the
//! tamper-evident audit logs `offswitch guard` writes (`offswitch-audit`, docs/audit-log.md).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use offswitch_audit::{AuditError, AuditKey, InclusionProof, VerifyOptions, VerifyingKey};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Verify a log: every problem printed with its line; exit 0 intact, 1 anything wrong.
    Verify {
        /// The log file.
        log: PathBuf,
        /// The trusted public key file (default: audit.pub in $OFFSWITCH_HOME/audit or
        /// ~/.local/share/offswitch/audit; without one, verification fails).
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// A witness file of checkpoints the log must contain.
        #[arg(long, value_name = "FILE")]
        witness: Option<PathBuf>,
    },
    /// Print a log's records for people. Nothing is verified: run `verify` for that.
    Show {
        log: PathBuf,
        /// Only records of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Start at this sequence number.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        from: u64,
        /// Print at most N records.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: u64,
    },
    /// Write a log's records as JSON Lines (seq, time, kind, body), unverified.
    Export {
        log: PathBuf,
        /// Write to this new file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Write an inclusion proof of one record (JSON): checkable with the public key alone.
    Prove {
        log: PathBuf,
        /// The record's sequence number.
        seq: u64,
        /// Write to this new file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check an inclusion proof against the trusted public key; exit 0 if it holds, 1 if not.
    VerifyProof {
        proof: PathBuf,
        /// The trusted public key file (default: as for `verify`).
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Make a signing key: audit.key (secret, mode 0600) and audit.pub; never overwrites.
    Keygen {
        /// Where to put them (default: $OFFSWITCH_HOME/audit or ~/.local/share/offswitch/audit).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let mut out = super::stdout();
    match command {
        Command::Verify {
            log,
            public_key,
            witness,
        } => verify(&log, public_key.as_deref(), witness, &mut out),
        Command::Show {
            log,
            kind,
            from,
            limit,
        } => show(&log, kind.as_deref(), from, limit, &mut out),
        Command::Export { log, out: file } => match file {
            Some(file) => export(&log, &mut create_new(&file)?),
            None => export(&log, &mut out),
        },
        Command::Prove {
            log,
            seq,
            out: file,
        } => {
            let proof = offswitch_audit::prove(&log, seq).map_err(audit_error)?;
            let mut json = serde_json::to_string_pretty(&proof)?;
            json.push('\n');
            match file {
                Some(file) => create_new(&file)?.write_all(json.as_bytes())?,
                None => out.write_all(json.as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::VerifyProof { proof, public_key } => {
            verify_proof(&proof, public_key.as_deref(), &mut out)
        }
        Command::Keygen { dir } => keygen(dir, &mut out),
    }
}

/// The command with its output going to `out`.
pub fn verify(
    log: &Path,
    public_key: Option<&Path>,
    witness: Option<PathBuf>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let trusted_public_key = public_key
        .map(offswitch_audit::load_public_key)
        .transpose()
        .map_err(audit_error)?;
    if let Some(witness) = &witness
        && !witness.is_file()
    {
        return Err(super::invalid_input(format!(
            "witness file {} does not exist",
            witness.display()
        )));
    }
    let report = offswitch_audit::verify(
        log,
        &VerifyOptions {
            trusted_public_key,
            witness,
        },
    )
    .map_err(audit_error)?;
    out.write_all(report.render().as_bytes())?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn show(
    log: &Path,
    kind: Option<&str>,
    from: u64,
    limit: u64,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let header = offswitch_audit::read_header(log).map_err(audit_error)?;
    writeln!(
        out,
        "log {}  created {}  key {}",
        header.log_id,
        printable(&header.created),
        hex_key(&header.public_key)
    )?;
    writeln!(
        out,
        "metadata {}",
        printable(&serde_json::to_string(&header.metadata)?)
    )?;
    writeln!(
        out,
        "(not verified here: `offswitch audit verify` checks the log)\n"
    )?;
    let mut shown = 0;
    let mut more = 0;
    let mut bad_lines = 0;
    for record in offswitch_audit::records(log).map_err(audit_error)? {
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                writeln!(out, "  {}", printable(&unlocated(&error, log)))?;
                bad_lines += 1;
                continue;
            }
        };
        if record.seq < from || kind.is_some_and(|kind| kind != record.kind) {
            continue;
        }
        if shown == limit {
            more += 1;
            continue;
        }
        if shown == 0 {
            writeln!(out, "{:>8}  {:<27}  {:<16}  body", "seq", "time", "kind")?;
        }
        shown += 1;
        let mut body = serde_json::to_string(&record.body)?;
        if body.len() > 160 {
            let cut = (0..=157)
                .rev()
                .find(|&i| body.is_char_boundary(i))
                .unwrap_or(0);
            body.truncate(cut);
            body.push_str("...");
        }
        writeln!(
            out,
            "{:>8}  {:<27}  {:<16}  {}",
            record.seq,
            printable(&record.time),
            printable(&record.kind),
            printable(&body)
        )?;
    }
    if shown == 0 {
        writeln!(
            out,
            "(no records{})",
            if kind.is_some() || from > 0 {
                " match"
            } else {
                ""
            }
        )?;
    }
    if more > 0 {
        writeln!(out, "... {more} more records (--limit, --from)")?;
    }
    Ok(if bad_lines > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn export(log: &Path, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let header = offswitch_audit::read_header(log).map_err(audit_error)?;
    let log_id = header.log_id.to_string();
    let mut bad_lines = 0;
    for record in offswitch_audit::records(log).map_err(audit_error)? {
        match record {
            Ok(record) => {
                let line = serde_json::json!({
                    "log_id": log_id,
                    "seq": record.seq,
                    "time": record.time,
                    "kind": record.kind,
                    "body": record.body,
                });
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
            }
            Err(error) => {
                // The export stays JSON Lines; what could not be read is said on stderr.
                let _ = writeln!(std::io::stderr(), "skipped: {error}");
                bad_lines += 1;
            }
        }
    }
    out.flush()?;
    Ok(if bad_lines > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn verify_proof(
    path: &Path,
    public_key: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let text = read_bounded(path, 16 << 20)?;
    let proof: InclusionProof = serde_json::from_str(&text).map_err(|error| {
        super::invalid_input(format!(
            "{} is not an audit inclusion proof: {error}",
            path.display()
        ))
    })?;
    let key = match public_key {
        Some(path) => offswitch_audit::load_public_key(path).map_err(audit_error)?,
        None => match offswitch_audit::default_public_key() {
            Ok(Some((key, _))) => key,
            Ok(None) | Err(AuditError::NoHome) => {
                writeln!(
                    out,
                    "proof NOT verified: no trusted public key (give --public-key, or keep one in the default key directory)"
                )?;
                return Ok(ExitCode::FAILURE);
            }
            Err(error) => return Err(audit_error(error)),
        },
    };
    match offswitch_audit::verify_proof(&proof, &key) {
        Ok(()) => {
            let record = proof.record()?;
            writeln!(
                out,
                "proof holds: record {} ({}, {}) is among the {} records of checkpoint {} of log {}, signed by {}",
                record.seq,
                printable(&record.kind),
                printable(&record.time),
                proof.checkpoint.tree_size,
                proof.checkpoint.number,
                proof.log_id,
                hex_key(&key)
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            writeln!(out, "proof does NOT hold: {error}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}

fn keygen(dir: Option<PathBuf>, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(dir) => dir,
        None => offswitch_audit::default_key_dir().map_err(audit_error)?,
    };
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|error| anyhow::anyhow!("failed to create {}: {error}", dir.display()))?;
    }
    let secret = dir.join(offswitch_audit::SECRET_KEY_FILE);
    let public = dir.join(offswitch_audit::PUBLIC_KEY_FILE);
    let key = AuditKey::generate().map_err(audit_error)?;
    key.save(&secret, &public).map_err(audit_error)?;
    writeln!(out, "secret key  {}", secret.display())?;
    writeln!(out, "public key  {}", public.display())?;
    writeln!(out, "{}", hex_key(&key.public_key()))?;
    Ok(ExitCode::SUCCESS)
}

/// The library's errors with their exit codes: a file that is not a log, a missing file, a
/// key file that is wrong or in the way are the user's (2); no home directory is the machine's
/// (3); the rest (a log that does not verify, so cannot be proven; IO) are failures (1).
fn audit_error(error: AuditError) -> anyhow::Error {
    match &error {
        AuditError::NotAnAuditLog { .. }
        | AuditError::AlreadyExists { .. }
        | AuditError::BadKeyFile { .. }
        | AuditError::KeyFilePermissions { .. }
        | AuditError::NoSuchRecord { .. }
        | AuditError::RecordNotSealed { .. } => super::invalid_input(error.to_string()),
        AuditError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            super::invalid_input(error.to_string())
        }
        AuditError::NoHome => super::missing_prerequisite(error.to_string()),
        _ => anyhow::Error::new(error),
    }
}

/// A new file for output; an existing one is not replaced.
fn create_new(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::AlreadyExists {
                super::invalid_input(format!("refusing to overwrite {}", path.display()))
            } else {
                anyhow::anyhow!("failed to create {}: {error}", path.display())
            }
        })
}

fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|error| {
        super::invalid_input(format!("failed to open {}: {error}", path.display()))
    })?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|error| {
            super::invalid_input(format!("failed to read {}: {error}", path.display()))
        })?;
    if text.len() as u64 > limit {
        return Err(super::invalid_input(format!(
            "{} is larger than {limit} bytes: not an inclusion proof",
            path.display()
        )));
    }
    Ok(text)
}

fn hex_key(key: &VerifyingKey) -> String {
    key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A read error located by line only, without the log's path, which the user just typed.
fn unlocated(error: &AuditError, log: &Path) -> String {
    error
        .to_string()
        .replace(&format!("{}:", log.display()), "line ")
}

/// Text from the log as it may be shown on a terminal: a hostile log's control characters
/// (escape sequences, C1 controls) are written as escapes, never sent to the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(
            printable("a\u{1b}]0;x\u{7}b\u{9b}c"),
            "a\\u{1b}]0;x\\u{7}b\\u{9b}c"
        );
        assert_eq!(printable("plain é"), "plain é");
    }
}
