//! The `--model` strings of the command line, and building the HTTP backends they name.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use offswitch_core::ChatBackend;

use crate::anthropic::{ANTHROPIC_DEFAULT_BASE_URL, AnthropicBackend, AnthropicConfig};
use crate::http::{BuildError, HttpConfig};
use crate::openai::{OPENAI_DEFAULT_BASE_URL, OpenAiBackend, OpenAiConfig, OpenAiDialect};

/// The name of the embedded default model.
pub const EMBEDDED_MODEL: &str = "smollm2-135m";

const ACCEPTED_FORMS: &str = "openai:<model>[@<base-url>], anthropic:<model>[@<base-url>], \
     local:<path.gguf>, smollm2-135m, scripted:<strategy>";

/// Which model a trial talks to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelSpec {
    /// An OpenAI-compatible server; `base_url` overrides the flag, env and default.
    OpenAi {
        model: String,
        base_url: Option<String>,
    },
    Anthropic {
        model: String,
        base_url: Option<String>,
    },
    /// A GGUF file run by the embedded engine.
    Local { path: PathBuf },
    /// The embedded default model.
    Embedded,
    /// A scripted reference agent playing a named strategy.
    Scripted { strategy: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("unrecognised model {input:?}; accepted forms: {ACCEPTED_FORMS}")]
    Unrecognised { input: String },
    #[error("model {input:?} names no {what} after the prefix; accepted forms: {ACCEPTED_FORMS}")]
    Empty { input: String, what: &'static str },
    #[error("model {input:?} has base URL {base_url:?}, which must start with http:// or https://")]
    BadBaseUrl { input: String, base_url: String },
}

impl ModelSpec {
    pub fn parse(input: &str) -> Result<ModelSpec, SpecError> {
        let trimmed = input.trim();
        if trimmed == EMBEDDED_MODEL {
            return Ok(ModelSpec::Embedded);
        }
        let Some((prefix, rest)) = trimmed.split_once(':') else {
            return Err(SpecError::Unrecognised {
                input: input.to_owned(),
            });
        };
        let empty = |what| SpecError::Empty {
            input: input.to_owned(),
            what,
        };
        match prefix {
            "openai" | "anthropic" => {
                let (model, base_url) = split_base_url(input, rest)?;
                if model.is_empty() {
                    return Err(empty("model name"));
                }
                let model = model.to_owned();
                Ok(if prefix == "openai" {
                    ModelSpec::OpenAi { model, base_url }
                } else {
                    ModelSpec::Anthropic { model, base_url }
                })
            }
            "local" if !rest.is_empty() => Ok(ModelSpec::Local {
                path: PathBuf::from(rest),
            }),
            "local" => Err(empty("path")),
            "scripted" if !rest.is_empty() => Ok(ModelSpec::Scripted {
                strategy: rest.to_owned(),
            }),
            "scripted" => Err(empty("strategy")),
            _ => Err(SpecError::Unrecognised {
                input: input.to_owned(),
            }),
        }
    }

    /// Whether `build_http_backend` builds this spec.
    pub fn is_http(&self) -> bool {
        matches!(self, ModelSpec::OpenAi { .. } | ModelSpec::Anthropic { .. })
    }
}

impl std::str::FromStr for ModelSpec {
    type Err = SpecError;
    fn from_str(input: &str) -> Result<ModelSpec, SpecError> {
        ModelSpec::parse(input)
    }
}

/// The canonical string, which parses back to the same spec.
impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let with_url =
            |f: &mut std::fmt::Formatter<'_>, prefix, model, base_url: &Option<String>| {
                write!(f, "{prefix}:{model}")?;
                match base_url {
                    Some(url) => write!(f, "@{url}"),
                    None => Ok(()),
                }
            };
        match self {
            ModelSpec::OpenAi { model, base_url } => with_url(f, "openai", model, base_url),
            ModelSpec::Anthropic { model, base_url } => with_url(f, "anthropic", model, base_url),
            ModelSpec::Local { path } => write!(f, "local:{}", path.display()),
            ModelSpec::Embedded => f.write_str(EMBEDDED_MODEL),
            ModelSpec::Scripted { strategy } => write!(f, "scripted:{strategy}"),
        }
    }
}

/// Model names may themselves hold `@` (some providers version models that way), so only an
/// `@` followed by a URL scheme starts the base URL.
fn split_base_url<'a>(input: &str, rest: &'a str) -> Result<(&'a str, Option<String>), SpecError> {
    let start = ["@http://", "@https://"]
        .iter()
        .filter_map(|marker| rest.find(marker))
        .min();
    if let Some(start) = start {
        return Ok((&rest[..start], Some(rest[start + 1..].to_owned())));
    }
    // An `@` followed by something that looks like a host is most likely a URL without its
    // scheme; say so rather than sending a model name with a host in it.
    if let Some((_, after)) = rest.rsplit_once('@')
        && (after.starts_with("localhost") || after.contains("://") || after.contains(':'))
    {
        return Err(SpecError::BadBaseUrl {
            input: input.to_owned(),
            base_url: after.to_owned(),
        });
    }
    Ok((rest, None))
}

/// What the command line says about HTTP backends beyond the model string.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpOptions {
    /// `--api-key`; otherwise `OPENAI_API_KEY` / `ANTHROPIC_API_KEY`.
    pub api_key: Option<String>,
    /// `--base-url`; the spec's own `@<base-url>` wins over it, and it wins over
    /// `OPENAI_BASE_URL` / `ANTHROPIC_BASE_URL`.
    pub base_url: Option<String>,
    pub timeout: Duration,
    pub extra_headers: Vec<(String, String)>,
    /// The OpenAI request dialect; `None` guesses it from the model name
    /// (`OpenAiDialect::for_model`).
    pub openai_dialect: Option<OpenAiDialect>,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            api_key: None,
            base_url: None,
            timeout: HttpConfig::default().timeout,
            extra_headers: Vec::new(),
            openai_dialect: None,
        }
    }
}

/// Build the backend of an `openai:` or `anthropic:` spec, reading keys and base URLs from
/// the process environment where `options` leaves them out.
pub fn build_http_backend(
    spec: &ModelSpec,
    options: &HttpOptions,
) -> Result<Arc<dyn ChatBackend>, BuildError> {
    build_http_backend_with_env(spec, options, &|name| std::env::var(name).ok())
}

/// `build_http_backend` with the environment given as a lookup function, for tests.
pub fn build_http_backend_with_env(
    spec: &ModelSpec,
    options: &HttpOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn ChatBackend>, BuildError> {
    let (provider, model, spec_base_url) = match spec {
        ModelSpec::OpenAi { model, base_url } => ("openai", model, base_url),
        ModelSpec::Anthropic { model, base_url } => ("anthropic", model, base_url),
        _ => {
            return Err(BuildError::NotHttp {
                spec: spec.to_string(),
            });
        }
    };
    let (key_var, url_var, default_url) = match provider {
        "openai" => ("OPENAI_API_KEY", "OPENAI_BASE_URL", OPENAI_DEFAULT_BASE_URL),
        _ => (
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
            ANTHROPIC_DEFAULT_BASE_URL,
        ),
    };
    let non_empty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    let base_url = spec_base_url
        .clone()
        .or_else(|| options.base_url.clone())
        .or_else(|| non_empty(env(url_var)))
        .unwrap_or_else(|| default_url.to_owned());
    let api_key = non_empty(options.api_key.clone()).or_else(|| non_empty(env(key_var)));
    // Self-hosted servers often run without keys; the provider's own endpoint never does, and
    // failing here beats a 401 on every trial of a run.
    if api_key.is_none() && base_url.trim_end_matches('/') == default_url {
        return Err(BuildError::MissingApiKey {
            backend: spec.to_string(),
            env_var: key_var.to_owned(),
        });
    }
    let http = HttpConfig {
        timeout: options.timeout,
        extra_headers: options.extra_headers.clone(),
        ..HttpConfig::default()
    };
    let backend: Arc<dyn ChatBackend> = match provider {
        "openai" => Arc::new(OpenAiBackend::new(OpenAiConfig {
            base_url,
            api_key,
            model: model.clone(),
            http,
            dialect: options
                .openai_dialect
                .unwrap_or_else(|| OpenAiDialect::for_model(model)),
        })?),
        _ => Arc::new(AnthropicBackend::new(AnthropicConfig {
            base_url,
            api_key,
            model: model.clone(),
            http,
        })?),
    };
    Ok(backend)
}
