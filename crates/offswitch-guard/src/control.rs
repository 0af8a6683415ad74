//! The control plane of guard sessions: one Unix socket per session in a directory only the
//! operator (root, or the user running the guard) can enter, outside every sandbox (no
//! sandbox sees the host's `/run` or the operator's runtime directory). A request is one JSON
//! line (`{"op": "status"}`), the answer one JSON line. Each connection's peer is checked by
//! its kernel credentials: only root and the guard's own user are served.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Bytes of one request line read at most.
const MAX_REQUEST: u64 = 4096;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What an operator can ask of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Status,
    Pause,
    Resume,
    /// Stop the agent: the answer comes once zero processes are counted.
    Stop,
    /// The operator is there (the dead-man's switch).
    Heartbeat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestLine {
    op: Op,
}

/// A request for the session, with where its answer goes.
pub struct Request {
    pub op: Op,
    /// The peer's uid, for the audit log.
    pub uid: u32,
    pub reply: oneshot::Sender<serde_json::Value>,
    /// Resolves once the answer is written to the peer (or cannot be): a session that ends
    /// right after answering (a stop) waits for it, so the operator gets the answer.
    pub written: oneshot::Receiver<()>,
}

/// The directory of the sessions' sockets: `$OFFSWITCH_GUARD_DIR`, else `/run/offswitch/guard`
/// for root, else `$XDG_RUNTIME_DIR/offswitch/guard`, else `/tmp/offswitch-guard-<uid>`.
pub fn control_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OFFSWITCH_GUARD_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let uid = rustix::process::getuid().as_raw();
    if uid == 0 {
        return PathBuf::from("/run/offswitch/guard");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("offswitch/guard"),
        None => PathBuf::from(format!("/tmp/offswitch-guard-{uid}")),
    }
}

/// Make the directory (mode 0700) and check that it is ours and nobody else's: a directory
/// someone else made first could hold their socket under a session's name.
pub fn prepare_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let uid = rustix::process::getuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid {
        return Err(format!(
            "{} is not a directory owned by this user (uid {uid}): refusing to put control sockets there",
            dir.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("making {} private: {e}", dir.display()))?;
    }
    Ok(())
}

/// The socket of session `name` in `dir`.
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Serve session `name`'s socket; requests arrive on the returned channel. Fails when a live
/// session already has the name.
pub async fn serve(dir: &Path, name: &str) -> Result<(PathBuf, mpsc::Receiver<Request>), String> {
    prepare_dir(dir)?;
    let path = socket_path(dir, name);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(format!("a guard session named {name} is already running"));
        }
        // A socket left by a session that died.
        let _ = std::fs::remove_file(&path);
    }
    let listener =
        UnixListener::bind(&path).map_err(|e| format!("listening on {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("making {} private: {e}", path.display()))?;
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let _ = answer(stream, sender).await;
            });
        }
    });
    Ok((path, receiver))
}

async fn answer(stream: UnixStream, sender: mpsc::Sender<Request>) -> Result<(), String> {
    let peer = rustix::net::sockopt::socket_peercred(&stream).map_err(|e| e.to_string())?;
    let uid = peer.uid.as_raw();
    let own = rustix::process::getuid().as_raw();
    let (read, mut write) = stream.into_split();
    if uid != 0 && uid != own {
        let _ = write.write_all(b"{\"error\":\"not allowed\"}\n").await;
        return Ok(());
    }
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let answer = match serde_json::from_str::<RequestLine>(line.trim()) {
        Ok(request) => {
            let (reply, answer) = oneshot::channel();
            let (written, written_receiver) = oneshot::channel();
            let sent = sender
                .send(Request {
                    op: request.op,
                    uid,
                    reply,
                    written: written_receiver,
                })
                .await;
            let answer = match sent {
                Ok(()) => answer.await.ok(),
                Err(_) => None,
            }
            .unwrap_or_else(|| serde_json::json!({"error": "the session has ended"}));
            let result = write_answer(&mut write, &answer).await;
            let _ = written.send(());
            return result;
        }
        Err(error) => serde_json::json!({"error": format!("bad request: {error}")}),
    };
    write_answer(&mut write, &answer).await
}

async fn write_answer(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    answer: &serde_json::Value,
) -> Result<(), String> {
    let mut text = answer.to_string();
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| e.to_string())
}

/// Ask session `name` in `dir` for `op`; its answer. `stop` may take as long as the kill.
pub async fn request(dir: &Path, name: &str, op: Op) -> Result<serde_json::Value, String> {
    let path = socket_path(dir, name);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|e| format!("no guard session {name} ({}: {e})", path.display()))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::json!({ "op": op }).to_string();
    line.push('\n');
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| format!("asking session {name}: {e}"))?;
    let mut answer = String::new();
    let timeout = if op == Op::Stop {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    };
    tokio::time::timeout(
        timeout,
        BufReader::new(read.take(1 << 20)).read_line(&mut answer),
    )
    .await
    .map_err(|_| format!("session {name} did not answer"))?
    .map_err(|e| format!("reading session {name}'s answer: {e}"))?;
    serde_json::from_str(answer.trim())
        .map_err(|e| format!("session {name} answered something unreadable: {e}"))
}

/// Every session with a socket in `dir`, and its status (or why none came).
pub async fn list(dir: &Path) -> Vec<(String, Result<serde_json::Value, String>)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_suffix(".sock"))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    let mut sessions = Vec::new();
    for name in names {
        let status = request(dir, &name, Op::Status).await;
        sessions.push((name, status));
    }
    sessions
}
