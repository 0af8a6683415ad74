//! One module per subcommand. Each is owned by the crate it fronts and stays thin.

pub mod audit;
pub mod compare;
pub mod export;
pub mod guard;
pub mod merge;
pub mod models;
pub mod proxy;
pub mod report;
pub mod run;
pub mod runs;
pub mod sandbox;
pub mod scenarios;
pub mod serve_model;
pub mod show;
pub mod view;

/// Refuse to write an output over a database: the run database itself (`--db`), or any file
/// that is an SQLite database (a mistyped `--csv offswitch.db` would lose every run).
pub fn not_a_database(out: &std::path::Path, db: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let same = match (std::fs::metadata(out), std::fs::metadata(db)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let mut head = [0u8; 16];
    let sqlite = std::fs::File::open(out)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == b"SQLite format 3\0";
    if same || sqlite {
        return Err(invalid_input(format!(
            "refusing to write over {}: it is {}",
            out.display(),
            if same {
                "the run database"
            } else {
                "an SQLite database"
            }
        )));
    }
    Ok(())
}

/// Invalid input from the user: a scenario file, an argument, a run id, a damaged database.
pub const EXIT_INVALID_INPUT: u8 = 2;
/// Something the machine lacks: the model file, pip, privileges.
pub const EXIT_MISSING_PREREQUISITE: u8 = 3;

/// An error tagged with its exit code, for `anyhow` chains.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

pub fn invalid_input(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code: EXIT_INVALID_INPUT,
        message: message.into(),
    })
}

pub fn missing_prerequisite(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code: EXIT_MISSING_PREREQUISITE,
        message: message.into(),
    })
}

/// Standard output closed by its reader (`offswitch scenarios list | head -1`): 128 + SIGPIPE,
/// what a shell reports for a Unix tool that the signal stopped.
pub const EXIT_STDOUT_CLOSED: u8 = 141;

/// Standard output for a command's results. Rust ignores SIGPIPE, so a write after the reader
/// went away fails with `BrokenPipe`, which `println!` turns into a panic. Every command writes
/// through this instead: the error is tagged [`StdoutClosed`], and `main` ends the process
/// quietly with [`EXIT_STDOUT_CLOSED`], as a Unix tool stopped by SIGPIPE would.
pub struct Stdout(std::io::StdoutLock<'static>);

pub fn stdout() -> Stdout {
    Stdout(std::io::stdout().lock())
}

/// The marker inside the `io::Error` of a write to a closed standard output.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

impl std::io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(tag_closed)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(tag_closed)
    }
}

fn tag_closed(error: std::io::Error) -> std::io::Error {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        error
    }
}

/// Whether `error` is a write to a closed standard output (see [`Stdout`]).
pub fn is_stdout_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

pub fn exit_code_for(error: &anyhow::Error) -> u8 {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Exit>())
        .map_or(1, |exit| exit.code)
}
