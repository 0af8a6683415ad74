//! Output capture that keeps the head and the tail of a stream and counts what it cut.

use std::collections::VecDeque;

/// Keeps the first `cap / 2` bytes and the last `cap - cap / 2` bytes of everything pushed.
#[derive(Debug)]
pub struct HeadTail {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    total: u64,
}

impl HeadTail {
    pub fn new(cap: usize) -> HeadTail {
        let head_cap = cap / 2;
        HeadTail {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_cap,
            tail_cap: cap - head_cap,
            total: 0,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_cap - self.head.len();
        let into_head = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..into_head]);
        bytes = &bytes[into_head..];
        if bytes.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_cap..]);
        } else {
            let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(bytes);
        }
    }

    /// Every byte pushed, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes cut from the middle.
    pub fn cut(&self) -> u64 {
        self.total - (self.head.len() + self.tail.len()) as u64
    }

    pub fn into_bytes(self) -> Vec<u8> {
        let mut bytes = self.head;
        bytes.extend(self.tail);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::HeadTail;

    fn check(cap: usize, chunks: &[&str], expected: &str, cut: u64) {
        let mut capture = HeadTail::new(cap);
        for chunk in chunks {
            capture.push(chunk.as_bytes());
        }
        assert_eq!(capture.cut(), cut);
        assert_eq!(String::from_utf8(capture.into_bytes()).unwrap(), expected);
    }

    #[test]
    fn keeps_head_and_tail() {
        check(10, &["hello"], "hello", 0);
        check(4, &["abcdefgh"], "abgh", 4);
        check(4, &["ab", "cd", "ef", "gh"], "abgh", 4);
        check(5, &["abc", "defghij"], "abhij", 5);
        check(0, &["abc"], "", 3);
    }
}
