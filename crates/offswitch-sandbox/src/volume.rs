//! Size-limited homes: every home its own filesystem, so a sandbox that fills it gets ENOSPC
//! and the host's disk (where the run database lives) keeps its space.
//!
//! As root, a home is an ext4 filesystem in an image file next to it, loop-mounted on the
//! home's path. The image is `fallocate`d to its full size up front, so the space is reserved
//! on the host when the trial starts, or the trial fails to start; nothing the sandbox does
//! later can take more of the host's disk. A home of its own also keeps the host's path out of
//! the sandbox: `/proc/self/mountinfo` shows a bind's path within its filesystem, which for a
//! volume is `/`. Where `mkfs.ext4` or loop devices are missing, the home is a tmpfs of the same
//! size instead (memory, not disk), with a warning; without root it is a plain directory with
//! no limit, also with a warning.
//!
//! Homes are managed by path, not by a handle, so that a process killed mid-run leaves nothing
//! a later `remove_home` cannot clean up: the image of the home at `dir/name` is
//! `dir/.name.volume`.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::SandboxError;

/// The size limit of a home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimit {
    /// Bytes of file data and metadata.
    pub bytes: u64,
}

impl DiskLimit {
    /// The default limit of every home: 1 GiB.
    pub const DEFAULT: DiskLimit = DiskLimit { bytes: 1 << 30 };
    /// The smallest limit a home can have (ext4 needs room for its own metadata).
    pub const MIN_BYTES: u64 = 16 << 20;

    /// Files the home can hold: one per 4 KiB, so a flood of empty files meets the limit as
    /// surely as one large file does.
    pub fn inodes(&self) -> u64 {
        (self.bytes / 4096).max(4096)
    }
}

impl Default for DiskLimit {
    fn default() -> DiskLimit {
        DiskLimit::DEFAULT
    }
}

/// How a home was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeKind {
    /// ext4 in a preallocated image on the host's disk: the limit is enforced and reserved.
    Ext4Volume,
    /// A tmpfs of the limit's size: enforced, but it uses memory.
    Tmpfs,
    /// A plain directory: no limit (not root).
    Directory,
}

/// Free space the host's filesystem keeps after a home's image is reserved, for the run
/// database and everything else on it.
const HOST_RESERVE_BYTES: u64 = 1 << 30;

/// Create an empty home at `path` limited to `limit`. `path` must not exist.
pub fn create_home(path: &Path, limit: DiskLimit) -> Result<HomeKind, SandboxError> {
    let io_error = |context: String| move |source: io::Error| SandboxError::Io { context, source };
    if limit.bytes < DiskLimit::MIN_BYTES {
        return Err(SandboxError::Unsupported(format!(
            "a home's disk limit must be at least {} MiB, not {} bytes",
            DiskLimit::MIN_BYTES >> 20,
            limit.bytes
        )));
    }
    std::fs::create_dir(path).map_err(io_error(format!(
        "failed to create home {}",
        path.display()
    )))?;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        // `Sandbox::create` says so in its one warning about running unprivileged.
        return Ok(HomeKind::Directory);
    }
    match ext4_volume(path, limit) {
        Ok(()) => Ok(HomeKind::Ext4Volume),
        Err(Ext4Error::Unavailable(why)) => {
            static TMPFS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            crate::sandbox::warn_once(
                &TMPFS,
                &format!("homes are tmpfs (memory) instead of ext4 volumes on disk: {why}"),
            );
            let options = format!(
                "size={},nr_inodes={},mode=0755",
                limit.bytes,
                limit.inodes()
            );
            mount(
                c"tmpfs",
                path,
                c"tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV,
                &options,
            )
            .map_err(io_error(format!(
                "failed to mount a tmpfs home at {}",
                path.display()
            )))?;
            Ok(HomeKind::Tmpfs)
        }
        Err(Ext4Error::Failed(error)) => {
            let _ = std::fs::remove_dir(path);
            Err(error)
        }
    }
}

/// Remove a home and everything of it: its files, its mount and its image. Safe on a home
/// left by a killed process, on a plain directory, and on a path that does not exist.
pub fn remove_home(path: &Path) -> io::Result<()> {
    if is_mount_point(path) {
        // Lazily: a process still holding a file in it (there should be none; the sandbox is
        // dead) cannot keep the home's path busy. The loop device detaches itself when the
        // last reference goes (autoclear).
        let c_path = cstring(path)?;
        // SAFETY: umount2 on a valid C string.
        if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    match std::fs::remove_file(image_path(path)) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Remove `dir` and everything under it, first releasing every home mounted anywhere inside
/// it (a run's directory of homes left by a killed process). `remove_dir_all` alone would
/// empty the volumes and leave them mounted, their images held by their loop devices.
pub fn remove_homes_under(dir: &Path) -> io::Result<()> {
    for point in mount_points_under(dir) {
        remove_home(&point)?;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Mount points strictly under `dir` in this process's mount namespace, deepest first.
fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(canonical) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|point| point.starts_with(&canonical) && point != &canonical)
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    points.dedup();
    points
}

/// A mountinfo path field with its octal escapes (`\040` for a space) undone.
fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(value) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    std::ffi::OsString::from_vec(out)
}

/// Turn a home into a plain directory at the same path holding a copy of its files, and
/// release its volume; for homes kept after a run for inspection. A plain directory is left
/// as it is.
pub fn keep_home(path: &Path) -> io::Result<()> {
    if !is_mount_point(path) {
        return Ok(());
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("a home has a name"))?;
    let mut copy_name = std::ffi::OsString::from(".");
    copy_name.push(name);
    copy_name.push(".kept");
    let copy = path.with_file_name(copy_name);
    let _ = std::fs::remove_dir_all(&copy);
    // `cp -a` copies symlinks as links (never following them out of the hostile home), keeps
    // modes, owners, times and hard links; the volume bounds how much there is to copy.
    let status = Command::new("cp")
        .arg("-a")
        .arg("--no-target-directory")
        .arg(path)
        .arg(&copy)
        .status()?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&copy);
        return Err(io::Error::other(format!(
            "cp -a of {} failed ({status})",
            path.display()
        )));
    }
    remove_home(path)?;
    std::fs::rename(&copy, path)
}

/// Whether the filesystem of a home made by `create_home` is full: less than 1 MiB or 0.1%
/// of it free, or no free inodes. `None` when `path` is not a home of its own.
pub(crate) fn volume_full(path: &Path) -> Option<bool> {
    let c_path = cstring(path).ok()?;
    // SAFETY: statvfs into a zeroed buffer.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let size = stat.f_blocks.saturating_mul(stat.f_frsize);
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let margin = (size / 1000).max(1 << 20);
    Some(free < margin || stat.f_favail == 0)
}

/// Whether `path` is the root of a mount (its device differs from its parent's, or it is the
/// same directory as its parent).
pub(crate) fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(own), Ok(parent)) = (
        std::fs::symlink_metadata(path),
        std::fs::metadata(path.join("..")),
    ) else {
        return false;
    };
    own.is_dir() && (own.dev() != parent.dev() || own.ino() == parent.ino())
}

/// Where the image of the home at `path` lives: `.<name>.volume` beside it.
fn image_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".volume");
    path.with_file_name(name)
}

enum Ext4Error {
    /// The tools or the kernel support are missing here: fall back.
    Unavailable(String),
    /// A real failure (no space to reserve, an I/O error): the home cannot be made.
    Failed(SandboxError),
}

fn ext4_volume(path: &Path, limit: DiskLimit) -> Result<(), Ext4Error> {
    static TOOLS: OnceLock<Result<(), String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            for tool in ["mkfs.ext4", "mount"] {
                let found = Command::new(tool)
                    .arg("-V")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                if found.is_err() {
                    return Err(format!("`{tool}` is not installed"));
                }
            }
            if !Path::new("/dev/loop-control").exists() {
                return Err("no loop devices (/dev/loop-control is missing)".into());
            }
            Ok(())
        })
        .clone()
        .map_err(Ext4Error::Unavailable)?;
    let image = image_path(path);
    let failed = |context: String| {
        move |source: io::Error| Ext4Error::Failed(SandboxError::Io { context, source })
    };
    let result = (|| {
        reserve(&image, limit.bytes, path)?;
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
            .arg("-N")
            .arg(limit.inodes().to_string())
            // nodiscard: a discard would punch holes in the preallocated image and give the
            // reserved space back to the host.
            .args(["-E", "lazy_itable_init=1,nodiscard"])
            .arg(&image)
            .output()
            .map_err(failed("failed to run mkfs.ext4".into()))?;
        if !mkfs.status.success() {
            return Err(Ext4Error::Failed(SandboxError::Io {
                context: format!("mkfs.ext4 of {} failed", image.display()),
                source: io::Error::other(String::from_utf8_lossy(&mkfs.stderr).into_owned()),
            }));
        }
        let mounted = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
            .arg(&image)
            .arg(path)
            .output()
            .map_err(failed("failed to run mount".into()))?;
        if !mounted.status.success() {
            let stderr = String::from_utf8_lossy(&mounted.stderr).trim().to_owned();
            return Err(Ext4Error::Unavailable(format!(
                "mounting an ext4 image on a loop device failed: {stderr}"
            )));
        }
        // mkfs leaves lost+found; the agent's home starts empty.
        let _ = std::fs::remove_dir(path.join("lost+found"));
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&image);
    }
    result
}

/// Reserve `bytes` for the image on the host's filesystem, refusing when that would leave it
/// with less than `HOST_RESERVE_BYTES` free.
fn reserve(image: &Path, bytes: u64, home: &Path) -> Result<(), Ext4Error> {
    use std::os::fd::AsRawFd;
    let io_error = |context: String| {
        move |source: io::Error| Ext4Error::Failed(SandboxError::Io { context, source })
    };
    let directory = home.parent().unwrap_or(Path::new("/"));
    let c_directory = cstring(directory).map_err(io_error("a home path".into()))?;
    // SAFETY: statvfs into a zeroed buffer.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_directory.as_ptr(), &mut stat) } != 0 {
        return Err(io_error(format!("failed to stat {}", directory.display()))(
            io::Error::last_os_error(),
        ));
    }
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    let keep = HOST_RESERVE_BYTES;
    if available < bytes.saturating_add(keep) {
        return Err(Ext4Error::Failed(SandboxError::Io {
            context: format!(
                "not enough free disk for a {} MiB home under {} ({} MiB free, {} MiB kept free)",
                bytes >> 20,
                directory.display(),
                available >> 20,
                keep >> 20
            ),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        }));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .map_err(io_error(format!("failed to create {}", image.display())))?;
    // SAFETY: fallocate on a file we own.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) } != 0 {
        return Err(io_error(format!(
            "failed to reserve {} MiB for {}",
            bytes >> 20,
            image.display()
        ))(io::Error::last_os_error()));
    }
    Ok(())
}

fn mount(
    source: &std::ffi::CStr,
    target: &Path,
    kind: &std::ffi::CStr,
    flags: libc::c_ulong,
    options: &str,
) -> io::Result<()> {
    let c_target = cstring(target)?;
    let c_options = CString::new(options).map_err(io::Error::other)?;
    // SAFETY: mount with valid C strings.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            c_target.as_ptr(),
            kind.as_ptr(),
            flags,
            c_options.as_ptr().cast(),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}
