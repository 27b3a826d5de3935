//! Pure helpers for the inbound checks: removing `Authentication-Results`
//! fields that claim our authserv-id (RFC 8601 §5), and the RFC 7489 `pct=`
//! tag, which mail-auth 0.13.3 (following DMARCbis) no longer parses.

use std::borrow::Cow;

/// The message header with every `Authentication-Results` field whose
/// authserv-id is `authserv_id` (compared case-insensitively) removed, then
/// the rest of the message unchanged. RFC 8601 §5: a border MTA must delete
/// such fields arriving from outside, since only it may have written them.
/// Borrowed (no copy) when there is nothing to remove, the common case.
pub(crate) fn strip_own_results<'m>(message: &'m [u8], authserv_id: &str) -> Cow<'m, [u8]> {
    let mut drop: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let end = field_end(message, pos);
        let field = &message[pos..end];
        // The empty line ends the header; the body is never looked at.
        if field == b"\r\n" || field == b"\n" {
            break;
        }
        if is_own_results(field, authserv_id) {
            drop.push((pos, end));
        }
        pos = end;
    }
    if drop.is_empty() {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len());
    let mut from = 0;
    for (start, end) in drop {
        out.extend_from_slice(&message[from..start]);
        from = end;
    }
    out.extend_from_slice(&message[from..]);
    Cow::Owned(out)
}

/// End (exclusive) of the header field starting at `start`: past its last
/// line, continuation lines (starting with SP or HTAB) included.
fn field_end(m: &[u8], start: usize) -> usize {
    let mut pos = start;
    loop {
        let line_end = match memchr_nl(&m[pos..]) {
            Some(i) => pos + i + 1,
            None => return m.len(),
        };
        // The empty line is a "field" on its own.
        if line_end - pos <= 2 && m[pos..line_end].iter().all(|&b| b == b'\r' || b == b'\n') {
            return line_end;
        }
        match m.get(line_end) {
            Some(b' ' | b'\t') => pos = line_end,
            _ => return line_end,
        }
    }
}

fn memchr_nl(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}

/// This field is `Authentication-Results:` naming `authserv_id`.
fn is_own_results(field: &[u8], authserv_id: &str) -> bool {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = &field[..colon];
    if !name
        .trim_ascii()
        .eq_ignore_ascii_case(b"Authentication-Results")
    {
        return false;
    }
    authserv_id_of(&field[colon + 1..])
        .is_some_and(|id| id.eq_ignore_ascii_case(authserv_id.as_bytes()))
}

/// The authserv-id: the first token of the value after CFWS (RFC 8601 §2.2).
fn authserv_id_of(value: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    let mut depth = 0u32;
    while i < value.len() {
        match value[i] {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let rest = value.get(i..)?;
    let len = rest
        .iter()
        .position(|&b| matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n' | b'('))
        .unwrap_or(rest.len());
    (len > 0).then(|| &rest[..len])
}

/// The `pct=` tag of a DMARC record (RFC 7489 §6.3), 100 when absent or
/// malformed (as §6.3 says for values out of range).
pub(crate) fn dmarc_pct(record: &str) -> u8 {
    if !record
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("v=dmarc1")
    {
        return 100;
    }
    record
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("pct"))
        .and_then(|(_, v)| v.trim().parse::<u8>().ok())
        .filter(|p| *p <= 100)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "mx.tern.test";

    #[test]
    fn forged_results_with_our_id_are_removed_others_kept() {
        let msg = b"Authentication-Results: MX.Tern.Test; dkim=pass header.d=bank.example\r\n\
Received: from x\r\n\
Authentication-Results: (comment) mx.tern.test;\r\n\tspf=pass smtp.mailfrom=a@b\r\n\
Authentication-Results: other.example; dmarc=pass\r\n\
Authentication-Results: mx.tern.test.evil; spf=pass\r\n\
Subject: hi\r\n\
\r\n\
Authentication-Results: mx.tern.test; body text stays\r\n";
        let out = strip_own_results(msg, HOST);
        assert!(matches!(out, Cow::Owned(_)));
        let out = String::from_utf8(out.into_owned()).unwrap();
        assert_eq!(
            out,
            "Received: from x\r\n\
Authentication-Results: other.example; dmarc=pass\r\n\
Authentication-Results: mx.tern.test.evil; spf=pass\r\n\
Subject: hi\r\n\
\r\n\
Authentication-Results: mx.tern.test; body text stays\r\n"
        );
    }

    #[test]
    fn version_after_id_and_no_body() {
        let msg = b"Authentication-Results: mx.tern.test 1; none\r\nSubject: x\r\n";
        assert_eq!(&*strip_own_results(msg, HOST), b"Subject: x\r\n");
        let clean = b"Subject: x\r\n\r\nbody\r\n";
        assert!(matches!(strip_own_results(clean, HOST), Cow::Borrowed(_)));
    }

    #[test]
    fn pct_tag() {
        assert_eq!(dmarc_pct("v=DMARC1; p=reject; pct=20"), 20);
        assert_eq!(dmarc_pct("v=DMARC1; p=reject"), 100);
        assert_eq!(dmarc_pct("v=DMARC1; p=reject; pct=500"), 100);
        assert_eq!(dmarc_pct("v=DMARC1; p=quarantine; pct=0"), 0);
        assert_eq!(dmarc_pct("v=spf1 -all pct=3"), 100);
    }
}
