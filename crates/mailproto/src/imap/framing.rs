//! Command framing: splitting the byte stream into whole commands, lines
//! plus the literals they announce (RFC 9051 §4.3, §7.5 continuation), with
//! every buffer bounded.

/// Longest command line (one segment between literals), CRLF included.
/// RFC 9051 §4 asks servers to accept at least 8000 octets; an RFC 2971
/// ID with its 30 fields of 1024 octets is about 32 KiB on one line, so
/// the limit is 64 KiB (Dovecot's `imap_max_line_length` default).
pub const MAX_LINE: usize = 64 * 1024;
/// Largest literal accepted inside a command.
pub const MAX_LITERAL: usize = 64 * 1024;
/// Largest whole command (all lines and literals).
pub const MAX_COMMAND: usize = 128 * 1024;
/// Longest tag accepted.
pub(super) const MAX_TAG: usize = 64;
/// Octets kept from the end of a skipped line: a literal announcement is
/// at most `{` + 19 digits + `+}` + CRLF.
pub(super) const SKIP_TAIL: usize = 32;

/// One result of [`Framer::next_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole command: its lines and literal data, as received.
    Command(Vec<u8>),
    /// The client announced a synchronizing literal: send a continuation
    /// request (`+ ...`) so it sends the data.
    Continue,
    /// A line exceeded [`MAX_LINE`]; the command was discarded. Reply BAD.
    TooLong {
        /// The command's tag, when it could be read.
        tag: Option<String>,
    },
    /// A literal exceeded [`MAX_LITERAL`] (or the command [`MAX_COMMAND`]);
    /// the command was discarded. Reply BAD.
    LiteralTooLarge {
        /// The command's tag, when it could be read.
        tag: Option<String>,
    },
}

/// Assembles commands from a byte stream, following `{n}` / `{n+}` literals.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    pending: Vec<u8>,
    literal_left: usize,
    /// Octets of a rejected command's non-synchronizing literal still to
    /// be thrown away.
    discard_left: usize,
    /// The rest of a rejected command's current line is thrown away.
    skip_line: bool,
    /// The last octets of the line being skipped: enough to see whether it
    /// ends in another `{n+}` whose data must be thrown away too.
    skip_tail: Vec<u8>,
    max_line: usize,
    max_literal: usize,
    max_command: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Self::with_limits(MAX_LINE, MAX_LITERAL, MAX_COMMAND)
    }
}

impl Framer {
    /// A framer with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A framer with explicit limits (line, literal, whole command).
    pub fn with_limits(max_line: usize, max_literal: usize, max_command: usize) -> Self {
        Framer {
            buf: Vec::new(),
            pending: Vec::new(),
            literal_left: 0,
            discard_left: 0,
            skip_line: false,
            skip_tail: Vec::new(),
            max_line: max_line.max(8),
            max_literal,
            max_command: max_command.max(max_line),
        }
    }

    /// Append bytes read from the client.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Is the framer in the middle of a command (so EOF now is abrupt)?
    pub fn is_mid_command(&self) -> bool {
        !self.pending.is_empty() || !self.buf.is_empty() || self.literal_left > 0
    }

    /// The next frame, or `None` when more input is needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.discard_left > 0 {
                let n = self.discard_left.min(self.buf.len());
                self.buf.drain(..n);
                self.discard_left -= n;
                if self.discard_left > 0 {
                    return None;
                }
                // The rest of the rejected command's line follows the literal.
                self.skip_line = true;
            }
            if self.literal_left > 0 {
                let n = self.literal_left.min(self.buf.len());
                self.pending.extend(self.buf.drain(..n));
                self.literal_left -= n;
                if self.literal_left > 0 {
                    return None;
                }
            }
            let lf = self.buf.iter().position(|&b| b == b'\n');
            if self.skip_line {
                let end = lf.map_or(self.buf.len(), |i| i + 1);
                self.skip_tail.extend(self.buf.drain(..end));
                let keep = self.skip_tail.len().saturating_sub(SKIP_TAIL);
                self.skip_tail.drain(..keep);
                // Without a line end, the rest of the line is still to come.
                lf?;
                self.skip_line = false;
                let tail = std::mem::take(&mut self.skip_tail);
                self.discard_literal_after(&tail);
                continue;
            }
            let Some(i) = lf else {
                if self.buf.len() > self.max_line {
                    let tag = self.tag_of_pending();
                    self.pending.clear();
                    // The rest of the line is skipped as it arrives.
                    self.skip_line = true;
                    return Some(Frame::TooLong { tag });
                }
                return None;
            };
            if i + 1 > self.max_line {
                let tag = self.tag_of_pending();
                self.pending.clear();
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                self.discard_literal_after(&line);
                return Some(Frame::TooLong { tag });
            }
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            self.pending.extend_from_slice(&line);
            match literal_suffix(&line) {
                Some((n, sync)) => {
                    if n > self.max_literal
                        || self.pending.len().saturating_add(n) > self.max_command
                    {
                        let tag = peek_tag(&self.pending);
                        self.pending.clear();
                        self.discard_literal_after(&line);
                        return Some(Frame::LiteralTooLarge { tag });
                    }
                    self.literal_left = n;
                    if sync {
                        return Some(Frame::Continue);
                    }
                }
                None => return Some(Frame::Command(std::mem::take(&mut self.pending))),
            }
        }
    }

    /// A rejected command's line ends here: if it announced a
    /// non-synchronizing literal, the client sends that data without
    /// waiting, so it is thrown away (and then the line after it) rather
    /// than read as commands (RFC 7888 §4: consume it or close). After a
    /// synchronizing one the client waits for a `+` that never comes and
    /// reads the tagged BAD instead.
    fn discard_literal_after(&mut self, line: &[u8]) {
        if let Some((n, false)) = literal_suffix(line) {
            self.discard_left = n;
            if n == 0 {
                self.skip_line = true;
            }
        }
    }

    fn tag_of_pending(&self) -> Option<String> {
        if self.pending.is_empty() {
            peek_tag(&self.buf)
        } else {
            peek_tag(&self.pending)
        }
    }
}

/// `{n}` or `{n+}` right before the line end: the literal's size and whether
/// it is synchronizing.
pub(super) fn literal_suffix(line: &[u8]) -> Option<(usize, bool)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let spec = &inner[open + 1..];
    let (digits, sync) = match spec.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (spec, true),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((usize::try_from(n).unwrap_or(usize::MAX), sync))
}

pub(super) fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

pub(super) fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

pub(super) fn is_tag_char(b: u8) -> bool {
    is_astring_char(b) && b != b'+'
}

/// The tag at the start of `input`, if it is a valid one.
pub fn peek_tag(input: &[u8]) -> Option<String> {
    let end = input
        .iter()
        .position(|&b| !is_tag_char(b))
        .unwrap_or(input.len());
    let tag = &input[..end];
    if tag.is_empty() || tag.len() > MAX_TAG {
        return None;
    }
    // Tag characters are ASCII, so this is lossless.
    Some(String::from_utf8_lossy(tag).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::imap::{CommandKind, parse_command};

    fn frames(f: &mut Framer) -> Vec<Frame> {
        std::iter::from_fn(|| f.next_frame()).collect()
    }

    #[test]
    fn frames_plain_lines() {
        let mut f = Framer::new();
        f.push(b"a1 NOOP\r\na2 CAPA");
        assert_eq!(
            frames(&mut f),
            vec![Frame::Command(b"a1 NOOP\r\n".to_vec())]
        );
        assert!(f.is_mid_command());
        f.push(b"BILITY\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::Command(b"a2 CAPABILITY\r\n".to_vec())]
        );
        assert!(!f.is_mid_command());
    }

    #[test]
    fn frames_literals() {
        let mut f = Framer::new();
        f.push(b"a LOGIN {5}\r\n");
        assert_eq!(frames(&mut f), vec![Frame::Continue]);
        f.push(b"alice {3+}\r\nxyz\r\n");
        let cmd = b"a LOGIN {5}\r\nalice {3+}\r\nxyz\r\n".to_vec();
        assert_eq!(frames(&mut f), vec![Frame::Command(cmd.clone())]);
        let parsed = parse_command(&cmd).unwrap();
        assert_eq!(
            parsed.kind,
            CommandKind::Login {
                user: "alice".into(),
                password: "xyz".into()
            }
        );
    }

    #[test]
    fn rejects_oversized_input_and_recovers() {
        let big = |t: &str| Frame::LiteralTooLarge {
            tag: Some(t.into()),
        };
        let long = |t: &str| Frame::TooLong {
            tag: Some(t.into()),
        };
        let cmd = |c: &[u8]| Frame::Command(c.to_vec());
        let mut f = Framer::with_limits(16, 10, 64);
        f.push(b"t1 LOGIN aaaaaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(
            frames(&mut f),
            vec![Frame::TooLong {
                tag: Some("t1".into())
            }]
        );
        f.push(b"aaaa\r\nt2 NOOP\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::Command(b"t2 NOOP\r\n".to_vec())]
        );

        // Synchronizing literal too large: rejected before the client sends it.
        f.push(b"t3 LOGIN {99}\r\nt4 NOOP\r\n");
        assert_eq!(frames(&mut f), [big("t3"), cmd(b"t4 NOOP\r\n")]);
        // Non-synchronizing: the data follows anyway and is skipped.
        f.push(b"t5 LOGIN {12+}\r\n0123456789ab x\r\nt6 NOOP\r\n");
        assert_eq!(frames(&mut f), [big("t5"), cmd(b"t6 NOOP\r\n")]);
        // ... and so are further non-synchronizing literals of the same
        // command (RFC 7888 §4), fed a byte at a time.
        let input =
            b"t7 LOGIN {12+}\r\n0123456789ab {3+}\r\nt8 {0+}\r\n {2+}\r\nt9\r\nt10 NOOP\r\n";
        let mut got = Vec::new();
        for b in input {
            f.push(&[*b]);
            got.extend(frames(&mut f));
        }
        assert_eq!(got, [big("t7"), cmd(b"t10 NOOP\r\n")]);
        // A line too long that ends in a non-synchronizing literal.
        f.push(b"t11 LOGIN aaaaaaaaaaaaaaaaaaaaaaaa {4+}\r\nt12 ");
        f.push(b"\r\nt13 NOOP\r\n");
        assert_eq!(frames(&mut f), [long("t11"), cmd(b"t13 NOOP\r\n")]);
        f.push(b"t14 LOGIN aaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(frames(&mut f).len(), 1);
        f.push(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa {4+}\r\nt15 \r\nt16 NOOP\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::Command(b"t16 NOOP\r\n".to_vec())]
        );
        // Within the bounds a non-synchronizing literal needs no continuation.
        f.push(b"t17 LOGIN {1+}\r\na {2+}\r\nbc\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::Command(
                b"t17 LOGIN {1+}\r\na {2+}\r\nbc\r\n".to_vec()
            )]
        );
    }
}
