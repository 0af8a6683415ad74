//! A running sandbox seen from the host, where nothing inside can signal, slow or lie to the
//! looker: its TCP listeners (read in its network namespace), the processes of its cgroup that
//! hold them, what those processes run, files resolved as a process inside resolves them, and
//! HTTP requests to its servers from sockets this process holds.
//!
//! Everything read here was made or can be changed by the agent, so every read is bounded,
//! every path is resolved inside the sandbox's root (an absolute symbolic link made inside
//! never reaches a host file), and every failure is data for the caller.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use offswitch_sandbox::Sandbox;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use sha2::{Digest, Sha256};

/// Bytes read of a process's argv or environment, of a log, or of an HTTP body.
pub(crate) const READ_LIMIT: usize = 256 * 1024;
/// Bytes read of a socket table (about 150 bytes per socket).
const TABLE_LIMIT: usize = 8 << 20;
/// Symbolic links followed in resolving one path, as the kernel's own bound.
const MAX_SYMLINKS: usize = 40;

/// A TCP port listened on inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listener {
    pub(crate) port: u16,
    /// Where to connect to reach it (loopback for a wildcard bind).
    pub(crate) address: IpAddr,
    /// Host pids of the sandbox's processes holding one of its sockets, lowest first.
    pub(crate) holders: Vec<u32>,
}

/// Every listening TCP port of the sandbox and its holders, by port.
pub(crate) fn listeners(sandbox: &Sandbox) -> Result<Vec<Listener>, String> {
    let tables = sandbox
        .in_network(|| {
            // The table of the namespace this thread is in, not the process's.
            ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
                .map(|table| read_bounded(table, TABLE_LIMIT))
        })
        .map_err(|e| format!("entering the sandbox's network: {e}"))?;
    let mut sockets: BTreeMap<u16, (IpAddr, Vec<u64>)> = BTreeMap::new();
    for (table, v6) in tables.into_iter().zip([false, true]) {
        // A missing tcp6 table (no IPv6) is no listener, not an error.
        let Ok(table) = table else { continue };
        for (address, port, inode) in parse_listening(&String::from_utf8_lossy(&table), v6) {
            sockets
                .entry(port)
                .or_insert((address, Vec::new()))
                .1
                .push(inode);
        }
    }
    let owners = socket_owners(sandbox, sockets.values().flat_map(|(_, inodes)| inodes));
    Ok(sockets
        .into_iter()
        .map(|(port, (address, inodes))| {
            let mut holders: Vec<u32> = inodes
                .iter()
                .flat_map(|inode| owners.get(inode).into_iter().flatten().copied())
                .collect();
            holders.sort_unstable();
            holders.dedup();
            Listener {
                port,
                address,
                holders,
            }
        })
        .collect())
}

/// `(address to connect to, port, socket inode)` of every listening socket in a
/// `/proc/net/tcp{,6}` table.
fn parse_listening(table: &str, v6: bool) -> Vec<(IpAddr, u16, u64)> {
    let mut found = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // State 0A is LISTEN.
        if fields.len() < 10 || fields[3] != "0A" {
            continue;
        }
        let Some((address, port)) = fields[1].rsplit_once(':') else {
            continue;
        };
        let (Ok(port), Ok(inode)) = (u16::from_str_radix(port, 16), fields[9].parse()) else {
            continue;
        };
        if let Some(address) = connect_address(address, v6) {
            found.push((address, port, inode));
        }
    }
    found
}

/// The address a listener bound to `hex` (as `/proc/net/tcp` prints it: each 32-bit word in
/// the host's byte order) is reached at: loopback for a wildcard.
fn connect_address(hex: &str, v6: bool) -> Option<IpAddr> {
    let raw = hex::decode(hex).ok()?;
    let bytes: Vec<u8> = raw
        .chunks(4)
        .flat_map(|word| {
            let word: [u8; 4] = word.try_into().unwrap_or_default();
            u32::from_le_bytes(word).to_be_bytes()
        })
        .collect();
    if v6 {
        let octets: [u8; 16] = bytes.try_into().ok()?;
        let address = Ipv6Addr::from(octets);
        Some(match address.to_ipv4_mapped() {
            Some(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(v4) => IpAddr::V4(v4),
            None if address.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            None => IpAddr::V6(address),
        })
    } else {
        let octets: [u8; 4] = bytes.try_into().ok()?;
        let address = Ipv4Addr::from(octets);
        Some(IpAddr::V4(if address.is_unspecified() {
            Ipv4Addr::LOCALHOST
        } else {
            address
        }))
    }
}

/// Socket inode -> host pids of the sandbox's processes holding it. Every descriptor of every
/// process of the sandbox's cgroup is looked at: a cap would let a process hide a listener
/// behind many others. Sockets the harness itself holds in the sandbox's network (a service
/// of a mechanic) have no holder here.
fn socket_owners<'a>(
    sandbox: &Sandbox,
    inodes: impl Iterator<Item = &'a u64>,
) -> BTreeMap<u64, Vec<u32>> {
    let wanted: std::collections::HashSet<u64> = inodes.copied().collect();
    let mut owners: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut pids: Vec<u32> = sandbox
        .host_pids()
        .into_iter()
        .filter_map(|pid| u32::try_from(pid).ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inode| inode.parse::<u64>().ok())
            else {
                continue;
            };
            if wanted.contains(&inode) {
                let holders = owners.entry(inode).or_default();
                if !holders.contains(&pid) {
                    holders.push(pid);
                }
            }
        }
    }
    owners
}

/// A process's argv (at most `READ_LIMIT` bytes of it).
pub(crate) fn argv(pid: u32) -> Result<Vec<String>, String> {
    let raw = read_bounded(&format!("/proc/{pid}/cmdline"), READ_LIMIT)
        .map_err(|e| format!("cannot read the process: {e}"))?;
    Ok(split_nul(&raw))
}

/// A process's environment (at most `READ_LIMIT` bytes of it); empty when unreadable.
pub(crate) fn environment(pid: u32) -> BTreeMap<String, String> {
    let raw = read_bounded(&format!("/proc/{pid}/environ"), READ_LIMIT).unwrap_or_default();
    split_nul(&raw)
        .into_iter()
        .filter_map(|item| {
            item.split_once('=')
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// A process's working directory, as the sandbox names it.
pub(crate) fn cwd(pid: u32) -> Result<String, String> {
    std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map(|path| path.to_string_lossy().into_owned())
        .map_err(|e| format!("cannot read the process: {e}"))
}

/// The size of the program a process runs (the mapped file itself, whatever its name).
pub(crate) fn program_size(pid: u32) -> Result<u64, String> {
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .map(|meta| meta.len())
        .map_err(|e| format!("cannot read the process: {e}"))
}

/// `(device, inode)` of the program a process runs: which file, whatever its name.
pub(crate) fn program_id(pid: u32) -> Result<(u64, u64), String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .map(|meta| (meta.dev(), meta.ino()))
        .map_err(|e| format!("cannot read the process: {e}"))
}

/// The sha256 of the program a process runs.
pub(crate) fn program_sha256(pid: u32) -> Result<String, String> {
    let file = std::fs::File::open(format!("/proc/{pid}/exe"))
        .map_err(|e| format!("cannot read the process's program: {e}"))?;
    sha256(file).map_err(|e| format!("cannot read the process's program: {e}"))
}

/// The sha256 of everything `reader` yields.
pub(crate) fn sha256(mut reader: impl Read) -> std::io::Result<String> {
    let mut digest = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            return Ok(hex::encode(digest.finalize()));
        }
        digest.update(&buffer[..read]);
    }
}

/// A file of the sandbox, found as a process inside would find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// Its path with every symbolic link resolved, as the sandbox names it.
    pub(crate) real: String,
    /// `(device, inode)`: which file it is, whatever its name.
    pub(crate) id: (u64, u64),
}

/// Resolve the absolute `path` inside the directory `root` stands for (the sandbox's root):
/// component by component, following each symbolic link as the sandbox would (an absolute
/// target starts again at `root`, `..` stops at it), without ever leaving `root`.
pub(crate) fn resolve_in(root: impl AsFd, path: &str) -> Result<Resolved, String> {
    let fail = |e: rustix::io::Errno| format!("cannot resolve {path}: {e}");
    let mut pending: VecDeque<String> = components(path).collect();
    let mut real: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            real.pop();
            continue;
        }
        real.push(part);
        let candidate = real.join("/");
        let fd = open_in(&root, &candidate, OFlags::PATH | OFlags::NOFOLLOW).map_err(fail)?;
        let stat = rustix::fs::fstat(&fd).map_err(fail)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Symlink {
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(format!("cannot resolve {path}: too many symbolic links"));
        }
        real.pop();
        let target = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(fail)?;
        let target = target.to_string_lossy().into_owned();
        if target.starts_with('/') {
            real.clear();
        }
        for part in components(&target).collect::<Vec<_>>().into_iter().rev() {
            pending.push_front(part);
        }
    }
    let fd = open_in(&root, &real.join("/"), OFlags::PATH).map_err(fail)?;
    let stat = rustix::fs::fstat(&fd).map_err(fail)?;
    Ok(Resolved {
        real: format!("/{}", real.join("/")),
        id: (stat.st_dev, stat.st_ino),
    })
}

/// The regular file at the absolute `path` inside `root`, open for reading, and its size.
fn open_regular_in(root: impl AsFd, path: &str) -> Result<(std::fs::File, u64), String> {
    let relative = components(path).collect::<Vec<_>>().join("/");
    let fd = open_in(&root, &relative, OFlags::RDONLY | OFlags::NONBLOCK)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| format!("cannot open {path}: {e}"))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(format!("{path} is not a regular file"));
    }
    Ok((std::fs::File::from(fd), stat.st_size as u64))
}

/// The sha256 and size of the regular file at the absolute `path` inside `root`.
pub(crate) fn digest_in(root: impl AsFd, path: &str) -> Result<(u64, String), String> {
    let (file, size) = open_regular_in(root, path)?;
    let digest = sha256(file).map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok((size, digest))
}

/// `openat2` of `relative` beneath `root`, resolved as if `root` were `/`, never through a
/// magic link of `/proc` (which would lead out).
fn open_in(root: &impl AsFd, relative: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let relative = if relative.is_empty() { "." } else { relative };
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    // Every component but a trailing link is a plain directory when called from
    // `resolve_in`; elsewhere links are followed, inside the root.
    let resolve = if flags.contains(OFlags::NOFOLLOW) {
        resolve | ResolveFlags::NO_SYMLINKS
    } else {
        resolve
    };
    rustix::fs::openat2(
        root,
        relative,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    )
}

fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .map(str::to_owned)
}

fn split_nul(raw: &[u8]) -> Vec<String> {
    let mut parts: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    if parts.last().is_some_and(String::is_empty) {
        parts.pop();
    }
    parts
}

fn read_bounded(path: &str, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit as u64)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// An HTTP request to a server inside the sandbox.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) address: IpAddr,
    pub(crate) port: u16,
    pub(crate) post: Option<serde_json::Value>,
    pub(crate) path: String,
    pub(crate) timeout: Duration,
}

/// Send every request at once from this (host) process, over sockets created in the
/// sandbox's network namespace: the servers inside see an ordinary client on their loopback,
/// and nothing inside can signal or stall the client beyond each request's timeout. Each
/// answer is the JSON body of a 200 response (at most `READ_LIMIT` bytes), or why not.
pub(crate) async fn http_json(
    sandbox: &Arc<Sandbox>,
    requests: Vec<Request>,
) -> Result<Vec<Result<serde_json::Value, String>>, String> {
    let sandbox = Arc::clone(sandbox);
    crate::blocking::spawn(move || {
        sandbox.in_network(move || {
            // A runtime on this thread alone: every socket is created here, in the sandbox's
            // network namespace (the address is an IP, so no resolver thread is involved).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("no runtime for the requests: {e}"))?;
            let client = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("no HTTP client: {e}"))?;
            Ok(runtime.block_on(futures::future::join_all(
                requests.iter().map(|request| send(&client, request)),
            )))
        })
    })
    .await
    .map_err(|e| format!("the request task failed: {e}"))?
    .map_err(|e| format!("entering the sandbox's network: {e}"))?
}

async fn send(client: &reqwest::Client, request: &Request) -> Result<serde_json::Value, String> {
    let host = match request.address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let url = format!("http://{host}:{}{}", request.port, request.path);
    let builder = match &request.post {
        Some(body) => client.post(&url).json(body),
        None => client.get(&url),
    };
    let exchange = async {
        let mut response = builder.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > READ_LIMIT {
                return Err(format!("the reply is longer than {READ_LIMIT} bytes"));
            }
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("HTTP {}: {text}", status.as_u16()));
        }
        serde_json::from_slice(&body).map_err(|e| format!("the reply is no JSON: {e}"))
    };
    tokio::time::timeout(request.timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no reply within {} s",
                request.timeout.as_secs_f32()
            ))
        })
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn listening_sockets_are_read_from_the_kernels_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F41 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4244 1 0000000000000000 100 0 0 10 0
   3: 0200000A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4245 1 0000000000000000 100 0 0 10 0
";
        let six = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F42 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5000 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F43 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5001 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000001000000:1F44 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5002 1 0000000000000000 100 0 0 10 0
";
        let mut found: Vec<String> = parse_listening(table, false)
            .into_iter()
            .chain(parse_listening(six, true))
            .map(|(address, port, inode)| format!("{address} {port} {inode}"))
            .collect();
        found.sort();
        expect![[r#"
            10.0.0.2 80 4245
            127.0.0.1 8000 4242
            127.0.0.1 8001 4243
            127.0.0.1 8003 5001
            ::1 8002 5000
            ::1 8004 5002"#]]
        .assert_eq(&found.join("\n"));
    }

    /// A root directory with links that would lead out of it if followed by the host.
    #[test]
    fn paths_resolve_inside_the_root_never_out_of_it() {
        use std::os::unix::fs::symlink;
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        std::fs::create_dir_all(root.join("home/agent/model")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("home/agent/model/w.gguf"), b"weights").unwrap();
        std::fs::write(root.join("etc/hostname"), b"inside").unwrap();
        symlink("/home/agent/model", root.join("home/agent/via")).unwrap();
        symlink("../../../../../../etc/hostname", root.join("home/agent/up")).unwrap();
        symlink("/etc/hostname", root.join("home/agent/abs")).unwrap();
        symlink("loop", root.join("home/agent/loop")).unwrap();
        let dir = std::fs::File::open(&root).unwrap();
        let show = |path: &str| match resolve_in(&dir, path) {
            Ok(resolved) => {
                let content = open_regular_in(&dir, path)
                    .and_then(|(file, _)| {
                        let mut text = String::new();
                        file.take(64)
                            .read_to_string(&mut text)
                            .map_err(|e| e.to_string())?;
                        Ok(text)
                    })
                    .unwrap_or_else(|e| e);
                format!("{path} -> {} ({content})", resolved.real)
            }
            Err(error) => error,
        };
        let lines: Vec<String> = [
            "/home/agent/via/w.gguf",
            "/home/agent/up",
            "/home/agent/abs",
            "/home/agent/./via/../model/w.gguf",
            "/home/agent/loop",
            "/home/agent/none",
        ]
        .into_iter()
        .map(show)
        .collect();
        expect![[r#"
            /home/agent/via/w.gguf -> /home/agent/model/w.gguf (weights)
            /home/agent/up -> /etc/hostname (inside)
            /home/agent/abs -> /etc/hostname (inside)
            /home/agent/./via/../model/w.gguf -> /home/agent/model/w.gguf (weights)
            cannot resolve /home/agent/loop: too many symbolic links
            cannot resolve /home/agent/none: No such file or directory (os error 2)"#]]
        .assert_eq(&lines.join("\n"));
        let same = resolve_in(&dir, "/home/agent/via/w.gguf").unwrap().id;
        assert_eq!(
            resolve_in(&dir, "/home/agent/model/w.gguf").unwrap().id,
            same
        );
    }

    #[test]
    fn argv_splits_on_nul() {
        assert_eq!(split_nul(b"a\0b c\0\0"), vec!["a", "b c", ""]);
        assert_eq!(split_nul(b""), Vec::<String>::new());
    }
}
