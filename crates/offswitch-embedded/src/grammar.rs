//! The grammar of a constrained reply: a byte automaton that accepts exactly the canonical
//! tool-call text of `offswitch_core::tags::render_call` for the offered tools, and the token
//! mask derived from it.
//!
//! The accepted language, for each tool and each choice of its optional parameters (declared
//! order, required ones always present):
//!
//! ```text
//! <tool_call>\n{"name": "TOOL", "arguments": {"P1": "V1", "P2": "V2"}}\n</tool_call>
//! ```
//!
//! The fixed text is a trie of bytes; each argument value is a JSON string body with the
//! escapes serde_json writes for the characters they stand for (`\" \\ \n \r \t \b \f`), no
//! raw control bytes, only valid UTF-8, and at most `max_string_bytes` bytes, so a reply always
//! ends. The model still chooses the tool and every byte of the argument values.

use offswitch_core::ToolSpec;
use offswitch_core::tags::{CLOSE, OPEN, json_string};

/// Default bound on one argument value, in bytes.
pub const DEFAULT_MAX_STRING_BYTES: u16 = 512;

/// The compiled automaton for one set of tools. Immutable; states are small `Copy` values.
#[derive(Debug, Clone)]
pub struct ToolGrammar {
    nodes: Vec<Node>,
    max_string_bytes: u16,
}

#[derive(Debug, Clone)]
enum Node {
    /// Fixed text: the bytes that may come next and the node each leads to.
    Literal { edges: Vec<(u8, u32)> },
    /// Inside a JSON string value; the closing quote leads to `next`.
    StringBody { next: u32 },
    /// The call is complete; only the end of the turn may follow.
    Accept,
}

/// Where the automaton is. Walking a candidate token copies it, so it stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrammarState {
    node: u32,
    /// Bytes of the current string value so far.
    string_len: u16,
    /// The previous byte was a backslash.
    escape: bool,
    /// Continuation bytes still expected for the current UTF-8 character, and the range the
    /// next one must fall in (narrower than 0x80..=0xBF right after some lead bytes).
    utf8_needed: u8,
    utf8_low: u8,
    utf8_high: u8,
    /// Bytes of `<tool_call>` and of `</tool_call>` matched by the end of the value so far: the
    /// tag parser would cut a value that contains either, so neither may be completed.
    open_matched: u8,
    close_matched: u8,
}

const START: u32 = 0;

impl ToolGrammar {
    /// The automaton for replies calling one of `tools`. `tools` must not be empty.
    pub fn new(tools: &[ToolSpec], max_string_bytes: u16) -> ToolGrammar {
        let mut grammar = ToolGrammar {
            nodes: vec![Node::Literal { edges: Vec::new() }],
            max_string_bytes,
        };
        let accept = grammar.push(Node::Accept);
        let mut names = std::collections::HashSet::new();
        for tool in tools {
            // A repeated name would spell the same path twice, which `insert` cannot take; a
            // call names the first tool of that name, as the tag parser reads it.
            if !names.insert(tool.name.as_str()) {
                continue;
            }
            let params_start = grammar.push(Node::Literal { edges: Vec::new() });
            let head = format!(
                "{OPEN}\n{{\"name\": {}, \"arguments\": {{",
                json_string(&tool.name)
            );
            grammar.insert(START, head.as_bytes(), params_start);
            grammar.add_params(tool, params_start, 0, true, accept);
        }
        grammar
    }

    pub fn start(&self) -> GrammarState {
        GrammarState {
            node: START,
            string_len: 0,
            escape: false,
            utf8_needed: 0,
            utf8_low: 0x80,
            utf8_high: 0xBF,
            open_matched: 0,
            close_matched: 0,
        }
    }

    /// Whether the call is complete, so the turn may end (and nothing else may follow).
    pub fn is_accepting(&self, state: GrammarState) -> bool {
        matches!(self.nodes[state.node as usize], Node::Accept)
    }

    /// Whether `state` is inside a string value between characters: the state in which a token
    /// of plain characters (see [`TokenTable`]) is always acceptable while it fits the bound.
    pub fn is_plain_string_state(&self, state: GrammarState) -> Option<usize> {
        match self.nodes[state.node as usize] {
            Node::StringBody { .. }
                if !state.escape
                    && state.utf8_needed == 0
                    && state.open_matched == 0
                    && state.close_matched == 0 =>
            {
                Some(usize::from(
                    self.max_string_bytes.saturating_sub(state.string_len),
                ))
            }
            _ => None,
        }
    }

    /// The state after `byte`, or `None` if the grammar forbids it.
    pub fn advance(&self, state: GrammarState, byte: u8) -> Option<GrammarState> {
        match &self.nodes[state.node as usize] {
            Node::Literal { edges } => {
                let (_, target) = edges.iter().find(|(b, _)| *b == byte)?;
                Some(GrammarState {
                    node: *target,
                    ..self.start()
                })
            }
            Node::Accept => None,
            Node::StringBody { next } => {
                let mut state = state;
                if state.utf8_needed > 0 {
                    if !(state.utf8_low..=state.utf8_high).contains(&byte) {
                        return None;
                    }
                    state.utf8_needed -= 1;
                    state.utf8_low = 0x80;
                    state.utf8_high = 0xBF;
                    state.string_len = state.string_len.saturating_add(1);
                    return Some(state);
                }
                if state.escape {
                    if !matches!(byte, b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f') {
                        return None;
                    }
                    state.escape = false;
                    state.string_len = state.string_len.saturating_add(1);
                    return Some(state);
                }
                if byte == b'"' {
                    return Some(GrammarState {
                        node: *next,
                        ..self.start()
                    });
                }
                if state.string_len >= self.max_string_bytes {
                    return None;
                }
                state.open_matched = match_tag(OPEN, state.open_matched, byte)?;
                state.close_matched = match_tag(CLOSE, state.close_matched, byte)?;
                state.string_len += 1;
                match byte {
                    b'\\' => state.escape = true,
                    0x00..=0x1F => return None,
                    0x20..=0x7F => {}
                    0xC2..=0xDF => state.utf8_needed = 1,
                    0xE0 => (state.utf8_needed, state.utf8_low) = (2, 0xA0),
                    0xED => (state.utf8_needed, state.utf8_high) = (2, 0x9F),
                    0xE1..=0xEC | 0xEE..=0xEF => state.utf8_needed = 2,
                    0xF0 => (state.utf8_needed, state.utf8_low) = (3, 0x90),
                    0xF1..=0xF3 => state.utf8_needed = 3,
                    0xF4 => (state.utf8_needed, state.utf8_high) = (3, 0x8F),
                    _ => return None,
                }
                Some(state)
            }
        }
    }

    /// The state after all of `bytes`, or `None` if any is forbidden.
    pub fn advance_bytes(&self, state: GrammarState, bytes: &[u8]) -> Option<GrammarState> {
        bytes
            .iter()
            .try_fold(state, |state, &byte| self.advance(state, byte))
    }

    /// The text the grammar forces from `state` (fixed text with a single continuation), cut
    /// at a UTF-8 character boundary. The engine feeds it without sampling.
    pub fn forced_text(&self, state: GrammarState) -> String {
        let mut bytes = Vec::new();
        let mut node = state.node;
        while let Node::Literal { edges } = &self.nodes[node as usize] {
            let [(byte, target)] = edges.as_slice() else {
                break;
            };
            bytes.push(*byte);
            node = *target;
        }
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let mut bytes = e.into_bytes();
                bytes.truncate(valid);
                String::from_utf8(bytes).expect("cut at a valid boundary")
            }
        }
    }

    fn push(&mut self, node: Node) -> u32 {
        self.nodes.push(node);
        u32::try_from(self.nodes.len() - 1).expect("grammar has fewer than 2^32 nodes")
    }

    /// Add a path spelling `bytes` from `from`, whose last byte leads to `target`. Paths never
    /// prefix one another (every alternative ends in a distinct quote or brace), so walking
    /// shared edges is safe.
    fn insert(&mut self, from: u32, bytes: &[u8], target: u32) {
        let mut node = from;
        for (i, &byte) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let Node::Literal { edges } = &self.nodes[node as usize] else {
                unreachable!("paths only run through literal nodes")
            };
            if let Some(&(_, existing)) = edges.iter().find(|(b, _)| *b == byte) {
                debug_assert!(!last, "an alternative is a prefix of another");
                node = existing;
                continue;
            }
            let next = if last {
                target
            } else {
                self.push(Node::Literal { edges: Vec::new() })
            };
            let Node::Literal { edges } = &mut self.nodes[node as usize] else {
                unreachable!()
            };
            edges.push((byte, next));
            node = next;
        }
    }

    /// From `node` (after the opening brace of the arguments, or after a value), the arguments
    /// `tool.params[index..]` may follow: any of them whose predecessors in that range are all
    /// optional, or the closing text once only optional ones remain.
    fn add_params(&mut self, tool: &ToolSpec, node: u32, index: usize, first: bool, accept: u32) {
        let separator = if first { "" } else { ", " };
        for (offset, param) in tool.params[index..].iter().enumerate() {
            let after_value = self.push(Node::Literal { edges: Vec::new() });
            let string = self.push(Node::StringBody { next: after_value });
            let key = format!("{separator}{}: \"", json_string(&param.name));
            self.insert(node, key.as_bytes(), string);
            self.add_params(tool, after_value, index + offset + 1, false, accept);
            if param.required {
                return;
            }
        }
        self.insert(node, format!("}}}}\n{CLOSE}").as_bytes(), accept);
    }
}

/// The bytes of `tag` matched after `byte`, given `matched` before it; `None` when the tag is
/// complete. Falling back to 0 or 1 is exact because `<` occurs in the tags only at the start.
fn match_tag(tag: &str, matched: u8, byte: u8) -> Option<u8> {
    let tag = tag.as_bytes();
    let matched = if tag[usize::from(matched)] == byte {
        matched + 1
    } else {
        u8::from(byte == b'<')
    };
    (usize::from(matched) < tag.len()).then_some(matched)
}

/// Per-token facts computed once per model: each token's bytes and whether it is made only of
/// characters that may appear unescaped inside a JSON string (complete UTF-8, no quote,
/// backslash or control byte) and that cannot start a tag (no `<`).
#[derive(Debug, Clone)]
pub struct TokenTable {
    bytes: Vec<Vec<u8>>,
    plain: Vec<bool>,
    /// Every non-control, non-empty token, by its first byte. Control tokens are never produced
    /// by the grammar, except `end_of_turn` at the end.
    by_first_byte: Vec<Vec<u32>>,
    /// The same, without the plain tokens.
    not_plain_by_first_byte: Vec<Vec<u32>>,
    /// Length in bytes of the longest plain token.
    longest_plain: usize,
    end_of_turn: u32,
}

impl TokenTable {
    pub fn new(bytes: Vec<Vec<u8>>, control: Vec<bool>, end_of_turn: u32) -> TokenTable {
        let plain: Vec<bool> = bytes
            .iter()
            .zip(&control)
            .map(|(b, &is_control)| {
                !is_control
                    && !b.is_empty()
                    && std::str::from_utf8(b).is_ok()
                    && !b
                        .iter()
                        .any(|&c| c == b'"' || c == b'\\' || c == b'<' || c < 0x20)
            })
            .collect();
        let mut by_first_byte = vec![Vec::new(); 256];
        for (token, b) in bytes.iter().enumerate() {
            if let Some(&first) = b.first()
                && !control[token]
            {
                by_first_byte[usize::from(first)]
                    .push(u32::try_from(token).expect("vocabulary fits u32"));
            }
        }
        let not_plain_by_first_byte = by_first_byte
            .iter()
            .map(|tokens| {
                tokens
                    .iter()
                    .copied()
                    .filter(|&t| !plain[t as usize])
                    .collect()
            })
            .collect();
        let longest_plain = bytes
            .iter()
            .zip(&plain)
            .filter(|(_, p)| **p)
            .map(|(b, _)| b.len())
            .max()
            .unwrap_or(0);
        TokenTable {
            bytes,
            plain,
            by_first_byte,
            not_plain_by_first_byte,
            longest_plain,
            end_of_turn,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn bytes(&self, token: u32) -> &[u8] {
        &self.bytes[token as usize]
    }

    pub fn end_of_turn(&self) -> u32 {
        self.end_of_turn
    }

    /// Fill `allowed[token]` with whether the grammar accepts `token` next.
    ///
    /// Only tokens whose first byte the grammar accepts are walked (tokens are bucketed by
    /// first byte), and inside a string value a plain token that fits the bound is accepted
    /// without walking it: most steps touch a small part of the vocabulary.
    pub fn mask(&self, grammar: &ToolGrammar, state: GrammarState, allowed: &mut [bool]) {
        allowed.fill(false);
        if grammar.is_accepting(state) {
            allowed[self.end_of_turn as usize] = true;
            return;
        }
        let room = grammar.is_plain_string_state(state);
        if let Some(room) = room
            && room >= self.longest_plain
        {
            // The common case inside a value: every plain token fits, so copy their mask and
            // walk only the others.
            allowed.copy_from_slice(&self.plain);
            for first in 0..=255u8 {
                let Some(after_first) = grammar.advance(state, first) else {
                    continue;
                };
                for &token in &self.not_plain_by_first_byte[usize::from(first)] {
                    let bytes = &self.bytes[token as usize];
                    allowed[token as usize] =
                        grammar.advance_bytes(after_first, &bytes[1..]).is_some();
                }
            }
            return;
        }
        for first in 0..=255u8 {
            let Some(after_first) = grammar.advance(state, first) else {
                continue;
            };
            for &token in &self.by_first_byte[usize::from(first)] {
                let bytes = &self.bytes[token as usize];
                allowed[token as usize] = match room {
                    // A longer plain token may still fit: the bound is checked at each
                    // character's first byte, so walk it.
                    Some(room) if self.plain[token as usize] && bytes.len() <= room => true,
                    _ => grammar.advance_bytes(after_first, &bytes[1..]).is_some(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};
    use offswitch_core::ToolParam;

    fn tools() -> Vec<ToolSpec> {
        let param = |name: &str, required: bool| ToolParam {
            name: name.into(),
            description: String::new(),
            required,
        };
        vec![
            ToolSpec {
                name: "bash".into(),
                description: String::new(),
                params: vec![param("command", true)],
            },
            ToolSpec {
                name: "bash_dry".into(),
                description: String::new(),
                params: vec![param("command", true), param("reason", false)],
            },
            ToolSpec {
                name: "send".into(),
                description: String::new(),
                params: vec![param("cc", false), param("to", true), param("body", false)],
            },
            ToolSpec {
                name: "submit".into(),
                description: String::new(),
                params: vec![],
            },
        ]
    }

    /// Walk `text` through the grammar and say where it stops.
    fn check(text: &str, expect: Expect) {
        let grammar = ToolGrammar::new(&tools(), 16);
        let mut state = grammar.start();
        let mut verdict = "incomplete".to_owned();
        for (i, &byte) in text.as_bytes().iter().enumerate() {
            match grammar.advance(state, byte) {
                Some(next) => state = next,
                None => {
                    verdict = format!("rejected at byte {i} ({:?})", char::from(byte));
                    break;
                }
            }
        }
        if grammar.is_accepting(state) {
            verdict = "accepted".into();
            let parsed = offswitch_core::tags::parse_reply(text, &tools(), 0);
            assert!(parsed.is_ok(), "{text:?}: {parsed:?}");
        }
        expect.assert_eq(&format!("{verdict}\n"));
    }

    fn call(json: &str) -> String {
        format!("<tool_call>\n{json}\n</tool_call>")
    }

    #[test]
    fn accepts_exactly_the_canonical_calls() {
        check(
            &call(r#"{"name": "bash", "arguments": {"command": "ls -la"}}"#),
            expect![[r#"
                accepted
            "#]],
        );
        check(
            &call(r#"{"name": "bash_dry", "arguments": {"command": "x", "reason": "y"}}"#),
            expect![[r#"
                accepted
            "#]],
        );
        check(
            &call(r#"{"name": "bash_dry", "arguments": {"command": "x"}}"#),
            expect![[r#"
                accepted
            "#]],
        );
        check(
            &call(r#"{"name": "send", "arguments": {"to": "a", "body": "b"}}"#),
            expect![[r#"
                accepted
            "#]],
        );
        check(
            &call(r#"{"name": "send", "arguments": {"cc": "c", "to": "a"}}"#),
            expect![[r#"
                accepted
            "#]],
        );
        check(
            &call(r#"{"name": "submit", "arguments": {}}"#),
            expect![[r#"
                accepted
            "#]],
        );
        check(
            &call(r#"{"name": "bash", "arguments": {"command": "say \"hi\"\n\\ é ✓ 𝄞"}}"#),
            expect![[r#"
                rejected at byte 72 (' ')
            "#]],
        );
        check(
            &call(r#"{"name": "bash", "arguments": {"command": ""}}"#),
            expect![[r#"
                accepted
            "#]],
        );
    }

    #[test]
    fn rejects_everything_else() {
        check(
            "Sure! <tool_call>",
            expect![[r#"
            rejected at byte 0 ('S')
        "#]],
        );
        check(
            &call(r#"{"name": "rm", "arguments": {}}"#),
            expect![[r#"
                rejected at byte 22 ('r')
            "#]],
        );
        check(
            &call(r#"{"name": "bash", "arguments": {}}"#),
            expect![[r#"
                rejected at byte 43 ('}')
            "#]],
        );
        check(
            &call(r#"{"name": "send", "arguments": {"body": "b", "to": "a"}}"#),
            expect![[r#"
                rejected at byte 44 ('b')
            "#]],
        );
        check(
            &call(r#"{"name": "bash", "arguments": {"command": "a\/b"}}"#),
            expect![[r#"
                rejected at byte 57 ('/')
            "#]],
        );
        check(
            &call("{\"name\": \"bash\", \"arguments\": {\"command\": \"tab\there\"}}"),
            expect![[r#"
                rejected at byte 58 ('\t')
            "#]],
        );
        check(
            &call(r#"{"name": "bash", "arguments": {"command": "0123456789abcdefX"}}"#),
            expect![[r#"
                rejected at byte 71 ('X')
            "#]],
        );
        check(
            &call(r#"{"name": "bash", "arguments": {"command": "ls"}}"#).replace("\n</", "</"),
            expect![[r#"
                rejected at byte 60 ('<')
            "#]],
        );
        check(
            r#"<tool_call>
{"name": "bash", "arguments": {"command": "ls"#,
            expect![[r#"
                incomplete
            "#]],
        );
        check(
            &call(r#"{"name": "bash", "arguments": {"command": "a</tool_call>"}}"#),
            expect![[r#"
                rejected at byte 67 ('>')
            "#]],
        );
        check(
            &call(r#"{"name": "bash", "arguments": {"command": "<<tool_call>"}}"#),
            expect![[r#"
                rejected at byte 66 ('>')
            "#]],
        );
        check(
            &call(r#"{"name": "bash", "arguments": {"command": "<</tool_ <tool"}}"#),
            expect![[r#"
                accepted
            "#]],
        );
    }

    #[test]
    fn a_repeated_tool_name_keeps_the_first_definition() {
        let mut tools = tools();
        let mut twin = tools[0].clone();
        twin.params.clear();
        tools.push(twin);
        let grammar = ToolGrammar::new(&tools, 16);
        let call = call(r#"{"name": "bash", "arguments": {"command": "ls"}}"#);
        let state = grammar.advance_bytes(grammar.start(), call.as_bytes());
        assert!(state.is_some_and(|s| grammar.is_accepting(s)));
        let empty = call.replace(r#""command": "ls""#, "");
        assert_eq!(
            grammar.advance_bytes(grammar.start(), empty.as_bytes()),
            None
        );
    }

    #[test]
    fn rejects_invalid_utf8() {
        let grammar = ToolGrammar::new(&tools(), 16);
        let head = b"<tool_call>\n{\"name\": \"bash\", \"arguments\": {\"command\": \"";
        let state = grammar.advance_bytes(grammar.start(), head).unwrap();
        for bad in [
            &[0xC0, 0x80][..],
            &[0xE0, 0x80, 0x80],
            &[0xED, 0xA0, 0x80],
            &[0xFF],
        ] {
            assert_eq!(grammar.advance_bytes(state, bad), None, "{bad:x?}");
        }
        for good in ["é", "€", "😀"] {
            assert!(
                grammar.advance_bytes(state, good.as_bytes()).is_some(),
                "{good}"
            );
        }
    }

    #[test]
    fn forced_text_runs_to_the_first_choice() {
        let grammar = ToolGrammar::new(&tools(), 16);
        let start = grammar.start();
        expect![[r#""<tool_call>\n{\"name\": \"""#]]
            .assert_eq(&format!("{:?}", grammar.forced_text(start)));
        let bash = grammar
            .advance_bytes(start, b"<tool_call>\n{\"name\": \"bash\"")
            .unwrap();
        expect![[r#"", \"arguments\": {\"command\": \"""#]]
            .assert_eq(&format!("{:?}", grammar.forced_text(bash)));
    }

    #[test]
    fn token_mask_agrees_with_walking() {
        let vocabulary: Vec<&str> = vec![
            "<|im_end|>",
            "<",
            "tool",
            "_call",
            ">\n",
            "{\"",
            "name",
            "\":",
            " \"",
            "bash",
            "\",",
            " \"arguments",
            "\": {\"",
            "command",
            "ls",
            " -la",
            "\"}}",
            "\n</",
            "tool_call>",
            "\\",
            "n",
            "\"",
            "\n",
            "é",
            "}}\n",
            "",
        ];
        let bytes: Vec<Vec<u8>> = vocabulary.iter().map(|t| t.as_bytes().to_vec()).collect();
        let mut control = vec![false; bytes.len()];
        control[0] = true;
        let table = TokenTable::new(bytes, control, 0);
        let tools = &tools()[..1];
        let grammar = ToolGrammar::new(tools, 16);
        let reply = call(r#"{"name": "bash", "arguments": {"command": "ls -la\n"}}"#);
        let mut state = grammar.start();
        let mut allowed = vec![false; table.len()];
        let mut rest = reply.as_str();
        let mut steps = Vec::new();
        // Greedy longest-match tokenisation of the reply, checking each step's mask.
        while !rest.is_empty() {
            table.mask(&grammar, state, &mut allowed);
            let token = (0..table.len())
                .filter(|&t| allowed[t] && rest.as_bytes().starts_with(table.bytes(t as u32)))
                .max_by_key(|&t| table.bytes(t as u32).len())
                .expect("some allowed token continues the reply");
            for other in 0..table.len() {
                let walks = !table.bytes(other as u32).is_empty()
                    && other != 0
                    && grammar
                        .advance_bytes(state, table.bytes(other as u32))
                        .is_some();
                assert_eq!(allowed[other], walks, "token {:?}", vocabulary[other]);
            }
            steps.push(vocabulary[token]);
            state = grammar
                .advance_bytes(state, table.bytes(token as u32))
                .unwrap();
            rest = &rest[vocabulary[token].len()..];
        }
        table.mask(&grammar, state, &mut allowed);
        assert_eq!(allowed.iter().filter(|a| **a).count(), 1);
        assert!(allowed[0]);
        expect![[r#"["<", "tool_call>", "\n", "{\"", "name", "\":", " \"", "bash", "\",", " \"arguments", "\": {\"", "command", "\":", " \"", "ls", " -la", "\\", "n", "\"}}", "\n</", "tool_call>"]"#]]
            .assert_eq(&format!("{steps:?}"));
    }
}
