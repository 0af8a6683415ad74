//! Byte-level BPE tokenizer built from GGUF metadata alone (tokens, merges, token types, pre-tokenizer name).
//!
//! Matches llama.cpp's BPE path: special tokens are split out first (control tokens only when asked to parse
//! them), the pre-tokenizer splits the rest into words (for SmolLM2, every digit on its own, then the GPT-2 rules),
//! each word's bytes are mapped to GPT-2's printable characters and merged by rank.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use regex::Regex;

use crate::error::LlmError;
use crate::gguf::{GgufFile, Value};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

pub struct Tokenizer {
    pieces: Vec<String>,
    bytes: Vec<Vec<u8>>,
    control: Vec<bool>,
    piece_to_id: HashMap<String, u32>,
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token id of each byte's GPT-2 character, `None` if the vocabulary lacks it.
    byte_ids: [Option<u32>; 256],
    /// Special pieces matched before pre-tokenisation: (text, id, is control), longest first.
    specials: Vec<(String, u32, bool)>,
    split_digits: bool,
    word_pattern: Regex,
    eos_id: Option<u32>,
}

impl Tokenizer {
    pub(crate) fn from_gguf(file: &GgufFile) -> Result<Tokenizer, LlmError> {
        let invalid = |reason: String| LlmError::Unsupported {
            path: file.path.clone(),
            reason,
        };
        let get = |key: &str| file.metadata.get(key);
        let model = get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(invalid(format!(
                "tokenizer model {model:?} (only byte-level BPE, \"gpt2\", is implemented)"
            )));
        }
        let pieces: Vec<String> = get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("no tokenizer.ggml.tokens".to_string()))?
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        let types: Vec<i64> = get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; pieces.len()]);
        let piece_to_id: HashMap<String, u32> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        let char_to_byte = byte_level_chars()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect::<HashMap<char, u8>>();
        let mut byte_ids = [None; 256];
        for (b, c) in byte_level_chars().iter().enumerate() {
            byte_ids[b] = piece_to_id.get(&c.to_string()).copied();
        }
        let mut merges = HashMap::new();
        if let Some(list) = get("tokenizer.ggml.merges").and_then(Value::as_array) {
            for (rank, merge) in list.iter().enumerate() {
                let text = merge.as_str().unwrap_or_default();
                let Some((left, right)) = text.split_once(' ') else {
                    return Err(invalid(format!("merge {rank} {text:?} has no space")));
                };
                let (Some(&l), Some(&r), Some(&m)) = (
                    piece_to_id.get(left),
                    piece_to_id.get(right),
                    piece_to_id.get(&format!("{left}{right}")),
                ) else {
                    // A merge whose pieces are not in the vocabulary can never fire; llama.cpp skips it too.
                    continue;
                };
                merges.entry((l, r)).or_insert((rank as u32, m));
            }
        }
        let control: Vec<bool> = (0..pieces.len())
            .map(|i| types.get(i) == Some(&TOKEN_TYPE_CONTROL))
            .collect();
        let bytes = pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                if control[i] {
                    return Vec::new();
                }
                let mapped: Option<Vec<u8>> = piece
                    .chars()
                    .map(|c| char_to_byte.get(&c).copied())
                    .collect();
                // User-defined pieces are stored as plain text rather than byte-level characters.
                mapped.unwrap_or_else(|| piece.as_bytes().to_vec())
            })
            .collect();
        let mut specials: Vec<(String, u32, bool)> = pieces
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                !p.is_empty()
                    && matches!(
                        types.get(*i),
                        Some(&TOKEN_TYPE_CONTROL) | Some(&TOKEN_TYPE_USER_DEFINED)
                    )
            })
            .map(|(i, p)| (p.clone(), i as u32, control[i]))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let pre = get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        // The pre-tokenizers that llama.cpp runs as "\p{N}" then the GPT-2 pattern.
        let split_digits = matches!(
            pre,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b"
        );
        if !split_digits
            && !matches!(
                pre,
                "gpt-2" | "gpt2" | "default" | "phi-2" | "jina-es" | "jina-de"
            )
        {
            tracing::warn!(
                pre,
                "unknown pre-tokenizer; using the GPT-2 rules, token ids may differ from llama.cpp"
            );
        }
        let word_pattern =
            Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
                .map_err(|e| invalid(format!("pre-tokenizer pattern: {e}")))?;
        Ok(Tokenizer {
            eos_id: get("tokenizer.ggml.eos_token_id")
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            pieces,
            bytes,
            control,
            piece_to_id,
            merges,
            byte_ids,
            specials,
            split_digits,
            word_pattern,
        })
    }

    /// Token ids of `text`. With `parse_special`, control-token text such as `<|im_start|>` becomes that token;
    /// without it, such text is tokenised as ordinary characters. No BOS is added.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        // Each special's next occurrence at or after `done`, searched again only once `done` passes it: text full
        // of specials costs one scan of the text per special, not one per occurrence (which was quadratic).
        // `None` once a special cannot occur again (or is not parsed).
        let mut next: Vec<Option<usize>> = self
            .specials
            .iter()
            .map(|(piece, _, is_control)| {
                (parse_special || !is_control)
                    .then(|| text.find(piece.as_str()))
                    .flatten()
            })
            .collect();
        let mut done = 0;
        while done < text.len() {
            let mut best: Option<(usize, usize, u32)> = None;
            for ((piece, id, _), next) in self.specials.iter().zip(&mut next) {
                if next.is_some_and(|at| at < done) {
                    *next = text[done..].find(piece.as_str()).map(|at| done + at);
                }
                // Earliest wins; at one offset the longest, as `specials` is sorted longest first.
                if let Some(at) = *next
                    && best.is_none_or(|(b, _, _)| at < b)
                {
                    best = Some((at, piece.len(), *id));
                }
            }
            let Some((at, piece_len, id)) = best else {
                self.encode_plain(&text[done..], &mut ids);
                break;
            };
            self.encode_plain(&text[done..at], &mut ids);
            ids.push(id);
            done = at + piece_len;
        }
        ids
    }

    /// Lossy for partial UTF-8 sequences; control tokens decode to nothing.
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

    /// The token's text as stored in the file (byte-level characters, e.g. `Ġthe`).
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
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

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        if self.split_digits {
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    self.encode_words(&text[start..i], ids);
                    self.encode_words(&text[i..i + c.len_utf8()], ids);
                    start = i + c.len_utf8();
                }
            }
            self.encode_words(&text[start..], ids);
        } else {
            self.encode_words(text, ids);
        }
    }

    /// Split by the GPT-2 pattern, emulating its `\s+(?!\S)` rule (the regex crate has no look-ahead): a whitespace
    /// run followed by a non-space gives up its last character to the next word.
    fn encode_words(&self, text: &str, ids: &mut Vec<u32>) {
        let mut pos = 0;
        while pos < text.len() {
            let Some(found) = self.word_pattern.find_at(text, pos) else {
                self.bpe(&text[pos..], ids);
                break;
            };
            if found.start() > pos {
                self.bpe(&text[pos..found.start()], ids);
            }
            let mut end = found.end();
            let word = found.as_str();
            if word.chars().all(char::is_whitespace) && end < text.len() && word.chars().count() > 1
            {
                let last = word.chars().next_back().map_or(0, char::len_utf8);
                end -= last;
            }
            self.bpe(&text[found.start()..end], ids);
            pos = end;
        }
    }

    /// Merge the word's byte symbols, always the lowest-ranked pair first and the leftmost among equals. A heap of
    /// candidate pairs over a linked list of symbols (as llama.cpp does) keeps a long word O(n log n); rescanning
    /// every pair after each merge was quadratic, and a single run of letters is one word.
    fn bpe(&self, word: &str, ids: &mut Vec<u32>) {
        // A vocabulary without a byte's character cannot spell it; skip it as llama.cpp does.
        let mut symbols: Vec<u32> = word
            .bytes()
            .filter_map(|b| self.byte_ids[b as usize])
            .collect();
        let n = symbols.len();
        // `next[i] == n` ends the list; `prev[i] == None` starts it. Merged-away symbols are `alive == false`.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let candidate = |symbols: &[u32], left: usize, right: usize| {
            self.merges
                .get(&(symbols[left], symbols[right]))
                .map(|&(rank, merged)| Reverse((rank, left, merged)))
        };
        heap.extend((1..n).filter_map(|i| candidate(&symbols, i - 1, i)));
        while let Some(Reverse((rank, left, merged))) = heap.pop() {
            let right = next[left];
            // Stale when either side was merged away since; ranks are unique per pair, so a rank match is this pair.
            if !alive[left]
                || right == n
                || self.merges.get(&(symbols[left], symbols[right])) != Some(&(rank, merged))
            {
                continue;
            }
            symbols[left] = merged;
            alive[right] = false;
            next[left] = next[right];
            if next[left] < n {
                prev[next[left]] = Some(left);
                heap.extend(candidate(&symbols, left, next[left]));
            }
            if let Some(before) = prev[left] {
                heap.extend(candidate(&symbols, before, left));
            }
        }
        ids.extend(
            symbols
                .iter()
                .zip(&alive)
                .filter_map(|(&id, &alive)| alive.then_some(id)),
        );
    }
}

/// GPT-2's map from bytes to printable characters: printable Latin-1 bytes map to themselves, the rest to 256 + n.
fn byte_level_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\0');
            next += 1;
            c
        };
    }
    table
}
