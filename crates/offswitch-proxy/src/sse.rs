//! Server-sent events, read incrementally from an upstream's body: each event is kept as the
//! exact bytes that arrived (so a released event reaches the client byte for byte) and as its
//! parsed `event:` and `data:` fields (so it can be checked).
//!
//! Ours rather than a crate's: the proxy needs each event's raw bytes to forward it untouched,
//! and a bound on an event's size that fails the stream rather than buffering without end;
//! the format is a few lines of the HTML standard.

use bytes::{Bytes, BytesMut};

/// One event as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Its bytes, through the blank line that ended it.
    pub raw: Bytes,
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
    /// A line with a field the standard does not name, or bytes that are not UTF-8: a client
    /// might read it otherwise than the proxy did, so it is not to be released as read.
    pub odd: bool,
}

impl SseEvent {
    /// An event written by the proxy.
    pub fn new(event: Option<&str>, data: &str) -> SseEvent {
        let mut raw = String::new();
        if let Some(event) = event {
            raw.push_str("event: ");
            raw.push_str(event);
            raw.push('\n');
        }
        for line in data.split('\n') {
            raw.push_str("data: ");
            raw.push_str(line);
            raw.push('\n');
        }
        raw.push('\n');
        SseEvent {
            raw: Bytes::from(raw),
            event: event.map(str::to_owned),
            data: data.to_owned(),
            odd: false,
        }
    }
}

/// Splits a byte stream into events.
pub struct SseParser {
    buffer: BytesMut,
    /// Whether the stream's first bytes were seen (a byte-order mark there is dropped, as the
    /// standard says, so that no client reads a field the proxy did not).
    started: bool,
    /// Where scanning for the end of the current event resumes.
    scanned: usize,
    max_event_bytes: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub struct EventTooLarge(pub usize);

impl SseParser {
    pub fn new(max_event_bytes: usize) -> SseParser {
        SseParser {
            buffer: BytesMut::new(),
            started: false,
            scanned: 0,
            max_event_bytes,
        }
    }

    /// Feed bytes; the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, EventTooLarge> {
        self.buffer.extend_from_slice(bytes);
        if !self.started {
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            if self.buffer.len() < BOM.len() && BOM.starts_with(&self.buffer) {
                return Ok(Vec::new());
            }
            self.started = true;
            if self.buffer.starts_with(BOM) {
                let _ = self.buffer.split_to(BOM.len());
            }
        }
        let mut events = Vec::new();
        while let Some(end) = self.event_end() {
            let raw = self.buffer.split_to(end).freeze();
            self.scanned = 0;
            events.push(parse(raw));
        }
        if self.buffer.len() > self.max_event_bytes {
            return Err(EventTooLarge(self.max_event_bytes));
        }
        Ok(events)
    }

    /// What is left when the stream ends, read as one last event (the standard discards an
    /// event without its closing blank line, but a client may not: the proxy checks it rather
    /// than forward bytes it never read).
    pub fn finish(&mut self) -> Option<SseEvent> {
        (!self.buffer.is_empty()).then(|| parse(self.buffer.split().freeze()))
    }

    /// The end (exclusive) of the first complete event in the buffer: a line break followed
    /// by an empty line (`\n\n`, `\r\n\r\n`, `\r\r`, and mixes).
    fn event_end(&mut self) -> Option<usize> {
        let bytes = &self.buffer[..];
        let mut i = self.scanned;
        while i < bytes.len() {
            // Jump to the next line-break byte: most of an event is its data.
            match memchr::memchr2(b'\n', b'\r', &bytes[i..]) {
                Some(at) => i += at,
                None => {
                    i = bytes.len();
                    break;
                }
            }
            let first = line_break(bytes, i);
            if let Some(after_first) = first {
                if after_first >= bytes.len() {
                    // A `\r` at the end may be the start of `\r\n`: wait for more.
                    break;
                }
                if let Some(after_second) = line_break(bytes, after_first) {
                    if bytes[after_second - 1] == b'\r' && after_second == bytes.len() {
                        break;
                    }
                    return Some(after_second);
                }
                i = after_first;
            } else {
                i += 1;
            }
        }
        self.scanned = i.saturating_sub(2);
        None
    }
}

/// The index after a line break at `i` (`\n`, `\r\n` or `\r`), if there is one.
fn line_break(bytes: &[u8], i: usize) -> Option<usize> {
    match bytes.get(i)? {
        b'\n' => Some(i + 1),
        b'\r' if bytes.get(i + 1) == Some(&b'\n') => Some(i + 2),
        b'\r' => Some(i + 1),
        _ => None,
    }
}

fn parse(raw: Bytes) -> SseEvent {
    let (text, mut odd) = match std::str::from_utf8(&raw) {
        Ok(text) => (std::borrow::Cow::Borrowed(text), false),
        Err(_) => (String::from_utf8_lossy(&raw), true),
    };
    let mut event = None;
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']) {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            "id" | "retry" => {}
            _ => odd = true,
        }
    }
    SseEvent {
        odd,
        raw,
        event,
        data: data.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_come_out_whole_and_byte_for_byte() {
        let stream =
            "event: a\ndata: {\"x\":1}\n\n: ping\n\ndata: one\r\ndata: two\r\n\r\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut parser = SseParser::new(1 << 20);
            let mut events = parser.push(&stream.as_bytes()[..split]).unwrap();
            events.extend(parser.push(&stream.as_bytes()[split..]).unwrap());
            let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
            assert_eq!(raw, stream.as_bytes(), "split at {split}");
            let parsed: Vec<(Option<&str>, &str)> = events
                .iter()
                .map(|e| (e.event.as_deref(), e.data.as_str()))
                .collect();
            assert_eq!(
                parsed,
                vec![
                    (Some("a"), "{\"x\":1}"),
                    (None, ""),
                    (None, "one\ntwo"),
                    (None, "[DONE]")
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_byte_order_mark_is_dropped_and_unknown_fields_are_odd() {
        let mut parser = SseParser::new(1 << 20);
        let mut events = parser.push(b"\xEF\xBB").unwrap();
        events.extend(
            parser
                .push(b"\xBFdata: {\"a\":1}\n\n\xEF\xBB\xBFdata: x\n\nid: 3\ndata: y\n\n")
                .unwrap(),
        );
        let seen: Vec<(&str, bool)> = events.iter().map(|e| (e.data.as_str(), e.odd)).collect();
        assert_eq!(seen, vec![("{\"a\":1}", false), ("", true), ("y", false)]);
        assert!(!events[0].raw.starts_with(b"\xEF"));
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut parser = SseParser::new(100);
        assert!(parser.push(&[b'x'; 60]).is_ok());
        assert_eq!(parser.push(&[b'x'; 60]), Err(EventTooLarge(100)));
    }
}
