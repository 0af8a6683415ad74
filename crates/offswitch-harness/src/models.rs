//! Building the model clients a run needs from the `--model` spec strings.

use std::path::PathBuf;
use std::sync::Arc;

use offswitch_core::backend::ToolMode;
use offswitch_model::{HttpOptions, ModelSpec, ResilienceConfig, ResponseCache};

use crate::model::{ModelClient, Resilient};
use crate::scripted::{Script, ScriptedBackend};

/// How the model clients of a run are built.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub http: HttpOptions,
    /// Tool mode for HTTP models (scripted agents use it too); the embedded model always uses tags.
    pub tool_mode: ToolMode,
    /// The response cache directory; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    pub agents_dir: PathBuf,
    /// Whether a missing embedded model may be fetched.
    pub allow_pull: bool,
    pub resilience: ResilienceConfig,
}

/// A model ready for trials.
#[derive(Clone)]
pub struct BuiltModel {
    pub spec: String,
    pub request_model: String,
    pub tool_mode: ToolMode,
    pub client: Arc<dyn ModelClient>,
    /// Hex sha256 of the model file, for models that run from one (embedded, `local:`); the
    /// run stores it, so `--resume` notices a different file.
    pub file_sha256: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelBuildError {
    #[error("{0}")]
    Spec(#[from] offswitch_model::SpecError),
    #[error("failed to build model {spec}: {message}")]
    Invalid { spec: String, message: String },
    /// Something the machine lacks (the model file, pip).
    #[error("model {spec} is not available: {message}")]
    Missing { spec: String, message: String },
}

pub fn build_model(spec_text: &str, options: &ModelOptions) -> Result<BuiltModel, ModelBuildError> {
    let spec = ModelSpec::parse(spec_text)?;
    let invalid = |message: String| ModelBuildError::Invalid {
        spec: spec_text.to_owned(),
        message,
    };
    let cache = options.cache_dir.as_ref().map(ResponseCache::new);
    match &spec {
        ModelSpec::Scripted { strategy } => {
            let script = Script::load_named(&options.agents_dir, strategy)
                .map_err(|e| invalid(e.to_string()))?;
            // A scripted agent answers instantly and deterministically: retries and a cache
            // would only add overhead to the harness measurement.
            let backend = Arc::new(ScriptedBackend::new(script));
            Ok(BuiltModel {
                spec: spec_text.to_owned(),
                request_model: spec_text.to_owned(),
                tool_mode: options.tool_mode,
                client: Arc::new(crate::model::SingleAttempt(backend)),
                file_sha256: None,
            })
        }
        ModelSpec::OpenAi { model, .. } | ModelSpec::Anthropic { model, .. } => {
            let backend = offswitch_model::build_http_backend(&spec, &options.http)
                .map_err(|e| invalid(e.to_string()))?;
            let client =
                offswitch_model::ModelClient::new(backend, options.resilience.clone(), cache);
            Ok(BuiltModel {
                spec: spec_text.to_owned(),
                request_model: model.clone(),
                tool_mode: options.tool_mode,
                client: Arc::new(Resilient(client)),
                file_sha256: None,
            })
        }
        ModelSpec::Embedded | ModelSpec::Local { .. } => {
            let missing = |message: String| ModelBuildError::Missing {
                spec: spec_text.to_owned(),
                message,
            };
            let path = match &spec {
                ModelSpec::Local { path } => {
                    if !path.is_file() {
                        return Err(missing(format!("no model file at {}", path.display())));
                    }
                    path.clone()
                }
                _ => offswitch_embedded::models::ensure_default_model(options.allow_pull)
                    .map_err(|e| missing(e.to_string()))?,
            };
            let backend = offswitch_embedded::EmbeddedBackend::load(
                &path,
                offswitch_embedded::EmbeddedOptions::default(),
            )
            .map_err(|e| invalid(e.to_string()))?;
            let request_model = match &spec {
                ModelSpec::Local { .. } => backend.name().to_owned(),
                _ => offswitch_model::EMBEDDED_MODEL.to_owned(),
            };
            // Hashed once, by the load.
            let file_sha256 = Some(backend.sha256().to_owned());
            // The engine thread batches concurrent trials itself; retries only cover its
            // rare transient failures, and the cache makes re-runs of a cell free.
            let client =
                offswitch_model::ModelClient::new(backend, options.resilience.clone(), cache);
            Ok(BuiltModel {
                spec: spec_text.to_owned(),
                request_model,
                // The embedded model always speaks the tag protocol, grammar-constrained.
                tool_mode: ToolMode::Tags,
                client: Arc::new(Resilient(client)),
                file_sha256,
            })
        }
    }
}
