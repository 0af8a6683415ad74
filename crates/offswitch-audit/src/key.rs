//! The log's signing key: Ed25519, generated from the operating system's random source, kept in
//! a secret key file (mode 0600, never overwritten) beside a public key file that verifiers use.
//!
//! The key must live where the agent cannot reach it (outside every sandbox): whoever holds it
//! can sign anything. The default directory is `$OFFSWITCH_HOME/audit`, else
//! `~/.local/share/offswitch/audit`; unlike the model cache it is data to keep, not a cache.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use crate::error::AuditError;
use crate::format::parse_hex;

/// The secret key file's name in a key directory.
pub const SECRET_KEY_FILE: &str = "audit.key";
/// The public key file's name in a key directory.
pub const PUBLIC_KEY_FILE: &str = "audit.pub";

const SECRET_KEY_FORMAT: &str = "offswitch.audit.key/1";
const PUBLIC_KEY_FORMAT: &str = "offswitch.audit.pub/1";
/// Key files are a line of JSON; anything longer is not one.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// An Ed25519 signing key for audit logs.
#[derive(Clone)]
pub struct AuditKey {
    signing: SigningKey,
}

impl std::fmt::Debug for AuditKey {
    // Never the secret, even in a debug print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("public_key", &hex::encode(self.public_key().as_bytes()))
            .finish_non_exhaustive()
    }
}

impl AuditKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, AuditError> {
        use rand::TryRngCore as _;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|error| AuditError::Random(error.to_string()))?;
        let key = Self::from_seed(seed);
        seed.zeroize();
        Ok(key)
    }

    /// The key with this 32-byte Ed25519 seed (for tests and for keys kept elsewhere).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Load a secret key file. One that others can read is refused, as ssh refuses one.
    pub fn load(secret_path: &Path) -> Result<Self, AuditError> {
        let text = Zeroizing::new(read_small(secret_path)?);
        let mode = std::fs::metadata(secret_path)
            .map_err(|source| io_error("read", secret_path, source))?
            .mode();
        if mode & 0o077 != 0 {
            return Err(AuditError::KeyFilePermissions {
                path: secret_path.to_owned(),
                mode: mode & 0o777,
            });
        }
        let bad = |reason: String| AuditError::BadKeyFile {
            path: secret_path.to_owned(),
            reason,
        };
        let stored: SecretKeyFileV1 = serde_json::from_str(&text)
            .map_err(|error| bad(format!("not an audit secret key file: {error}")))?;
        if stored.format != SECRET_KEY_FORMAT {
            return Err(bad(format!(
                "unknown key format {:?}, expected {SECRET_KEY_FORMAT:?}",
                stored.format
            )));
        }
        let mut seed = parse_hex::<32>(&stored.secret_key)
            .ok_or_else(|| bad("secret_key is not 64 lowercase hex digits".into()))?;
        let key = Self::from_seed(seed);
        seed.zeroize();
        let mut stored = stored;
        stored.secret_key.zeroize();
        if hex::encode(key.public_key().as_bytes()) != stored.public_key {
            return Err(bad(
                "public_key is not the secret key's public key: the file was edited".into(),
            ));
        }
        Ok(key)
    }

    /// Write the secret key file (mode 0600) and the public key file. Neither may exist: a key
    /// that signed logs is never replaced by accident.
    pub fn save(&self, secret_path: &Path, public_path: &Path) -> Result<(), AuditError> {
        for path in [secret_path, public_path] {
            if path.symlink_metadata().is_ok() {
                return Err(AuditError::AlreadyExists {
                    path: path.to_owned(),
                });
            }
        }
        let secret = SecretKeyFileV1 {
            format: SECRET_KEY_FORMAT.into(),
            public_key: hex::encode(self.public_key().as_bytes()),
            secret_key: hex::encode(self.signing.to_bytes()),
        };
        // The secret's text is wiped when dropped, as the signing key wipes itself.
        let mut text =
            Zeroizing::new(serde_json::to_string(&secret).expect("a key file serialises"));
        text.push('\n');
        write_new_file(secret_path, text.as_bytes(), 0o600)?;
        save_public_key(&self.public_key(), public_path)
    }

    /// The key in [`default_key_dir`], created (with its directory, mode 0700) on first use.
    /// Two processes creating it at once end up with the same key: the file appears whole or
    /// not at all, and the loser loads the winner's.
    pub fn load_or_create_default() -> Result<Self, AuditError> {
        let dir = default_key_dir()?;
        Self::load_or_create_in(&dir)
    }

    /// [`Self::load_or_create_default`] in another directory.
    pub fn load_or_create_in(dir: &Path) -> Result<Self, AuditError> {
        let secret_path = dir.join(SECRET_KEY_FILE);
        let public_path = dir.join(PUBLIC_KEY_FILE);
        if secret_path.symlink_metadata().is_ok() {
            let key = Self::load(&secret_path)?;
            // A process that died between writing the two files left no public key; verifiers
            // need it.
            if public_path.symlink_metadata().is_err() {
                match save_public_key(&key.public_key(), &public_path) {
                    Ok(()) | Err(AuditError::AlreadyExists { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            return Ok(key);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| io_error("create", dir, source))?;
        let key = Self::generate()?;
        match key.save(&secret_path, &public_path) {
            Ok(()) => Ok(key),
            // Another process made it first: use its key (it writes the public key file).
            Err(AuditError::AlreadyExists { .. }) if secret_path.symlink_metadata().is_ok() => {
                Self::load(&secret_path)
            }
            Err(error) => Err(error),
        }
    }
}

/// `$OFFSWITCH_HOME/audit`, else `~/.local/share/offswitch/audit`.
pub fn default_key_dir() -> Result<PathBuf, AuditError> {
    if let Some(home) = std::env::var_os("OFFSWITCH_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join("audit"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(AuditError::NoHome)?;
    Ok(PathBuf::from(home).join(".local/share/offswitch/audit"))
}

/// The public key in [`default_key_dir`], if there is one, with its path.
pub fn default_public_key() -> Result<Option<(VerifyingKey, PathBuf)>, AuditError> {
    let path = default_key_dir()?.join(PUBLIC_KEY_FILE);
    if path.symlink_metadata().is_err() {
        return Ok(None);
    }
    load_public_key(&path).map(|key| Some((key, path)))
}

/// Read a public key file.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let text = read_small(path)?;
    let bad = |reason: String| AuditError::BadKeyFile {
        path: path.to_owned(),
        reason,
    };
    let stored: PublicKeyFileV1 = match serde_json::from_str(&text) {
        Ok(stored) => stored,
        Err(_) if text.contains(SECRET_KEY_FORMAT) => {
            return Err(bad(format!(
                "this is a secret key file; give its {PUBLIC_KEY_FILE} instead"
            )));
        }
        Err(error) => return Err(bad(format!("not an audit public key file: {error}"))),
    };
    if stored.format != PUBLIC_KEY_FORMAT {
        return Err(bad(format!(
            "unknown key format {:?}, expected {PUBLIC_KEY_FORMAT:?}",
            stored.format
        )));
    }
    let bytes = parse_hex::<32>(&stored.public_key)
        .ok_or_else(|| bad("public_key is not 64 lowercase hex digits".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("public_key is not an Ed25519 point".into()))
}

/// Write a public key file; an existing file is not overwritten.
pub fn save_public_key(key: &VerifyingKey, path: &Path) -> Result<(), AuditError> {
    let stored = PublicKeyFileV1 {
        format: PUBLIC_KEY_FORMAT.into(),
        public_key: hex::encode(key.as_bytes()),
    };
    let mut text = serde_json::to_string(&stored).expect("a key file serialises");
    text.push('\n');
    write_new_file(path, text.as_bytes(), 0o644)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeyFileV1 {
    format: String,
    public_key: String,
    secret_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyFileV1 {
    format: String,
    public_key: String,
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn read_small(path: &Path) -> Result<String, AuditError> {
    let file = std::fs::File::open(path).map_err(|source| io_error("open", path, source))?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| io_error("read", path, source))?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(AuditError::BadKeyFile {
            path: path.to_owned(),
            reason: format!("longer than {MAX_KEY_FILE_BYTES} bytes: not a key file"),
        });
    }
    Ok(text)
}

/// Create `path` with `contents` whole or not at all, never replacing an existing file: the
/// contents go to a temporary file in the same directory, synced, then hard-linked to `path`
/// (which fails if `path` exists, atomically), and the directory is synced.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), AuditError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per call, so concurrent writers (threads or processes) never share one.
    let temporary = dir.join(format!(
        ".{name}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)
            .map_err(|source| io_error("create", &temporary, source))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(|source| io_error("write", &temporary, source))?;
        std::fs::hard_link(&temporary, path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                AuditError::AlreadyExists {
                    path: path.to_owned(),
                }
            } else {
                io_error("create", path, source)
            }
        })
    })();
    let _ = std::fs::remove_file(&temporary);
    result?;
    sync_dir(&dir)
}

/// Make a new directory entry durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io_error("sync", dir, source))
}
