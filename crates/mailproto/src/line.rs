//! Bounded line splitting for line-oriented protocols.

/// One result of [`LineBuffer::next_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its CRLF (or bare LF).
    Complete(Vec<u8>),
    /// A line exceeded the limit; it is discarded up to and including its end.
    TooLong,
}

/// Splits a byte stream into lines of at most `max` octets (line ending
/// included). Input beyond the limit is discarded, never buffered.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    max: usize,
    skipping: bool,
}

impl LineBuffer {
    /// A buffer accepting lines of at most `max` octets including CRLF.
    pub fn new(max: usize) -> Self {
        LineBuffer {
            buf: Vec::new(),
            max: max.max(2),
            skipping: false,
        }
    }

    /// Append bytes read from the peer.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Octets buffered but not yet returned as a line.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete line, if one is buffered.
    pub fn next_line(&mut self) -> Option<Line> {
        loop {
            let lf = self.buf.iter().position(|&b| b == b'\n');
            if self.skipping {
                match lf {
                    Some(i) => {
                        self.buf.drain(..=i);
                        self.skipping = false;
                        continue;
                    }
                    None => {
                        self.buf.clear();
                        return None;
                    }
                }
            }
            return match lf {
                Some(i) if i + 1 > self.max => {
                    self.buf.drain(..=i);
                    Some(Line::TooLong)
                }
                Some(i) => {
                    let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    Some(Line::Complete(line))
                }
                None if self.buf.len() > self.max => {
                    self.buf.clear();
                    self.skipping = true;
                    Some(Line::TooLong)
                }
                None => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_crlf_and_lf() {
        let mut b = LineBuffer::new(100);
        b.push(b"ONE\r\nTWO\nTHR");
        assert_eq!(b.next_line(), Some(Line::Complete(b"ONE".to_vec())));
        assert_eq!(b.next_line(), Some(Line::Complete(b"TWO".to_vec())));
        assert_eq!(b.next_line(), None);
        b.push(b"EE\r\n");
        assert_eq!(b.next_line(), Some(Line::Complete(b"THREE".to_vec())));
        assert_eq!(b.buffered(), 0);
    }

    #[test]
    fn too_long_lines_are_dropped_and_reported_once() {
        let mut b = LineBuffer::new(8);
        b.push(b"0123456789");
        assert_eq!(b.next_line(), Some(Line::TooLong));
        assert_eq!(b.next_line(), None);
        b.push(b"abcdef\r\nOK\r\n");
        assert_eq!(b.next_line(), Some(Line::Complete(b"OK".to_vec())));
        b.push(b"0123456789\r\nX\r\n");
        assert_eq!(b.next_line(), Some(Line::TooLong));
        assert_eq!(b.next_line(), Some(Line::Complete(b"X".to_vec())));
    }

    #[test]
    fn exact_limit_is_accepted() {
        let mut b = LineBuffer::new(5);
        b.push(b"abc\r\n");
        assert_eq!(b.next_line(), Some(Line::Complete(b"abc".to_vec())));
    }
}
