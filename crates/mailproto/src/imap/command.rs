//! The command types the parser produces, sequence sets, body sections and
//! FETCH attributes, and which commands each protocol state allows
//! (RFC 9051 §3, §6).

use super::*;

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
        /// RECURSIVEMATCH (RFC 5258 §3.1): a parent matching a pattern is
        /// also listed, with CHILDINFO, when a descendant the patterns do
        /// not match meets the selection. Only with another selection option.
        recursive_match: bool,
        /// `RETURN (SUBSCRIBED)` (RFC 5258 §4): `\Subscribed` on each
        /// subscribed mailbox listed.
        return_subscribed: bool,
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

pub(super) fn parse_seq_num(s: &[u8]) -> Option<SeqNum> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
}
