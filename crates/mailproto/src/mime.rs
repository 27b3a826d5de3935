//! Just enough RFC 5322 / MIME (RFC 2045, 2046) to answer IMAP FETCH
//! ENVELOPE, BODYSTRUCTURE and `BODY[part]`, and SEARCH by header or date.
//!
//! Everything is bounded: nesting is limited to [`MAX_DEPTH`] and the parts
//! of one message to [`MAX_PARTS`]; beyond that the rest is treated as an
//! opaque leaf. Malformed input never panics; it yields a best-effort
//! structure (RFC 3501 §6.4.5 asks servers to describe, not validate).

use std::fmt::Write as _;

/// Deepest multipart / message nesting that is parsed.
pub const MAX_DEPTH: usize = 8;
/// Most parts parsed in one message.
pub const MAX_PARTS: usize = 200;

/// Split a message or part into its header (through the blank line) and body.
/// Without a blank line the whole message is header.
pub fn split_header(message: &[u8]) -> (&[u8], &[u8]) {
    // The first line that is `\r\n` or `\n`: at the start, or after a `\n`.
    let blank_at = |i: usize| match message.get(i..) {
        Some([b'\n', ..]) => Some(i + 1),
        Some([b'\r', b'\n', ..]) => Some(i + 2),
        _ => None,
    };
    let end =
        blank_at(0).or_else(|| memchr::memchr_iter(b'\n', message).find_map(|i| blank_at(i + 1)));
    match end {
        Some(end) => message.split_at(end),
        None => (message, &[]),
    }
}

/// The non-empty lines of `text`, without their line breaks (LF or
/// CRLF), each with the offset where it starts.
fn lines(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < text.len() {
            let start = pos;
            let end = memchr::memchr(b'\n', &text[pos..]).map_or(text.len(), |i| pos + i);
            pos = end + 1;
            let raw = &text[start..end];
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if !line.is_empty() {
                return Some((start, line));
            }
        }
        None
    })
}

/// One field of a header block, as [`header_fields`] finds it.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// The name, trimmed.
    pub name: &'a [u8],
    /// The value on the field's first line, trimmed.
    first: &'a [u8],
    /// Its continuation lines, as they are in the header.
    folded: &'a [u8],
}

impl<'a> Field<'a> {
    /// The unfolded value: the first line's, with the continuation lines
    /// appended as they are (without their line breaks). Borrowed unless
    /// the field is folded.
    pub fn value(&self) -> std::borrow::Cow<'a, [u8]> {
        if self.folded.is_empty() {
            return std::borrow::Cow::Borrowed(self.first);
        }
        let mut v = self.first.to_vec();
        for (_, l) in lines(self.folded) {
            v.extend_from_slice(l);
        }
        std::borrow::Cow::Owned(v)
    }
}

/// The fields of a header block, in order, read in place. A line with no
/// colon is not a field, and neither are its continuation lines.
pub fn header_fields(header: &[u8]) -> impl Iterator<Item = Field<'_>> {
    let folds = |(_, l): &(usize, &[u8])| matches!(l[0], b' ' | b'\t');
    let mut lines = lines(header).peekable();
    std::iter::from_fn(move || {
        while let Some((_, line)) = lines.next() {
            if folds(&(0, line)) {
                continue;
            }
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let mut folded: &[u8] = &[];
            if let Some((start, first)) = lines.next_if(folds) {
                let mut end = start + first.len();
                while let Some((at, l)) = lines.next_if(folds) {
                    end = at + l.len();
                }
                folded = &header[start..end];
            }
            return Some(Field {
                name: trim(&line[..colon]),
                first: trim(&line[colon + 1..]),
                folded,
            });
        }
        None
    })
}

/// Every field `(name, unfolded value)` of a header, in order
/// ([`header_fields`]).
pub fn fields(header: &[u8]) -> Vec<(String, Vec<u8>)> {
    header_fields(header)
        .map(|f| {
            let name = String::from_utf8_lossy(f.name).into_owned();
            (name, f.value().into_owned())
        })
        .collect()
}

/// The first field named `name` (case-insensitive), unfolded.
pub fn field(header: &[u8], name: &str) -> Option<Vec<u8>> {
    header_fields(header)
        .find(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| f.value().into_owned())
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &v[s..e.max(s)]
}

/// A `Content-Type`-like value: `type/subtype; a=b; c="d"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    /// Lower-cased major type.
    pub kind: String,
    /// Lower-cased subtype.
    pub subtype: String,
    /// Parameters, names lower-cased, values unquoted.
    pub params: Vec<(String, String)>,
}

impl ContentType {
    /// The parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Most parameters read from one field.
const MAX_PARAMS: usize = 32;

/// Parse `value; p=v; ...` into the leading token and its parameters.
fn value_and_params(v: &[u8]) -> (String, Vec<(String, String)>) {
    let mut parts = split_params(v);
    let head = String::from_utf8_lossy(parts.next().unwrap_or_default())
        .trim()
        .to_ascii_lowercase();
    let mut params = Vec::new();
    for p in parts.take(MAX_PARAMS) {
        if let Some((n, v)) = String::from_utf8_lossy(p).split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .map_or_else(
                    || v.to_string(),
                    |x| x.replace("\\\"", "\"").replace("\\\\", "\\"),
                );
            params.push((n.trim().to_ascii_lowercase(), v));
        }
    }
    (head, params)
}

/// The pieces of `v` between `;`s outside quoted strings.
fn split_params(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(v);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut esc) = (false, false);
        for (i, &b) in s.iter().enumerate() {
            if esc {
                esc = false;
                continue;
            }
            match b {
                b'\\' if quoted => esc = true,
                b'"' => quoted = !quoted,
                b';' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// The part's content type; `default` is `text/plain` except inside
/// `multipart/digest` (RFC 2046 §5.1.5).
pub fn content_type(header: &[u8], digest_child: bool) -> ContentType {
    let default = || ContentType {
        kind: if digest_child { "message" } else { "text" }.into(),
        subtype: if digest_child { "rfc822" } else { "plain" }.into(),
        params: if digest_child {
            vec![]
        } else {
            vec![("charset".into(), "us-ascii".into())]
        },
    };
    let Some(v) = field(header, "Content-Type") else {
        return default();
    };
    let (head, params) = value_and_params(&v);
    match head.split_once('/') {
        Some((k, s)) if !k.trim().is_empty() && !s.trim().is_empty() => ContentType {
            kind: k.trim().into(),
            subtype: s.trim().into(),
            params,
        },
        _ => default(),
    }
}

/// One MIME part of a message.
#[derive(Debug, Clone)]
pub struct Part<'a> {
    /// The part's own header (for the top level, the message header).
    pub header: &'a [u8],
    /// The part's body.
    pub body: &'a [u8],
    /// Its content type.
    pub ctype: ContentType,
    /// Sub-parts of a multipart.
    pub children: Vec<Part<'a>>,
    /// The enclosed message of a `message/rfc822` part.
    pub message: Option<Box<Part<'a>>>,
}

/// Parse a whole message (or part) into its MIME tree.
pub fn parse(message: &[u8]) -> Part<'_> {
    let mut budget = MAX_PARTS;
    parse_part(message, false, 0, &mut budget)
}

fn parse_part<'a>(raw: &'a [u8], digest_child: bool, depth: usize, budget: &mut usize) -> Part<'a> {
    let (header, body) = split_header(raw);
    let ctype = content_type(header, digest_child);
    let mut part = Part {
        header,
        body,
        ctype,
        children: Vec::new(),
        message: None,
    };
    if depth >= MAX_DEPTH || *budget == 0 {
        return part;
    }
    *budget -= 1;
    if part.ctype.kind == "multipart" {
        let digest = part.ctype.subtype == "digest";
        if let Some(b) = part.ctype.param("boundary").map(str::to_string) {
            for chunk in split_multipart(body, b.as_bytes()) {
                if *budget == 0 {
                    break;
                }
                part.children
                    .push(parse_part(chunk, digest, depth + 1, budget));
            }
        }
    } else if part.ctype.kind == "message" && part.ctype.subtype == "rfc822" {
        part.message = Some(Box::new(parse_part(body, false, depth + 1, budget)));
    }
    part
}

/// The bodies between `--boundary` lines (RFC 2046 §5.1.1); the CRLF before
/// a delimiter belongs to the delimiter.
fn split_multipart<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while pos < body.len() {
        let end = body[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| pos + i + 1);
        let line = &body[pos..end];
        if let Some(rest) = line.strip_prefix(b"--")
            && rest.starts_with(boundary)
        {
            let after = &rest[boundary.len()..];
            let closing = after.starts_with(b"--");
            if let Some(s) = start {
                let mut e = pos;
                if e > s && body[e - 1] == b'\n' {
                    e -= 1;
                    if e > s && body[e - 1] == b'\r' {
                        e -= 1;
                    }
                }
                out.push(&body[s..e.max(s)]);
            }
            if closing {
                return out;
            }
            start = Some(end);
            if out.len() >= MAX_PARTS {
                return out;
            }
        }
        pos = end;
    }
    if let Some(s) = start {
        out.push(&body[s..]);
    }
    out
}

impl<'a> Part<'a> {
    /// The part at `path` (1-based, RFC 3501 §6.4.5, RFC 9051 §6.4.5).
    /// Part 1 of a non-multipart is the part itself (for a top-level
    /// `message/rfc822`, its whole enclosed message); the parts below a
    /// `message/rfc822` part are numbered from the message it encloses.
    pub fn find(&self, path: &[u32]) -> Option<&Part<'a>> {
        let Some((&first, rest)) = path.split_first() else {
            return Some(self);
        };
        let child = if self.ctype.kind == "multipart" {
            self.children.get((first as usize).checked_sub(1)?)?
        } else if first == 1 {
            self
        } else {
            return None;
        };
        if rest.is_empty() {
            return Some(child);
        }
        match &child.message {
            Some(m) => m.find(rest),
            None if child.ctype.kind == "multipart" => child.find(rest),
            None => None,
        }
    }
}

/// Append an IMAP `nstring` for `v`: NIL, a quoted string, or a literal
/// when the value needs one (8-bit, CR/LF, long).
pub fn nstring(out: &mut String, v: Option<&[u8]>) {
    match v {
        None => out.push_str("NIL"),
        Some(v) => string(out, v),
    }
}

/// Append an IMAP `string` (quoted, or literal when needed).
pub fn string(out: &mut String, v: &[u8]) {
    let text = String::from_utf8_lossy(v);
    if v.iter().all(|&b| (0x20..0x7f).contains(&b)) && v.len() < 1000 {
        out.push('"');
        for c in text.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        // A literal may hold neither CR/LF (they would end the response
        // line for a client) nor NUL (RFC 9051 §9: `literal` is CHAR8,
        // %x01-ff).
        let clean: String = text
            .chars()
            .filter(|&c| c != '\r' && c != '\n' && c != '\0')
            .collect();
        let _ = write!(out, "{{{}}}\r\n{}", clean.len(), clean);
    }
}

/// An address list field as an IMAP list of addresses, or NIL.
fn address_list(out: &mut String, v: Option<&[u8]>) {
    let addrs = v.map(parse_address_list).unwrap_or_default();
    if addrs.is_empty() {
        out.push_str("NIL");
        return;
    }
    out.push('(');
    for a in addrs {
        out.push('(');
        nstring(out, a.name.as_deref().map(str::as_bytes));
        out.push(' ');
        nstring(out, a.route.as_deref().map(str::as_bytes));
        out.push(' ');
        nstring(out, a.mailbox.as_deref().map(str::as_bytes));
        out.push(' ');
        nstring(out, a.host.as_deref().map(str::as_bytes));
        out.push(')');
    }
    out.push(')');
}

/// One element of an ENVELOPE address list (RFC 3501 §7.4.2): an address,
/// or a group marker. A group starts with `mailbox` = the group's name and
/// `host` NIL, and ends with all four NIL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvelopeAddress {
    /// The display name; a comment stands in when there is no phrase
    /// (`user@domain (Real Name)`), as Dovecot does.
    pub name: Option<String>,
    /// The obsolete source route (`@a,@b`, RFC 5322 §4.4).
    pub route: Option<String>,
    /// The local part, or the group name of a group start.
    pub mailbox: Option<String>,
    /// The domain; NIL for group markers.
    pub host: Option<String>,
}

/// A token of an address list: the specials that structure it, words
/// (atoms and quoted strings, unquoted) and comments (their text).
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Special(char),
    Word(String),
    Quoted(String),
    Comment(String),
}

fn tokenize_addresses(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {}
            '"' => {
                let mut w = String::new();
                while let Some(c) = it.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(it.next()),
                        '\r' | '\n' => {}
                        c => w.push(c),
                    }
                }
                out.push(Tok::Quoted(w));
            }
            '(' => {
                let (mut depth, mut w) = (1u32, String::new());
                while let Some(c) = it.next() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        '\\' => {
                            w.extend(it.next());
                            continue;
                        }
                        _ => {}
                    }
                    w.push(c);
                }
                out.push(Tok::Comment(w.trim().to_string()));
            }
            '<' | '>' | '@' | ',' | ';' | ':' | '.' | '[' | ']' => out.push(Tok::Special(c)),
            c => {
                let mut w = String::from(c);
                while let Some(&n) = it.peek() {
                    if " \t\r\n\"(<>@,;:.[]".contains(n) {
                        break;
                    }
                    w.push(n);
                    it.next();
                }
                out.push(Tok::Word(w));
            }
        }
    }
    out
}

/// Parse an RFC 5322 §3.4 address list, groups included, leniently (what
/// does not parse is kept as best it can, never an error). At most 100
/// addresses.
pub fn parse_address_list(v: &[u8]) -> Vec<EnvelopeAddress> {
    let s = String::from_utf8_lossy(v);
    let toks = tokenize_addresses(&s);
    let mut out = Vec::new();
    let mut in_group = false;
    // Split at top-level ',' and ';', and at a group's ':'.
    let mut cur: Vec<Tok> = Vec::new();
    let mut angle = false;
    for t in toks {
        match &t {
            Tok::Special('<') => angle = true,
            Tok::Special('>') => angle = false,
            _ => {}
        }
        match t {
            Tok::Special(':') if !angle && !in_group && !cur.is_empty() => {
                // A group: its name is the phrase before ':'.
                let name = phrase(&cur);
                cur.clear();
                in_group = true;
                out.push(EnvelopeAddress {
                    mailbox: Some(name),
                    ..Default::default()
                });
            }
            Tok::Special(',') if !angle => {
                out.extend(mailbox(&cur));
                cur.clear();
            }
            Tok::Special(';') if !angle => {
                out.extend(mailbox(&cur));
                cur.clear();
                if in_group {
                    in_group = false;
                    out.push(EnvelopeAddress::default());
                }
            }
            t => cur.push(t),
        }
        if out.len() >= 100 {
            return out;
        }
    }
    out.extend(mailbox(&cur));
    if in_group {
        out.push(EnvelopeAddress::default());
    }
    out
}

/// The words of a phrase, joined by single spaces (comments dropped).
fn phrase(toks: &[Tok]) -> String {
    let mut out = String::new();
    for t in toks {
        let w = match t {
            Tok::Word(w) | Tok::Quoted(w) => w.as_str(),
            Tok::Special('.') => {
                out.push('.');
                continue;
            }
            _ => continue,
        };
        if !out.is_empty() && !out.ends_with('.') {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// The text of a token run with no spaces (a local part, a domain, a route).
fn joined(toks: &[Tok]) -> String {
    let mut out = String::new();
    for t in toks {
        match t {
            Tok::Word(w) | Tok::Quoted(w) => out.push_str(w),
            Tok::Special(c) => out.push(*c),
            Tok::Comment(_) => {}
        }
    }
    out
}

/// One mailbox (`name-addr` or `addr-spec`), or None for an empty item.
fn mailbox(toks: &[Tok]) -> Option<EnvelopeAddress> {
    if toks.iter().all(|t| matches!(t, Tok::Comment(_))) {
        return None;
    }
    let comment = toks.iter().rev().find_map(|t| match t {
        Tok::Comment(c) if !c.is_empty() => Some(c.clone()),
        _ => None,
    });
    let open = toks.iter().position(|t| *t == Tok::Special('<'));
    let (name, spec) = match open {
        Some(a) => {
            let close = toks[a..]
                .iter()
                .position(|t| *t == Tok::Special('>'))
                .map_or(toks.len(), |i| a + i);
            let name = phrase(&toks[..a]);
            ((!name.is_empty()).then_some(name), &toks[a + 1..close])
        }
        None => (comment, toks),
    };
    // An obsolete route: `@a,@b:` before the addr-spec (RFC 5322 §4.4).
    let (route, spec) = match spec.iter().position(|t| *t == Tok::Special(':')) {
        Some(i) if spec.first() == Some(&Tok::Special('@')) => {
            (Some(joined(&spec[..i])), &spec[i + 1..])
        }
        _ => (None, spec),
    };
    let at = spec.iter().rposition(|t| *t == Tok::Special('@'));
    let (local, host) = match at {
        Some(i) => (joined(&spec[..i]), Some(joined(&spec[i + 1..]))),
        None => (joined(spec), None),
    };
    Some(EnvelopeAddress {
        name,
        route,
        mailbox: Some(local),
        host,
    })
}

/// The ENVELOPE of a message header (RFC 3501 §7.4.2).
pub fn envelope(header: &[u8]) -> String {
    let fs = fields(header);
    let get = |n: &str| {
        fs.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_slice())
    };
    let mut out = String::from("(");
    nstring(&mut out, get("Date"));
    out.push(' ');
    nstring(&mut out, get("Subject"));
    let from = get("From");
    for (name, dflt) in [
        ("From", None),
        ("Sender", from),
        ("Reply-To", from),
        ("To", None),
        ("Cc", None),
        ("Bcc", None),
    ] {
        out.push(' ');
        let v = get(name).filter(|v| !v.is_empty()).or(dflt);
        address_list(&mut out, v);
    }
    out.push(' ');
    nstring(&mut out, get("In-Reply-To"));
    out.push(' ');
    nstring(&mut out, get("Message-ID"));
    out.push(')');
    out
}

fn count_lines(b: &[u8]) -> usize {
    let n = b.iter().filter(|&&c| c == b'\n').count();
    if b.last().is_some_and(|&c| c != b'\n') {
        n + 1
    } else {
        n
    }
}

fn param_list(out: &mut String, params: &[(String, String)]) {
    if params.is_empty() {
        out.push_str("NIL");
        return;
    }
    out.push('(');
    for (i, (n, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        string(out, n.to_ascii_uppercase().as_bytes());
        out.push(' ');
        string(out, v.as_bytes());
    }
    out.push(')');
}

fn disposition(out: &mut String, header: &[u8]) {
    match field(header, "Content-Disposition") {
        None => out.push_str("NIL"),
        Some(v) => {
            let (head, params) = value_and_params(&v);
            out.push('(');
            string(out, head.to_ascii_uppercase().as_bytes());
            out.push(' ');
            param_list(out, &params);
            out.push(')');
        }
    }
}

/// BODY (`extended` false) or BODYSTRUCTURE (`extended` true) of a part
/// (RFC 3501 §7.4.2).
pub fn body_structure(part: &Part<'_>, extended: bool) -> String {
    let mut out = String::new();
    write_structure(&mut out, part, extended);
    out
}

fn write_structure(out: &mut String, part: &Part<'_>, extended: bool) {
    let ct = &part.ctype;
    if ct.kind == "multipart" {
        out.push('(');
        if part.children.is_empty() {
            // An empty multipart has no valid representation; describe it as text.
            out.push_str("\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0");
        } else {
            for c in &part.children {
                write_structure(out, c, extended);
            }
        }
        out.push(' ');
        string(out, ct.subtype.to_ascii_uppercase().as_bytes());
        if extended {
            out.push(' ');
            param_list(out, &ct.params);
            out.push(' ');
            disposition(out, part.header);
            out.push_str(" NIL NIL");
        }
        out.push(')');
        return;
    }
    out.push('(');
    string(out, ct.kind.to_ascii_uppercase().as_bytes());
    out.push(' ');
    string(out, ct.subtype.to_ascii_uppercase().as_bytes());
    out.push(' ');
    param_list(out, &ct.params);
    out.push(' ');
    nstring(out, field(part.header, "Content-ID").as_deref());
    out.push(' ');
    nstring(out, field(part.header, "Content-Description").as_deref());
    out.push(' ');
    let enc = field(part.header, "Content-Transfer-Encoding")
        .map(|e| String::from_utf8_lossy(&e).trim().to_ascii_uppercase())
        .unwrap_or_else(|| "7BIT".into());
    string(out, enc.as_bytes());
    let _ = write!(out, " {}", part.body.len());
    if let Some(m) = &part.message {
        out.push(' ');
        out.push_str(&envelope(m.header));
        out.push(' ');
        write_structure(out, m, extended);
        let _ = write!(out, " {}", count_lines(part.body));
    } else if ct.kind == "text" {
        let _ = write!(out, " {}", count_lines(part.body));
    }
    if extended {
        out.push(' ');
        nstring(out, field(part.header, "Content-MD5").as_deref());
        out.push(' ');
        disposition(out, part.header);
        out.push_str(" NIL NIL");
    }
    out.push(')');
}

/// What FETCH ENVELOPE, BODY, BODYSTRUCTURE and header sections, and
/// SEARCH by header, need of a message: computed once when it is stored so
/// those never read or parse the body again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The header block, through the blank line (as [`split_header`] gives it).
    pub header: Vec<u8>,
    /// The ENVELOPE value.
    pub envelope: String,
    /// The BODYSTRUCTURE value (with extension data).
    pub body_structure: String,
    /// The BODY value (no extension data).
    pub body_basic: String,
}

/// Parse a whole message once into its [`Summary`].
pub fn summarize(message: &[u8]) -> Summary {
    let tree = parse(message);
    Summary {
        header: tree.header.to_vec(),
        envelope: envelope(tree.header),
        body_structure: body_structure(&tree, true),
        body_basic: body_structure(&tree, false),
    }
}

/// A part's `Content-Transfer-Encoding` this server cannot undo
/// (RFC 3516 §4.3: FETCH BINARY then fails with `NO [UNKNOWN-CTE]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown content-transfer-encoding {0:?}")]
pub struct UnknownCte(
    /// The encoding's name, lower-cased (at most 64 octets).
    pub String,
);

/// The body of a part with its `Content-Transfer-Encoding` (RFC 2045 §6)
/// undone, as FETCH BINARY returns it (RFC 3516 §4.2). No field, `7bit`,
/// `8bit` and `binary` leave the body as it is; `base64` and
/// `quoted-printable` are decoded leniently (RFC 2045 §6.7 and §6.8 ask
/// decoders to skip what does not belong); anything else is an error.
pub fn decode_transfer_encoding<'a>(
    header: &[u8],
    body: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, UnknownCte> {
    use std::borrow::Cow;
    let cte = field(header, "Content-Transfer-Encoding")
        .map(|v| String::from_utf8_lossy(&v).trim().to_ascii_lowercase())
        .unwrap_or_default();
    match cte.as_str() {
        "" | "7bit" | "8bit" | "binary" => Ok(Cow::Borrowed(body)),
        "base64" => Ok(Cow::Owned(decode_base64_lenient(body))),
        "quoted-printable" => Ok(Cow::Owned(decode_quoted_printable(body))),
        _ => {
            let mut name = cte;
            let cut = (0..=name.len().min(64))
                .rev()
                .find(|&i| name.is_char_boundary(i))
                .unwrap_or(0);
            name.truncate(cut);
            Err(UnknownCte(name))
        }
    }
}

/// MIME base64 (RFC 2045 §6.8): characters outside the alphabet (line
/// breaks, spaces) are ignored and decoding stops at the first `=`; a
/// dangling sixth of a quantum is dropped.
fn decode_base64_lenient(body: &[u8]) -> Vec<u8> {
    let mut clean: Vec<u8> = body
        .iter()
        .copied()
        .take_while(|&b| b != b'=')
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
        .collect();
    if clean.len() % 4 == 1 {
        clean.pop();
    }
    crate::base64_decode(&clean).unwrap_or_default()
}

/// Quoted-printable (RFC 2045 §6.7): `=XX` is an octet, `=` at a line end
/// is a soft line break, whitespace before a line break is dropped, and a
/// malformed `=` is kept as it is (rule 1's "robust" decoding).
fn decode_quoted_printable(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for raw in body.split_inclusive(|&b| b == b'\n') {
        let (line, eol): (&[u8], &[u8]) = match raw.strip_suffix(b"\r\n") {
            Some(l) => (l, b"\r\n"),
            None => match raw.strip_suffix(b"\n") {
                Some(l) => (l, b"\n"),
                None => (raw, b""),
            },
        };
        let end = line
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |i| i + 1);
        let line = &line[..end];
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(l) => (l, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'='
                && let Some(o) = hex_octet(&line[i + 1..])
            {
                out.push(o);
                i += 3;
                continue;
            }
            out.push(line[i]);
            i += 1;
        }
        if !soft {
            out.extend_from_slice(eol);
        }
    }
    out
}

/// The octet written as two hex digits at the start of `s` (`=XX` in
/// quoted-printable, RFC 2045 §6.7, and in RFC 2047's `Q`).
pub(crate) fn hex_octet(s: &[u8]) -> Option<u8> {
    let h = char::from(*s.first()?).to_digit(16)?;
    let l = char::from(*s.get(1)?).to_digit(16)?;
    u8::try_from(h << 4 | l).ok()
}

/// Call `f` on each text a reader sees in the body of `part`, until it
/// returns true (SEARCH BODY): every `text/*` part with its
/// Content-Transfer-Encoding undone ([`decode_transfer_encoding`]; an
/// unknown one is left as it is), converted to UTF-8 from its charset
/// ([`crate::text::to_utf8`]; `us-ascii` when none is named), and the
/// header (encoded-words decoded) and body of every enclosed
/// `message/rfc822`. Other parts (images, PDFs and other attachments) and
/// the preamble and epilogue of multiparts are not looked at.
pub fn any_body_text(part: &Part<'_>, f: &mut dyn FnMut(&str) -> bool) -> bool {
    if let Some(m) = &part.message {
        return f(&crate::text::decode_header(m.header)) || any_body_text(m, f);
    }
    match part.ctype.kind.as_str() {
        "multipart" => part.children.iter().any(|c| any_body_text(c, f)),
        "text" => {
            let body = decode_transfer_encoding(part.header, part.body)
                .unwrap_or(std::borrow::Cow::Borrowed(part.body));
            let charset = part.ctype.param("charset").unwrap_or("us-ascii");
            f(&crate::text::to_utf8(charset.as_bytes(), &body))
        }
        _ => false,
    }
}

/// SEARCH BODY (RFC 3501 §6.4.4): does the body of `message` contain
/// `needle` as a reader sees it ([`any_body_text`]), ignoring case
/// ([`crate::text::contains_folded`])? A message that is one text part
/// in UTF-8 or a single-byte charset, with no transfer encoding to undo,
/// is searched for an ASCII needle in its raw bytes, without parsing,
/// decoding or allocating: the same answer.
pub fn body_contains(message: &[u8], needle: &str) -> bool {
    let (header, body) = split_header(message);
    body_contains_split(message, header, body, needle)
}

/// SEARCH TEXT: does the header (encoded-words decoded,
/// [`crate::text::header_contains`]) or the body ([`body_contains`]) of
/// `message` contain `needle`?
pub fn text_contains(message: &[u8], needle: &str) -> bool {
    let (header, body) = split_header(message);
    crate::text::header_contains(header, needle)
        || body_contains_split(message, header, body, needle)
}

fn body_contains_split(message: &[u8], header: &[u8], body: &[u8], needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    if needle.is_ascii() && raw_is_text_for_ascii(header) {
        return contains_ignore_ascii_case(body, needle.as_bytes());
    }
    any_body_text(&parse(message), &mut |t| {
        crate::text::contains_folded(t, needle)
    })
}

/// Is the body of a message with this header, taken as raw bytes, the same
/// as its decoded text for an ASCII search string? True for a single
/// `text/*` part (or no Content-Type) in a charset that keeps ASCII as it
/// is ([`crate::text::ascii_transparent`]), in `7bit`, `8bit`, `binary` or
/// no transfer encoding. Reads the fields in place, without allocating;
/// anything unusual answers false (the caller then decodes).
fn raw_is_text_for_ascii(header: &[u8]) -> bool {
    // Printable ASCII, spaces and tabs only: there `str::trim` and the
    // lossy UTF-8 of `content_type` and `decode_transfer_encoding` read the
    // value as the byte-wise checks below do.
    let plain = |v: &[u8]| {
        v.iter()
            .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
    };
    let text_type = |v: &[u8]| {
        let mut parts = split_params(v);
        let head = parts.next().unwrap_or_default();
        let is_text = plain(head)
            && head
                .split(|&b| b == b'/')
                .next()
                .is_some_and(|k| k.trim_ascii().eq_ignore_ascii_case(b"text"));
        if !is_text {
            return false;
        }
        for p in parts.take(MAX_PARAMS) {
            if !plain(p) {
                return false;
            }
            let Some(eq) = p.iter().position(|&b| b == b'=') else {
                continue;
            };
            if p[..eq].trim_ascii().eq_ignore_ascii_case(b"charset") {
                // The value as `value_and_params` unquotes it.
                let v = p[eq + 1..].trim_ascii();
                let v = v
                    .strip_prefix(b"\"")
                    .and_then(|x| x.strip_suffix(b"\""))
                    .unwrap_or(v);
                return !v.contains(&b'\\') && crate::text::ascii_transparent(v);
            }
        }
        true
    };
    let identity = |v: &[u8]| {
        let v = v.trim_ascii();
        plain(v)
            && [&b"7bit"[..], b"8bit", b"binary"]
                .iter()
                .any(|e| v.eq_ignore_ascii_case(e))
    };
    header_fields(header).all(|f| {
        if f.name.eq_ignore_ascii_case(b"Content-Type") {
            text_type(&f.value())
        } else if f.name.eq_ignore_ascii_case(b"Content-Transfer-Encoding") {
            identity(&f.value())
        } else {
            true
        }
    })
}

/// Does `hay` contain `needle`, ignoring ASCII case? (IMAP SEARCH compares
/// strings case-insensitively, RFC 9051 §6.4.4.) Candidates are found with
/// a vectorised scan for the needle's first octet in either case, so long
/// texts cost little more than reading them.
pub fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let Some(last_start) = hay.len().checked_sub(needle.len()) else {
        return false;
    };
    let (lo, up) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    // Only positions where the whole needle still fits can start a match.
    let starts = &hay[..=last_start];
    memchr::memchr2_iter(lo, up, starts)
        .any(|i| hay[i + 1..i + needle.len()].eq_ignore_ascii_case(rest))
}

/// Does any field named `name` (case-insensitive) have an unfolded value
/// (as [`fields`] gives it) for which `pred` holds? Allocates only for
/// folded fields.
pub fn any_field(header: &[u8], name: &str, mut pred: impl FnMut(&[u8]) -> bool) -> bool {
    header_fields(header).any(|f| f.name.eq_ignore_ascii_case(name.as_bytes()) && pred(&f.value()))
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A month name (`Jan`..`Dec`, any case) as 1..=12.
pub fn month(name: &str) -> Option<u32> {
    let l = name.to_ascii_lowercase();
    MONTHS.iter().position(|m| *m == l).map(|i| i as u32 + 1)
}

/// The day (days since the epoch) of an RFC 5322 `Date:` value, ignoring
/// time and zone, as SEARCH SENT* wants (RFC 3501 §6.4.4).
pub fn date_header_day(v: &[u8]) -> Option<i64> {
    let s = String::from_utf8_lossy(v);
    let s = match s.split_once(',') {
        Some((_, rest)) => rest.to_string(),
        None => s.to_string(),
    };
    let mut it = s.split_whitespace();
    let d: u32 = it.next()?.parse().ok()?;
    let m = month(it.next()?)?;
    let mut y: i64 = it.next()?.parse().ok()?;
    if y < 50 {
        y += 2000;
    } else if y < 1000 {
        y += 1900;
    }
    (1..=31).contains(&d).then(|| days_from_civil(y, m, d))
}

/// Re-encode as base64 every leaf part whose body holds a NUL, as an
/// APPEND of binary data (RFC 3516 §4.4, a `literal8`) is stored: NUL may
/// not appear in a plain FETCH of BODY[...] (RFC 9051 §4.3), and BINARY[...]
/// decodes the base64 back to the octets given. `None` when no part holds
/// a NUL (the message is kept as it is).
pub fn binary_parts_to_base64(message: &[u8]) -> Option<Vec<u8>> {
    let tree = parse(message);
    let mut leaves = Vec::new();
    nul_leaves(&tree, &mut leaves);
    if leaves.is_empty() {
        return None;
    }
    // Offsets of the parts' slices within `message` (they borrow from it).
    let at = |s: &[u8]| s.as_ptr() as usize - message.as_ptr() as usize;
    let mut out = Vec::with_capacity(message.len() * 4 / 3 + 64);
    let mut pos = 0;
    for part in leaves {
        let (h, b) = (at(part.header), at(part.body));
        out.extend_from_slice(&message[pos..h]);
        out.extend_from_slice(&with_base64_cte(part.header));
        out.extend_from_slice(&base64_lines(part.body));
        pos = b + part.body.len();
    }
    out.extend_from_slice(&message[pos..]);
    Some(out)
}

/// The leaf parts (in order) whose body holds a NUL.
fn nul_leaves<'p, 'a>(part: &'p Part<'a>, out: &mut Vec<&'p Part<'a>>) {
    if let Some(m) = &part.message {
        nul_leaves(m, out);
    } else if !part.children.is_empty() {
        for c in &part.children {
            nul_leaves(c, out);
        }
    } else if part.body.contains(&0) {
        out.push(part);
    }
}

/// `header` with its Content-Transfer-Encoding field (continuations too)
/// replaced by `base64`, added before the blank line when absent.
fn with_base64_cte(header: &[u8]) -> Vec<u8> {
    const CTE: &[u8] = b"content-transfer-encoding:";
    let mut out = Vec::with_capacity(header.len() + 40);
    let mut skipping = false;
    for line in header.split_inclusive(|&c| c == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if skipping && continuation {
            continue;
        }
        skipping = line.len() >= CTE.len() && line[..CTE.len()].eq_ignore_ascii_case(CTE);
        let blank = line == b"\r\n" || line == b"\n";
        if skipping || blank {
            continue;
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
    out
}

/// `data` in base64, lines of 76 characters (RFC 2045 §6.8), CRLF after each.
fn base64_lines(data: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(text.len() + text.len() / 38 + 2);
    for chunk in text.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A part holding NUL is stored base64 and decodes back to its octets;
    /// other parts and the structure stay as they were.
    #[test]
    fn binary_parts_become_base64() {
        let body = b"\0-\xe4\n\r\n\n\n";
        let mut single = b"From: u@d.test\r\nContent-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: binary\r\n  (folded)\r\n\r\n"
            .to_vec();
        single.extend_from_slice(body);
        let out = binary_parts_to_base64(&single).unwrap();
        assert!(!out.contains(&0));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "From: u@d.test\r\nContent-Type: application/octet-stream\r\n\
             Content-Transfer-Encoding: base64\r\n\r\nAC3kCg0KCgo=\r\n"
        );
        let part = parse(&out);
        assert_eq!(
            &*decode_transfer_encoding(part.header, part.body).unwrap(),
            body
        );

        let mut multi = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: image/x\r\n\r\n"
            .to_vec();
        multi.extend_from_slice(b"a\0b");
        multi.extend_from_slice(b"\r\n--b--\r\n");
        let out = binary_parts_to_base64(&multi).unwrap();
        let tree = parse(&out);
        assert_eq!(tree.children.len(), 2);
        assert_eq!(tree.children[0].body, b"hello");
        let p2 = &tree.children[1];
        assert_eq!(
            &*decode_transfer_encoding(p2.header, p2.body).unwrap(),
            b"a\0b"
        );
        // Nothing to do without a NUL.
        assert_eq!(
            binary_parts_to_base64(b"Subject: x\r\n\r\n8bit \xe4\r\n"),
            None
        );
    }

    const MSG: &[u8] = b"From: \"Bob, B.\" <bob@example.com>\r\nTo: a@x.test, Carol <c@y.test>\r\n\
Subject: hi\r\nDate: Tue, 3 Feb 2026 10:00:00 +0000\r\nMessage-ID: <m1@x>\r\n\
Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--XX\r\n\
Content-Type: application/pdf; name=a.pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--XX--\r\n";

    /// RFC 3501 §7.4.2 (RFC 9051 §7.5.2): a group is a start marker (NIL
    /// host, the group's name as mailbox), its members, and an all-NIL end
    /// marker; a comment stands in for a missing display name; an obsolete
    /// route goes in the second field.
    #[test]
    fn envelope_addresses_keep_names_groups_and_routes() {
        let env = envelope(
            b"From: user@domain (Real Name)\r\nTo: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\r\n\
Cc: group:;, group2: (foo) ;\r\nBcc: <@route:user@domain>\r\n\r\n",
        );
        assert_eq!(
            env,
            "(NIL NIL ((\"Real Name\" NIL \"user\" \"domain\")) ((\"Real Name\" NIL \"user\" \"domain\")) \
((\"Real Name\" NIL \"user\" \"domain\")) ((NIL NIL \"group\" NIL)(NIL NIL \"g1\" \"d1.org\")\
(NIL NIL \"g2\" \"d2.org\")(NIL NIL NIL NIL)(NIL NIL \"group2\" NIL)(NIL NIL \"g3\" \"d3.org\")\
(NIL NIL NIL NIL)) ((NIL NIL \"group\" NIL)(NIL NIL NIL NIL)(NIL NIL \"group2\" NIL)(NIL NIL NIL NIL)) \
((NIL \"@route\" \"user\" \"domain\")) NIL NIL)"
        );
        let a = parse_address_list(b"\"Last, First\" <a@b.c>, plain <x (c) @ (d) y.z>");
        assert_eq!(a[0].name.as_deref(), Some("Last, First"));
        assert_eq!(
            (a[1].mailbox.as_deref(), a[1].host.as_deref()),
            (Some("x"), Some("y.z"))
        );
    }

    /// RFC 3501 §6.4.5 (RFC 9051 §6.4.5): part 1 of a top-level
    /// message/rfc822 is the whole enclosed message, and the parts below it
    /// are numbered from that message.
    #[test]
    fn parts_of_an_enclosed_message() {
        let msg = b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nHello world\r\n";
        let p = parse(msg);
        let one = p.find(&[1]).unwrap();
        assert_eq!(one.body, b"Subject: inner\r\n\r\nHello world\r\n");
        assert_eq!(
            one.message.as_ref().unwrap().header,
            b"Subject: inner\r\n\r\n"
        );
        assert_eq!(p.find(&[1, 1]).unwrap().body, b"Hello world\r\n");
        assert!(p.find(&[2]).is_none());
    }

    #[test]
    fn envelope_and_structure() {
        let (h, _) = split_header(MSG);
        let env = envelope(h);
        assert_eq!(
            env,
            "(\"Tue, 3 Feb 2026 10:00:00 +0000\" \"hi\" ((\"Bob, B.\" NIL \"bob\" \"example.com\")) \
((\"Bob, B.\" NIL \"bob\" \"example.com\")) ((\"Bob, B.\" NIL \"bob\" \"example.com\")) \
((NIL NIL \"a\" \"x.test\")(\"Carol\" NIL \"c\" \"y.test\")) NIL NIL NIL \"<m1@x>\")"
        );
        let p = parse(MSG);
        assert_eq!(p.children.len(), 2);
        assert_eq!(p.find(&[1]).unwrap().body, b"hello");
        assert_eq!(p.find(&[2]).unwrap().body, b"AAAA");
        assert!(p.find(&[3]).is_none());
        let bs = body_structure(&p, true);
        assert_eq!(
            bs,
            "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 1 NIL NIL NIL NIL)\
(\"APPLICATION\" \"PDF\" (\"NAME\" \"a.pdf\") NIL NIL \"BASE64\" 4 NIL (\"ATTACHMENT\" (\"FILENAME\" \"a.pdf\")) NIL NIL) \
\"MIXED\" (\"BOUNDARY\" \"XX\") NIL NIL NIL)"
        );
        assert_eq!(
            date_header_day(b"Tue, 3 Feb 2026 10:00:00 +0000"),
            Some(days_from_civil(2026, 2, 3))
        );
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }

    #[test]
    fn summary_matches_parsing_each_time() {
        let s = summarize(MSG);
        let tree = parse(MSG);
        assert_eq!(s.header, split_header(MSG).0);
        assert_eq!(s.envelope, envelope(tree.header));
        assert_eq!(s.body_structure, body_structure(&tree, true));
        assert_eq!(s.body_basic, body_structure(&tree, false));
        // A message without a body is all header.
        assert_eq!(summarize(b"Subject: x\r\n").header, b"Subject: x\r\n");
    }

    #[test]
    fn case_insensitive_substring() {
        for (hay, needle, want) in [
            (
                &b"the Needle-In-Haystack token"[..],
                &b"needle-in-haystack"[..],
                true,
            ),
            (b"nnnneedle", b"NEEDLE", true),
            (b"needl", b"needle", false),
            (b"anything", b"", true),
            (b"", b"x", false),
            (b"xneedle", b"needle", true),
            (b"needlex", b"needle", true),
            (b"Ne", b"ne", true),
            (b"n", b"ne", false),
            (b"\xe9t\xe9", b"\xc9", false),
        ] {
            assert_eq!(
                contains_ignore_ascii_case(hay, needle),
                want,
                "{hay:?} {needle:?}"
            );
            let slow = needle.is_empty()
                || hay
                    .windows(needle.len().max(1))
                    .any(|w| w.eq_ignore_ascii_case(needle));
            assert_eq!(slow, want);
        }
    }

    #[test]
    fn any_field_sees_what_fields_sees() {
        let h = b"Subject: first\r\nX-Long: one\r\n two\r\n\tthree\r\nsubject : second \r\nbad line\r\n\r\n";
        let mut seen = Vec::new();
        assert!(!any_field(h, "SUBJECT", |v| {
            seen.push(v.to_vec());
            false
        }));
        assert_eq!(seen, vec![b"first".to_vec(), b"second".to_vec()]);
        let want = field(h, "x-long").unwrap();
        assert_eq!(want, b"one two\tthree");
        assert!(any_field(h, "x-long", |v| v == want.as_slice()));
        assert!(!any_field(h, "To", |_| true));
        // A line that is no field takes its continuation lines with it.
        let h = b"A: 1\r\nno field\r\n 2\r\nB: 3\n\t4\n";
        assert_eq!(
            fields(h),
            [("A".into(), b"1".to_vec()), ("B".into(), b"3\t4".to_vec())]
        );
        assert!(any_field(h, "a", |v| v == b"1"));
    }

    #[test]
    fn total_on_garbage() {
        for m in [
            &b""[..],
            b"\r\n",
            b"Content-Type: multipart/x; boundary=\r\n\r\n--\r\n",
            b"Content-Type: message/rfc822\r\n\r\n",
        ] {
            let p = parse(m);
            let _ = body_structure(&p, true);
            let _ = envelope(p.header);
            let _ = p.find(&[1, 2, 3]);
        }
        // Deep nesting is bounded.
        let mut m = Vec::new();
        for _ in 0..50 {
            m.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        let _ = body_structure(&parse(&m), true);
    }

    /// Multipart/alternative (QP plain text in Latin-1, base64 HTML in
    /// UTF-8), a base64 PDF attachment, and a forwarded message/rfc822
    /// with an encoded subject and a base64 body.
    const DECODED: &[u8] = b"From: =?ISO-8859-1?Q?Jos=E9_Garc=EDa?= <jose@x.test>\r\n\
Subject: =?UTF-8?B?R3LDvMOfZQ==?= aus Wien\r\n\
Content-Type: multipart/mixed; boundary=\"out\"\r\n\r\n\
preamble-word\r\n--out\r\n\
Content-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
Caf=E9 cr=E8me, tr=E8s =\r\nbien\r\n--alt\r\n\
Content-Type: text/html; charset=\"utf-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
PHA+w5xiZXJyYXNjaHVuZzwvcD4=\r\n--alt--\r\n--out\r\n\
Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n\
c2VjcmV0LWF0dGFjaG1lbnQtd29yZA==\r\n--out\r\n\
Content-Type: message/rfc822\r\n\r\n\
Subject: =?utf-8?q?Fr=C3=BChling?=\r\nContent-Transfer-Encoding: base64\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\nw6lsw6hWRSBpbm5lcg==\r\n--out--\r\nepilogue-word\r\n";

    #[test]
    fn body_text_is_decoded() {
        for (needle, body, text) in [
            // Quoted-printable Latin-1, soft line break joined.
            ("café crème", true, true),
            ("CAFÉ", true, true),
            ("très bien", true, true),
            ("Caf=E9", false, false),
            // Base64 HTML (markup included).
            ("<p>überraschung", true, true),
            ("ÜBERRASCHUNG", true, true),
            ("PHA+", false, false),
            // The forwarded message: its decoded header and base64 body.
            ("frühling", true, true),
            ("élève inner", true, true),
            ("ÉLÈVE", true, true),
            // The outer header: TEXT only, decoded.
            ("grüße aus", false, true),
            ("JOSÉ GARCÍA", false, true),
            ("ISO-8859-1", false, false),
            // Attachments, MIME headers, preamble and epilogue are not text.
            ("secret-attachment-word", false, false),
            ("c2VjcmV0", false, false),
            ("preamble-word", false, false),
            ("epilogue-word", false, false),
            ("application/pdf", false, false),
            ("", true, true),
        ] {
            assert_eq!(body_contains(DECODED, needle), body, "BODY {needle:?}");
            assert_eq!(text_contains(DECODED, needle), text, "TEXT {needle:?}");
        }
    }

    #[test]
    fn raw_fast_path_gives_the_decoded_answer() {
        for (header, fast) in [
            (&b""[..], true),
            (b"Subject: x\r\n", true),
            (b"Content-Type: text/plain; charset=us-ascii\r\n", true),
            (b"Content-Type: TEXT/HTML; CHARSET=\"UTF-8\"\r\n", true),
            (b"Content-Type: text/plain; format=flowed; charset=iso-8859-15\r\nContent-Transfer-Encoding: 8bit\r\n", true),
            (b"Content-Type: text/plain; charset=x-unknown\r\n", true),
            (b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n", false),
            (b"Content-Transfer-Encoding: quoted-printable\r\n", false),
            (b"Content-Type: text/plain; charset=utf-16\r\n", false),
            (b"Content-Type: text/plain; charset=\"shift_jis\"\r\n", false),
            (b"Content-Type: text/plain; charset=\"utf-16*en\"\r\n", false),
            (b"Content-Type: multipart/mixed; boundary=x\r\n", false),
            (b"Content-Type: image/png\r\n", false),
            (b"Content-Type: text/plain; charset=utf-8\r\nContent-Type: image/png\r\n", false),
        ] {
            assert_eq!(raw_is_text_for_ascii(header), fast, "{}", String::from_utf8_lossy(header));
        }
        // Where it is taken, it agrees with decoding.
        let m = b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nna\xefve Needle\r\n";
        let tree = parse(m);
        for needle in ["needle", "NA", "ve n", "xx"] {
            let slow = any_body_text(&tree, &mut |t| crate::text::contains_folded(t, needle));
            assert_eq!(body_contains(m, needle), slow, "{needle}");
        }
        assert!(body_contains(m, "NAÏVE"));
    }

    #[test]
    fn transfer_encodings_are_undone() {
        let dec = |cte: &str, body: &[u8]| {
            let h = format!("Content-Transfer-Encoding: {cte}\r\n\r\n");
            decode_transfer_encoding(h.as_bytes(), body).map(std::borrow::Cow::into_owned)
        };
        // Line breaks and junk inside base64 are skipped (RFC 2045 §6.8).
        assert_eq!(
            dec("BASE64", b"AGFs\r\naWNl\r\nAP8=\r\n").unwrap(),
            b"\0alice\0\xff"
        );
        assert_eq!(dec("base64", b"YW*Jj").unwrap(), b"abc");
        assert_eq!(dec("base64", b"YWJjZ").unwrap(), b"abc");
        assert_eq!(
            dec("quoted-printable", b"caf=C3=A9 =\r\nsoft  \r\n=3D=ZZ=\r\n").unwrap(),
            b"caf\xc3\xa9 soft\r\n==ZZ"
        );
        assert_eq!(dec(" 7BIT ", b"a\0b").unwrap(), b"a\0b");
        assert_eq!(dec("binary", b"\0").unwrap(), b"\0");
        assert_eq!(
            decode_transfer_encoding(b"Subject: x\r\n\r\n", b"plain").unwrap(),
            &b"plain"[..]
        );
        assert_eq!(
            dec("x-uuencode", b"x").unwrap_err(),
            UnknownCte("x-uuencode".into())
        );
        // A long name is cut, never inside a character.
        let long = format!("x{}", "ü".repeat(40));
        let e = dec(&long, b"").unwrap_err();
        assert_eq!(e.0.len(), 63);
        assert!(long.starts_with(&e.0));
    }

    /// Found by the fuzzer (fuzz/corpus/mime/regress-nul-literal): a NUL
    /// in a header reached the client inside a literal, which RFC 9051 §9
    /// does not allow (`CHAR8` excludes NUL).
    #[test]
    fn literals_never_carry_nul() {
        let m = b"Content-Type: M\0ULTIPART/mixed; boundary=b\r\nSubject: a\0\xe9\r\n\r\n";
        let s = summarize(m);
        for text in [&s.body_structure, &s.body_basic, &s.envelope] {
            assert!(text.contains("}\r\n"), "{text:?}");
            assert!(!text.contains('\0'), "{text:?}");
        }
        let mut out = String::new();
        string(&mut out, b"x\0\xe9\r\ny");
        // x, U+FFFD (three octets), y.
        assert_eq!(out, "{5}\r\nx\u{fffd}y");
    }
}
