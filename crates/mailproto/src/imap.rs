//! IMAP4 (an RFC 3501 / RFC 9051 subset): command framing with literals,
//! the command parser, sequence sets, FETCH attributes and response
//! formatting.
//!
//! The service feeds bytes into a [`Framer`], which yields whole commands
//! (lines plus any literals they carry) or asks for a literal continuation;
//! [`parse_command`] turns a whole command into a [`Command`]. Everything is
//! bounded: lines by [`MAX_LINE`], literals by [`MAX_LITERAL`], whole
//! commands by [`MAX_COMMAND`].

use std::borrow::Cow;

/// Longest command line (one segment between literals), CRLF included.
/// RFC 9051 asks servers to accept at least 8000 octets.
pub const MAX_LINE: usize = 8192;
/// Largest literal accepted inside a command.
pub const MAX_LITERAL: usize = 64 * 1024;
/// Largest whole command (all lines and literals).
pub const MAX_COMMAND: usize = 128 * 1024;
/// Longest tag accepted.
const MAX_TAG: usize = 64;

/// The system flags this server knows and keeps.
pub const SYSTEM_FLAGS: [&str; 5] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];

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
    discard_left: usize,
    skip_line: bool,
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
                match lf {
                    Some(i) => {
                        self.buf.drain(..=i);
                        self.skip_line = false;
                        continue;
                    }
                    None => {
                        self.buf.clear();
                        return None;
                    }
                }
            }
            let Some(i) = lf else {
                if self.buf.len() > self.max_line {
                    let tag = self.tag_of_pending();
                    self.pending.clear();
                    self.buf.clear();
                    self.skip_line = true;
                    return Some(Frame::TooLong { tag });
                }
                return None;
            };
            if i + 1 > self.max_line {
                let tag = self.tag_of_pending();
                self.pending.clear();
                self.buf.drain(..=i);
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
                        if !sync {
                            // A non-synchronizing literal is on its way; drop it.
                            self.discard_left = n;
                        }
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
fn literal_suffix(line: &[u8]) -> Option<(usize, bool)> {
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

fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

fn is_tag_char(b: u8) -> bool {
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

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The client's tag, echoed in the completion response.
    pub tag: String,
    /// What to do.
    pub kind: CommandKind,
}

/// The commands this server understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    /// `CAPABILITY`.
    Capability,
    /// `NOOP`.
    Noop,
    /// `LOGOUT`.
    Logout,
    /// `LOGIN user password`.
    Login {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// `SELECT mailbox`.
    Select {
        /// Mailbox name as given (`INBOX` is case-insensitive).
        mailbox: String,
    },
    /// `EXAMINE mailbox` (read-only SELECT).
    Examine {
        /// Mailbox name as given.
        mailbox: String,
    },
    /// `FETCH` or `UID FETCH`.
    Fetch {
        /// Which messages (sequence numbers, or UIDs when `uid`).
        set: SequenceSet,
        /// What to return, macros expanded.
        attrs: Vec<FetchAttr>,
        /// `UID FETCH`: `set` holds UIDs and UID is always returned.
        uid: bool,
    },
}

/// The protocol state of an IMAP session (RFC 9051 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Before LOGIN.
    NotAuthenticated,
    /// Logged in, no mailbox selected.
    Authenticated,
    /// A mailbox is selected.
    Selected,
    /// LOGOUT was given; the connection is closing.
    Logout,
}

impl CommandKind {
    /// May this command be given in `state`?
    pub fn allowed_in(&self, state: State) -> bool {
        match self {
            CommandKind::Capability | CommandKind::Noop | CommandKind::Logout => {
                state != State::Logout
            }
            CommandKind::Login { .. } => state == State::NotAuthenticated,
            CommandKind::Select { .. } | CommandKind::Examine { .. } => {
                matches!(state, State::Authenticated | State::Selected)
            }
            CommandKind::Fetch { .. } => state == State::Selected,
        }
    }
}

/// A command that could not be parsed; answer with [`ParseError::response`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// The tag, when it could be read (tagged BAD), else untagged BAD.
    pub tag: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ParseError {
    /// The BAD response for this error.
    pub fn response(&self) -> Vec<u8> {
        match &self.tag {
            Some(t) => tagged(t, Status::Bad, &self.message),
            None => untagged(&format!("BAD {}", self.message)),
        }
    }
}

/// One end of a sequence range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNum {
    /// An explicit number (non-zero).
    Value(u32),
    /// `*`: the largest number in use.
    Star,
}

/// A sequence set (`1:4,7,9:*`) of sequence numbers or UIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet(Vec<(SeqNum, SeqNum)>);

impl SequenceSet {
    /// Parse the textual form; `None` if malformed.
    pub fn parse(s: &[u8]) -> Option<SequenceSet> {
        if s.is_empty() {
            return None;
        }
        let mut ranges = Vec::new();
        for part in s.split(|&b| b == b',') {
            let mut ends = part.splitn(2, |&b| b == b':');
            let a = parse_seq_num(ends.next()?)?;
            let b = match ends.next() {
                Some(e) => parse_seq_num(e)?,
                None => a,
            };
            ranges.push((a, b));
        }
        Some(SequenceSet(ranges))
    }

    /// The ranges, as given.
    pub fn ranges(&self) -> &[(SeqNum, SeqNum)] {
        &self.0
    }

    /// Does the set contain `n`, when `*` stands for `largest`?
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        let v = |s: SeqNum| match s {
            SeqNum::Value(v) => v,
            SeqNum::Star => largest,
        };
        self.0.iter().any(|&(a, b)| {
            let (a, b) = (v(a), v(b));
            a.min(b) <= n && n <= a.max(b)
        })
    }

    /// The largest explicit number in the set.
    pub fn max_value(&self) -> Option<u32> {
        self.0
            .iter()
            .flat_map(|&(a, b)| [a, b])
            .filter_map(|s| match s {
                SeqNum::Value(v) => Some(v),
                SeqNum::Star => None,
            })
            .max()
    }
}

fn parse_seq_num(s: &[u8]) -> Option<SeqNum> {
    if s == b"*" {
        return Some(SeqNum::Star);
    }
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) || s[0] == b'0' {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok().map(SeqNum::Value)
}

/// A body section (`BODY[...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Section {
    /// `[]`: the whole message.
    Full,
    /// `[HEADER]`: the header, blank line included.
    Header,
    /// `[TEXT]`: the body after the blank line.
    Text,
    /// `[HEADER.FIELDS (..)]` or `[HEADER.FIELDS.NOT (..)]`.
    HeaderFields {
        /// Field names, upper-cased.
        fields: Vec<String>,
        /// `.NOT`: every field except these.
        not: bool,
    },
}

/// A FETCH data item the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAttr {
    /// `FLAGS`.
    Flags,
    /// `UID`.
    Uid,
    /// `INTERNALDATE`.
    InternalDate,
    /// `RFC822.SIZE`.
    Rfc822Size,
    /// `RFC822` (same as `BODY[]`, sets `\Seen`).
    Rfc822,
    /// `RFC822.HEADER` (same as `BODY.PEEK[HEADER]`).
    Rfc822Header,
    /// `RFC822.TEXT` (same as `BODY[TEXT]`, sets `\Seen`).
    Rfc822Text,
    /// `BODY[section]<partial>` or `BODY.PEEK[...]`.
    Body {
        /// Which part.
        section: Section,
        /// `BODY.PEEK`: do not set `\Seen`.
        peek: bool,
        /// `<origin.count>`.
        partial: Option<(u32, u32)>,
    },
}

impl FetchAttr {
    /// Does returning this item need the message content?
    pub fn needs_content(&self) -> bool {
        matches!(
            self,
            FetchAttr::Rfc822
                | FetchAttr::Rfc822Header
                | FetchAttr::Rfc822Text
                | FetchAttr::Body { .. }
        )
    }

    /// Does returning this item set `\Seen` (unless the mailbox is read-only)?
    pub fn sets_seen(&self) -> bool {
        matches!(
            self,
            FetchAttr::Rfc822 | FetchAttr::Rfc822Text | FetchAttr::Body { peek: false, .. }
        )
    }

    /// The name of this item in a FETCH response (`BODY[]<0>`, `RFC822`, ...).
    pub fn response_name(&self) -> String {
        match self {
            FetchAttr::Flags => "FLAGS".into(),
            FetchAttr::Uid => "UID".into(),
            FetchAttr::InternalDate => "INTERNALDATE".into(),
            FetchAttr::Rfc822Size => "RFC822.SIZE".into(),
            FetchAttr::Rfc822 => "RFC822".into(),
            FetchAttr::Rfc822Header => "RFC822.HEADER".into(),
            FetchAttr::Rfc822Text => "RFC822.TEXT".into(),
            FetchAttr::Body {
                section, partial, ..
            } => {
                let sec = match section {
                    Section::Full => String::new(),
                    Section::Header => "HEADER".into(),
                    Section::Text => "TEXT".into(),
                    Section::HeaderFields { fields, not } => format!(
                        "HEADER.FIELDS{} ({})",
                        if *not { ".NOT" } else { "" },
                        fields.join(" ")
                    ),
                };
                match partial {
                    Some((origin, _)) => format!("BODY[{sec}]<{origin}>"),
                    None => format!("BODY[{sec}]"),
                }
            }
        }
    }

    /// The bytes this item returns from `message`; `None` for items that
    /// are not content (FLAGS, UID, ...).
    pub fn extract<'m>(&self, message: &'m [u8]) -> Option<Cow<'m, [u8]>> {
        let (header, text) = split_header(message);
        let (data, partial): (Cow<'m, [u8]>, _) = match self {
            FetchAttr::Rfc822 => (Cow::Borrowed(message), None),
            FetchAttr::Rfc822Header => (Cow::Borrowed(header), None),
            FetchAttr::Rfc822Text => (Cow::Borrowed(text), None),
            FetchAttr::Body {
                section, partial, ..
            } => {
                let data = match section {
                    Section::Full => Cow::Borrowed(message),
                    Section::Header => Cow::Borrowed(header),
                    Section::Text => Cow::Borrowed(text),
                    Section::HeaderFields { fields, not } => {
                        Cow::Owned(header_fields(header, fields, *not))
                    }
                };
                (data, *partial)
            }
            _ => return None,
        };
        Some(match partial {
            None => data,
            Some((origin, count)) => {
                let start = (origin as usize).min(data.len());
                let end = start.saturating_add(count as usize).min(data.len());
                match data {
                    Cow::Borrowed(b) => Cow::Borrowed(&b[start..end]),
                    Cow::Owned(v) => Cow::Owned(v[start..end].to_vec()),
                }
            }
        })
    }
}

/// Split a message into its header (through the blank line) and its body.
/// Without a blank line the whole message is header.
pub fn split_header(message: &[u8]) -> (&[u8], &[u8]) {
    let mut pos = 0;
    while pos < message.len() {
        let end = message[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |i| pos + i + 1);
        let line = &message[pos..end];
        pos = end;
        if line == b"\r\n" || line == b"\n" {
            return message.split_at(pos);
        }
    }
    (message, &[])
}

/// The header fields named (or, with `not`, not named) in `fields`, with
/// continuation lines, followed by the blank line.
fn header_fields(header: &[u8], fields: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    let mut pos = 0;
    while pos < header.len() {
        let end = header[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |i| pos + i + 1);
        let line = &header[pos..end];
        pos = end;
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            let name = String::from_utf8_lossy(name).trim().to_ascii_uppercase();
            keep = fields.contains(&name) != not;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

struct Cur<'a> {
    s: &'a [u8],
    i: usize,
}

type PResult<T> = Result<T, String>;

impl<'a> Cur<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8, what: &str) -> PResult<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(format!("expected {what}"))
        }
    }

    fn sp(&mut self) -> PResult<()> {
        self.expect(b' ', "a space")
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    fn end(&mut self) -> PResult<()> {
        let rest = &self.s[self.i.min(self.s.len())..];
        if rest.is_empty() || rest == b"\r\n" || rest == b"\n" {
            Ok(())
        } else {
            Err("unexpected characters at end of command".into())
        }
    }

    fn number(&mut self) -> PResult<u32> {
        let d = self.take_while(|b| b.is_ascii_digit());
        if d.is_empty() || d.len() > 10 {
            return Err("expected a number".into());
        }
        std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "number out of range".into())
    }

    fn quoted(&mut self) -> PResult<Vec<u8>> {
        self.expect(b'"', "a quoted string")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r' | b'\n' | 0) => return Err("unterminated quoted string".into()),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c);
                            self.i += 1;
                        }
                        _ => return Err("invalid escape in quoted string".into()),
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    fn literal(&mut self) -> PResult<Vec<u8>> {
        self.expect(b'{', "a literal")?;
        let n = self.number()? as usize;
        self.eat(b'+');
        self.expect(b'}', "'}'")?;
        self.eat(b'\r');
        self.expect(b'\n', "CRLF after literal size")?;
        let end = self
            .i
            .checked_add(n)
            .filter(|e| *e <= self.s.len())
            .ok_or("literal data missing")?;
        let data = self.s[self.i..end].to_vec();
        self.i = end;
        Ok(data)
    }

    fn astring(&mut self) -> PResult<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            _ => {
                let a = self.take_while(is_astring_char);
                if a.is_empty() {
                    Err("expected a string".into())
                } else {
                    Ok(a.to_vec())
                }
            }
        }
    }

    fn astring_utf8(&mut self, what: &str) -> PResult<String> {
        String::from_utf8(self.astring()?).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    fn fetch_attrs(&mut self) -> PResult<Vec<FetchAttr>> {
        if self.eat(b'(') {
            let mut attrs = vec![self.fetch_attr()?];
            while self.eat(b' ') {
                attrs.push(self.fetch_attr()?);
            }
            self.expect(b')', "')'")?;
            return Ok(attrs);
        }
        let save = self.i;
        let word = self
            .take_while(|b| b.is_ascii_alphanumeric() || b == b'.')
            .to_ascii_uppercase();
        match word.as_slice() {
            b"FAST" => Ok(vec![
                FetchAttr::Flags,
                FetchAttr::InternalDate,
                FetchAttr::Rfc822Size,
            ]),
            b"ALL" | b"FULL" => Err("FETCH ALL and FULL are not supported yet (ENVELOPE)".into()),
            _ => {
                self.i = save;
                Ok(vec![self.fetch_attr()?])
            }
        }
    }

    fn fetch_attr(&mut self) -> PResult<FetchAttr> {
        let word = self
            .take_while(|b| b.is_ascii_alphanumeric() || b == b'.')
            .to_ascii_uppercase();
        let attr = match word.as_slice() {
            b"FLAGS" => FetchAttr::Flags,
            b"UID" => FetchAttr::Uid,
            b"INTERNALDATE" => FetchAttr::InternalDate,
            b"RFC822.SIZE" => FetchAttr::Rfc822Size,
            b"RFC822" => FetchAttr::Rfc822,
            b"RFC822.HEADER" => FetchAttr::Rfc822Header,
            b"RFC822.TEXT" => FetchAttr::Rfc822Text,
            b"BODY" | b"BODY.PEEK" if self.peek() == Some(b'[') => {
                let peek = word == b"BODY.PEEK";
                let section = self.section()?;
                let partial = if self.eat(b'<') {
                    let origin = self.number()?;
                    self.expect(b'.', "'.' in partial")?;
                    let count = self.number()?;
                    if count == 0 {
                        return Err("partial count must be non-zero".into());
                    }
                    self.expect(b'>', "'>'")?;
                    Some((origin, count))
                } else {
                    None
                };
                FetchAttr::Body {
                    section,
                    peek,
                    partial,
                }
            }
            b"" => return Err("expected a FETCH attribute".into()),
            other => {
                let name = String::from_utf8_lossy(other);
                return Err(format!("FETCH {name} is not supported"));
            }
        };
        Ok(attr)
    }

    fn section(&mut self) -> PResult<Section> {
        self.expect(b'[', "'['")?;
        let spec = self
            .take_while(|b| b.is_ascii_alphanumeric() || b == b'.')
            .to_ascii_uppercase();
        let section = match spec.as_slice() {
            b"" => Section::Full,
            b"HEADER" => Section::Header,
            b"TEXT" => Section::Text,
            b"HEADER.FIELDS" | b"HEADER.FIELDS.NOT" => {
                let not = spec.ends_with(b".NOT");
                self.sp()?;
                self.expect(b'(', "'('")?;
                let mut fields = Vec::new();
                loop {
                    let f = self.astring()?;
                    fields.push(String::from_utf8_lossy(&f).to_ascii_uppercase());
                    if !self.eat(b' ') {
                        break;
                    }
                }
                self.expect(b')', "')'")?;
                Section::HeaderFields { fields, not }
            }
            other => {
                let name = String::from_utf8_lossy(other);
                return Err(format!("section [{name}] is not supported"));
            }
        };
        self.expect(b']', "']'")?;
        Ok(section)
    }
}

/// Parse a whole command as assembled by [`Framer`].
pub fn parse_command(input: &[u8]) -> Result<Command, ParseError> {
    let tag = peek_tag(input);
    let Some(tag_s) = tag.clone() else {
        return Err(ParseError {
            tag: None,
            message: "missing or invalid tag".into(),
        });
    };
    let bad = |message: String| ParseError {
        tag: tag.clone(),
        message,
    };
    let mut c = Cur {
        s: input,
        i: tag_s.len(),
    };
    c.sp()
        .map_err(|_| bad("expected a command after the tag".into()))?;
    let kind = parse_kind(&mut c).map_err(bad)?;
    Ok(Command { tag: tag_s, kind })
}

fn parse_kind(c: &mut Cur<'_>) -> PResult<CommandKind> {
    let name = c
        .take_while(|b| b.is_ascii_alphanumeric())
        .to_ascii_uppercase();
    let kind = match name.as_slice() {
        b"CAPABILITY" => CommandKind::Capability,
        b"NOOP" => CommandKind::Noop,
        b"LOGOUT" => CommandKind::Logout,
        b"LOGIN" => {
            c.sp()?;
            let user = c.astring_utf8("user name")?;
            c.sp()?;
            let password = c.astring_utf8("password")?;
            CommandKind::Login { user, password }
        }
        b"SELECT" | b"EXAMINE" => {
            c.sp()?;
            let mailbox = c.astring_utf8("mailbox name")?;
            if name == b"SELECT" {
                CommandKind::Select { mailbox }
            } else {
                CommandKind::Examine { mailbox }
            }
        }
        b"FETCH" => fetch_args(c, false)?,
        b"UID" => {
            c.sp()?;
            let sub = c
                .take_while(|b| b.is_ascii_alphanumeric())
                .to_ascii_uppercase();
            match sub.as_slice() {
                b"FETCH" => fetch_args(c, true)?,
                other => {
                    return Err(format!(
                        "UID {} is not supported",
                        String::from_utf8_lossy(other)
                    ));
                }
            }
        }
        b"" => return Err("expected a command".into()),
        other => {
            let mut n = String::from_utf8_lossy(other).into_owned();
            n.truncate(40);
            return Err(format!("unknown or unsupported command {n}"));
        }
    };
    c.end()?;
    Ok(kind)
}

fn fetch_args(c: &mut Cur<'_>, uid: bool) -> PResult<CommandKind> {
    c.sp()?;
    let raw = c.take_while(|b| b.is_ascii_digit() || matches!(b, b':' | b',' | b'*'));
    let set = SequenceSet::parse(raw).ok_or("invalid sequence set")?;
    c.sp()?;
    let mut attrs = c.fetch_attrs()?;
    if uid && !attrs.contains(&FetchAttr::Uid) {
        attrs.insert(0, FetchAttr::Uid);
    }
    Ok(CommandKind::Fetch { set, attrs, uid })
}

/// Completion status of a tagged response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `OK`.
    Ok,
    /// `NO`: the command failed.
    No,
    /// `BAD`: the command was not understood or not allowed.
    Bad,
}

fn clean(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b == b'\r' || b == b'\n') {
        Cow::Owned(text.replace(['\r', '\n'], " "))
    } else {
        Cow::Borrowed(text)
    }
}

/// `tag OK text` (or NO / BAD), CRLF-terminated.
pub fn tagged(tag: &str, status: Status, text: &str) -> Vec<u8> {
    let s = match status {
        Status::Ok => "OK",
        Status::No => "NO",
        Status::Bad => "BAD",
    };
    format!("{tag} {s} {}\r\n", clean(text)).into_bytes()
}

/// `* text`, CRLF-terminated.
pub fn untagged(text: &str) -> Vec<u8> {
    format!("* {}\r\n", clean(text)).into_bytes()
}

/// A continuation request `+ text`.
pub fn continuation(text: &str) -> Vec<u8> {
    format!("+ {}\r\n", clean(text)).into_bytes()
}

/// The capability list. `login_ok` is false on a cleartext connection where
/// plaintext authentication is disabled (then `LOGINDISABLED` is announced).
pub fn capabilities(login_ok: bool) -> String {
    let mut caps = String::from("IMAP4rev1 LITERAL-");
    if !login_ok {
        caps.push_str(" LOGINDISABLED");
    }
    caps
}

/// The server greeting.
pub fn greeting(hostname: &str, login_ok: bool) -> Vec<u8> {
    let host: String = hostname
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    untagged(&format!(
        "OK [CAPABILITY {}] {host} Tern IMAP ready",
        capabilities(login_ok)
    ))
}

/// A parenthesized flag list: `(\Seen \Flagged)`.
pub fn flag_list<S: AsRef<str>>(flags: &[S]) -> String {
    let mut out = String::from("(");
    for (i, f) in flags.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(f.as_ref());
    }
    out.push(')');
    out
}

/// An IMAP `date-time` (`"17-Jul-1996 02:44:25 +0000"`, quotes included)
/// for a Unix time in milliseconds, in UTC.
pub fn format_internal_date(unix_ms: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = unix_ms.max(0) / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name = MONTHS.get((month - 1) as usize).copied().unwrap_or("Jan");
    format!(
        "\"{day:2}-{month_name}-{year:04} {:02}:{:02}:{:02} +0000\"",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One item of a FETCH response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchItem<'a> {
    /// `FLAGS (...)`.
    Flags(&'a [String]),
    /// `UID n`.
    Uid(u32),
    /// `RFC822.SIZE n`.
    Rfc822Size(u64),
    /// `INTERNALDATE "..."` from Unix milliseconds.
    InternalDate(i64),
    /// `NAME {n}\r\n<data>`: body data, always sent as a literal.
    Data {
        /// Response name, from [`FetchAttr::response_name`].
        name: String,
        /// The octets.
        data: Cow<'a, [u8]>,
    },
}

/// `* seq FETCH (item item ...)\r\n`.
pub fn fetch_response(seq: u32, items: &[FetchItem<'_>]) -> Vec<u8> {
    let mut out = format!("* {seq} FETCH (").into_bytes();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        match item {
            FetchItem::Flags(f) => {
                out.extend_from_slice(format!("FLAGS {}", flag_list(f)).as_bytes())
            }
            FetchItem::Uid(u) => out.extend_from_slice(format!("UID {u}").as_bytes()),
            FetchItem::Rfc822Size(n) => {
                out.extend_from_slice(format!("RFC822.SIZE {n}").as_bytes())
            }
            FetchItem::InternalDate(ms) => {
                out.extend_from_slice(
                    format!("INTERNALDATE {}", format_internal_date(*ms)).as_bytes(),
                );
            }
            FetchItem::Data { name, data } => {
                out.extend_from_slice(format!("{name} {{{}}}\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
            }
        }
    }
    out.extend_from_slice(b")\r\n");
    out
}

/// Parse a space-separated stored flag string into the flags we keep.
pub fn parse_flags(stored: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in stored.split_ascii_whitespace() {
        if let Some(sys) = SYSTEM_FLAGS.iter().find(|s| s.eq_ignore_ascii_case(f))
            && !out.iter().any(|o| o == sys)
        {
            out.push((*sys).to_string());
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::LiteralTooLarge {
                    tag: Some("t3".into())
                },
                Frame::Command(b"t4 NOOP\r\n".to_vec())
            ]
        );
        // Non-synchronizing: the data follows anyway and is skipped.
        f.push(b"t5 LOGIN {12+}\r\n0123456789ab x\r\nt6 NOOP\r\n");
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::LiteralTooLarge {
                    tag: Some("t5".into())
                },
                Frame::Command(b"t6 NOOP\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn parses_commands() {
        let p = |s: &[u8]| parse_command(s).unwrap().kind;
        assert_eq!(p(b"a capability\r\n"), CommandKind::Capability);
        assert_eq!(p(b"a NOOP"), CommandKind::Noop);
        assert_eq!(p(b"a LOGOUT\r\n"), CommandKind::Logout);
        assert_eq!(
            p(b"a LOGIN \"al\\\"ice\" pass\r\n"),
            CommandKind::Login {
                user: "al\"ice".into(),
                password: "pass".into()
            }
        );
        assert_eq!(
            p(b"a select inbox\r\n"),
            CommandKind::Select {
                mailbox: "inbox".into()
            }
        );
        assert_eq!(
            p(b"a EXAMINE \"INBOX\"\r\n"),
            CommandKind::Examine {
                mailbox: "INBOX".into()
            }
        );
        let CommandKind::Fetch { set, attrs, uid } = p(b"a1 UID fetch 1:* (FLAGS BODY.PEEK[])\r\n")
        else {
            panic!()
        };
        assert!(uid);
        assert_eq!(set.ranges(), &[(SeqNum::Value(1), SeqNum::Star)]);
        assert_eq!(
            attrs,
            vec![
                FetchAttr::Uid,
                FetchAttr::Flags,
                FetchAttr::Body {
                    section: Section::Full,
                    peek: true,
                    partial: None
                }
            ]
        );
        let CommandKind::Fetch { attrs, uid, .. } = p(b"a FETCH 2,4:3 FAST") else {
            panic!()
        };
        assert!(!uid);
        assert_eq!(
            attrs,
            vec![
                FetchAttr::Flags,
                FetchAttr::InternalDate,
                FetchAttr::Rfc822Size
            ]
        );
        let CommandKind::Fetch { attrs, .. } =
            p(b"a FETCH 1 (BODY[HEADER.FIELDS (Subject \"From\")]<0.10> RFC822.SIZE)")
        else {
            panic!()
        };
        assert_eq!(
            attrs[0],
            FetchAttr::Body {
                section: Section::HeaderFields {
                    fields: vec!["SUBJECT".into(), "FROM".into()],
                    not: false
                },
                peek: false,
                partial: Some((0, 10))
            }
        );
        assert_eq!(
            attrs[0].response_name(),
            "BODY[HEADER.FIELDS (SUBJECT FROM)]<0>"
        );
    }

    #[test]
    fn bad_commands_keep_their_tag() {
        let e = parse_command(b"a1 FROB\r\n").unwrap_err();
        assert_eq!(e.tag.as_deref(), Some("a1"));
        assert!(e.response().starts_with(b"a1 BAD "));
        let e = parse_command(b"\r\n").unwrap_err();
        assert_eq!(e.tag, None);
        assert!(e.response().starts_with(b"* BAD "));
        for bad in [
            &b"a1\r\n"[..],
            b"a1 LOGIN\r\n",
            b"a1 LOGIN x\r\n",
            b"a1 LOGIN \"x y\r\n",
            b"a1 LOGIN {5}\r\nab",
            b"a1 FETCH 0 FLAGS",
            b"a1 FETCH 1: FLAGS",
            b"a1 FETCH 1 (FLAGS",
            b"a1 FETCH 1 ENVELOPE",
            b"a1 FETCH 1 BODY[1.MIME]",
            b"a1 FETCH 1 BODY[]<0.0>",
            b"a1 NOOP extra",
            b"a1 UID STORE 1 FLAGS",
            b"+ NOOP",
        ] {
            assert!(
                parse_command(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn parser_and_framer_are_total() {
        // A small exhaustive sweep over tricky bytes: nothing panics.
        let alphabet: &[u8] = b"a {}+1*:\"\\[]()<>.\r\n\xff";
        let mut f = Framer::with_limits(12, 4, 32);
        for &x in alphabet {
            for &y in alphabet {
                for &z in alphabet {
                    let tail = [x, y, z];
                    for prefix in [&b"a FETCH "[..], b"a LOGIN ", b"a UID FETCH 1 BODY[", b""] {
                        let mut input = prefix.to_vec();
                        input.extend_from_slice(&tail);
                        let _ = parse_command(&input);
                        f.push(&input);
                        while let Some(fr) = f.next_frame() {
                            if let Frame::Command(c) = fr {
                                let _ = parse_command(&c);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn sequence_sets() {
        let s = SequenceSet::parse(b"1:3,7,9:*").unwrap();
        assert!(s.contains(2, 20));
        assert!(!s.contains(5, 20));
        assert!(s.contains(7, 20));
        assert!(s.contains(20, 20));
        assert_eq!(s.max_value(), Some(9));
        let s = SequenceSet::parse(b"*:4").unwrap();
        assert!(
            s.contains(3, 3),
            "4:* includes the largest even when it is below 4"
        );
        assert!(SequenceSet::parse(b"").is_none());
        assert!(SequenceSet::parse(b"1,,2").is_none());
        assert!(SequenceSet::parse(b"99999999999").is_none());
    }

    #[test]
    fn sections() {
        let msg = b"Subject: hi\r\nX-Long: a\r\n b\r\nFrom: x\r\n\r\nbody\r\n";
        let get = |a: FetchAttr| a.extract(msg).unwrap().into_owned();
        let body = |section| FetchAttr::Body {
            section,
            peek: true,
            partial: None,
        };
        assert_eq!(get(body(Section::Full)), msg);
        assert_eq!(get(body(Section::Text)), b"body\r\n");
        assert_eq!(
            get(body(Section::Header)),
            b"Subject: hi\r\nX-Long: a\r\n b\r\nFrom: x\r\n\r\n"
        );
        assert_eq!(
            get(body(Section::HeaderFields {
                fields: vec!["X-LONG".into()],
                not: false
            })),
            b"X-Long: a\r\n b\r\n\r\n"
        );
        assert_eq!(
            get(body(Section::HeaderFields {
                fields: vec!["X-LONG".into()],
                not: true
            })),
            b"Subject: hi\r\nFrom: x\r\n\r\n"
        );
        let partial = FetchAttr::Body {
            section: Section::Full,
            peek: false,
            partial: Some((9, 1000)),
        };
        assert_eq!(get(partial), &msg[9..]);
        assert!(FetchAttr::Flags.extract(msg).is_none());
        assert_eq!(
            split_header(b"no blank line"),
            (&b"no blank line"[..], &b""[..])
        );
    }

    #[test]
    fn responses() {
        let flags = vec!["\\Seen".to_string()];
        let r = fetch_response(
            3,
            &[
                FetchItem::Uid(7),
                FetchItem::Flags(&flags),
                FetchItem::Rfc822Size(5),
                FetchItem::Data {
                    name: "BODY[]".into(),
                    data: Cow::Borrowed(b"hello"),
                },
            ],
        );
        assert_eq!(
            r,
            b"* 3 FETCH (UID 7 FLAGS (\\Seen) RFC822.SIZE 5 BODY[] {5}\r\nhello)\r\n"
        );
        assert_eq!(tagged("a1", Status::No, "x\r\ny"), b"a1 NO x  y\r\n");
        assert_eq!(format_internal_date(0), "\" 1-Jan-1970 00:00:00 +0000\"");
        assert_eq!(
            format_internal_date(837_571_465_000),
            "\"17-Jul-1996 02:44:25 +0000\""
        );
        assert_eq!(
            format_internal_date(951_782_400_000),
            "\"29-Feb-2000 00:00:00 +0000\""
        );
        assert_eq!(
            parse_flags("\\seen \\Bogus \\Seen \\Deleted"),
            vec!["\\Seen", "\\Deleted"]
        );
        assert!(capabilities(false).contains("LOGINDISABLED"));
        assert!(greeting("h\r\nx", true).starts_with(b"* OK [CAPABILITY IMAP4rev1"));
    }

    #[test]
    fn states() {
        let fetch = CommandKind::Fetch {
            set: SequenceSet::parse(b"1").unwrap(),
            attrs: vec![],
            uid: false,
        };
        assert!(!fetch.allowed_in(State::Authenticated));
        assert!(fetch.allowed_in(State::Selected));
        let login = CommandKind::Login {
            user: String::new(),
            password: String::new(),
        };
        assert!(login.allowed_in(State::NotAuthenticated));
        assert!(!login.allowed_in(State::Selected));
        assert!(CommandKind::Noop.allowed_in(State::NotAuthenticated));
    }
}
