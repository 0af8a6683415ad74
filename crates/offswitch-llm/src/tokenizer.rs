//! Byte-level BPE tokenizer built from GGUF metadata alone (tokens, merges, token types).

use std::collections::HashMap;

pub struct Tokenizer {
    pieces: Vec<String>,
    bytes: Vec<Vec<u8>>,
    control: Vec<bool>,
    piece_to_id: HashMap<String, u32>,
    eos_id: Option<u32>,
}

impl Tokenizer {
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let _ = (text, parse_special);
        Vec::new()
    }

    /// Lossy for partial UTF-8 sequences.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id));
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The raw bytes a token stands for; empty for control tokens and ids outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], |b| b.as_slice())
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.piece_to_id.get(piece).copied()
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }
}
