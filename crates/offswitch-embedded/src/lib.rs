//! The embedded model as an agent backend: the model cache and `pull`, the chat template, the
//! grammar that forces replies into the tool-call protocol, and a continuous-batching engine
//! thread behind [`EmbeddedBackend`].

mod backend;
mod engine;
mod error;
pub mod grammar;
pub mod models;
pub mod template;

pub use backend::{EmbeddedBackend, EmbeddedOptions, RawReply};
pub use error::EmbeddedError;
