//! The writer: appends records and signed checkpoints to a new log, never rewriting a line, and
//! hands each checkpoint to the witness. Syncing and witnessing run on a thread of their own, in
//! checkpoint order, so that appending never waits for them.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use crate::error::AuditError;
use crate::format::{
    Checkpoint, FORMAT, HeaderV1, LogId, MAX_BODY_BYTES, MAX_METADATA_BYTES, format_time,
    genesis_link, kind_is_valid, next_link, record_line_from_entry, write_record_entry,
};
use crate::key::{AuditKey, sync_dir};
use crate::merkle::{Frontier, Hash, leaf_hash};

/// How a log is written.
#[derive(Clone, Debug)]
pub struct Options {
    /// A checkpoint after every this many records (0: only [`AuditWriter::checkpoint`] and
    /// [`AuditWriter::finish`] write them). A crash loses the proof of at most this many.
    pub checkpoint_every: u64,
    /// A second place every checkpoint is written to.
    pub witness: Option<Witness>,
    /// Free-form metadata for the header (the session's name, the scenario, ...), at most
    /// 64 KiB as JSON.
    pub metadata: serde_json::Value,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            witness: None,
            metadata: serde_json::json!({}),
        }
    }
}

/// Where checkpoints are copied, so that a log rewritten or cut after a checkpoint cannot match
/// them. It should be somewhere the log's attacker cannot write: another disk, another host.
#[derive(Clone, Debug)]
pub enum Witness {
    /// Append each checkpoint line to this file (created if missing; synced each time).
    File(PathBuf),
    /// Run a program with each checkpoint line on its standard input.
    Command(WitnessCommand),
}

/// A witness program: run once per checkpoint, in its own process group, with the checkpoint
/// line (JSON and a newline) on stdin and stdout and stderr discarded. It must exit 0 within
/// `timeout`; when it does not, its whole process group is killed.
#[derive(Clone, Debug)]
pub struct WitnessCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub timeout: Duration,
}

/// Appends to one log. `Send`, so a task can own it (or share it behind a mutex).
pub struct AuditWriter {
    path: PathBuf,
    file: File,
    key: AuditKey,
    log_id: LogId,
    /// Syncs the log and hands checkpoints to the witness, in order, on its own thread.
    sealer: Sealer,
    checkpoint_every: u64,
    frontier: Frontier,
    chain_head: Hash,
    since_checkpoint: u64,
    next_checkpoint: u64,
    /// A write failed part-way: the file may end with a partial line, so nothing more is
    /// appended after it.
    broken: bool,
    entry: Vec<u8>,
}

impl std::fmt::Debug for AuditWriter {
    // The key stays out of it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("path", &self.path)
            .field("log_id", &self.log_id)
            .field("records", &self.frontier.size())
            .field("next_checkpoint", &self.next_checkpoint)
            .finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Create a new log at `path` (never an existing file), write its header and checkpoint 0,
    /// which signs the header before any record.
    pub fn create(path: &Path, key: &AuditKey, options: Options) -> Result<Self, AuditError> {
        let metadata_size = serde_json::to_vec(&options.metadata)
            .map(|json| json.len())
            .unwrap_or(usize::MAX);
        if metadata_size > MAX_METADATA_BYTES {
            return Err(AuditError::MetadataTooLarge {
                size: metadata_size,
                limit: MAX_METADATA_BYTES,
            });
        }
        let log_id = LogId::generate().map_err(|error| AuditError::Random(error.to_string()))?;
        let header = HeaderV1 {
            format: FORMAT.into(),
            log_id: log_id.to_string(),
            created: format_time(SystemTime::now()),
            public_key: hex::encode(key.public_key().as_bytes()),
            metadata: options.metadata,
        };
        let header_line = serde_json::to_vec(&header).expect("a header serialises");
        // The witness is opened first, so a witness that cannot be written leaves no log behind.
        let witness = options.witness.map(WitnessSink::open).transpose()?;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    AuditError::AlreadyExists {
                        path: path.to_owned(),
                    }
                } else {
                    io_error("create", path, source)
                }
            })?;
        let mut line = header_line.clone();
        line.push(b'\n');
        file.write_all(&line)
            .map_err(|source| io_error("write", path, source))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let sealer = Sealer::start(&file, witness, path)?;
        let mut writer = Self {
            path: path.to_owned(),
            file,
            key: key.clone(),
            log_id,
            sealer,
            checkpoint_every: options.checkpoint_every,
            frontier: Frontier::new(),
            chain_head: genesis_link(&header_line),
            since_checkpoint: 0,
            next_checkpoint: 0,
            broken: false,
            entry: Vec::new(),
        };
        writer.write_checkpoint(false, Wait::Yes)?;
        Ok(writer)
    }

    /// The log's id.
    pub fn log_id(&self) -> LogId {
        self.log_id
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append a record and return its sequence number (0, 1, 2, ...). The line reaches the
    /// operating system before this returns; every `checkpoint_every` records a checkpoint is
    /// written, and synced and witnessed on the sealer's thread (an append never waits for the
    /// disk or the witness, unless two checkpoints are still waiting). A failure there is
    /// returned by the next append, whose record is in the log all the same: a failed witness
    /// as [`AuditError::Witness`], a failed sync by breaking the writer.
    pub fn append(&mut self, kind: &str, body: &serde_json::Value) -> Result<u64, AuditError> {
        if self.broken {
            return Err(AuditError::WriterBroken {
                path: self.path.clone(),
            });
        }
        if !kind_is_valid(kind) {
            return Err(AuditError::BadKind { kind: kind.into() });
        }
        let body_json = serde_json::to_vec(body).expect("a JSON value serialises");
        if body_json.len() > MAX_BODY_BYTES {
            return Err(AuditError::BodyTooLarge {
                size: body_json.len(),
                limit: MAX_BODY_BYTES,
            });
        }
        let seq = self.frontier.size();
        let time = format_time(SystemTime::now());
        write_record_entry(&mut self.entry, seq, &time, kind, &body_json);
        let leaf = leaf_hash(&self.entry);
        let link = next_link(&self.chain_head, &leaf);
        let line = record_line_from_entry(&self.entry, &link);
        self.write_line(&line)?;
        self.frontier.push(leaf);
        self.chain_head = link;
        self.since_checkpoint += 1;
        if self.checkpoint_every > 0 && self.since_checkpoint >= self.checkpoint_every {
            self.write_checkpoint(false, Wait::No)?;
        }
        // An earlier checkpoint's sync or witness failed on the sealer's thread: this record
        // is in the log, and the caller learns it now.
        self.sealer_failure()?;
        Ok(seq)
    }

    /// Write, sync and witness a checkpoint of every record so far; returns once it is synced
    /// and witnessed (the checkpoints `append` writes every `checkpoint_every` records are
    /// synced and witnessed on the sealer's thread, so that no append waits for the disk or
    /// the witness; a failure there is returned by a later call).
    pub fn checkpoint(&mut self) -> Result<Checkpoint, AuditError> {
        self.write_checkpoint(false, Wait::Yes)
    }

    /// Close the log with a final checkpoint (`closed: true`). A writer dropped without this
    /// leaves the log like a crash does: records after the last checkpoint unsealed.
    pub fn finish(mut self) -> Result<Checkpoint, AuditError> {
        self.write_checkpoint(true, Wait::Yes)
    }

    /// The first failure of the sealer's thread not reported yet.
    fn sealer_failure(&mut self) -> Result<(), AuditError> {
        let failed = lock(&self.sealer.failed).take();
        match failed {
            None => Ok(()),
            Some(error) => Err(self.sealing_failed(error)),
        }
    }

    /// A checkpoint's sync or witness failed: a failed sync breaks the writer (the log's end
    /// is not known to be on disk); a failed witness does not (the checkpoint is in the log).
    fn sealing_failed(&mut self, error: AuditError) -> AuditError {
        if !matches!(error, AuditError::Witness { .. }) {
            self.broken = true;
        }
        error
    }

    /// The sealer's thread is gone (it only ends with the writer, so a panic): nothing more is
    /// known to reach the disk.
    fn sealer_gone(&mut self) -> AuditError {
        self.broken = true;
        AuditError::Io {
            action: "sync",
            path: self.path.clone(),
            source: std::io::Error::other("the checkpoint thread stopped"),
        }
    }

    fn write_checkpoint(&mut self, closed: bool, wait: Wait) -> Result<Checkpoint, AuditError> {
        if self.broken {
            return Err(AuditError::WriterBroken {
                path: self.path.clone(),
            });
        }
        let mut checkpoint = Checkpoint {
            log_id: self.log_id,
            number: self.next_checkpoint,
            tree_size: self.frontier.size(),
            root: self.frontier.root(),
            chain_head: self.chain_head,
            time: format_time(SystemTime::now()),
            closed,
            signature: [0; 64],
        };
        checkpoint.signature = self.key.sign(&checkpoint.signed_message());
        let mut line = checkpoint.to_line().into_bytes();
        line.push(b'\n');
        self.write_line(&line)?;
        self.next_checkpoint += 1;
        self.since_checkpoint = 0;
        let (done, result) = match wait {
            Wait::Yes => {
                let (sender, receiver) = std::sync::mpsc::sync_channel(1);
                (Some(sender), Some(receiver))
            }
            Wait::No => (None, None),
        };
        let seal = Seal {
            number: checkpoint.number,
            line,
            done,
        };
        if self.sealer.jobs.send(seal).is_err() {
            return Err(self.sealer_gone());
        }
        if let Some(result) = result {
            let outcome = result.recv();
            // Everything before this checkpoint was sealed first (one thread, in order): a
            // failure of one of those is reported first.
            self.sealer_failure()?;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(self.sealing_failed(error)),
                Err(_) => {
                    return Err(self.sealer_gone());
                }
            }
        }
        Ok(checkpoint)
    }

    fn write_line(&mut self, line: &[u8]) -> Result<(), AuditError> {
        // One write of the whole line on an O_APPEND file: a reader never sees a record
        // interleaved with another, and a failure leaves at most one partial last line.
        self.file.write_all(line).map_err(|source| {
            self.broken = true;
            io_error("write", &self.path, source)
        })
    }
}

/// Whether a checkpoint's writer waits for it to be synced and witnessed.
#[derive(Clone, Copy)]
enum Wait {
    Yes,
    No,
}

/// One checkpoint to seal: the log synced up to it, then its line to the witness.
struct Seal {
    number: u64,
    line: Vec<u8>,
    /// Where a waiting writer gets the outcome.
    done: Option<std::sync::mpsc::SyncSender<Result<(), AuditError>>>,
}

/// The thread that syncs the log and feeds the witness, one checkpoint after another. A sync
/// and a witness (a file synced, or a command run) take milliseconds to seconds; a guard or a
/// proxy appending a record must not wait for them. At most [`SEALS_QUEUED`] checkpoints wait:
/// past that an append waits, so a slow disk or witness bounds the backlog.
struct Sealer {
    jobs: std::sync::mpsc::SyncSender<Seal>,
    /// A failure of a checkpoint nobody waited for, for the writer's next call.
    failed: std::sync::Arc<std::sync::Mutex<Option<AuditError>>>,
}

const SEALS_QUEUED: usize = 2;

impl Sealer {
    fn start(file: &File, witness: Option<WitnessSink>, path: &Path) -> Result<Sealer, AuditError> {
        let log = file
            .try_clone()
            .map_err(|source| io_error("open a second descriptor of", path, source))?;
        let (jobs, receiver) = std::sync::mpsc::sync_channel::<Seal>(SEALS_QUEUED);
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let shared = std::sync::Arc::clone(&failed);
        let log_path = path.to_owned();
        std::thread::Builder::new()
            .name("offswitch-audit-seal".into())
            .spawn(move || {
                let mut witness = witness;
                let mut broken = false;
                // Ends when the writer is gone (its sender dropped) and the queue is empty.
                for seal in receiver {
                    let result = if broken {
                        Err(AuditError::WriterBroken {
                            path: log_path.clone(),
                        })
                    } else {
                        seal_one(&log, &log_path, witness.as_mut(), &seal)
                    };
                    if let Err(AuditError::Io { .. }) = &result {
                        broken = true;
                    }
                    match (seal.done, result) {
                        (Some(done), result) => {
                            let _ = done.send(result);
                        }
                        (None, Err(error)) => {
                            lock(&shared).get_or_insert(error);
                        }
                        (None, Ok(())) => {}
                    }
                }
            })
            .map_err(|source| io_error("start the checkpoint thread for", path, source))?;
        Ok(Sealer { jobs, failed })
    }
}

fn seal_one(
    log: &File,
    path: &Path,
    witness: Option<&mut WitnessSink>,
    seal: &Seal,
) -> Result<(), AuditError> {
    log.sync_data()
        .map_err(|source| io_error("sync", path, source))?;
    if let Some(witness) = witness {
        witness
            .send(&seal.line)
            .map_err(|reason| AuditError::Witness {
                number: seal.number,
                reason,
            })?;
    }
    Ok(())
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum WitnessSink {
    File { path: PathBuf, file: File },
    Command(WitnessCommand),
}

impl WitnessSink {
    fn open(witness: Witness) -> Result<Self, AuditError> {
        match witness {
            Witness::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|source| io_error("open the witness file", &path, source))?;
                Ok(Self::File { path, file })
            }
            Witness::Command(command) => Ok(Self::Command(command)),
        }
    }

    fn send(&mut self, line: &[u8]) -> Result<(), String> {
        match self {
            Self::File { path, file } => file
                .write_all(line)
                .and_then(|()| file.sync_data())
                .map_err(|error| format!("failed to write {}: {error}", path.display())),
            Self::Command(command) => run_witness_command(command, line),
        }
    }
}

fn run_witness_command(command: &WitnessCommand, line: &[u8]) -> Result<(), String> {
    let name = command.program.display();
    let mut child = std::process::Command::new(&command.program)
        .args(&command.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|error| format!("failed to start {name}: {error}"))?;
    let group = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    let kill_group = || {
        if let Some(group) = group {
            // The group may be gone already; nothing to do then.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A checkpoint line is far smaller than a pipe's buffer, so this does not block. A
        // program that exits without reading is judged by its exit status alone.
        let _ = stdin.write_all(line);
    }
    let deadline = Instant::now() + command.timeout;
    let exited = loop {
        // Wait without reaping: while the leader is an unreaped zombie its pid, the group's id,
        // cannot be reused, so killing the group below never reaches another process.
        let waited = match group {
            Some(pid) => rustix::process::waitid(
                rustix::process::WaitId::Pid(pid),
                rustix::process::WaitIdOptions::EXITED
                    | rustix::process::WaitIdOptions::NOHANG
                    | rustix::process::WaitIdOptions::NOWAIT,
            )
            .map(|status| status.is_some())
            .map_err(std::io::Error::from),
            None => child.try_wait().map(|status| status.is_some()),
        };
        match waited {
            Ok(true) => break true,
            Ok(false) if Instant::now() >= deadline => break false,
            Ok(false) => std::thread::sleep(Duration::from_millis(2)),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                kill_group();
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("failed to wait for {name}: {error}"));
            }
        }
    };
    // Whatever it left running in its group goes with it; on a timeout, it too.
    kill_group();
    let status = child
        .wait()
        .map_err(|error| format!("failed to wait for {name}: {error}"))?;
    if !exited {
        return Err(format!(
            "{name} did not finish within {:.1} s and was killed",
            command.timeout.as_secs_f64()
        ));
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<AuditWriter>();
    }
}
