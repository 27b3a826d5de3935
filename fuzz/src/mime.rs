//! MIME as the IMAP server parses it for BODYSTRUCTURE, ENVELOPE and
//! FETCH BINARY.

use tern_mailproto::mime;

/// No panic, and what the server sends is well-formed IMAP: BODYSTRUCTURE
/// (basic and extended) and ENVELOPE are each one parenthesized list of
/// NIL, numbers, quoted strings and literals (RFC 9051 §9), with no NUL.
pub fn structure(data: &[u8]) {
    let tree = mime::parse(data);
    let summary = mime::summarize(data);
    for (what, text) in [
        ("BODYSTRUCTURE", &summary.body_structure),
        ("BODY", &summary.body_basic),
        ("ENVELOPE", &summary.envelope),
    ] {
        if let Err(e) = check_list(text.as_bytes()) {
            panic!("{what} is not a well-formed IMAP list ({e}): {text:?}");
        }
    }
    walk(&tree, 0);
}

/// Every part: its transfer encoding undone (or refused) without a panic.
fn walk(part: &mime::Part<'_>, depth: usize) {
    assert!(depth <= 2 * mime::MAX_DEPTH + 2, "nesting beyond the limit");
    let _ = mime::decode_transfer_encoding(part.header, part.body);
    for child in &part.children {
        walk(child, depth + 1);
    }
    if let Some(m) = &part.message {
        walk(m, depth + 1);
    }
}

/// Checks that `s` is exactly one IMAP parenthesized list.
fn check_list(s: &[u8]) -> Result<(), String> {
    let mut at = 0;
    value(s, &mut at, 0)?;
    if at != s.len() {
        return Err(format!("trailing octets at {at}"));
    }
    if s.first() != Some(&b'(') {
        return Err("not a list".into());
    }
    Ok(())
}

fn value(s: &[u8], at: &mut usize, depth: usize) -> Result<(), String> {
    if depth > 64 {
        return Err("nested too deep".into());
    }
    match s.get(*at) {
        Some(b'(') => {
            *at += 1;
            let mut first = true;
            loop {
                match s.get(*at) {
                    Some(b')') => {
                        *at += 1;
                        return Ok(());
                    }
                    Some(b' ') if !first => *at += 1,
                    // A multipart's bodies follow each other without SP
                    // (RFC 9051 §9 `body-type-mpart`).
                    Some(b'(') if !first && s[*at - 1] == b')' => {}
                    Some(_) if first => {}
                    _ => return Err(format!("expected SP or ) at {at}")),
                }
                first = false;
                value(s, at, depth + 1)?;
            }
        }
        Some(b'"') => quoted(s, at),
        Some(b'{') => literal(s, at),
        Some(b) if b.is_ascii_digit() => {
            while s.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            Ok(())
        }
        _ if s[*at..].starts_with(b"NIL") => {
            *at += 3;
            Ok(())
        }
        _ => Err(format!("unexpected octet at {at}")),
    }
}

fn quoted(s: &[u8], at: &mut usize) -> Result<(), String> {
    *at += 1;
    loop {
        match s.get(*at) {
            Some(b'"') => {
                *at += 1;
                return Ok(());
            }
            Some(b'\\') if matches!(s.get(*at + 1), Some(b'"' | b'\\')) => *at += 2,
            Some(b'\\') => return Err(format!("bad escape at {at}")),
            Some(b'\r' | b'\n' | 0) | None => return Err(format!("bad quoted string at {at}")),
            Some(_) => *at += 1,
        }
    }
}

fn literal(s: &[u8], at: &mut usize) -> Result<(), String> {
    let start = *at + 1;
    let close = s[start..]
        .iter()
        .position(|&b| b == b'}')
        .ok_or("unterminated literal length")?;
    let len: usize = std::str::from_utf8(&s[start..start + close])
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or("bad literal length")?;
    let data = start + close + 1;
    if s.get(data..data + 2) != Some(b"\r\n") {
        return Err(format!("no CRLF after the literal length at {at}"));
    }
    let body = s
        .get(data + 2..data + 2 + len)
        .ok_or("literal longer than the text")?;
    if body.contains(&0) {
        return Err("NUL in a literal (RFC 9051 §9 CHAR8)".into());
    }
    *at = data + 2 + len;
    Ok(())
}
