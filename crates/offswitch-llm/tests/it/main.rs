//! Integration tests of offswitch-llm: one binary, features tested against recorded llama.cpp output.

mod dequant;
mod engine;
mod gguf_errors;
mod sampler;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use offswitch_llm::{LoadOptions, Model};

/// Where the test model lives: `OFFSWITCH_TEST_GGUF`, else the model cache that `offswitch models pull` fills.
fn model_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("OFFSWITCH_TEST_GGUF") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")?;
    let path = PathBuf::from(home)
        .join(".cache/offswitch/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    path.exists().then_some(path)
}

/// The shared test model, or `None` (with the reason printed) when the file is absent.
fn model() -> Option<Arc<Model>> {
    static MODEL: OnceLock<Option<Arc<Model>>> = OnceLock::new();
    let loaded = MODEL.get_or_init(|| {
        let path = model_path()?;
        Some(Arc::new(
            Model::load(&path, &LoadOptions { threads: 2 })
                .unwrap_or_else(|e| panic!("loading the test model: {e}")),
        ))
    });
    if loaded.is_none() {
        eprintln!(
            "skipped: no test model; set OFFSWITCH_TEST_GGUF or run `offswitch models pull smollm2-135m` \
             (expects ~/.cache/offswitch/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf)"
        );
    }
    loaded.clone()
}
