//! Reading a DATA body: dot-unstuffing, the `CRLF.CRLF` terminator, a size
//! limit and a line-length limit (RFC 5321 §4.1.1.4, §4.5.2, §4.5.3.1.6).
//!
//! The reader is a byte-level state machine that may be fed input in pieces
//! of any size; it never needs to buffer more than the body it returns.
//!
//! Line endings: the body ends only at `CRLF "." CRLF` (the first CRLF may be
//! the one that ended the DATA command, so `"." CRLF` right away is an empty
//! body). A bare LF or bare CR never ends the body, so `LF "." LF` and similar
//! cannot be used to smuggle a second message past a downstream server that
//! reads line endings differently (the "SMTP smuggling" family of attacks).
//! Bare CR and bare LF are normalized to CRLF in the stored body, so what we
//! relay onward is always well-formed (RFC 5322 §2.3).

use bytes::{Bytes, BytesMut};

/// How the body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutcome {
    /// The body, unstuffed and with CRLF line endings.
    Complete(Bytes),
    /// The body exceeded the size limit; the rest was read and discarded.
    TooLarge,
    /// A line exceeded the line-length limit; the rest was read and discarded.
    LineTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.` CR at the start of a line.
    DotCr,
    /// Inside a line.
    Middle,
    /// Saw a CR inside a line.
    Cr,
}

/// Incremental reader for one DATA body.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    body: BytesMut,
    max_size: usize,
    max_line: usize,
    /// Octets on the current line so far, as received (dot included).
    line_len: usize,
    /// The current line began after a real CRLF (not a bare CR or LF); only
    /// then can `"." CRLF` end the body.
    after_crlf: bool,
    too_large: bool,
    line_too_long: bool,
}

impl DataReader {
    /// A reader that accepts up to `max_size` body octets (after unstuffing)
    /// and lines up to `max_line` octets including the CRLF.
    pub fn new(max_size: usize, max_line: usize) -> Self {
        DataReader {
            state: State::LineStart,
            body: BytesMut::new(),
            max_size,
            max_line: max_line.max(3),
            line_len: 0,
            after_crlf: true,
            too_large: false,
            line_too_long: false,
        }
    }

    /// Octets of body collected so far.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether no body octets were collected yet.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Consume `input`. Returns how many octets were consumed and, once the
    /// terminating `CRLF.CRLF` has been read, the outcome. Octets after the
    /// terminator are left unconsumed (they are the next pipelined command).
    /// After an outcome was returned the reader must not be fed again.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<DataOutcome>) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Middle => {
                    // Fast path: copy up to the next CR or LF in one go.
                    let run = input[i..]
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n')
                        .unwrap_or(input.len() - i);
                    if run > 0 {
                        self.push_content(&input[i..i + run]);
                        i += run;
                        continue;
                    }
                    if b == b'\r' {
                        self.state = State::Cr;
                    } else {
                        // Bare LF: normalize to CRLF.
                        self.end_line(false);
                    }
                    i += 1;
                }
                State::Cr => {
                    if b == b'\n' {
                        self.end_line(true);
                        i += 1;
                    } else {
                        // Bare CR: it ends the line (normalized), and this
                        // octet starts the next one; it is not consumed here.
                        self.end_line(false);
                    }
                }
                State::LineStart => {
                    if b == b'.' {
                        self.state = State::Dot;
                        self.line_len = 1;
                        i += 1;
                    } else {
                        self.state = State::Middle;
                    }
                }
                State::Dot => match b {
                    b'\r' => {
                        self.state = State::DotCr;
                        i += 1;
                    }
                    b'\n' => {
                        // ".\n": a line holding a lone dot, ended by a bare LF.
                        // Not the terminator; keep the dot, normalize the LF.
                        self.push_content(b".");
                        self.end_line(false);
                        i += 1;
                    }
                    _ => {
                        // RFC 5321 §4.5.2: a leading period is deleted when
                        // other characters follow on the line.
                        self.state = State::Middle;
                    }
                },
                State::DotCr => {
                    if b == b'\n' {
                        if self.after_crlf {
                            return (i + 1, Some(self.finish()));
                        }
                        // "." CRLF after a bare line ending: content, not the end.
                        self.push_content(b".");
                        self.end_line(true);
                        i += 1;
                    } else {
                        // ".\r" + something else: a lone dot line ended by a bare CR.
                        self.push_content(b".");
                        self.end_line(false);
                    }
                }
            }
        }
        (i, None)
    }

    fn push_content(&mut self, bytes: &[u8]) {
        self.line_len = self.line_len.saturating_add(bytes.len());
        // RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with CRLF.
        if self.line_len + 2 > self.max_line {
            self.line_too_long = true;
        }
        self.append(bytes);
        self.state = State::Middle;
    }

    fn end_line(&mut self, real_crlf: bool) {
        self.append(b"\r\n");
        self.line_len = 0;
        self.after_crlf = real_crlf;
        self.state = State::LineStart;
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.too_large || self.line_too_long {
            return;
        }
        if self.body.len() + bytes.len() > self.max_size {
            self.too_large = true;
            self.body = BytesMut::new();
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    fn finish(&mut self) -> DataOutcome {
        if self.too_large {
            DataOutcome::TooLarge
        } else if self.line_too_long {
            DataOutcome::LineTooLong
        } else {
            DataOutcome::Complete(std::mem::take(&mut self.body).freeze())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], max_size: usize, max_line: usize) -> (usize, Option<DataOutcome>) {
        DataReader::new(max_size, max_line).feed(input)
    }

    /// Feed in every possible two-piece split and byte-by-byte, and check that
    /// the outcome and the consumed count never depend on the split.
    fn read_split(input: &[u8], max_size: usize, max_line: usize) -> (usize, Option<DataOutcome>) {
        let whole = read_all(input, max_size, max_line);
        for cut in 0..=input.len() {
            let mut r = DataReader::new(max_size, max_line);
            let (a, out) = r.feed(&input[..cut]);
            let got = if out.is_some() {
                (a, out)
            } else {
                let (b, out) = r.feed(&input[cut..]);
                (a + b, out)
            };
            assert_eq!(got, whole, "split at {cut}");
        }
        let mut r = DataReader::new(max_size, max_line);
        let mut used = 0;
        let mut out = None;
        for byte in input {
            let (n, o) = r.feed(std::slice::from_ref(byte));
            used += n;
            if o.is_some() {
                out = o;
                break;
            }
        }
        assert_eq!((used, out), whole, "byte by byte");
        whole
    }

    fn complete(b: &[u8]) -> Option<DataOutcome> {
        Some(DataOutcome::Complete(Bytes::copy_from_slice(b)))
    }

    #[test]
    fn simple_body() {
        let input = b"Subject: hi\r\n\r\nHello\r\n.\r\n";
        assert_eq!(
            read_split(input, 1000, 1000),
            (input.len(), complete(b"Subject: hi\r\n\r\nHello\r\n"))
        );
    }

    #[test]
    fn empty_body_and_trailing_pipelined_input() {
        assert_eq!(read_split(b".\r\nQUIT\r\n", 1000, 1000), (3, complete(b"")));
        let input = b"a\r\n.\r\nQUIT\r\n";
        assert_eq!(read_split(input, 1000, 1000), (6, complete(b"a\r\n")));
    }

    #[test]
    fn dot_unstuffing() {
        let input = b"..leading\r\n...\r\n.x\r\nmid.dle\r\n.\r\n";
        assert_eq!(
            read_split(input, 1000, 1000),
            (input.len(), complete(b".leading\r\n..\r\nx\r\nmid.dle\r\n"))
        );
        // ".." alone is a line holding one dot.
        assert_eq!(
            read_split(b"..\r\n.\r\n", 1000, 1000),
            (7, complete(b".\r\n"))
        );
    }

    #[test]
    fn incomplete_input_waits() {
        for partial in [
            &b""[..],
            b"abc",
            b"abc\r\n",
            b"abc\r\n.",
            b"abc\r\n.\r",
            b"\r\n.\r",
        ] {
            assert_eq!(
                read_all(partial, 1000, 1000),
                (partial.len(), None),
                "{partial:?}"
            );
        }
    }

    #[test]
    fn bare_lf_and_cr_never_terminate() {
        // The smuggling patterns: none of these end the body.
        for input in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\n.\r\nb\r\n",
            b"a\r\n.\nb\r\n",
            b"a\r.\r\nb\r\n",
            b"a\r\n.\rb\r\n",
            b"a\r\n.\r.\r\nb\r\n",
            b"a\n..\r\n.\n\r\n",
        ] {
            let (n, out) = read_split(input, 1000, 1000);
            assert_eq!((n, out), (input.len(), None), "{input:?}");
        }
    }

    #[test]
    fn bare_line_endings_are_normalized() {
        let input = b"a\nb\rc\r\n.\nd\r\n.\re\r\n.\r\n";
        assert_eq!(
            read_split(input, 1000, 1000),
            (
                input.len(),
                complete(b"a\r\nb\r\nc\r\n.\r\nd\r\n.\r\ne\r\n")
            )
        );
        // CR CR LF: the first CR is bare.
        assert_eq!(
            read_split(b"a\r\r\n.\r\n", 1000, 1000),
            (7, complete(b"a\r\n\r\n"))
        );
    }

    #[test]
    fn size_limit() {
        let input = b"0123456789\r\n.\r\n";
        assert_eq!(
            read_split(input, 12, 1000),
            (input.len(), complete(b"0123456789\r\n"))
        );
        assert_eq!(
            read_split(input, 11, 1000),
            (input.len(), Some(DataOutcome::TooLarge))
        );
        assert_eq!(
            read_split(input, 0, 1000),
            (input.len(), Some(DataOutcome::TooLarge))
        );
        assert_eq!(read_split(b".\r\n", 0, 1000), (3, complete(b"")));
    }

    #[test]
    fn line_length_limit() {
        // 8 octets + CRLF = 10 octets per line.
        let ok = b"12345678\r\n.\r\n";
        assert_eq!(
            read_split(ok, 1000, 10),
            (ok.len(), complete(b"12345678\r\n"))
        );
        let long = b"123456789\r\nshort\r\n.\r\n";
        assert_eq!(
            read_split(long, 1000, 10),
            (long.len(), Some(DataOutcome::LineTooLong))
        );
        // A stuffed dot counts as received.
        let stuffed = b"..2345678\r\n.\r\n";
        assert_eq!(
            read_split(stuffed, 1000, 10),
            (stuffed.len(), Some(DataOutcome::LineTooLong))
        );
        // The last line without a CRLF before the terminator cannot exist, but a
        // long line never terminated keeps the reader waiting.
        assert_eq!(read_all(&[b'x'; 100], 1000, 10), (100, None));
    }

    #[test]
    fn binary_octets_pass_through() {
        let mut input: Vec<u8> = (0u8..=255).filter(|b| *b != b'\r' && *b != b'\n').collect();
        let expect = {
            let mut e = input.clone();
            e.extend_from_slice(b"\r\n");
            e
        };
        input.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            read_split(&input, 1000, 1000),
            (input.len(), complete(&expect))
        );
    }
}
