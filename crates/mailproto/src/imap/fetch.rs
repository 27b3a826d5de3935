//! FETCH (RFC 9051 §6.4.5, §7.5.2): the attribute parser and the rendering
//! of sections and FETCH responses.

use std::borrow::Cow;

use crate::mime::split_header;

use super::*;

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
pub(super) fn part_path(path: &[u32]) -> String {
    let nums: Vec<String> = path.iter().map(u32::to_string).collect();
    nums.join(".")
}

/// The `<origin.count>` slice of `data` (all of it without a partial).
pub(super) fn cut(data: Cow<'_, [u8]>, partial: Option<(u32, u32)>) -> Cow<'_, [u8]> {
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
pub(super) fn header_fields(header: &[u8], fields: &[String], not: bool) -> Vec<u8> {
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

impl Cur<'_> {
    pub(super) fn fetch_attrs(&mut self) -> PResult<Vec<FetchAttr>> {
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

    pub(super) fn fetch_attr(&mut self) -> PResult<FetchAttr> {
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
            b"" => return Err(ParseErrorKind::Expected("a FETCH attribute")),
            other => {
                let name = String::from_utf8_lossy(other);
                return Err(ParseErrorKind::UnsupportedFetch(name.into_owned()));
            }
        };
        Ok(attr)
    }

    /// `<origin.count>` after a section, if there.
    pub(super) fn partial(&mut self) -> PResult<Option<(u32, u32)>> {
        if !self.eat(b'<') {
            return Ok(None);
        }
        let origin = self.number()?;
        self.expect(b'.', "'.' in partial")?;
        let count = self.number()?;
        if count == 0 {
            return Err(ParseErrorKind::ZeroPartial);
        }
        self.expect(b'>', "'>'")?;
        Ok(Some((origin, count)))
    }

    /// `[1.2.3]` or `[]` (RFC 3516 section-binary).
    pub(super) fn section_binary(&mut self) -> PResult<Vec<u32>> {
        self.expect(b'[', "'['")?;
        let mut path = Vec::new();
        if self.eat(b']') {
            return Ok(path);
        }
        loop {
            let n = self.number()?;
            if n == 0 {
                return Err(ParseErrorKind::Invalid("part number"));
            }
            if path.len() >= 32 {
                return Err(ParseErrorKind::TooDeep("section"));
            }
            path.push(n);
            if !self.eat(b'.') {
                break;
            }
        }
        self.expect(b']', "']' (BINARY takes part numbers only)")?;
        Ok(path)
    }

    pub(super) fn header_list(&mut self) -> PResult<Vec<String>> {
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

    pub(super) fn section(&mut self) -> PResult<Section> {
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
                .ok_or(ParseErrorKind::Invalid("part number"))?;
            if path.len() >= 32 {
                return Err(ParseErrorKind::TooDeep("section"));
            }
            path.push(n);
            if end == rest.len() {
                rest = &[];
                break;
            }
            rest = &rest[end + 1..];
            if rest.is_empty() {
                return Err(ParseErrorKind::Invalid("section"));
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
                _ => return Err(ParseErrorKind::Invalid("section")),
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
                return Err(ParseErrorKind::UnsupportedSection(name.into_owned()));
            }
        };
        self.expect(b']', "']'")?;
        Ok(section)
    }
}

pub(super) fn fetch_args(c: &mut Cur<'_>, uid: bool) -> PResult<CommandKind> {
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
                _ => return Err(ParseErrorKind::Unknown("FETCH modifier")),
            }
            if !c.eat(b' ') {
                break;
            }
        }
        c.expect(b')', "')'")?;
        // RFC 7162 §3.2.6: VANISHED only with UID FETCH and CHANGEDSINCE.
        if vanished && (!uid || changed_since.is_none()) {
            return Err(ParseErrorKind::VanishedWithoutChangedSince);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::imap::test_util::assert_refused;

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
