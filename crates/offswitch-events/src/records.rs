//! The records `bpf/offswitch.bpf.c` writes into its ring buffer (`bpf/events.h` is their
//! definition), decoded field by field at fixed offsets with bounds checks: a short or
//! malformed record is dropped and counted, never trusted.

/// Record kinds (`enum ev_kind`).
pub(crate) const EV_EXEC: u32 = 1;
pub(crate) const EV_SIGNAL: u32 = 3;
pub(crate) const EV_NET: u32 = 4;
pub(crate) const EV_EXIT: u32 = 5;
pub(crate) const EV_FORK: u32 = 6;
pub(crate) const EV_REFUSED: u32 = 7;

/// Indices of the `stats` array (`enum stat_idx`).
pub(crate) const STAT_LOST_UNATTRIBUTED: u32 = 18;

/// `enum net_op`.
const NOP_CONNECT: u32 = 1;
const NOP_BIND: u32 = 2;
const NOP_LISTEN: u32 = 3;
const NOP_SENDMSG: u32 = 4;

const HEADER: usize = 80;
const EXEC: usize = 216;
const SIGNAL: usize = 120;
const NET: usize = 224;
const EXIT: usize = 88;
const FORK: usize = 88;
const REFUSED: usize = 144;
const ARGS_FLAG_TRUNCATED: u32 = 1;

/// The fields every record starts with.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub kind: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub time_ns: u64,
    /// The watched ancestor cgroup of the acting task (the sandbox), 0 when it is outside.
    pub sandbox: u64,
    /// Host pid of the acting process.
    pub tgid: u32,
    /// Its pid and its parent's pid in its own PID namespace (0 when unknown).
    pub ns_pid: u32,
    pub ns_ppid: u32,
}

/// Where a file lives: its filesystem (kernel `s_dev`, as major and minor) and its path from
/// that filesystem's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FsPath {
    pub major: u32,
    pub minor: u32,
    /// From the filesystem's root, `/` separated, starting with `/`.
    pub path: String,
    pub truncated: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Record {
    Exec {
        header: Header,
        /// The name execve got.
        filename: String,
        /// The file actually mapped (the interpreter for a script).
        file: Option<FsPath>,
        /// The caller's working directory.
        cwd: Option<FsPath>,
        argv: Vec<String>,
        argv_truncated: bool,
    },
    Fork {
        header: Header,
        child_tgid: u32,
        child_ns_pid: u32,
    },
    Exit {
        header: Header,
        /// `task->exit_code`: the wait status.
        status: i32,
    },
    Signal {
        header: Header,
        target_tgid: u32,
        signal: i32,
        /// `signal_generate`'s result: 0 delivered, 1 ignored, 2 already pending, 3
        /// overflow, 4 lost info.
        result: i32,
    },
    Net {
        header: Header,
        op: &'static str,
        address: String,
        protocol: &'static str,
    },
    /// A file-changing syscall the kernel refused.
    Refused {
        header: Header,
        syscall: i64,
        /// The positive errno.
        errno: i64,
        /// The path arguments as the process passed them.
        path: Option<String>,
        path2: Option<String>,
        cwd: Option<FsPath>,
    },
}

impl Record {
    pub(crate) fn header(&self) -> &Header {
        match self {
            Record::Exec { header, .. }
            | Record::Fork { header, .. }
            | Record::Exit { header, .. }
            | Record::Signal { header, .. }
            | Record::Net { header, .. }
            | Record::Refused { header, .. } => header,
        }
    }
}

/// Decode one ring-buffer record; `None` when it is malformed.
pub(crate) fn decode(bytes: &[u8]) -> Option<Record> {
    let header = Header {
        kind: u32_at(bytes, 0)?,
        time_ns: u64_at(bytes, 16)?,
        sandbox: u64_at(bytes, 32)?,
        tgid: u32_at(bytes, 44)?,
        ns_pid: u32_at(bytes, 52)?,
        ns_ppid: u32_at(bytes, 56)?,
    };
    let length = u32_at(bytes, 4)? as usize;
    if length < HEADER || length > bytes.len() {
        return None;
    }
    let bytes = &bytes[..length];
    match header.kind {
        EV_EXEC if bytes.len() >= EXEC => decode_exec(header, bytes),
        EV_FORK if bytes.len() >= FORK => Some(Record::Fork {
            header,
            child_tgid: u32_at(bytes, 80)?,
            child_ns_pid: u32_at(bytes, 84)?,
        }),
        EV_EXIT if bytes.len() >= EXIT => Some(Record::Exit {
            header,
            status: u32_at(bytes, 80)? as i32,
        }),
        EV_SIGNAL if bytes.len() >= SIGNAL => Some(Record::Signal {
            header,
            target_tgid: u32_at(bytes, 84)?,
            signal: u32_at(bytes, 92)? as i32,
            result: u32_at(bytes, 112)? as i32,
        }),
        EV_NET if bytes.len() >= NET => decode_net(header, bytes),
        EV_REFUSED if bytes.len() >= REFUSED => decode_refused(header, bytes),
        _ => None,
    }
}

fn decode_exec(header: Header, bytes: &[u8]) -> Option<Record> {
    let args_len = u32_at(bytes, 92)? as usize;
    let args_flags = u32_at(bytes, 96)?;
    let lengths = [
        u16_at(bytes, 100)? as usize, // filename
        u16_at(bytes, 102)? as usize, // interp
        u16_at(bytes, 104)? as usize, // exe path
        u16_at(bytes, 106)? as usize, // file path
        u16_at(bytes, 108)? as usize, // cwd path
    ];
    let mut offset = EXEC;
    let mut take = |length: usize| -> Option<&[u8]> {
        let piece = bytes.get(offset..offset + length)?;
        offset += length;
        Some(piece)
    };
    let filename = c_string(take(lengths[0])?);
    let _interp = take(lengths[1])?;
    let _exe = take(lengths[2])?;
    let file_path = take(lengths[3])?;
    let cwd_path = take(lengths[4])?;
    let argv_bytes = take(args_len)?;
    // A path of no components is a filesystem's root (a working directory at the top of the
    // home volume): the id says whether the kernel gave a file at all.
    let present = |id: &[u8]| u32_at(id, 16).is_some_and(|dev| dev != 0);
    let file = present(&bytes[152..184]).then(|| fs_path(&bytes[152..184], file_path));
    let cwd = present(&bytes[184..216]).then(|| fs_path(&bytes[184..216], cwd_path));
    let mut argv: Vec<String> = argv_bytes
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    // The argument area ends with a NUL, which leaves an empty last piece.
    if argv.last().is_some_and(String::is_empty) {
        argv.pop();
    }
    Some(Record::Exec {
        header,
        filename,
        file,
        cwd,
        argv,
        argv_truncated: args_flags & ARGS_FLAG_TRUNCATED != 0,
    })
}

fn decode_refused(header: Header, bytes: &[u8]) -> Option<Record> {
    let syscall = u64_at(bytes, 80)? as i64;
    let errno = -(u64_at(bytes, 88)? as i64);
    let lengths = [
        u16_at(bytes, 104)? as usize,
        u16_at(bytes, 106)? as usize,
        u16_at(bytes, 108)? as usize,
    ];
    let mut offset = REFUSED;
    let mut take = |length: usize| -> Option<&[u8]> {
        let piece = bytes.get(offset..offset + length)?;
        offset += length;
        Some(piece)
    };
    let path = take(lengths[0])?;
    let path2 = take(lengths[1])?;
    let cwd_path = take(lengths[2])?;
    let present = |id: &[u8]| u32_at(id, 16).is_some_and(|dev| dev != 0);
    let cwd = present(&bytes[112..144]).then(|| fs_path(&bytes[112..144], cwd_path));
    Some(Record::Refused {
        header,
        syscall,
        errno,
        path: (!path.is_empty()).then(|| c_string(path)),
        path2: (!path2.is_empty()).then(|| c_string(path2)),
        cwd,
    })
}

fn decode_net(header: Header, bytes: &[u8]) -> Option<Record> {
    let op = match u32_at(bytes, 80)? {
        NOP_CONNECT => "connect",
        NOP_BIND => "bind",
        NOP_LISTEN => "listen",
        NOP_SENDMSG => "sendto",
        _ => return None,
    };
    let family = u16_at(bytes, 84)?;
    let port = u16_at(bytes, 86)?;
    let sock_type = u16_at(bytes, 88)?;
    let addr = bytes.get(96..112)?;
    let (address, protocol) = match family as i32 {
        libc::AF_INET => (
            format!("{}.{}.{}.{}:{port}", addr[0], addr[1], addr[2], addr[3]),
            if sock_type as i32 == libc::SOCK_DGRAM {
                "udp"
            } else {
                "tcp"
            },
        ),
        libc::AF_INET6 => {
            let ip = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(addr).ok()?);
            (
                format!("[{ip}]:{port}"),
                if sock_type as i32 == libc::SOCK_DGRAM {
                    "udp"
                } else {
                    "tcp"
                },
            )
        }
        libc::AF_UNIX => (c_string(bytes.get(112..220)?), "unix"),
        _ => (format!("family {family}"), "other"),
    };
    Some(Record::Net {
        header,
        op,
        address,
        protocol,
    })
}

/// A path written leaf first, NUL-terminated component by component (`c\0b\0a\0` is
/// `/a/b/c`), with its `struct file_id`.
fn fs_path(id: &[u8], leaf_first: &[u8]) -> FsPath {
    let dev = u32_at(id, 16).unwrap_or(0);
    let flags = u32_at(id, 24).unwrap_or(0);
    let components: Vec<String> = leaf_first
        .split(|&b| b == 0)
        .filter(|c| !c.is_empty())
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let mut path = String::new();
    for component in components.iter().rev() {
        path.push('/');
        path.push_str(component);
    }
    if path.is_empty() {
        path.push('/');
    }
    FsPath {
        // The kernel's internal encoding: MKDEV(major, minor) = major << 20 | minor.
        major: dev >> 20,
        minor: dev & 0xf_ffff,
        path,
        truncated: flags & 1 != 0,
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        bytes.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_or_malformed_records_are_dropped() {
        assert!(super::decode(&[]).is_none());
        assert!(super::decode(&[1, 0, 0, 0]).is_none());
        // A header claiming more bytes than there are.
        let mut record = vec![0u8; 80];
        record[0] = 5;
        record[4] = 200;
        assert!(super::decode(&record).is_none());
        // An exec record whose string lengths point past its end.
        let mut exec = vec![0u8; 216];
        exec[0] = 1;
        exec[4..8].copy_from_slice(&216u32.to_ne_bytes());
        exec[100..102].copy_from_slice(&500u16.to_ne_bytes());
        assert!(super::decode(&exec).is_none());
    }

    #[test]
    fn paths_are_written_leaf_first() {
        let mut id = vec![0u8; 32];
        id[16..20].copy_from_slice(&((254u32 << 20) | 3).to_ne_bytes());
        let path = super::fs_path(&id, b"kill\0.t\0");
        assert_eq!(path.path, "/.t/kill");
        assert_eq!((path.major, path.minor), (254, 3));
        assert_eq!(super::fs_path(&id, b"").path, "/");
    }
}
