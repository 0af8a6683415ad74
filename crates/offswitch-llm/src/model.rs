//! The Llama-architecture model: weights repacked at load, a batched forward pass over per-conversation KV caches.

use std::path::Path;

use crate::error::LlmError;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Worker threads for the matrix products; 0 means the machine's available parallelism.
    pub threads: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub chat_template: Option<String>,
}

/// Immutable weights; `Send + Sync`, share it through an `Arc`.
pub struct Model {
    config: ModelConfig,
    tokenizer: Tokenizer,
}

impl Model {
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Model, LlmError> {
        let _ = options;
        Err(LlmError::Unsupported {
            path: path.to_path_buf(),
            reason: "loading is not written yet".to_string(),
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// A preallocated KV cache for one conversation of at most `max_tokens` tokens.
    pub fn new_sequence(&self, max_tokens: usize) -> Sequence {
        Sequence {
            tokens: Vec::with_capacity(max_tokens),
            capacity: max_tokens,
        }
    }

    /// Feed `new_tokens` to each sequence (prefill when many, decode when one), all in one batched pass;
    /// returns the logits (vocab_size f32) after the last new token of each sequence, in order.
    pub fn forward(
        &self,
        batch: &mut [(&mut Sequence, &[u32])],
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        let _ = batch;
        Ok(Vec::new())
    }
}

/// One conversation's KV cache and the tokens already fed to it. `Send`.
pub struct Sequence {
    tokens: Vec<u32>,
    capacity: usize,
}

impl Sequence {
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Forget everything after the first `n` tokens (keeps the cache of the shared prefix).
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
