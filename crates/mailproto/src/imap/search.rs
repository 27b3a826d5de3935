//! SEARCH (RFC 9051 §6.4.4): the criteria, their parser and their matching
//! against one message.

use crate::mime::split_header;

use super::*;

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
pub(super) fn address_contains(name: &str, v: &[u8], needle: &str) -> bool {
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

pub(super) fn cmp_day(cmp: DateCmp, have: i64, want: i64) -> bool {
    match cmp {
        DateCmp::Before => have < want,
        DateCmp::On => have == want,
        DateCmp::Since => have >= want,
    }
}

pub(super) fn search_args(c: &mut Cur<'_>, uid: bool) -> PResult<CommandKind> {
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
                _ => return Err(ParseErrorKind::Unknown("SEARCH return option")),
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
            return Err(ParseErrorKind::BadCharset);
        }
        c.sp()?;
    } else {
        c.i = save;
    }
    let mut keys = vec![c.search_key(0)?];
    while c.eat(b' ') {
        if keys.len() >= 256 {
            return Err(ParseErrorKind::TooMany("search keys"));
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
pub(super) const MAX_SEARCH_DEPTH: usize = 32;

impl Cur<'_> {
    pub(super) fn search_date(&mut self) -> PResult<i64> {
        let quoted = self.eat(b'"');
        let d = self.take_while(|b| b.is_ascii_alphanumeric() || b == b'-');
        if quoted {
            self.expect(b'"', "'\"'")?;
        }
        parse_date(d).ok_or(ParseErrorKind::Invalid("date"))
    }

    pub(super) fn search_text(&mut self) -> PResult<String> {
        Ok(String::from_utf8_lossy(&self.astring()?).into_owned())
    }

    pub(super) fn search_key(&mut self, depth: usize) -> PResult<SearchKey> {
        if depth > MAX_SEARCH_DEPTH {
            return Err(ParseErrorKind::TooDeep("search criteria"));
        }
        if self.eat(b'(') {
            let mut keys = vec![self.search_key(depth + 1)?];
            while self.eat(b' ') {
                if keys.len() >= 256 {
                    return Err(ParseErrorKind::TooMany("search keys"));
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
                        return Err(ParseErrorKind::ModSeqEntryType);
                    }
                    self.sp()?;
                }
                Ok(SearchKey::ModSeq(self.number64()?))
            }
            _ => Err(ParseErrorKind::Unknown("search key")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
}
