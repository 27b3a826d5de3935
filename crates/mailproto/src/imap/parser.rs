//! The command parser: a cursor over one whole command and the grammar of
//! every command but SEARCH and FETCH (RFC 9051 §9).

use super::*;

pub(super) struct Cur<'a> {
    pub(super) s: &'a [u8],
    pub(super) i: usize,
}

pub(super) type PResult<T> = Result<T, ParseErrorKind>;

impl<'a> Cur<'a> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    pub(super) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn expect(&mut self, b: u8, what: &'static str) -> PResult<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(ParseErrorKind::Expected(what))
        }
    }

    pub(super) fn sp(&mut self) -> PResult<()> {
        self.expect(b' ', "a space")
    }

    pub(super) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    pub(super) fn end(&mut self) -> PResult<()> {
        let rest = &self.s[self.i.min(self.s.len())..];
        if rest.is_empty() || rest == b"\r\n" || rest == b"\n" {
            Ok(())
        } else {
            Err(ParseErrorKind::TrailingInput)
        }
    }

    pub(super) fn number(&mut self) -> PResult<u32> {
        let d = self.take_while(|b| b.is_ascii_digit());
        if d.is_empty() || d.len() > 10 {
            return Err(ParseErrorKind::Expected("a number"));
        }
        std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(ParseErrorKind::NumberOutOfRange)
    }

    pub(super) fn quoted(&mut self) -> PResult<Vec<u8>> {
        self.expect(b'"', "a quoted string")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r' | b'\n' | 0) => return Err(ParseErrorKind::UnterminatedQuoted),
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
                        _ => return Err(ParseErrorKind::InvalidEscape),
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    pub(super) fn literal(&mut self) -> PResult<Vec<u8>> {
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
            .ok_or(ParseErrorKind::MissingLiteral)?;
        let data = self.s[self.i..end].to_vec();
        self.i = end;
        Ok(data)
    }

    pub(super) fn astring(&mut self) -> PResult<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            _ => {
                let a = self.take_while(is_astring_char);
                if a.is_empty() {
                    Err(ParseErrorKind::Expected("a string"))
                } else {
                    Ok(a.to_vec())
                }
            }
        }
    }

    pub(super) fn astring_utf8(&mut self, what: &'static str) -> PResult<String> {
        String::from_utf8(self.astring()?).map_err(|_| ParseErrorKind::NotUtf8(what))
    }
}

/// Parse a whole command as assembled by [`Framer`].
pub fn parse_command(input: &[u8]) -> Result<Command, ParseError> {
    let tag = peek_tag(input);
    let Some(tag_s) = tag.clone() else {
        return Err(ParseError {
            tag: None,
            kind: ParseErrorKind::MissingTag,
        });
    };
    let bad = |kind: ParseErrorKind| ParseError {
        tag: tag.clone(),
        kind,
    };
    let mut c = Cur {
        s: input,
        i: tag_s.len(),
    };
    c.sp().map_err(|_| bad(ParseErrorKind::MissingCommand))?;
    let kind = parse_kind(&mut c).map_err(bad)?;
    Ok(Command { tag: tag_s, kind })
}

pub(super) fn parse_kind(c: &mut Cur<'_>) -> PResult<CommandKind> {
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
                return Err(ParseErrorKind::Expected("a SASL mechanism"));
            }
            let mechanism = String::from_utf8_lossy(mech).to_ascii_uppercase();
            let initial = if c.eat(b' ') {
                let r =
                    c.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
                if r.is_empty() {
                    return Err(ParseErrorKind::Invalid("initial response"));
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
                    return Err(ParseErrorKind::Expected("a capability"));
                }
                caps.push(String::from_utf8_lossy(a).to_ascii_uppercase());
            }
            if caps.is_empty() {
                return Err(ParseErrorKind::EnableWithoutCapability);
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
                        return Err(ParseErrorKind::TooMany("ID fields"));
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
                date_ms = Some(parse_date_time(&d).ok_or(ParseErrorKind::Invalid("date-time"))?);
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
                    return Err(ParseErrorKind::UnknownUidCommand(
                        String::from_utf8_lossy(other).into_owned(),
                    ));
                }
            }
        }
        b"" => return Err(ParseErrorKind::Expected("a command")),
        other => {
            let mut n = String::from_utf8_lossy(other).into_owned();
            n.truncate(40);
            return Err(ParseErrorKind::UnknownCommand(n.to_string()));
        }
    };
    c.end()?;
    Ok(kind)
}

pub(super) fn list_args(c: &mut Cur<'_>, lsub: bool) -> PResult<CommandKind> {
    c.sp()?;
    let mut subscribed_only = lsub;
    let mut special_only = false;
    let mut recursive_match = false;
    let mut return_subscribed = false;
    // RFC 5258 selection options.
    if !lsub && c.eat(b'(') {
        while !c.eat(b')') {
            c.eat(b' ');
            let w = c.take_while(is_atom_char).to_ascii_uppercase();
            match w.as_slice() {
                b"SUBSCRIBED" => subscribed_only = true,
                b"SPECIAL-USE" => special_only = true,
                b"RECURSIVEMATCH" => recursive_match = true,
                b"REMOTE" => {}
                _ => return Err(ParseErrorKind::Unknown("LIST selection option")),
            }
        }
        // RFC 5258 §3: RECURSIVEMATCH alone (or with REMOTE only) is BAD.
        if recursive_match && !subscribed_only && !special_only {
            return Err(ParseErrorKind::RecursiveMatchAlone);
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
                return Err(ParseErrorKind::TooMany("patterns"));
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
    // RFC 5258 return options; SPECIAL-USE and CHILDREN data are always
    // returned; SUBSCRIBED and STATUS (RFC 5819) when asked for.
    if !lsub && c.eat(b' ') {
        let w = c
            .take_while(|b| b.is_ascii_alphabetic())
            .to_ascii_uppercase();
        if w != b"RETURN" {
            return Err(ParseErrorKind::Expected("RETURN"));
        }
        c.sp()?;
        c.expect(b'(', "'('")?;
        while !c.eat(b')') {
            c.eat(b' ');
            let w = c.take_while(is_atom_char).to_ascii_uppercase();
            match w.as_slice() {
                b"SUBSCRIBED" => return_subscribed = true,
                b"CHILDREN" | b"SPECIAL-USE" => {}
                b"STATUS" => {
                    c.sp()?;
                    status = c.status_items()?;
                }
                _ => return Err(ParseErrorKind::Unknown("LIST return option")),
            }
        }
    }
    Ok(CommandKind::List {
        reference,
        patterns,
        subscribed_only,
        special_only,
        recursive_match,
        return_subscribed,
        lsub,
        status,
    })
}

pub(super) fn store_args(c: &mut Cur<'_>, uid: bool) -> PResult<CommandKind> {
    c.sp()?;
    let set = c.sequence_set()?;
    c.sp()?;
    let mut unchanged_since = None;
    if c.eat(b'(') {
        let w = c
            .take_while(|b| b.is_ascii_alphabetic())
            .to_ascii_uppercase();
        if w != b"UNCHANGEDSINCE" {
            return Err(ParseErrorKind::Unknown("STORE modifier"));
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
        _ => return Err(ParseErrorKind::Expected("FLAGS, +FLAGS or -FLAGS")),
    };
    c.sp()?;
    let flags = if c.peek() == Some(b'(') {
        c.flag_list()?
    } else {
        let mut v = vec![c.flag()?];
        while c.eat(b' ') {
            v.push(c.flag()?);
            if v.len() > 64 {
                return Err(ParseErrorKind::TooMany("flags"));
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

pub(super) fn copy_args(c: &mut Cur<'_>, uid: bool, remove: bool) -> PResult<CommandKind> {
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

impl Cur<'_> {
    pub(super) fn number64(&mut self) -> PResult<u64> {
        let d = self.take_while(|b| b.is_ascii_digit());
        if d.is_empty() || d.len() > 19 {
            return Err(ParseErrorKind::Expected("a number"));
        }
        std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(ParseErrorKind::NumberOutOfRange)
    }

    /// SELECT/EXAMINE parameters after the SP: `(CONDSTORE)`,
    /// `(QRESYNC (...))` or both (RFC 4466 §2.1 list).
    pub(super) fn select_params(&mut self) -> PResult<(bool, Option<QResync>)> {
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
                _ => return Err(ParseErrorKind::Unknown("SELECT parameter")),
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
    pub(super) fn qresync(&mut self) -> PResult<QResync> {
        self.expect(b'(', "'('")?;
        let uidvalidity = self.number()?;
        self.sp()?;
        let modseq = self.number64()?;
        if uidvalidity == 0 || modseq == 0 || modseq > i64::MAX as u64 {
            return Err(ParseErrorKind::Invalid("QRESYNC parameter"));
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

    pub(super) fn end_qresync(
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
    pub(super) fn known_set(&mut self) -> PResult<SequenceSet> {
        let raw = self.take_while(|b| b.is_ascii_digit() || matches!(b, b':' | b','));
        SequenceSet::parse(raw).ok_or(ParseErrorKind::Invalid("UID set"))
    }

    pub(super) fn sequence_set(&mut self) -> PResult<SequenceSet> {
        let raw = self.take_while(|b| b.is_ascii_digit() || matches!(b, b':' | b',' | b'*' | b'$'));
        SequenceSet::parse(raw).ok_or(ParseErrorKind::Invalid("sequence set"))
    }

    pub(super) fn nil(&mut self) -> PResult<()> {
        let w = self.take_while(|b| b.is_ascii_alphabetic());
        if w.eq_ignore_ascii_case(b"NIL") {
            Ok(())
        } else {
            Err(ParseErrorKind::Expected("NIL"))
        }
    }

    pub(super) fn nstring(&mut self) -> PResult<Option<Vec<u8>>> {
        match self.peek() {
            Some(b'"') => self.quoted().map(Some),
            Some(b'{') => self.literal().map(Some),
            _ => self.nil().map(|()| None),
        }
    }

    /// A mailbox name; `INBOX` in any case is `INBOX` (RFC 3501 §5.1).
    pub(super) fn mailbox(&mut self) -> PResult<String> {
        let m = self.mailbox_raw()?;
        if m.is_empty() {
            return Err(ParseErrorKind::EmptyMailbox);
        }
        Ok(m)
    }

    pub(super) fn mailbox_raw(&mut self) -> PResult<String> {
        let m = self.astring_utf8("mailbox name")?;
        if m.len() > 1024 || m.chars().any(char::is_control) {
            return Err(ParseErrorKind::Invalid("mailbox name"));
        }
        Ok(if m.eq_ignore_ascii_case("INBOX") {
            "INBOX".into()
        } else {
            m
        })
    }

    pub(super) fn list_mailbox(&mut self) -> PResult<String> {
        match self.peek() {
            Some(b'"' | b'{') => self.mailbox_raw(),
            _ => {
                let a = self.take_while(|b| is_astring_char(b) || b == b'%' || b == b'*');
                if a.is_empty() {
                    return Err(ParseErrorKind::Expected("a mailbox pattern"));
                }
                Ok(String::from_utf8_lossy(a).into_owned())
            }
        }
    }

    pub(super) fn status_items(&mut self) -> PResult<Vec<StatusItem>> {
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
                _ => return Err(ParseErrorKind::Unknown("STATUS item")),
            });
            if items.len() > 16 || !self.eat(b' ') {
                break;
            }
        }
        self.expect(b')', "')'")?;
        Ok(items)
    }

    pub(super) fn flag(&mut self) -> PResult<String> {
        let back = self.eat(b'\\');
        let a = self.take_while(is_atom_char);
        if back && a == b"*" {
            return Err(ParseErrorKind::StarFlag);
        }
        if a.is_empty() || a.len() > 128 {
            return Err(ParseErrorKind::Expected("a flag"));
        }
        let a = String::from_utf8_lossy(a);
        if back {
            match SYSTEM_FLAGS
                .iter()
                .find(|f| f[1..].eq_ignore_ascii_case(&a))
            {
                Some(f) => Ok((*f).to_string()),
                None if a.eq_ignore_ascii_case("Recent") => Err(ParseErrorKind::RecentFlag),
                None => Err(ParseErrorKind::UnknownSystemFlag(a.to_string())),
            }
        } else {
            Ok(a.into_owned())
        }
    }

    pub(super) fn flag_list(&mut self) -> PResult<Vec<String>> {
        self.expect(b'(', "'('")?;
        let mut flags = Vec::new();
        if self.eat(b')') {
            return Ok(flags);
        }
        loop {
            flags.push(self.flag()?);
            if flags.len() > 64 {
                return Err(ParseErrorKind::TooMany("flags"));
            }
            if !self.eat(b' ') {
                break;
            }
        }
        self.expect(b')', "')'")?;
        Ok(flags)
    }
}

/// `d-Mon-yyyy` as days since the epoch.
pub(super) fn parse_date(d: &[u8]) -> Option<i64> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::imap::test_util::assert_refused;

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
                recursive_match: false,
                return_subscribed: false,
                lsub: false,
                status: vec![]
            }
        );
        let CommandKind::List {
            subscribed_only,
            recursive_match,
            return_subscribed,
            ..
        } = p(b"a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" % RETURN (CHILDREN SUBSCRIBED)")
        else {
            panic!()
        };
        assert!(subscribed_only && recursive_match && return_subscribed);
        assert_refused(&[
            &b"a LIST (RECURSIVEMATCH) \"\" \"\"\r\n"[..],
            b"a LIST (RECURSIVEMATCH REMOTE) \"\" \"\"\r\n",
        ]);
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
}
