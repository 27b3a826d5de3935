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

use crate::mime::split_header;

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
const MAX_TAG: usize = 64;
/// Octets kept from the end of a skipped line: a literal announcement is
/// at most `{` + 19 digits + `+}` + CRLF.
const SKIP_TAIL: usize = 32;

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

/// The QRESYNC SELECT/EXAMINE parameter (RFC 7162 §3.2.5):
/// `QRESYNC (uidvalidity modseq [known-uids [(seq-match-data)]])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QResync {
    /// The UIDVALIDITY the client's cache belongs to.
    pub uidvalidity: u32,
    /// The last HIGHESTMODSEQ the client knows of.
    pub modseq: u64,
    /// UIDs the client knows (no `*`); reports are limited to them.
    pub known_uids: Option<SequenceSet>,
    /// Message sequence numbers and the UIDs they matched (§3.2.5.2),
    /// parsed and checked but not needed: this server remembers expunges
    /// (see the mailbox service), so it never guesses from them.
    pub seq_match: Option<(SequenceSet, SequenceSet)>,
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
    /// `SELECT mailbox [(CONDSTORE | QRESYNC (...))]`.
    Select {
        /// Mailbox name as given (`INBOX` is case-insensitive).
        mailbox: String,
        /// The CONDSTORE parameter (RFC 7162 §3.1.8) was given.
        condstore: bool,
        /// The QRESYNC parameter (RFC 7162 §3.2.5).
        qresync: Option<QResync>,
    },
    /// `EXAMINE mailbox [(CONDSTORE | QRESYNC (...))]` (read-only SELECT).
    Examine {
        /// Mailbox name as given.
        mailbox: String,
        /// The CONDSTORE parameter was given.
        condstore: bool,
        /// The QRESYNC parameter (RFC 7162 §3.2.5).
        qresync: Option<QResync>,
    },
    /// `FETCH` or `UID FETCH`.
    Fetch {
        /// Which messages (sequence numbers, or UIDs when `uid`).
        set: SequenceSet,
        /// What to return, macros expanded.
        attrs: Vec<FetchAttr>,
        /// `UID FETCH`: `set` holds UIDs and UID is always returned.
        uid: bool,
        /// `(CHANGEDSINCE n)` (RFC 7162 §3.1.4.1): only messages with a
        /// greater mod-sequence.
        changed_since: Option<u64>,
        /// The `VANISHED` modifier (RFC 7162 §3.2.6): also report, as
        /// `VANISHED (EARLIER)`, UIDs of the set expunged since
        /// `changed_since`. Only with UID FETCH and CHANGEDSINCE.
        vanished: bool,
    },
    /// `STARTTLS` (RFC 9051 §6.2.1).
    StartTls,
    /// `AUTHENTICATE mechanism [initial-response]` (RFC 9051 §6.2.2, SASL-IR).
    Authenticate {
        /// Mechanism name, upper-cased.
        mechanism: String,
        /// Base64 initial response (`=` for an empty one), if given.
        initial: Option<String>,
    },
    /// `ENABLE cap ...` (RFC 5161).
    Enable(Vec<String>),
    /// `ID (...)` or `ID NIL` (RFC 2971); the client's fields are ignored.
    Id,
    /// `NAMESPACE` (RFC 2342).
    Namespace,
    /// `CREATE mailbox`.
    Create {
        /// Name.
        mailbox: String,
    },
    /// `DELETE mailbox`.
    Delete {
        /// Name.
        mailbox: String,
    },
    /// `RENAME from to`.
    Rename {
        /// Existing name.
        from: String,
        /// New name.
        to: String,
    },
    /// `SUBSCRIBE mailbox` or `UNSUBSCRIBE mailbox`.
    Subscribe {
        /// Name.
        mailbox: String,
        /// SUBSCRIBE (true) or UNSUBSCRIBE (false).
        on: bool,
    },
    /// `LIST`, `LSUB`, or extended `LIST (SUBSCRIBED) ...` (RFC 5258, RFC 6154).
    List {
        /// Reference name.
        reference: String,
        /// Patterns with `*` and `%` wildcards.
        patterns: Vec<String>,
        /// Only subscribed mailboxes (LSUB or the SUBSCRIBED selection option).
        subscribed_only: bool,
        /// Only mailboxes with a special use (the SPECIAL-USE selection option).
        special_only: bool,
        /// LSUB (responses are `* LSUB`).
        lsub: bool,
        /// `RETURN (STATUS (...))` items (RFC 5819).
        status: Vec<StatusItem>,
    },
    /// `STATUS mailbox (items)`.
    Status {
        /// Name.
        mailbox: String,
        /// Requested items.
        items: Vec<StatusItem>,
    },
    /// `APPEND mailbox [(flags)] [date-time] literal`.
    Append {
        /// Target mailbox.
        mailbox: String,
        /// Flags to set.
        flags: Vec<String>,
        /// Internal date, Unix milliseconds.
        date_ms: Option<i64>,
        /// The message.
        message: Vec<u8>,
    },
    /// `CHECK`.
    Check,
    /// `CLOSE`: expunge silently and deselect.
    Close,
    /// `UNSELECT` (RFC 3691): deselect without expunging.
    Unselect,
    /// `EXPUNGE` or `UID EXPUNGE set` (RFC 4315).
    Expunge {
        /// `UID EXPUNGE`: only these UIDs.
        uids: Option<SequenceSet>,
    },
    /// `STORE` / `UID STORE`.
    Store {
        /// Messages.
        set: SequenceSet,
        /// `set` holds UIDs.
        uid: bool,
        /// Replace, add or remove.
        mode: StoreMode,
        /// `.SILENT`: no untagged FETCH for the change.
        silent: bool,
        /// The flags.
        flags: Vec<String>,
        /// `(UNCHANGEDSINCE n)` (RFC 7162 §3.1.3).
        unchanged_since: Option<u64>,
    },
    /// `COPY` / `MOVE` (RFC 6851) and their UID forms.
    Copy {
        /// Messages.
        set: SequenceSet,
        /// `set` holds UIDs.
        uid: bool,
        /// Target mailbox.
        mailbox: String,
        /// MOVE rather than COPY.
        remove: bool,
    },
    /// `SEARCH` / `UID SEARCH`.
    Search {
        /// Return UIDs.
        uid: bool,
        /// The criteria (an implicit AND).
        key: SearchKey,
        /// `RETURN (...)` given (RFC 4731 ESEARCH): which items.
        ret: Option<Vec<String>>,
    },
    /// `IDLE` (RFC 2177).
    Idle,
    /// `GETQUOTAROOT mailbox` (RFC 9208).
    GetQuotaRoot {
        /// Name.
        mailbox: String,
    },
    /// `GETQUOTA root` (RFC 9208).
    GetQuota {
        /// Quota root (this server has one: `""`).
        root: String,
    },
}

/// STORE's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// `FLAGS`: replace.
    Replace,
    /// `+FLAGS`: add.
    Add,
    /// `-FLAGS`: remove.
    Remove,
}

/// A STATUS data item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    /// `MESSAGES`.
    Messages,
    /// `RECENT`.
    Recent,
    /// `UIDNEXT`.
    UidNext,
    /// `UIDVALIDITY`.
    UidValidity,
    /// `UNSEEN`.
    Unseen,
    /// `SIZE` (RFC 8438).
    Size,
    /// `HIGHESTMODSEQ` (RFC 7162).
    HighestModSeq,
    /// `DELETED` (RFC 9051 §6.3.11): messages with `\Deleted`.
    Deleted,
}

impl StatusItem {
    /// The item's name in a STATUS response.
    pub fn name(self) -> &'static str {
        match self {
            StatusItem::Messages => "MESSAGES",
            StatusItem::Recent => "RECENT",
            StatusItem::UidNext => "UIDNEXT",
            StatusItem::UidValidity => "UIDVALIDITY",
            StatusItem::Unseen => "UNSEEN",
            StatusItem::Size => "SIZE",
            StatusItem::HighestModSeq => "HIGHESTMODSEQ",
            StatusItem::Deleted => "DELETED",
        }
    }
}

/// A SEARCH criterion (RFC 3501 §6.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    /// Every criterion holds.
    And(Vec<SearchKey>),
    /// Either holds.
    Or(Box<SearchKey>, Box<SearchKey>),
    /// Does not hold.
    Not(Box<SearchKey>),
    /// `ALL`.
    All,
    /// The flag is set (`SEEN`, `KEYWORD x`, ...).
    Flag(String),
    /// The flag is not set (`UNSEEN`, `UNKEYWORD x`, ...).
    NoFlag(String),
    /// `RECENT`.
    Recent,
    /// `NEW` (recent and unseen).
    New,
    /// `OLD`.
    Old,
    /// `HEADER name value` (and FROM, TO, CC, BCC, SUBJECT): a
    /// case-insensitive substring of the field with its RFC 2047
    /// encoded-words decoded ([`crate::text::header_contains`]); an empty
    /// value matches any message that has the field.
    Header(String, String),
    /// `BODY text`: in the decoded text of the body's text parts
    /// ([`crate::mime::body_contains`]).
    Body(String),
    /// `TEXT text`: in the decoded header or body
    /// ([`crate::mime::text_contains`]).
    Text(String),
    /// `LARGER n`.
    Larger(u64),
    /// `SMALLER n`.
    Smaller(u64),
    /// `BEFORE`/`ON`/`SINCE` date (internal date), as days since the epoch.
    Date(DateCmp, i64),
    /// `SENTBEFORE`/`SENTON`/`SENTSINCE` (the Date: header).
    SentDate(DateCmp, i64),
    /// `UID set`.
    Uid(SequenceSet),
    /// A sequence set.
    Seq(SequenceSet),
    /// `MODSEQ n` (RFC 7162): modseq at least n.
    ModSeq(u64),
}

/// How a date criterion compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateCmp {
    /// Strictly earlier.
    Before,
    /// The same day.
    On,
    /// That day or later.
    Since,
}

/// What SEARCH looks at for one message.
#[derive(Debug, Clone, Copy)]
pub struct SearchMsg<'a> {
    /// Sequence number.
    pub seq: u32,
    /// UID.
    pub uid: u32,
    /// The largest sequence number (for `*`).
    pub max_seq: u32,
    /// The largest UID (for `*`).
    pub max_uid: u32,
    /// Flags.
    pub flags: &'a [String],
    /// `\Recent` for this session.
    pub recent: bool,
    /// RFC822.SIZE.
    pub size: u64,
    /// Internal date, Unix milliseconds.
    pub internal_date_ms: i64,
    /// Mod-sequence.
    pub modseq: u64,
    /// The message, when the criteria need it.
    pub content: Option<&'a [u8]>,
    /// The UIDs (ascending) of the saved search result, which `$` names
    /// (RFC 5182).
    pub saved: &'a [u32],
}

impl SearchKey {
    /// Does evaluating this need the message body? (Without it, the header
    /// block alone is enough content for [`SearchKey::matches`].)
    pub fn needs_body(&self) -> bool {
        match self {
            SearchKey::And(v) => v.iter().any(SearchKey::needs_body),
            SearchKey::Or(a, b) => a.needs_body() || b.needs_body(),
            SearchKey::Not(a) => a.needs_body(),
            SearchKey::Body(_) | SearchKey::Text(_) => true,
            _ => false,
        }
    }

    /// Does evaluating this need the message content?
    pub fn needs_content(&self) -> bool {
        match self {
            SearchKey::And(v) => v.iter().any(SearchKey::needs_content),
            SearchKey::Or(a, b) => a.needs_content() || b.needs_content(),
            SearchKey::Not(a) => a.needs_content(),
            SearchKey::Header(..) | SearchKey::Body(_) | SearchKey::Text(_) => true,
            SearchKey::SentDate(..) => true,
            _ => false,
        }
    }

    /// Does the message match?
    pub fn matches(&self, m: &SearchMsg<'_>) -> bool {
        let has = |f: &str| m.flags.iter().any(|x| x.eq_ignore_ascii_case(f));
        let content = m.content.unwrap_or_default();
        match self {
            SearchKey::And(v) => v.iter().all(|k| k.matches(m)),
            SearchKey::Or(a, b) => a.matches(m) || b.matches(m),
            SearchKey::Not(a) => !a.matches(m),
            SearchKey::All => true,
            SearchKey::Flag(f) => has(f),
            SearchKey::NoFlag(f) => !has(f),
            SearchKey::Recent => m.recent,
            SearchKey::New => m.recent && !has("\\Seen"),
            SearchKey::Old => !m.recent,
            SearchKey::Header(name, value) => {
                let (h, _) = split_header(content);
                crate::mime::any_field(h, name, |v| {
                    crate::text::header_contains(v, value) || address_contains(name, v, value)
                })
            }
            SearchKey::Body(t) => crate::mime::body_contains(content, t),
            SearchKey::Text(t) => crate::mime::text_contains(content, t),
            SearchKey::Larger(n) => m.size > *n,
            SearchKey::Smaller(n) => m.size < *n,
            SearchKey::Date(cmp, day) => {
                cmp_day(*cmp, m.internal_date_ms.div_euclid(86_400_000), *day)
            }
            SearchKey::SentDate(cmp, day) => {
                let (h, _) = split_header(content);
                crate::mime::field(h, "Date")
                    .and_then(|d| crate::mime::date_header_day(&d))
                    .is_some_and(|d| cmp_day(*cmp, d, *day))
            }
            SearchKey::Uid(set) | SearchKey::Seq(set) if set.is_saved() => {
                m.saved.binary_search(&m.uid).is_ok()
            }
            SearchKey::Uid(set) => set.contains(m.uid, m.max_uid),
            SearchKey::Seq(set) => set.contains(m.seq, m.max_seq),
            SearchKey::ModSeq(n) => m.modseq >= *n,
        }
    }
}

/// SEARCH FROM/TO/CC/BCC also match the parsed addresses (RFC 3501
/// §6.4.4: "contains the specified string in the ... structure"), so
/// `<user (comment)@ domain.org>` is found by `user@domain.org`.
fn address_contains(name: &str, v: &[u8], needle: &str) -> bool {
    if !["from", "to", "cc", "bcc"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
    {
        return false;
    }
    crate::mime::parse_address_list(v).iter().any(|a| {
        let (Some(local), Some(host)) = (&a.mailbox, &a.host) else {
            return false;
        };
        let text = match &a.name {
            Some(n) => format!("{n} <{local}@{host}>"),
            None => format!("{local}@{host}"),
        };
        crate::text::header_contains(text.as_bytes(), needle)
    })
}

fn cmp_day(cmp: DateCmp, have: i64, want: i64) -> bool {
    match cmp {
        DateCmp::Before => have < want,
        DateCmp::On => have == want,
        DateCmp::Since => have >= want,
    }
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
            CommandKind::Id | CommandKind::Idle => state != State::Logout,
            CommandKind::Login { .. }
            | CommandKind::StartTls
            | CommandKind::Authenticate { .. } => state == State::NotAuthenticated,
            CommandKind::Select { .. }
            | CommandKind::Examine { .. }
            | CommandKind::Enable(_)
            | CommandKind::Namespace
            | CommandKind::Create { .. }
            | CommandKind::Delete { .. }
            | CommandKind::Rename { .. }
            | CommandKind::Subscribe { .. }
            | CommandKind::List { .. }
            | CommandKind::Status { .. }
            | CommandKind::GetQuotaRoot { .. }
            | CommandKind::GetQuota { .. }
            | CommandKind::Append { .. } => matches!(state, State::Authenticated | State::Selected),
            CommandKind::Fetch { .. }
            | CommandKind::Check
            | CommandKind::Close
            | CommandKind::Unselect
            | CommandKind::Expunge { .. }
            | CommandKind::Store { .. }
            | CommandKind::Copy { .. }
            | CommandKind::Search { .. } => state == State::Selected,
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

/// A sequence set (`1:4,7,9:*`) of sequence numbers or UIDs, or `$`:
/// the result saved by `SEARCH RETURN (SAVE)` (RFC 5182 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet(Vec<(SeqNum, SeqNum)>);

impl SequenceSet {
    /// Parse the textual form; `None` if malformed.
    pub fn parse(s: &[u8]) -> Option<SequenceSet> {
        if s == b"$" {
            return Some(SequenceSet(Vec::new()));
        }
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

    /// The ranges, as given (none for `$`).
    pub fn ranges(&self) -> &[(SeqNum, SeqNum)] {
        &self.0
    }

    /// Is this `$`, the saved search result (RFC 5182)? The caller
    /// resolves it: [`SequenceSet::contains`] is false for it.
    pub fn is_saved(&self) -> bool {
        self.0.is_empty()
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
    /// `[1.2]`, `[1.2.MIME]`, `[2.HEADER]`, ...: a MIME part (RFC 3501 §6.4.5).
    Part {
        /// Part numbers, 1-based.
        path: Vec<u32>,
        /// What of the part.
        spec: PartSpec,
    },
}

/// What of a numbered part `BODY[n.SPEC]` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartSpec {
    /// `[n]`: the part's body.
    Body,
    /// `[n.MIME]`: the part's own MIME header.
    Mime,
    /// `[n.HEADER]`: the header of the message enclosed in a message/rfc822 part.
    Header,
    /// `[n.TEXT]`: the body of the enclosed message.
    Text,
    /// `[n.HEADER.FIELDS[.NOT] (..)]` of the enclosed message.
    HeaderFields {
        /// Field names, upper-cased.
        fields: Vec<String>,
        /// `.NOT`.
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
    /// `ENVELOPE`.
    Envelope,
    /// `MODSEQ` (RFC 7162).
    ModSeq,
    /// `BODYSTRUCTURE` (`extended`) or `BODY` without a section.
    BodyStructure {
        /// BODYSTRUCTURE rather than BODY.
        extended: bool,
    },
    /// `BODY[section]<partial>` or `BODY.PEEK[...]`.
    Body {
        /// Which part.
        section: Section,
        /// `BODY.PEEK`: do not set `\Seen`.
        peek: bool,
        /// `<origin.count>`.
        partial: Option<(u32, u32)>,
    },
    /// `BINARY[part]<partial>` or `BINARY.PEEK[...]` (RFC 3516 §4.2): the
    /// part with its Content-Transfer-Encoding undone.
    Binary {
        /// Part numbers, 1-based; empty for the whole message.
        path: Vec<u32>,
        /// `BINARY.PEEK`: do not set `\Seen`.
        peek: bool,
        /// `<origin.count>`, applied to the decoded data.
        partial: Option<(u32, u32)>,
    },
    /// `BINARY.SIZE[part]` (RFC 3516 §4.2): the size of the decoded part.
    BinarySize {
        /// Part numbers, 1-based; empty for the whole message.
        path: Vec<u32>,
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
                | FetchAttr::Binary { .. }
                | FetchAttr::BinarySize { .. }
                | FetchAttr::Envelope
                | FetchAttr::BodyStructure { .. }
        )
    }

    /// Does returning this item set `\Seen` (unless the mailbox is read-only)?
    pub fn sets_seen(&self) -> bool {
        matches!(
            self,
            FetchAttr::Rfc822
                | FetchAttr::Rfc822Text
                | FetchAttr::Body { peek: false, .. }
                | FetchAttr::Binary { peek: false, .. }
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
            FetchAttr::Envelope => "ENVELOPE".into(),
            FetchAttr::ModSeq => "MODSEQ".into(),
            FetchAttr::BodyStructure { extended: true } => "BODYSTRUCTURE".into(),
            FetchAttr::BodyStructure { extended: false } => "BODY".into(),
            FetchAttr::Binary { path, partial, .. } => {
                let sec = part_path(path);
                match partial {
                    Some((origin, _)) => format!("BINARY[{sec}]<{origin}>"),
                    None => format!("BINARY[{sec}]"),
                }
            }
            FetchAttr::BinarySize { path } => format!("BINARY.SIZE[{}]", part_path(path)),
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
                    Section::Part { path, spec } => {
                        let mut s = part_path(path);
                        match spec {
                            PartSpec::Body => {}
                            PartSpec::Mime => s.push_str(".MIME"),
                            PartSpec::Header => s.push_str(".HEADER"),
                            PartSpec::Text => s.push_str(".TEXT"),
                            PartSpec::HeaderFields { fields, not } => {
                                s.push_str(&format!(
                                    ".HEADER.FIELDS{} ({})",
                                    if *not { ".NOT" } else { "" },
                                    fields.join(" ")
                                ));
                            }
                        }
                        s
                    }
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
                    Section::Part { path, spec } => {
                        let tree = crate::mime::parse(message);
                        let Some(part) = tree.find(path) else {
                            return Some(Cow::Borrowed(&[]));
                        };
                        let (mh, mb) = match &part.message {
                            Some(m) => (m.header, m.body),
                            None => (&b""[..], &b""[..]),
                        };
                        Cow::Owned(match spec {
                            PartSpec::Body => part.body.to_vec(),
                            PartSpec::Mime => part.header.to_vec(),
                            PartSpec::Header => mh.to_vec(),
                            PartSpec::Text => mb.to_vec(),
                            PartSpec::HeaderFields { fields, not } => {
                                header_fields(mh, fields, *not)
                            }
                        })
                    }
                };
                (data, *partial)
            }
            _ => return None,
        };
        Some(cut(data, partial))
    }

    /// For `BINARY[...]` and `BINARY.SIZE[...]`: the response item for
    /// `message` (RFC 3516 §4.2); `None` for every other item. `BINARY[]`
    /// is the whole message as stored (it has no transfer encoding of its
    /// own to undo); a part that does not exist is empty. An unknown
    /// Content-Transfer-Encoding is an error: RFC 3516 §4.3 asks for
    /// `NO [UNKNOWN-CTE]`.
    pub fn binary_item<'m>(
        &self,
        message: &'m [u8],
    ) -> Option<Result<FetchItem<'m>, crate::mime::UnknownCte>> {
        let (FetchAttr::Binary { path, .. } | FetchAttr::BinarySize { path }) = self else {
            return None;
        };
        let decoded = if path.is_empty() {
            Ok(Cow::Borrowed(message))
        } else {
            let tree = crate::mime::parse(message);
            match tree.find(path) {
                None => Ok(Cow::Borrowed(&b""[..])),
                Some(part) => crate::mime::decode_transfer_encoding(part.header, part.body)
                    .map(|d| Cow::Owned(d.into_owned())),
            }
        };
        Some(decoded.map(|data| match self {
            FetchAttr::Binary { partial, .. } => FetchItem::Binary {
                name: self.response_name(),
                data: cut(data, *partial),
            },
            _ => FetchItem::Number {
                name: self.response_name(),
                value: data.len() as u64,
            },
        }))
    }
}

/// `1.2.3`: a part path as in a section.
fn part_path(path: &[u32]) -> String {
    let nums: Vec<String> = path.iter().map(u32::to_string).collect();
    nums.join(".")
}

/// The `<origin.count>` slice of `data` (all of it without a partial).
fn cut(data: Cow<'_, [u8]>, partial: Option<(u32, u32)>) -> Cow<'_, [u8]> {
    match partial {
        None => data,
        Some((origin, count)) => {
            let start = (origin as usize).min(data.len());
            let end = start.saturating_add(count as usize).min(data.len());
            match data {
                Cow::Borrowed(b) => Cow::Borrowed(&b[start..end]),
                Cow::Owned(v) => Cow::Owned(v[start..end].to_vec()),
            }
        }
    }
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
            b"ALL" => Ok(vec![
                FetchAttr::Flags,
                FetchAttr::InternalDate,
                FetchAttr::Rfc822Size,
                FetchAttr::Envelope,
            ]),
            b"FULL" => Ok(vec![
                FetchAttr::Flags,
                FetchAttr::InternalDate,
                FetchAttr::Rfc822Size,
                FetchAttr::Envelope,
                FetchAttr::BodyStructure { extended: false },
            ]),
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
            b"ENVELOPE" => FetchAttr::Envelope,
            b"MODSEQ" => FetchAttr::ModSeq,
            b"BODYSTRUCTURE" => FetchAttr::BodyStructure { extended: true },
            b"BODY" if self.peek() != Some(b'[') => FetchAttr::BodyStructure { extended: false },
            b"BODY" | b"BODY.PEEK" if self.peek() == Some(b'[') => {
                let peek = word == b"BODY.PEEK";
                let section = self.section()?;
                FetchAttr::Body {
                    section,
                    peek,
                    partial: self.partial()?,
                }
            }
            // RFC 3516 §6: section-binary = "[" [section-part] "]".
            b"BINARY" | b"BINARY.PEEK" => {
                let peek = word == b"BINARY.PEEK";
                FetchAttr::Binary {
                    path: self.section_binary()?,
                    peek,
                    partial: self.partial()?,
                }
            }
            b"BINARY.SIZE" => FetchAttr::BinarySize {
                path: self.section_binary()?,
            },
            b"" => return Err("expected a FETCH attribute".into()),
            other => {
                let name = String::from_utf8_lossy(other);
                return Err(format!("FETCH {name} is not supported"));
            }
        };
        Ok(attr)
    }

    /// `<origin.count>` after a section, if there.
    fn partial(&mut self) -> PResult<Option<(u32, u32)>> {
        if !self.eat(b'<') {
            return Ok(None);
        }
        let origin = self.number()?;
        self.expect(b'.', "'.' in partial")?;
        let count = self.number()?;
        if count == 0 {
            return Err("partial count must be non-zero".into());
        }
        self.expect(b'>', "'>'")?;
        Ok(Some((origin, count)))
    }

    /// `[1.2.3]` or `[]` (RFC 3516 section-binary).
    fn section_binary(&mut self) -> PResult<Vec<u32>> {
        self.expect(b'[', "'['")?;
        let mut path = Vec::new();
        if self.eat(b']') {
            return Ok(path);
        }
        loop {
            let n = self.number()?;
            if n == 0 {
                return Err("invalid part number".into());
            }
            if path.len() >= 32 {
                return Err("section nested too deeply".into());
            }
            path.push(n);
            if !self.eat(b'.') {
                break;
            }
        }
        self.expect(b']', "']' (BINARY takes part numbers only)")?;
        Ok(path)
    }

    fn header_list(&mut self) -> PResult<Vec<String>> {
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
        Ok(fields)
    }

    fn section(&mut self) -> PResult<Section> {
        self.expect(b'[', "'['")?;
        let spec = self
            .take_while(|b| b.is_ascii_alphanumeric() || b == b'.')
            .to_ascii_uppercase();
        // Leading part numbers: `1.2.` (RFC 3501 §6.4.5).
        let mut path = Vec::new();
        let mut rest: &[u8] = &spec;
        while rest.first().is_some_and(u8::is_ascii_digit) {
            let end = rest.iter().position(|&b| b == b'.').unwrap_or(rest.len());
            let n: u32 = std::str::from_utf8(&rest[..end])
                .ok()
                .and_then(|x| x.parse().ok())
                .filter(|&n| n > 0)
                .ok_or("invalid part number")?;
            if path.len() >= 32 {
                return Err("section nested too deeply".into());
            }
            path.push(n);
            if end == rest.len() {
                rest = &[];
                break;
            }
            rest = &rest[end + 1..];
            if rest.is_empty() {
                return Err("invalid section".into());
            }
        }
        if !path.is_empty() {
            let spec = match rest {
                b"" => PartSpec::Body,
                b"MIME" => PartSpec::Mime,
                b"HEADER" => PartSpec::Header,
                b"TEXT" => PartSpec::Text,
                b"HEADER.FIELDS" | b"HEADER.FIELDS.NOT" => {
                    let not = rest.ends_with(b".NOT");
                    let fields = self.header_list()?;
                    PartSpec::HeaderFields { fields, not }
                }
                _ => return Err("invalid section".into()),
            };
            self.expect(b']', "']'")?;
            return Ok(Section::Part { path, spec });
        }
        let section = match spec.as_slice() {
            b"" => Section::Full,
            b"HEADER" => Section::Header,
            b"TEXT" => Section::Text,
            b"HEADER.FIELDS" | b"HEADER.FIELDS.NOT" => {
                let not = spec.ends_with(b".NOT");
                let fields = self.header_list()?;
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
            let mailbox = c.mailbox()?;
            let (condstore, qresync) = if c.eat(b' ') {
                c.select_params()?
            } else {
                (false, None)
            };
            if name == b"SELECT" {
                CommandKind::Select {
                    mailbox,
                    condstore,
                    qresync,
                }
            } else {
                CommandKind::Examine {
                    mailbox,
                    condstore,
                    qresync,
                }
            }
        }
        b"FETCH" => fetch_args(c, false)?,
        b"STARTTLS" => CommandKind::StartTls,
        b"AUTHENTICATE" => {
            c.sp()?;
            let mech = c.take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if mech.is_empty() {
                return Err("expected a SASL mechanism".into());
            }
            let mechanism = String::from_utf8_lossy(mech).to_ascii_uppercase();
            let initial = if c.eat(b' ') {
                let r =
                    c.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
                if r.is_empty() {
                    return Err("invalid initial response".into());
                }
                Some(String::from_utf8_lossy(r).into_owned())
            } else {
                None
            };
            CommandKind::Authenticate { mechanism, initial }
        }
        b"ENABLE" => {
            let mut caps = Vec::new();
            while c.eat(b' ') {
                let a = c.take_while(is_atom_char);
                if a.is_empty() || caps.len() >= 32 {
                    return Err("expected a capability".into());
                }
                caps.push(String::from_utf8_lossy(a).to_ascii_uppercase());
            }
            if caps.is_empty() {
                return Err("ENABLE needs a capability".into());
            }
            CommandKind::Enable(caps)
        }
        b"ID" => {
            c.sp()?;
            if c.eat(b'(') {
                let mut n = 0;
                while !c.eat(b')') {
                    if n > 0 {
                        c.sp()?;
                    }
                    c.nstring()?;
                    n += 1;
                    if n > 60 {
                        return Err("too many ID fields".into());
                    }
                }
            } else {
                c.nil()?;
            }
            CommandKind::Id
        }
        b"NAMESPACE" => CommandKind::Namespace,
        b"CREATE" | b"DELETE" | b"SUBSCRIBE" | b"UNSUBSCRIBE" => {
            c.sp()?;
            let mailbox = c.mailbox()?;
            match name.as_slice() {
                b"CREATE" => CommandKind::Create { mailbox },
                b"DELETE" => CommandKind::Delete { mailbox },
                b"SUBSCRIBE" => CommandKind::Subscribe { mailbox, on: true },
                _ => CommandKind::Subscribe { mailbox, on: false },
            }
        }
        b"RENAME" => {
            c.sp()?;
            let from = c.mailbox()?;
            c.sp()?;
            let to = c.mailbox()?;
            CommandKind::Rename { from, to }
        }
        b"LIST" | b"LSUB" => list_args(c, name == b"LSUB")?,
        b"STATUS" => {
            c.sp()?;
            let mailbox = c.mailbox()?;
            c.sp()?;
            let items = c.status_items()?;
            CommandKind::Status { mailbox, items }
        }
        b"APPEND" => {
            c.sp()?;
            let mailbox = c.mailbox()?;
            c.sp()?;
            let mut flags = Vec::new();
            if c.peek() == Some(b'(') {
                flags = c.flag_list()?;
                c.sp()?;
            }
            let mut date_ms = None;
            if c.peek() == Some(b'"') {
                let d = c.quoted()?;
                date_ms = Some(parse_date_time(&d).ok_or("invalid date-time")?);
                c.sp()?;
            }
            // RFC 3516 BINARY's literal8 `~{n}` is accepted like a literal.
            c.eat(b'~');
            let message = c.literal()?;
            CommandKind::Append {
                mailbox,
                flags,
                date_ms,
                message,
            }
        }
        b"CHECK" => CommandKind::Check,
        b"CLOSE" => CommandKind::Close,
        b"UNSELECT" => CommandKind::Unselect,
        b"EXPUNGE" => CommandKind::Expunge { uids: None },
        b"STORE" => store_args(c, false)?,
        b"COPY" | b"MOVE" => copy_args(c, false, name == b"MOVE")?,
        b"SEARCH" => search_args(c, false)?,
        b"IDLE" => CommandKind::Idle,
        b"GETQUOTAROOT" => {
            c.sp()?;
            CommandKind::GetQuotaRoot {
                mailbox: c.mailbox()?,
            }
        }
        b"GETQUOTA" => {
            c.sp()?;
            CommandKind::GetQuota {
                root: c.astring_utf8("quota root")?,
            }
        }
        b"UID" => {
            c.sp()?;
            let sub = c
                .take_while(|b| b.is_ascii_alphanumeric())
                .to_ascii_uppercase();
            match sub.as_slice() {
                b"FETCH" => fetch_args(c, true)?,
                b"STORE" => store_args(c, true)?,
                b"COPY" | b"MOVE" => copy_args(c, true, sub == b"MOVE")?,
                b"SEARCH" => search_args(c, true)?,
                b"EXPUNGE" => {
                    c.sp()?;
                    CommandKind::Expunge {
                        uids: Some(c.sequence_set()?),
                    }
                }
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
    let set = c.sequence_set()?;
    c.sp()?;
    let mut attrs = c.fetch_attrs()?;
    let mut changed_since = None;
    let mut vanished = false;
    if c.eat(b' ') {
        c.expect(b'(', "'('")?;
        loop {
            let w = c
                .take_while(|b| b.is_ascii_alphabetic())
                .to_ascii_uppercase();
            match w.as_slice() {
                b"CHANGEDSINCE" if changed_since.is_none() => {
                    c.sp()?;
                    changed_since = Some(c.number64()?);
                }
                b"VANISHED" if !vanished => vanished = true,
                _ => return Err("unknown FETCH modifier".into()),
            }
            if !c.eat(b' ') {
                break;
            }
        }
        c.expect(b')', "')'")?;
        // RFC 7162 §3.2.6: VANISHED only with UID FETCH and CHANGEDSINCE.
        if vanished && (!uid || changed_since.is_none()) {
            return Err("VANISHED needs UID FETCH and CHANGEDSINCE".into());
        }
        // RFC 7162 §3.1.4.1: CHANGEDSINCE implies MODSEQ.
        if changed_since.is_some() && !attrs.contains(&FetchAttr::ModSeq) {
            attrs.push(FetchAttr::ModSeq);
        }
    }
    if uid && !attrs.contains(&FetchAttr::Uid) {
        attrs.insert(0, FetchAttr::Uid);
    }
    Ok(CommandKind::Fetch {
        set,
        attrs,
        uid,
        changed_since,
        vanished,
    })
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
/// plaintext authentication is disabled (then `LOGINDISABLED` is announced
/// and AUTH=PLAIN is not); `starttls` offers STARTTLS; `authenticated`
/// leaves the pre-login items out.
pub fn capabilities(login_ok: bool, starttls: bool, authenticated: bool) -> String {
    let mut caps = String::from(
        "IMAP4rev1 IMAP4rev2 LITERAL+ BINARY SASL-IR ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT CHILDREN SPECIAL-USE LIST-EXTENDED LIST-STATUS ESEARCH SEARCHRES STATUS=SIZE QUOTA QUOTA=RES-STORAGE CONDSTORE QRESYNC",
    );
    if !authenticated {
        if starttls {
            caps.push_str(" STARTTLS");
        }
        if login_ok {
            caps.push_str(" AUTH=PLAIN");
        } else {
            caps.push_str(" LOGINDISABLED");
        }
    }
    caps
}

/// The server greeting.
pub fn greeting(hostname: &str, login_ok: bool, starttls: bool) -> Vec<u8> {
    let host: String = hostname
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    untagged(&format!(
        "OK [CAPABILITY {}] {host} Tern IMAP ready",
        capabilities(login_ok, starttls, false)
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
    /// `FLAGS (\Recent ...)`: the flags of a message that is `\Recent` in
    /// this session (RFC 3501 §2.3.2: a system flag FETCH FLAGS shows,
    /// though no client can set it).
    RecentFlags(&'a [String]),
    /// `UID n`.
    Uid(u32),
    /// `RFC822.SIZE n`.
    Rfc822Size(u64),
    /// `INTERNALDATE "..."` from Unix milliseconds.
    InternalDate(i64),
    /// `NAME value`, the value already formatted (ENVELOPE, BODYSTRUCTURE).
    Raw {
        /// Item name.
        name: &'static str,
        /// Formatted value.
        value: String,
    },
    /// `MODSEQ (n)` (RFC 7162).
    ModSeq(u64),
    /// `NAME {n}\r\n<data>`: body data, always sent as a literal.
    Data {
        /// Response name, from [`FetchAttr::response_name`].
        name: String,
        /// The octets.
        data: Cow<'a, [u8]>,
    },
    /// `BINARY[...] {n}` or, when the data holds a NUL, `~{n}` (a
    /// literal8, RFC 3516 §4.2: NUL is not allowed in a plain literal).
    Binary {
        /// Response name, from [`FetchAttr::response_name`].
        name: String,
        /// The decoded octets.
        data: Cow<'a, [u8]>,
    },
    /// `NAME n` with a computed name (`BINARY.SIZE[1] 42`).
    Number {
        /// Response name, from [`FetchAttr::response_name`].
        name: String,
        /// The value.
        value: u64,
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
            FetchItem::RecentFlags(f) => {
                let list = flag_list(f);
                let rest = &list[1..];
                let sep = if rest == ")" { "" } else { " " };
                out.extend_from_slice(format!("FLAGS (\\Recent{sep}{rest}").as_bytes())
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
            FetchItem::Raw { name, value } => {
                out.extend_from_slice(name.as_bytes());
                out.push(b' ');
                out.extend_from_slice(value.as_bytes());
            }
            FetchItem::ModSeq(n) => out.extend_from_slice(format!("MODSEQ ({n})").as_bytes()),
            FetchItem::Data { name, data } => {
                out.extend_from_slice(format!("{name} {{{}}}\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
            }
            FetchItem::Binary { name, data } => {
                let eight = if data.contains(&0) { "~" } else { "" };
                out.extend_from_slice(format!("{name} {eight}{{{}}}\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
            }
            FetchItem::Number { name, value } => {
                out.extend_from_slice(format!("{name} {value}").as_bytes())
            }
        }
    }
    out.extend_from_slice(b")\r\n");
    out
}

/// Most flags kept on one message.
pub const MAX_FLAGS: usize = 64;

/// Parse a space-separated stored flag string into the flags we keep:
/// system flags (canonical case) and keywords (atoms), without duplicates.
pub fn parse_flags(stored: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in stored.split_ascii_whitespace() {
        let flag = if f.starts_with('\\') {
            match SYSTEM_FLAGS.iter().find(|s| s.eq_ignore_ascii_case(f)) {
                Some(s) => (*s).to_string(),
                None => continue,
            }
        } else if f.len() <= 128 && f.bytes().all(is_atom_char) {
            f.to_string()
        } else {
            continue;
        };
        if out.len() < MAX_FLAGS && !out.iter().any(|o| o.eq_ignore_ascii_case(&flag)) {
            out.push(flag);
        }
    }
    out
}

fn list_args(c: &mut Cur<'_>, lsub: bool) -> PResult<CommandKind> {
    c.sp()?;
    let mut subscribed_only = lsub;
    let mut special_only = false;
    // RFC 5258 selection options.
    if !lsub && c.eat(b'(') {
        while !c.eat(b')') {
            c.eat(b' ');
            let w = c.take_while(is_atom_char).to_ascii_uppercase();
            match w.as_slice() {
                b"SUBSCRIBED" => subscribed_only = true,
                b"SPECIAL-USE" => special_only = true,
                b"REMOTE" | b"RECURSIVEMATCH" => {}
                _ => return Err("unknown LIST selection option".into()),
            }
        }
        c.sp()?;
    }
    let reference = c.mailbox_raw()?;
    c.sp()?;
    let mut patterns = Vec::new();
    if c.eat(b'(') {
        loop {
            patterns.push(c.list_mailbox()?);
            if patterns.len() > 16 {
                return Err("too many patterns".into());
            }
            if !c.eat(b' ') {
                break;
            }
        }
        c.expect(b')', "')'")?;
    } else {
        patterns.push(c.list_mailbox()?);
    }
    let mut status = Vec::new();
    // RFC 5258 return options; SPECIAL-USE and SUBSCRIBED data are always
    // returned, CHILDREN is always returned, STATUS (RFC 5819) is honoured.
    if !lsub && c.eat(b' ') {
        let w = c
            .take_while(|b| b.is_ascii_alphabetic())
            .to_ascii_uppercase();
        if w != b"RETURN" {
            return Err("expected RETURN".into());
        }
        c.sp()?;
        c.expect(b'(', "'('")?;
        while !c.eat(b')') {
            c.eat(b' ');
            let w = c.take_while(is_atom_char).to_ascii_uppercase();
            match w.as_slice() {
                b"SUBSCRIBED" | b"CHILDREN" | b"SPECIAL-USE" => {}
                b"STATUS" => {
                    c.sp()?;
                    status = c.status_items()?;
                }
                _ => return Err("unknown LIST return option".into()),
            }
        }
    }
    Ok(CommandKind::List {
        reference,
        patterns,
        subscribed_only,
        special_only,
        lsub,
        status,
    })
}

fn store_args(c: &mut Cur<'_>, uid: bool) -> PResult<CommandKind> {
    c.sp()?;
    let set = c.sequence_set()?;
    c.sp()?;
    let mut unchanged_since = None;
    if c.eat(b'(') {
        let w = c
            .take_while(|b| b.is_ascii_alphabetic())
            .to_ascii_uppercase();
        if w != b"UNCHANGEDSINCE" {
            return Err("unknown STORE modifier".into());
        }
        c.sp()?;
        unchanged_since = Some(c.number64()?);
        c.expect(b')', "')'")?;
        c.sp()?;
    }
    let mode = if c.eat(b'+') {
        StoreMode::Add
    } else if c.eat(b'-') {
        StoreMode::Remove
    } else {
        StoreMode::Replace
    };
    let w = c
        .take_while(|b| b.is_ascii_alphabetic() || b == b'.')
        .to_ascii_uppercase();
    let silent = match w.as_slice() {
        b"FLAGS" => false,
        b"FLAGS.SILENT" => true,
        _ => return Err("expected FLAGS, +FLAGS or -FLAGS".into()),
    };
    c.sp()?;
    let flags = if c.peek() == Some(b'(') {
        c.flag_list()?
    } else {
        let mut v = vec![c.flag()?];
        while c.eat(b' ') {
            v.push(c.flag()?);
            if v.len() > 64 {
                return Err("too many flags".into());
            }
        }
        v
    };
    Ok(CommandKind::Store {
        set,
        uid,
        mode,
        silent,
        flags,
        unchanged_since,
    })
}

fn copy_args(c: &mut Cur<'_>, uid: bool, remove: bool) -> PResult<CommandKind> {
    c.sp()?;
    let set = c.sequence_set()?;
    c.sp()?;
    let mailbox = c.mailbox()?;
    Ok(CommandKind::Copy {
        set,
        uid,
        mailbox,
        remove,
    })
}

fn search_args(c: &mut Cur<'_>, uid: bool) -> PResult<CommandKind> {
    c.sp()?;
    let mut ret = None;
    // RFC 4731 ESEARCH: `RETURN (MIN MAX COUNT ALL)`, and RFC 5182's SAVE.
    let save = c.i;
    let w = c
        .take_while(|b| b.is_ascii_alphabetic())
        .to_ascii_uppercase();
    if w == b"RETURN" {
        c.sp()?;
        c.expect(b'(', "'('")?;
        let mut items = Vec::new();
        while !c.eat(b')') {
            c.eat(b' ');
            let w = c
                .take_while(|b| b.is_ascii_alphabetic())
                .to_ascii_uppercase();
            match w.as_slice() {
                b"MIN" | b"MAX" | b"COUNT" | b"ALL" | b"SAVE" => {
                    items.push(String::from_utf8_lossy(&w).into_owned())
                }
                _ => return Err("unknown SEARCH return option".into()),
            }
        }
        c.sp()?;
        ret = Some(items);
    } else {
        c.i = save;
    }
    let save = c.i;
    let w = c
        .take_while(|b| b.is_ascii_alphabetic())
        .to_ascii_uppercase();
    if w == b"CHARSET" {
        c.sp()?;
        let cs = c.astring()?;
        let cs = String::from_utf8_lossy(&cs).to_ascii_uppercase();
        if cs != "UTF-8" && cs != "US-ASCII" {
            return Err("[BADCHARSET (UTF-8 US-ASCII)] unsupported charset".into());
        }
        c.sp()?;
    } else {
        c.i = save;
    }
    let mut keys = vec![c.search_key(0)?];
    while c.eat(b' ') {
        if keys.len() >= 256 {
            return Err("too many search keys".into());
        }
        keys.push(c.search_key(0)?);
    }
    let key = if keys.len() == 1 {
        keys.pop().unwrap_or(SearchKey::All)
    } else {
        SearchKey::And(keys)
    };
    Ok(CommandKind::Search { uid, key, ret })
}

/// Deepest nesting of NOT / OR / parentheses in a SEARCH.
const MAX_SEARCH_DEPTH: usize = 32;

impl Cur<'_> {
    fn number64(&mut self) -> PResult<u64> {
        let d = self.take_while(|b| b.is_ascii_digit());
        if d.is_empty() || d.len() > 19 {
            return Err("expected a number".into());
        }
        std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "number out of range".into())
    }

    /// SELECT/EXAMINE parameters after the SP: `(CONDSTORE)`,
    /// `(QRESYNC (...))` or both (RFC 4466 §2.1 list).
    fn select_params(&mut self) -> PResult<(bool, Option<QResync>)> {
        self.expect(b'(', "'('")?;
        let (mut condstore, mut qresync) = (false, None);
        loop {
            let w = self
                .take_while(|b| b.is_ascii_alphabetic())
                .to_ascii_uppercase();
            match w.as_slice() {
                b"CONDSTORE" if !condstore => condstore = true,
                b"QRESYNC" if qresync.is_none() => {
                    self.sp()?;
                    qresync = Some(self.qresync()?);
                }
                _ => return Err("unknown SELECT parameter".into()),
            }
            if !self.eat(b' ') {
                break;
            }
        }
        self.expect(b')', "')'")?;
        Ok((condstore, qresync))
    }

    /// `(uidvalidity mod-sequence-value [SP known-uids] [SP seq-match-data])`
    /// (RFC 7162 §7): uidvalidity is nz-number, the mod-sequence is
    /// 1..=2^63-1, and neither UID list may hold `*` or `$`.
    fn qresync(&mut self) -> PResult<QResync> {
        self.expect(b'(', "'('")?;
        let uidvalidity = self.number()?;
        self.sp()?;
        let modseq = self.number64()?;
        if uidvalidity == 0 || modseq == 0 || modseq > i64::MAX as u64 {
            return Err("invalid QRESYNC parameter".into());
        }
        let mut known_uids = None;
        let mut seq_match = None;
        if self.eat(b' ') {
            if self.peek() != Some(b'(') {
                known_uids = Some(self.known_set()?);
                if !self.eat(b' ') {
                    return self.end_qresync(uidvalidity, modseq, known_uids, None);
                }
            }
            self.expect(b'(', "'('")?;
            let seqs = self.known_set()?;
            self.sp()?;
            let uids = self.known_set()?;
            self.expect(b')', "')'")?;
            seq_match = Some((seqs, uids));
        }
        self.end_qresync(uidvalidity, modseq, known_uids, seq_match)
    }

    fn end_qresync(
        &mut self,
        uidvalidity: u32,
        modseq: u64,
        known_uids: Option<SequenceSet>,
        seq_match: Option<(SequenceSet, SequenceSet)>,
    ) -> PResult<QResync> {
        self.expect(b')', "')'")?;
        Ok(QResync {
            uidvalidity,
            modseq,
            known_uids,
            seq_match,
        })
    }

    /// A sequence set of explicit numbers only (no `*`, no `$`).
    fn known_set(&mut self) -> PResult<SequenceSet> {
        let raw = self.take_while(|b| b.is_ascii_digit() || matches!(b, b':' | b','));
        SequenceSet::parse(raw).ok_or_else(|| "invalid UID set".into())
    }

    fn sequence_set(&mut self) -> PResult<SequenceSet> {
        let raw = self.take_while(|b| b.is_ascii_digit() || matches!(b, b':' | b',' | b'*' | b'$'));
        SequenceSet::parse(raw).ok_or_else(|| "invalid sequence set".into())
    }

    fn nil(&mut self) -> PResult<()> {
        let w = self.take_while(|b| b.is_ascii_alphabetic());
        if w.eq_ignore_ascii_case(b"NIL") {
            Ok(())
        } else {
            Err("expected NIL".into())
        }
    }

    fn nstring(&mut self) -> PResult<Option<Vec<u8>>> {
        match self.peek() {
            Some(b'"') => self.quoted().map(Some),
            Some(b'{') => self.literal().map(Some),
            _ => self.nil().map(|()| None),
        }
    }

    /// A mailbox name; `INBOX` in any case is `INBOX` (RFC 3501 §5.1).
    fn mailbox(&mut self) -> PResult<String> {
        let m = self.mailbox_raw()?;
        if m.is_empty() {
            return Err("empty mailbox name".into());
        }
        Ok(m)
    }

    fn mailbox_raw(&mut self) -> PResult<String> {
        let m = self.astring_utf8("mailbox name")?;
        if m.len() > 1024 || m.chars().any(char::is_control) {
            return Err("invalid mailbox name".into());
        }
        Ok(if m.eq_ignore_ascii_case("INBOX") {
            "INBOX".into()
        } else {
            m
        })
    }

    fn list_mailbox(&mut self) -> PResult<String> {
        match self.peek() {
            Some(b'"' | b'{') => self.mailbox_raw(),
            _ => {
                let a = self.take_while(|b| is_astring_char(b) || b == b'%' || b == b'*');
                if a.is_empty() {
                    return Err("expected a mailbox pattern".into());
                }
                Ok(String::from_utf8_lossy(a).into_owned())
            }
        }
    }

    fn status_items(&mut self) -> PResult<Vec<StatusItem>> {
        self.expect(b'(', "'('")?;
        let mut items = Vec::new();
        loop {
            let w = self
                .take_while(|b| b.is_ascii_alphabetic())
                .to_ascii_uppercase();
            items.push(match w.as_slice() {
                b"MESSAGES" => StatusItem::Messages,
                b"RECENT" => StatusItem::Recent,
                b"UIDNEXT" => StatusItem::UidNext,
                b"UIDVALIDITY" => StatusItem::UidValidity,
                b"UNSEEN" => StatusItem::Unseen,
                b"SIZE" => StatusItem::Size,
                b"HIGHESTMODSEQ" => StatusItem::HighestModSeq,
                b"DELETED" => StatusItem::Deleted,
                _ => return Err("unknown STATUS item".into()),
            });
            if items.len() > 16 || !self.eat(b' ') {
                break;
            }
        }
        self.expect(b')', "')'")?;
        Ok(items)
    }

    fn flag(&mut self) -> PResult<String> {
        let back = self.eat(b'\\');
        let a = self.take_while(is_atom_char);
        if back && a == b"*" {
            return Err("\\* is not a flag".into());
        }
        if a.is_empty() || a.len() > 128 {
            return Err("expected a flag".into());
        }
        let a = String::from_utf8_lossy(a);
        if back {
            match SYSTEM_FLAGS
                .iter()
                .find(|f| f[1..].eq_ignore_ascii_case(&a))
            {
                Some(f) => Ok((*f).to_string()),
                None if a.eq_ignore_ascii_case("Recent") => {
                    Err("\\Recent cannot be changed".into())
                }
                None => Err(format!("unknown system flag \\{a}")),
            }
        } else {
            Ok(a.into_owned())
        }
    }

    fn flag_list(&mut self) -> PResult<Vec<String>> {
        self.expect(b'(', "'('")?;
        let mut flags = Vec::new();
        if self.eat(b')') {
            return Ok(flags);
        }
        loop {
            flags.push(self.flag()?);
            if flags.len() > 64 {
                return Err("too many flags".into());
            }
            if !self.eat(b' ') {
                break;
            }
        }
        self.expect(b')', "')'")?;
        Ok(flags)
    }

    fn search_date(&mut self) -> PResult<i64> {
        let quoted = self.eat(b'"');
        let d = self.take_while(|b| b.is_ascii_alphanumeric() || b == b'-');
        if quoted {
            self.expect(b'"', "'\"'")?;
        }
        parse_date(d).ok_or_else(|| "invalid date".into())
    }

    fn search_text(&mut self) -> PResult<String> {
        Ok(String::from_utf8_lossy(&self.astring()?).into_owned())
    }

    fn search_key(&mut self, depth: usize) -> PResult<SearchKey> {
        if depth > MAX_SEARCH_DEPTH {
            return Err("search criteria nested too deeply".into());
        }
        if self.eat(b'(') {
            let mut keys = vec![self.search_key(depth + 1)?];
            while self.eat(b' ') {
                if keys.len() >= 256 {
                    return Err("too many search keys".into());
                }
                keys.push(self.search_key(depth + 1)?);
            }
            self.expect(b')', "')'")?;
            return Ok(SearchKey::And(keys));
        }
        if self
            .peek()
            .is_some_and(|b| b.is_ascii_digit() || b == b'*' || b == b'$')
        {
            return Ok(SearchKey::Seq(self.sequence_set()?));
        }
        let w = self
            .take_while(|b| b.is_ascii_alphanumeric() || b == b'-')
            .to_ascii_uppercase();
        let flag = |f: &str| Ok(SearchKey::Flag(f.into()));
        let noflag = |f: &str| Ok(SearchKey::NoFlag(f.into()));
        match w.as_slice() {
            b"ALL" => Ok(SearchKey::All),
            b"ANSWERED" => flag("\\Answered"),
            b"DELETED" => flag("\\Deleted"),
            b"DRAFT" => flag("\\Draft"),
            b"FLAGGED" => flag("\\Flagged"),
            b"SEEN" => flag("\\Seen"),
            b"UNANSWERED" => noflag("\\Answered"),
            b"UNDELETED" => noflag("\\Deleted"),
            b"UNDRAFT" => noflag("\\Draft"),
            b"UNFLAGGED" => noflag("\\Flagged"),
            b"UNSEEN" => noflag("\\Seen"),
            b"RECENT" => Ok(SearchKey::Recent),
            b"NEW" => Ok(SearchKey::New),
            b"OLD" => Ok(SearchKey::Old),
            b"KEYWORD" | b"UNKEYWORD" => {
                self.sp()?;
                let k = self.flag()?;
                Ok(if w == b"KEYWORD" {
                    SearchKey::Flag(k)
                } else {
                    SearchKey::NoFlag(k)
                })
            }
            b"FROM" | b"TO" | b"CC" | b"BCC" | b"SUBJECT" => {
                self.sp()?;
                let v = self.search_text()?;
                Ok(SearchKey::Header(
                    String::from_utf8_lossy(&w).into_owned(),
                    v,
                ))
            }
            b"HEADER" => {
                self.sp()?;
                let n = self.search_text()?;
                self.sp()?;
                let v = self.search_text()?;
                Ok(SearchKey::Header(n, v))
            }
            b"BODY" => {
                self.sp()?;
                Ok(SearchKey::Body(self.search_text()?))
            }
            b"TEXT" => {
                self.sp()?;
                Ok(SearchKey::Text(self.search_text()?))
            }
            b"LARGER" | b"SMALLER" => {
                self.sp()?;
                let n = self.number64()?;
                Ok(if w == b"LARGER" {
                    SearchKey::Larger(n)
                } else {
                    SearchKey::Smaller(n)
                })
            }
            b"BEFORE" | b"ON" | b"SINCE" | b"SENTBEFORE" | b"SENTON" | b"SENTSINCE" => {
                self.sp()?;
                let d = self.search_date()?;
                let cmp = match w.as_slice() {
                    b"BEFORE" | b"SENTBEFORE" => DateCmp::Before,
                    b"ON" | b"SENTON" => DateCmp::On,
                    _ => DateCmp::Since,
                };
                Ok(if w.starts_with(b"SENT") {
                    SearchKey::SentDate(cmp, d)
                } else {
                    SearchKey::Date(cmp, d)
                })
            }
            b"UID" => {
                self.sp()?;
                Ok(SearchKey::Uid(self.sequence_set()?))
            }
            b"NOT" => {
                self.sp()?;
                Ok(SearchKey::Not(Box::new(self.search_key(depth + 1)?)))
            }
            b"OR" => {
                self.sp()?;
                let a = self.search_key(depth + 1)?;
                self.sp()?;
                let b = self.search_key(depth + 1)?;
                Ok(SearchKey::Or(Box::new(a), Box::new(b)))
            }
            b"MODSEQ" => {
                self.sp()?;
                // RFC 7162 §3.1.5: an optional entry name and type
                // (`"/flags/\\seen" all`). Mod-sequences are kept per
                // message, not per flag, so a message matches when its own
                // is high enough: every entry's is at most the message's.
                if self.peek() == Some(b'"') {
                    self.quoted()?;
                    self.sp()?;
                    let kind = self.take_while(is_atom_char);
                    if !["priv", "shared", "all"]
                        .iter()
                        .any(|k| kind.eq_ignore_ascii_case(k.as_bytes()))
                    {
                        return Err("MODSEQ entry type must be priv, shared or all".into());
                    }
                    self.sp()?;
                }
                Ok(SearchKey::ModSeq(self.number64()?))
            }
            _ => Err("unknown search key".into()),
        }
    }
}

/// `d-Mon-yyyy` as days since the epoch.
fn parse_date(d: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(d).ok()?;
    let mut it = s.splitn(3, '-');
    let day: u32 = it.next()?.parse().ok()?;
    let month = crate::mime::month(it.next()?)?;
    let year: i64 = it.next()?.parse().ok()?;
    if !(1..=31).contains(&day) || !(1..=9999).contains(&year) {
        return None;
    }
    Some(crate::mime::days_from_civil(year, month, day))
}

/// An IMAP `date-time` (`dd-Mon-yyyy hh:mm:ss +zzzz`, quotes removed) as
/// Unix milliseconds.
pub fn parse_date_time(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (date, rest) = s.split_once(' ')?;
    let (time, zone) = rest.trim().split_once(' ')?;
    let day = parse_date(date.trim().as_bytes())?;
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let m: i64 = t.next()?.parse().ok()?;
    let sec: i64 = t.next()?.parse().ok()?;
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let zone = zone.trim();
    if zone.len() != 5 {
        return None;
    }
    let sign = match zone.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let zh: i64 = zone[1..3].parse().ok()?;
    let zm: i64 = zone[3..5].parse().ok()?;
    let secs = day * 86_400 + h * 3600 + m * 60 + sec - sign * (zh * 3600 + zm * 60);
    Some(secs * 1000)
}

/// Does `name` match a LIST pattern (`*` matches anything, `%` anything but
/// the hierarchy delimiter `/`)? RFC 3501 §6.3.8. INBOX matches case-insensitively.
pub fn list_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8], budget: &mut u32) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..], budget)),
            Some((b'%', rest)) => {
                let lim = n.iter().position(|&b| b == b'/').unwrap_or(n.len());
                (0..=lim).any(|i| go(rest, &n[i..], budget))
            }
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..], budget),
        }
    }
    let p = match (pattern.get(..5), pattern.get(5..)) {
        (Some(head), Some(tail)) if head.eq_ignore_ascii_case("INBOX") => format!("INBOX{tail}"),
        _ => pattern.to_string(),
    };
    let mut budget = 100_000;
    go(p.as_bytes(), name.as_bytes(), &mut budget)
}

/// Quote a string for a response (`"..."`, or a literal when it needs one).
pub fn quote(s: &str) -> String {
    let mut out = String::new();
    crate::mime::string(&mut out, s.as_bytes());
    out
}

/// A mailbox name as a quoted string. Names are modified UTF-7 (ASCII)
/// for IMAP4rev1 sessions; for IMAP4rev2 ones they are UTF-8, which RFC
/// 9051 §9 (`QUOTED-CHAR`) allows in a quoted string. Control characters
/// (never in a name: the parser refuses them) are dropped.
pub fn quote_mailbox(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every input fails to parse.
    #[track_caller]
    fn assert_refused(inputs: &[&[u8]]) {
        for bad in inputs {
            assert!(
                parse_command(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

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
                mailbox: "INBOX".into(),
                condstore: false,
                qresync: None
            }
        );
        assert_eq!(
            p(b"a EXAMINE \"INBOX\"\r\n"),
            CommandKind::Examine {
                mailbox: "INBOX".into(),
                condstore: false,
                qresync: None
            }
        );
        let CommandKind::Fetch {
            set, attrs, uid, ..
        } = p(b"a1 UID fetch 1:* (FLAGS BODY.PEEK[])\r\n")
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

    /// RFC 7162 §3.2.5 / §3.2.6 syntax: SELECT/EXAMINE QRESYNC and the
    /// VANISHED FETCH modifier.
    #[test]
    fn qresync_syntax() {
        let p = |s: &[u8]| parse_command(s).map(|c| c.kind);
        // The QRESYNC parameter and CONDSTORE flag of a SELECT or EXAMINE.
        let q = |s: &[u8]| match p(s) {
            Ok(
                CommandKind::Select {
                    qresync: Some(q),
                    condstore,
                    ..
                }
                | CommandKind::Examine {
                    qresync: Some(q),
                    condstore,
                    ..
                },
            ) => (q, condstore),
            other => panic!("{other:?}"),
        };
        let (r, condstore) =
            q(b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))");
        assert!(!condstore);
        assert_eq!((r.uidvalidity, r.modseq), (67890007, 20050715194045000));
        let known = r.known_uids.unwrap();
        assert!(known.contains(43, 0) && known.contains(541, 0) && !known.contains(42, 0));
        assert_eq!(r.seq_match, None);
        let (r, condstore) = q(b"a examine Trash (condstore qresync (1 2 1:9 (1:3 4:6)))");
        assert!(condstore);
        assert!(matches!(
            p(b"a examine Trash (qresync (1 2))"),
            Ok(CommandKind::Examine { .. })
        ));
        let (seqs, uids) = r.seq_match.unwrap();
        assert!(seqs.contains(3, 0) && uids.contains(6, 0));
        // Only seq-match-data, no known-uids.
        let (r, _) = q(b"a SELECT x (QRESYNC (1 2 (1 7)))");
        assert!(r.known_uids.is_none() && r.seq_match.is_some());
        let (r, _) = q(b"a SELECT x (QRESYNC (5 9))");
        assert_eq!((r.uidvalidity, r.modseq, r.known_uids), (5, 9, None));
        assert_refused(&[
            b"a SELECT x (QRESYNC)",
            b"a SELECT x (QRESYNC ())",
            b"a SELECT x (QRESYNC (0 5))",
            b"a SELECT x (QRESYNC (1 0))",
            b"a SELECT x (QRESYNC (1 9223372036854775808))",
            b"a SELECT x (QRESYNC (4294967296 5))",
            b"a SELECT x (QRESYNC (1 5 1:*))",
            b"a SELECT x (QRESYNC (1 5 $))",
            b"a SELECT x (QRESYNC (1 5 1 (1)))",
            b"a SELECT x (QRESYNC (1 5 1 (1 2) 3))",
            b"a SELECT x (QRESYNC (1 5) QRESYNC (1 5))",
            b"a SELECT x (QRESYNC (1 5)",
            b"a SELECT x (CONDSTORE CONDSTORE)",
            b"a SELECT x ()",
        ]);
        let Ok(CommandKind::Fetch {
            changed_since: Some(12),
            vanished: true,
            uid: true,
            attrs,
            ..
        }) = p(b"a UID FETCH 1:* (FLAGS) (VANISHED CHANGEDSINCE 12)")
        else {
            panic!()
        };
        assert!(attrs.contains(&FetchAttr::ModSeq));
        assert_refused(&[
            b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 12 VANISHED)",
            b"a UID FETCH 1:* (FLAGS) (VANISHED)",
            b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED VANISHED)",
            b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 CHANGEDSINCE 2)",
            b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 )",
        ]);
    }

    #[test]
    fn parses_mailbox_commands() {
        let p = |s: &[u8]| parse_command(s).unwrap().kind;
        assert_eq!(
            p(b"a LIST \"\" \"*\""),
            CommandKind::List {
                reference: String::new(),
                patterns: vec!["*".into()],
                subscribed_only: false,
                special_only: false,
                lsub: false,
                status: vec![]
            }
        );
        let CommandKind::List {
            special_only,
            status,
            ..
        } = p(
            b"a LIST (SPECIAL-USE) \"\" (% INBOX/*) RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN))",
        )
        else {
            panic!()
        };
        assert!(special_only);
        assert_eq!(status, vec![StatusItem::Messages, StatusItem::Unseen]);
        assert_eq!(
            p(b"a RENAME inbox \"Old Mail\""),
            CommandKind::Rename {
                from: "INBOX".into(),
                to: "Old Mail".into()
            }
        );
        assert_eq!(
            p(b"a APPEND Drafts (\\Draft $x) \" 7-Feb-1994 21:52:25 -0800\" {3+}\r\nabc"),
            CommandKind::Append {
                mailbox: "Drafts".into(),
                flags: vec!["\\Draft".into(), "$x".into()],
                date_ms: Some(760_686_745_000),
                message: b"abc".to_vec()
            }
        );
        let CommandKind::Store {
            mode,
            silent,
            flags,
            uid,
            ..
        } = p(b"a UID STORE 1:* +FLAGS.SILENT (\\Deleted)")
        else {
            panic!()
        };
        assert_eq!((mode, silent, uid), (StoreMode::Add, true, true));
        assert_eq!(flags, vec!["\\Deleted"]);
        assert!(matches!(
            p(b"a UID MOVE 1,3 Trash"),
            CommandKind::Copy {
                remove: true,
                uid: true,
                ..
            }
        ));
        assert!(matches!(
            p(b"a UID EXPUNGE 4:5"),
            CommandKind::Expunge { uids: Some(_) }
        ));
        let CommandKind::Search { key, .. } =
            p(b"a UID SEARCH CHARSET UTF-8 OR FROM bob (SUBJECT \"x y\" UNSEEN) NOT 1:2 SINCE 1-Feb-1994")
        else {
            panic!()
        };
        let SearchKey::And(keys) = key else { panic!() };
        assert_eq!(keys.len(), 3);
        assert_eq!(
            keys[2],
            SearchKey::Date(DateCmp::Since, crate::mime::days_from_civil(1994, 2, 1))
        );
        let CommandKind::Fetch { attrs, .. } =
            p(b"a FETCH 1 (ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[1.2.MIME])")
        else {
            panic!()
        };
        assert_eq!(attrs[3].response_name(), "BODY[1.2.MIME]");
        assert_eq!(
            p(b"a AUTHENTICATE plain AGFsaWNlAHB3"),
            CommandKind::Authenticate {
                mechanism: "PLAIN".into(),
                initial: Some("AGFsaWNlAHB3".into())
            }
        );
        assert_eq!(
            p(b"a ID (\"name\" \"mutt\" \"version\" NIL)"),
            CommandKind::Id
        );
        assert!(list_matches("*", "a/b"));
        assert_eq!(
            p(b"a SELECT Trash (CONDSTORE)"),
            CommandKind::Select {
                mailbox: "Trash".into(),
                condstore: true,
                qresync: None
            }
        );
        let CommandKind::Fetch {
            attrs,
            changed_since,
            ..
        } = p(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)")
        else {
            panic!()
        };
        assert_eq!(changed_since, Some(12345));
        assert!(attrs.contains(&FetchAttr::ModSeq));
        let CommandKind::Store {
            unchanged_since, ..
        } = p(b"a STORE 1 (UNCHANGEDSINCE 7) +FLAGS (\\Seen)")
        else {
            panic!()
        };
        assert_eq!(unchanged_since, Some(7));
        assert!(!list_matches("%", "a/b"));
        assert!(list_matches("inbox", "INBOX"));
        assert!(list_matches("a/%", "a/b"));
    }

    #[test]
    fn search_matches() {
        let msg = b"From: Bob <bob@x.test>\r\nSubject: Quarterly Report\r\nDate: 2 Mar 2024 10:00 +0000\r\n\r\nsee attached numbers\r\n";
        let flags = vec!["\\Seen".to_string()];
        let m = SearchMsg {
            seq: 2,
            uid: 7,
            max_seq: 3,
            max_uid: 9,
            flags: &flags,
            recent: false,
            size: msg.len() as u64,
            internal_date_ms: 0,
            modseq: 1,
            content: Some(msg),
            saved: &[3, 7],
        };
        let k = |s: &str| {
            let CommandKind::Search { key, .. } = parse_command(format!("a SEARCH {s}").as_bytes())
                .unwrap()
                .kind
            else {
                panic!()
            };
            key
        };
        for (q, want) in [
            ("SUBJECT report", true),
            ("FROM \"BOB@\"", true),
            ("BODY numbers", true),
            ("BODY quarterly", false),
            ("TEXT quarterly", true),
            ("UNSEEN", false),
            ("NOT UNSEEN", true),
            ("OR FLAGGED UID 7", true),
            ("UID 8:*", false),
            ("2", true),
            ("SENTON 2-Mar-2024", true),
            ("SENTBEFORE 2-Mar-2024", false),
            ("BEFORE 2-Jan-1970", true),
            ("LARGER 10000", false),
            ("HEADER Date \"\"", true),
            ("HEADER X-Nope \"\"", false),
            ("$", true),
            ("UID $", true),
            ("NOT $", false),
        ] {
            assert_eq!(k(q).matches(&m), want, "{q}");
        }
        let unsaved = SearchMsg { saved: &[8], ..m };
        assert!(!k("$").matches(&unsaved));

        // Header and body keys match decoded text (RFC 2047 words,
        // transfer encodings, charsets), in any case.
        let msg = "From: =?ISO-8859-1?Q?Jos=E9?= <jose@x.test>\r\nSubject: =?UTF-8?B?R3LDvMOfZQ==?=\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nw4lsw6h2ZQ==\r\n";
        let m = SearchMsg {
            content: Some(msg.as_bytes()),
            ..m
        };
        // 8-bit search strings come as literals.
        let lit =
            |key: &str, text: &str| format!("CHARSET UTF-8 {key} {{{}}}\r\n{text}", text.len());
        for (q, want) in [
            (lit("SUBJECT", "grüße"), true),
            (lit("SUBJECT", "GRÜSSE"), false),
            ("SUBJECT UTF-8".into(), false),
            (lit("FROM", "JOSÉ"), true),
            ("FROM jose@x".into(), true),
            (lit("BODY", "élève"), true),
            (lit("TEXT", "GRÜẞE"), true),
            ("BODY w4ls".into(), false),
            ("HEADER Subject \"\"".into(), true),
        ] {
            assert_eq!(k(&q).matches(&m), want, "{q}");
        }
    }

    #[test]
    fn rev2_syntax() {
        // RFC 5182: `$` alone is a sequence set, and SAVE a return option.
        match parse_command(b"a UID FETCH $ (FLAGS)\r\n").unwrap().kind {
            CommandKind::Fetch { set, .. } => assert!(set.is_saved() && !set.contains(1, 1)),
            other => panic!("{other:?}"),
        }
        assert_refused(&[
            &b"a FETCH 1,$ FLAGS\r\n"[..],
            b"a FETCH $:3 FLAGS\r\n",
            b"a FETCH $$ FLAGS\r\n",
        ]);
        match parse_command(b"a SEARCH RETURN (SAVE MIN) $ UNSEEN\r\n")
            .unwrap()
            .kind
        {
            CommandKind::Search { ret, .. } => assert_eq!(ret.unwrap(), ["SAVE", "MIN"]),
            other => panic!("{other:?}"),
        }
        match parse_command(b"a STATUS x (DELETED SIZE)\r\n")
            .unwrap()
            .kind
        {
            CommandKind::Status { items, .. } => {
                assert_eq!(items, [StatusItem::Deleted, StatusItem::Size]);
                assert_eq!(items[0].name(), "DELETED");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            quote_mailbox("Größe/\"a\\b\"\r"),
            "\"Größe/\\\"a\\\\b\\\"\""
        );
        let caps = capabilities(true, false, true);
        assert!(caps.starts_with("IMAP4rev1 IMAP4rev2 LITERAL+ "), "{caps}");
        assert!(caps.contains(" SEARCHRES "), "{caps}");
    }

    #[test]
    fn bad_commands_keep_their_tag() {
        let e = parse_command(b"a1 FROB\r\n").unwrap_err();
        assert_eq!(e.tag.as_deref(), Some("a1"));
        assert!(e.response().starts_with(b"a1 BAD "));
        let e = parse_command(b"\r\n").unwrap_err();
        assert_eq!(e.tag, None);
        assert!(e.response().starts_with(b"* BAD "));
        assert_refused(&[
            &b"a1\r\n"[..],
            b"a1 LOGIN\r\n",
            b"a1 LOGIN x\r\n",
            b"a1 LOGIN \"x y\r\n",
            b"a1 LOGIN {5}\r\nab",
            b"a1 FETCH 0 FLAGS",
            b"a1 FETCH 1: FLAGS",
            b"a1 FETCH 1 (FLAGS",
            b"a1 FETCH 1 BODY[1.]",
            b"a1 FETCH 1 BODY[0]",
            b"a1 STORE 1 FLAGS (\\Recent)",
            b"a1 STORE 1 FLAGS (\\Bogus)",
            b"a1 SEARCH FROB",
            b"a1 SEARCH CHARSET KOI8-R ALL",
            b"a1 SEARCH SINCE 32-Jan-2020",
            b"a1 LIST (BOGUS) \"\" *",
            b"a1 APPEND INBOX (\\Seen) \"bad date\" {1}\r\nx",
            b"a1 STATUS INBOX (FOO)",
            b"a1 FETCH 1 BODY[]<0.0>",
            b"a1 NOOP extra",
            b"a1 UID STORE 1 FLAGS",
            b"+ NOOP",
        ]);
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
                    for prefix in [
                        &b"a FETCH "[..],
                        b"a LOGIN ",
                        b"a UID FETCH 1 BODY[",
                        b"a SEARCH ",
                        b"a SEARCH OR NOT (",
                        b"a STORE 1 +FLAGS",
                        b"a LIST ",
                        b"a APPEND x ",
                        b"a STATUS x (",
                        b"",
                    ] {
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
        assert!(FetchAttr::Flags.binary_item(msg).is_none());
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
            parse_flags("\\seen \\Bogus \\Seen \\Deleted $Junk $junk a(b"),
            vec!["\\Seen", "\\Deleted", "$Junk"]
        );
        assert!(capabilities(false, true, false).contains("LOGINDISABLED"));
        assert!(capabilities(false, true, false).contains("STARTTLS"));
        assert!(!capabilities(true, true, true).contains("AUTH=PLAIN"));
        assert!(greeting("h\r\nx", true, false).starts_with(b"* OK [CAPABILITY IMAP4rev1"));
    }

    #[test]
    fn states() {
        let fetch = CommandKind::Fetch {
            set: SequenceSet::parse(b"1").unwrap(),
            attrs: vec![],
            uid: false,
            changed_since: None,
            vanished: false,
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

    #[test]
    fn binary_fetch() {
        let attrs = |cmd: &[u8]| match parse_command(cmd).unwrap().kind {
            CommandKind::Fetch { attrs, .. } => attrs,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            attrs(b"a FETCH 1 (BINARY[1.2]<3.4> BINARY.PEEK[] BINARY.SIZE[2])\r\n"),
            vec![
                FetchAttr::Binary {
                    path: vec![1, 2],
                    peek: false,
                    partial: Some((3, 4))
                },
                FetchAttr::Binary {
                    path: vec![],
                    peek: true,
                    partial: None
                },
                FetchAttr::BinarySize { path: vec![2] },
            ]
        );
        assert_refused(&[
            &b"a FETCH 1 BINARY[TEXT]\r\n"[..],
            b"a FETCH 1 BINARY[1.MIME]\r\n",
            b"a FETCH 1 BINARY[0]\r\n",
            b"a FETCH 1 BINARY\r\n",
            b"a FETCH 1 BINARY.SIZE[1]<0.1>\r\n",
            b"a FETCH 1 BINARY[1.]\r\n",
        ]);
        assert!(
            FetchAttr::Binary {
                path: vec![],
                peek: false,
                partial: None
            }
            .sets_seen()
        );
        assert!(
            !FetchAttr::Binary {
                path: vec![],
                peek: true,
                partial: None
            }
            .sets_seen()
        );

        let msg = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
a=3Db\r\n--b\r\nContent-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b\r\n\
Content-Transfer-Encoding: x-mystery\r\n\r\n??\r\n--b--\r\n";
        let item = |a: FetchAttr| a.binary_item(msg).unwrap();
        let one = |path: Vec<u32>, partial| {
            fetch_response(
                1,
                &[item(FetchAttr::Binary {
                    path,
                    peek: true,
                    partial,
                })
                .unwrap()],
            )
        };
        assert_eq!(one(vec![1], None), b"* 1 FETCH (BINARY[1] {3}\r\na=b)\r\n");
        // Decoded data with a NUL goes out as a literal8 (RFC 3516 §4.2).
        assert_eq!(
            one(vec![2], None),
            b"* 1 FETCH (BINARY[2] ~{3}\r\n\0\x01\x02)\r\n"
        );
        assert_eq!(
            one(vec![2], Some((1, 5))),
            b"* 1 FETCH (BINARY[2]<1> {2}\r\n\x01\x02)\r\n"
        );
        assert_eq!(one(vec![9], None), b"* 1 FETCH (BINARY[9] {0}\r\n)\r\n");
        assert_eq!(
            fetch_response(1, &[item(FetchAttr::BinarySize { path: vec![2] }).unwrap()]),
            b"* 1 FETCH (BINARY.SIZE[2] 3)\r\n"
        );
        assert_eq!(
            item(FetchAttr::BinarySize { path: vec![3] }).unwrap_err(),
            crate::mime::UnknownCte("x-mystery".into())
        );
        assert!(capabilities(true, false, true).contains(" BINARY"));
    }
}
