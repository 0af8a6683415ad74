//! Integration tests of offswitch-embedded: the model cache on disk, and the backend on the real
//! model (skipped, with the reason printed, when the model is not cached).

mod backend;
mod mask;
mod models;

use std::path::PathBuf;
use std::sync::Arc;

use offswitch_embedded::models::{DEFAULT_MODEL, default_models_dir, ensure_model};
use offswitch_embedded::{EmbeddedBackend, EmbeddedOptions};

/// The cached default model, or `None` after printing why the test skips.
pub fn model_path(test: &str) -> Option<PathBuf> {
    let found = default_models_dir().and_then(|dir| ensure_model(DEFAULT_MODEL, &dir, false));
    match found {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

/// A fresh backend on the default model, or `None` (skip) when it is not cached.
pub fn load(test: &str, options: EmbeddedOptions) -> Option<Arc<EmbeddedBackend>> {
    let path = model_path(test)?;
    Some(EmbeddedBackend::load(&path, options).expect("the cached model loads"))
}
